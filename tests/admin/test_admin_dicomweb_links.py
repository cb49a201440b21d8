"""With the DICOMweb listener on, `dicom-node results` and the admin console name each study by its
DICOMweb URL (PS3.18 §10.4), and that URL answers: its metadata is the study's. With the listener off
there is no link (tests/admin/test_admin_api.py, on the fed node)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pydicom
from admin_support import Dom

from dicom_node.testing import NodeProcess, free_port, storescu, synthetic_cr, wait_port

SOP_INSTANCE_UID = "00080018"


def test_results_and_the_console_link_the_study_by_its_dicomweb_url_and_it_answers(
        node_factory: type[NodeProcess], dcmtk: None, tmp_path: Path) -> None:
    admin = free_port()
    node = node_factory(worker={"threads": 0}, admin={"enabled": True, "port": admin},
                        dicomweb={"enabled": True}).start()
    wait_port(admin)
    ds = synthetic_cr(64, 64, bytes(64 * 64 * 2))
    pydicom.dcmwrite(tmp_path / "cr.dcm", ds, enforce_file_format=True)
    assert storescu(node.port, [tmp_path / "cr.dcm"]).returncode == 0
    study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)

    # What the command prints: the URL, in the JSON and in the text
    url = json.loads(node.cli("results", study, "--json").stdout)["dicomweb_url"]
    assert url == f"{node.dicomweb_url}/studies/{study}"
    assert url in node.cli("results", study).stdout.split()

    # The printed URL works: WADO-RS metadata of the study is the instance sent
    rsp = httpx.get(url + "/metadata", headers={"Accept": "application/dicom+json"}, timeout=30)
    assert rsp.status_code == 200, rsp.text
    assert [item[SOP_INSTANCE_UID]["Value"] for item in rsp.json()] == [[sop]]

    # The console: the study page and the dashboard's recent studies link there, the API carries it
    console = f"http://127.0.0.1:{admin}"
    page = Dom(httpx.get(f"{console}/studies/{study}", timeout=30).text)
    assert page.one("a", id="dicomweb-url").attrs["href"] == url
    dashboard = Dom(httpx.get(console + "/", timeout=30).text)
    [card] = [s for s in dashboard.find("div", class_="study") if s.attrs["data-study-uid"] == study]
    assert [a.attrs["href"] for a in card.find("a", class_="dicomweb")] == [url]
    assert httpx.get(f"{console}/api/studies/{study}", timeout=30).json()["dicomweb_url"] == url
