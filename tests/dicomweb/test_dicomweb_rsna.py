"""Issue 14's whole way, for real: dicomweb-client STOWs the RSNA sample to a running node, the node
analyses it and delivers each radiograph's SR, GSPS and SC to Orthanc through Orthanc's DICOMweb
plugin (STOW-RS out); QIDO-RS finds each study with our results in it, WADO-RS returns every result
byte for byte as the outbox holds it, and Orthanc, as a DICOMweb client, pushes a study to the node.
A result file that cannot be read is left out of the answers and said once, not at every query.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pydicom
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import (
    DICOM_JSON,
    assert_results_in_orthanc,
    delivered_once,
    multipart_parts,
    orthanc_instances,
    orthanc_rest,
    outbox_files,
    query,
    stow,
    wait_deliveries,
)
from pydicom.uid import generate_uid

from dicom_node.testing import NodeProcess, OrthancProcess, free_port, missing_orthanc_dicomweb, require, wait_for

SR, GSPS, SC = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.7"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def test_rsna_by_stow_rs_in_results_by_stow_rs_out_qido_wado_and_orthanc_pushing(
        tmp_path: Path, node_factory: type[NodeProcess], rsna: list[Path]) -> None:
    why = missing_orthanc_dicomweb()
    require(why is None, why or "")
    port = free_port()  # the node's DICOMweb port, known to Orthanc before either starts
    pacs = OrthancProcess(tmp_path / "orthanc", dicomweb=True,
                          dicomweb_servers={"node": {"Url": f"http://127.0.0.1:{port}/dicom-web/"}}).start()
    try:
        node = node_factory(dicomweb={"enabled": True, "port": port},
                            destinations=[{"name": "pacs-web", "url": pacs.dicomweb_url,
                                           "kinds": ["sr", "gsps", "sc"]}]).start()
        client = DICOMwebClient(node.dicomweb_url)

        # STOW-RS in, by the highdicom authors' client, as a user's script would
        answer = client.store_instances([pydicom.dcmread(f) for f in rsna])
        sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in rsna}
        assert {str(r.ReferencedSOPInstanceUID) for r in answer.ReferencedSOPSequence} == set(sources)
        assert "FailedSOPSequence" not in answer

        # STOW-RS out: 3 results of each of the 9 radiographs in Orthanc, once each, byte for byte
        wait_deliveries(node, {("pacs-web", "delivered"): 27})
        assert_results_in_orthanc(node, orthanc_instances(pacs), rsna)
        delivered_once(node, "pacs-web")

        # QIDO-RS: each study is found, and its instances are the radiograph and our three results
        results = outbox_files(node)
        for uid, path in sources.items():
            study = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            [found] = client.search_for_studies(search_filters={"StudyInstanceUID": study})
            assert found["0020000D"]["Value"] == [study]
            classes = sorted(i["00080016"]["Value"][0] for i in client.search_for_instances(study))
            assert classes == sorted([str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID),
                                      SR, GSPS, SC]), uid

        # WADO-RS: every result comes back as the file the node made and delivered
        for uid, (_kind, path) in results.items():
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            rsp = httpx.get(f"{node.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                            f"/instances/{uid}", headers={"Accept": WADO_ACCEPT}, timeout=60)
            assert rsp.status_code == 200, rsp.text
            [(_type, data)] = multipart_parts(rsp)
            assert data == path.read_bytes(), f"{uid} differs from its outbox file"

        # Orthanc as a DICOMweb client: a study it holds, pushed to the node by its STOW-RS
        ds = pydicom.dcmread(rsna[0])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / "pushed.dcm")
        made = orthanc_rest(pacs, "/instances", "POST", (tmp_path / "pushed.dcm").read_bytes())
        pacs.post("/dicom-web/servers/node/stow", {"Resources": [made["ParentStudy"]]})
        rows = wait_for("the pushed instance on the node", lambda: query(
            node, "SELECT path FROM instances WHERE sop_instance_uid=?", str(ds.SOPInstanceUID)) or None, 60)
        assert Path(rows[0][0]).read_bytes() == orthanc_rest(pacs, f"/instances/{made['ID']}/file")
    finally:
        pacs.stop()


def test_an_unreadable_result_is_said_once_and_read_again_once_its_file_is_back(
        node_factory: type[NodeProcess], rsna: list[Path]) -> None:
    node = node_factory(dicomweb={"enabled": True}).start()
    assert stow(node, [rsna[0].read_bytes()]).status_code == 200
    wait_for("the three results", lambda: len(outbox_files(node)) == 3, 600)
    [(sc_uid, sc_path)] = [(uid, path) for uid, (kind, path) in outbox_files(node).items() if kind == "sc"]
    good = sc_path.read_bytes()
    sc_path.write_bytes(b"not a DICOM file")  # a disk error, an operator's slip
    study = str(pydicom.dcmread(rsna[0], stop_before_pixels=True).StudyInstanceUID)
    source_class = str(pydicom.dcmread(rsna[0], stop_before_pixels=True).SOPClassUID)

    def classes() -> list[str]:
        rsp = httpx.get(f"{node.dicomweb_url}/studies/{study}/instances", headers={"Accept": DICOM_JSON}, timeout=60)
        assert rsp.status_code == 200, rsp.text
        return sorted(i["00080016"]["Value"][0] for i in rsp.json())

    # Two queries: both answer with the readable objects; the unreadable one is said once in the log
    assert classes() == classes() == sorted([source_class, SR, GSPS])
    said = [ln for ln in node.cli("logs", "--json").stdout.splitlines() if "object not indexed for DICOMweb" in ln]
    assert len(said) == 1 and sc_uid in said[0], said
    # Its file restored: the next query reads it again and finds it
    sc_path.write_bytes(good)
    assert classes() == sorted([source_class, SR, GSPS, SC])
