"""STOW-RS, QIDO-RS and WADO-RS round trips of the RSNA sample against a real node (receive only).

The files go up as they are (raw parts) and through ``dicomweb-client``; WADO-RS gives back each
file byte for byte, its frames as the stored fragments, its metadata as its header; QIDO-RS finds
it by the usual keys. The node runs no model here: the results' side is test_dicomweb_rsna.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree as ET

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from dicomweb_support import multipart_parts, query, related, stored, stow
from pydicom.encaps import generate_frames

from dicom_node.testing import NodeProcess


@pytest.fixture(scope="module")
def sent(tmp_path_factory: pytest.TempPathFactory, rsna: list[Path],
         new_database: Callable[[], str | None]) -> Iterator[tuple[NodeProcess, list[Path]]]:
    """A node that holds the first six RSNA files, sent as raw parts in one request."""
    node = NodeProcess(tmp_path_factory.mktemp("dicomweb-roundtrip") / "node", database=new_database(),
                       overrides={"worker": {"threads": 0}, "dicomweb": {"enabled": True}}).start()
    rsp = stow(node, [f.read_bytes() for f in rsna[:6]])
    assert rsp.status_code == 200, rsp.text
    assert len(stored(rsp)) == 6
    yield node, rsna[:6]
    node.stop()


def _header(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def test_wado_returns_each_file_byte_for_byte(sent: tuple[NodeProcess, list[Path]]) -> None:
    node, files = sent
    for f in files:
        ds = _header(f)
        spooled = Path(query(node, "SELECT path FROM instances WHERE sop_instance_uid=?", str(ds.SOPInstanceUID))[0][0])
        assert spooled.read_bytes() == f.read_bytes()  # what was sent is what is stored
        base = f"{node.dicomweb_url}/studies/{ds.StudyInstanceUID}"
        for url in (base, f"{base}/series/{ds.SeriesInstanceUID}",
                    f"{base}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"):
            rsp = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            assert rsp.status_code == 200, rsp.text
            [(content_type, data)] = multipart_parts(rsp)
            assert content_type == f"application/dicom; transfer-syntax={ds.file_meta.TransferSyntaxUID}"
            assert data == f.read_bytes()


def test_frames_and_metadata(sent: tuple[NodeProcess, list[Path]]) -> None:
    node, files = sent
    client = DICOMwebClient(node.dicomweb_url)
    for f in files[:3]:
        full = pydicom.dcmread(f)
        ids = (str(full.StudyInstanceUID), str(full.SeriesInstanceUID), str(full.SOPInstanceUID))
        [frame] = client.retrieve_instance_frames(*ids, [1], media_types=(("image/jpeg", "1.2.840.10008.1.2.4.50"),))
        [expected] = list(generate_frames(full.PixelData, number_of_frames=1))
        assert bytes(frame) == expected
        meta = pydicom.Dataset.from_json(client.retrieve_instance_metadata(*ids))
        assert "PixelData" not in meta
        header = _header(f)
        for elem in header:
            assert meta[elem.tag].value == elem.value, elem.keyword
        assert client.retrieve_instance(*ids).SOPInstanceUID == full.SOPInstanceUID


def test_qido_matching(sent: tuple[NodeProcess, list[Path]]) -> None:
    node, files = sent
    client = DICOMwebClient(node.dicomweb_url)
    headers = [_header(f) for f in files]
    studies = client.search_for_studies()
    assert sorted(s["0020000D"]["Value"][0] for s in studies) == sorted(str(h.StudyInstanceUID) for h in headers)
    first = headers[0]
    by_id = client.search_for_studies(search_filters={"PatientID": str(first.PatientID)})
    assert [s["0020000D"]["Value"][0] for s in by_id] == [str(first.StudyInstanceUID)]
    assert by_id[0]["00201208"]["Value"] == [1] and by_id[0]["00080061"]["Value"] == ["CR"]
    wild = client.search_for_studies(search_filters={"PatientName": str(first.PatientName)[:6].lower() + "*"})
    assert str(first.StudyInstanceUID) in {s["0020000D"]["Value"][0] for s in wild}
    assert client.search_for_studies(search_filters={"StudyDate": "19000101-19001231"}) == []
    assert len(client.search_for_studies(search_filters={"StudyDate": "19010101-"})) == len(files)
    assert client.search_for_studies(search_filters={"ModalitiesInStudy": "MR"}) == []
    page = client.search_for_studies(limit=2, offset=1)
    assert [s["0020000D"] for s in page] == [s["0020000D"] for s in studies[1:3]]
    uids = f"{headers[1].StudyInstanceUID},{headers[2].StudyInstanceUID}"
    assert len(client.search_for_studies(search_filters={"StudyInstanceUID": uids})) == 2
    [inst] = client.search_for_instances(str(first.StudyInstanceUID), fields=["ViewPosition", "00280004"])
    assert inst["00185101"]["Value"] == [first.ViewPosition] and inst["00280004"]["Value"] == ["MONOCHROME2"]
    assert inst["00081190"]["Value"][0].endswith(f"/instances/{first.SOPInstanceUID}")
    [series] = client.search_for_series(str(first.StudyInstanceUID))
    assert series["00201209"]["Value"] == [1] and series["00080060"]["Value"] == ["CR"]


def test_dicomweb_client_stow_and_xml_response(sent: tuple[NodeProcess, list[Path]], rsna: list[Path]) -> None:
    node, _ = sent
    client = DICOMwebClient(node.dicomweb_url)
    ds = pydicom.dcmread(rsna[6])
    answer = client.store_instances([ds])
    [ref] = answer.ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ref.RetrieveURL == (f"{node.dicomweb_url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                               f"/instances/{ds.SOPInstanceUID}")
    assert answer.RetrieveURL == f"{node.dicomweb_url}/studies/{ds.StudyInstanceUID}"
    # again, asking for XML (PS3.19 Native DICOM Model): a duplicate is Success, kept once
    body, ct = related([rsna[6].read_bytes()])
    rsp = httpx.post(node.dicomweb_url + "/studies", content=body,
                     headers={"Content-Type": ct, "Accept": "application/dicom+xml"})
    assert rsp.status_code == 200 and rsp.headers["content-type"] == "application/dicom+xml"
    ns = {"n": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    root = ET.fromstring(rsp.content)
    value = root.find("n:DicomAttribute[@keyword='ReferencedSOPSequence']/n:Item/"
                      "n:DicomAttribute[@tag='00081155']/n:Value", ns)
    assert value is not None and value.text == str(ds.SOPInstanceUID)
    assert query(node, "SELECT COUNT(*) FROM instances WHERE sop_instance_uid=?", str(ds.SOPInstanceUID))[0][0] == 1
