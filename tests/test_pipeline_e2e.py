"""End to end, for real: DCMTK storescu → dicom-node (Cascade R-CNN) → Orthanc, checked through its REST API."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.testing import NodeProcess, OrthancProcess, free_port, require, storescu, tool, wait_for

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"   # Comprehensive 3D SR
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"  # Grayscale Softcopy Presentation State
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"       # Secondary Capture


def _wait_delivered(node: NodeProcess, expected: int, timeout_s: float = 600.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    st: dict[str, object] = {}
    while time.monotonic() < deadline:
        st = node.status()
        deliver = st["jobs_by_kind"].get("deliver", {})  # type: ignore[union-attr]
        if deliver.get("done", 0) >= expected:
            return st
        time.sleep(0.5)
    raise TimeoutError(f"deliveries not done: {st.get('jobs_by_kind')}")


def _references(ds: pydicom.Dataset) -> set[str]:
    """Every Referenced SOP Instance UID anywhere in the object."""
    refs = set()
    for elem in ds.iterall():
        if elem.keyword == "ReferencedSOPInstanceUID":
            refs.add(str(elem.value))
    return refs


def _dciodvfy_errors(path: Path) -> list[str]:
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]


def test_rsna_sample_results_arrive_in_orthanc_valid_and_referencing(
        node_factory: type[NodeProcess], orthanc: OrthancProcess, dcmtk: None, dciodvfy: str,
        rsna: list[Path], tmp_path: Path) -> None:
    node = node_factory(destinations=[orthanc.destination()], worker={"batch_size": 4}).start()
    t0 = time.monotonic()
    assert storescu(node.port, rsna).returncode == 0
    _wait_delivered(node, expected=27)
    elapsed = time.monotonic() - t0
    print(f"\nsend-to-results for 9 radiographs: {elapsed:.1f} s ({elapsed / 9:.2f} s per radiograph)")

    srs: dict[str, Path] = {}
    for src_file in rsna:
        src = pydicom.dcmread(src_file, stop_before_pixels=True)
        studies = json.loads(_post(orthanc, "/tools/lookup", str(src.StudyInstanceUID)))
        assert studies and studies[0]["Type"] == "Study", f"study of {src_file.name} missing in Orthanc"
        instances = orthanc.get(f"/studies/{studies[0]['ID']}/instances")
        classes = {}
        for inst in instances:
            raw = orthanc.get(f"/instances/{inst['ID']}/file")
            path = tmp_path / f"{inst['ID']}.dcm"
            path.write_bytes(raw)
            ds = pydicom.dcmread(path)
            classes[str(ds.SOPClassUID)] = ds
            if str(ds.SOPClassUID) == SR_CLASS:
                srs[str(src.SOPInstanceUID)] = path
            assert str(src.SOPInstanceUID) in _references(ds), f"{ds.Modality} does not reference its source"
            assert ds.StudyInstanceUID == src.StudyInstanceUID
            assert _dciodvfy_errors(path) == [], f"dciodvfy errors in {ds.Modality} for {src_file.name}"
        assert set(classes) == {SR_CLASS, GSPS_CLASS, SC_CLASS}

    # What the command shows for each study: the image-level probability beside the findings, and the
    # same probability in the SR that Orthanc holds (TID 1501 group on the whole image).
    found = 0
    for src_file in rsna:
        src = pydicom.dcmread(src_file, stop_before_pixels=True)
        [inst] = json.loads(node.cli("results", str(src.StudyInstanceUID), "--json").stdout)["instances"]
        probability = inst["opacity_probability"]
        assert 0.0 <= probability <= 1.0 and all(f["score"] <= probability for f in inst["findings"])
        found += len(inst["findings"])
        [group] = hd.sr.srread(srs[str(src.SOPInstanceUID)]).content.get_image_measurement_groups()
        [measured] = group.get_measurements()
        assert measured.value == pytest.approx(probability, abs=1e-6)
        assert f"opacity probability (image) {probability:.2f}" in node.cli("results", str(src.StudyInstanceUID)).stdout
    assert found > 0, "the shipped model found no opacity in the nine RSNA radiographs"

    # What the command shows for one study.
    study = str(pydicom.dcmread(rsna[0], stop_before_pixels=True).StudyInstanceUID)
    shown = json.loads(node.cli("results", study, "--json").stdout)
    assert shown["dicomweb_url"] is None  # the DICOMweb listener is off: no link (on: tests/admin)
    [inst] = shown["instances"]
    assert inst["outcome"] == "analysed"
    assert {r["kind"] for r in inst["results"]} == {"sr", "gsps", "sc"}
    assert all(d["state"] == "delivered" and d["destination"] == "pacs"
               for r in inst["results"] for d in r["deliveries"])


def _unlabelled_dx(src: Path, dest: Path, study_uid: str, **changes: str) -> Path:
    """A real RSNA radiograph as de-identified, converted chest films arrive (issue 11): a Secondary
    Capture with Modality DX that names neither body part nor view; ``changes`` label it again."""
    ds = pydicom.dcmread(src)
    ds.Modality = "DX"
    del ds.BodyPartExamined, ds.ViewPosition
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def test_unlabelled_dx_is_analysed_as_a_frontal_chest_and_says_so(
        node_factory: type[NodeProcess], orthanc: OrthancProcess, dcmtk: None, dciodvfy: str,
        rsna: list[Path], tmp_path: Path) -> None:
    study = str(generate_uid())
    unlabelled = _unlabelled_dx(rsna[0], tmp_path / "unlabelled.dcm", study)
    lateral = _unlabelled_dx(rsna[0], tmp_path / "lateral.dcm", study, ViewPosition="LL")
    admin = free_port()
    node = node_factory(destinations=[orthanc.destination()], admin={"enabled": True, "port": admin}).start()
    assert storescu(node.port, [unlabelled, lateral]).returncode == 0
    node.wait_jobs_settled(2, timeout_s=600)
    _wait_delivered(node, expected=3)
    assumed = ["chest assumed, not read: Body Part Examined is empty",
               "frontal view assumed, not read: View Position is empty"]

    # What the command shows: the unlabelled film analysed with both assumptions, the lateral skipped.
    shown = {i["sop_instance_uid"]: i for i in json.loads(node.cli("results", study, "--json").stdout)["instances"]}
    analysed = shown[str(pydicom.dcmread(unlabelled, stop_before_pixels=True).SOPInstanceUID)]
    skipped = shown[str(pydicom.dcmread(lateral, stop_before_pixels=True).SOPInstanceUID)]
    assert analysed["outcome"] == "analysed" and analysed["assumptions"] == assumed
    assert {r["kind"] for r in analysed["results"]} == {"sr", "gsps", "sc"}
    assert (skipped["outcome"], skipped["reason"], skipped["assumptions"]) == \
        ("skipped", "view LL is not analysed (routing.views)", [])
    text = " ".join(node.cli("results", study).stdout.split())  # as read, whatever the terminal width
    assert all(sentence in text for sentence in assumed), text
    assert "skipped (view LL is not analysed (routing.views))" in text
    # ... and the admin console's study page and API
    page = _get(f"http://127.0.0.1:{admin}/studies/{study}")
    assert all(sentence in page for sentence in assumed), page
    api = json.loads(_get(f"http://127.0.0.1:{admin}/api/studies/{study}"))
    assert sorted(len(i["assumptions"]) for i in api["instances"]) == [0, 2]

    # The SR in the PACS states them in the source's Image Library entry, and dciodvfy accepts it.
    [sr_uid] = [r["sop_instance_uid"] for r in analysed["results"] if r["kind"] == "sr"]
    [found] = json.loads(_post(orthanc, "/tools/lookup", sr_uid))
    path = tmp_path / "sr.dcm"
    path.write_bytes(orthanc.get(f"/instances/{found['ID']}/file"))
    sr = pydicom.dcmread(path)
    library = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Image Library")
    [image] = library.ContentSequence[0].ContentSequence
    assert [str(i.TextValue) for i in image.ContentSequence
            if i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"] == assumed
    assert _dciodvfy_errors(path) == []


def _get(url: str) -> str:
    import urllib.request

    def answer() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=10) as rsp:
                return str(rsp.read().decode())
        except OSError:
            return None  # the admin console is still starting
    return wait_for(url, answer, timeout_s=60)


def _post(orthanc: OrthancProcess, path: str, body: str) -> str:
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{orthanc.http_port}{path}", data=body.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=30) as rsp:
        return rsp.read().decode()


def test_killed_node_delivers_each_result_exactly_once(
        node_factory: type[NodeProcess], orthanc: OrthancProcess, dcmtk: None, rsna: list[Path]) -> None:
    files = rsna[:4]
    node = node_factory("n", destinations=[orthanc.destination()], worker={"lease_s": 5, "batch_size": 1}).start()
    assert storescu(node.port, files).returncode == 0
    # Kill it while it analyses and delivers, then restart; twice.
    for delay in (6.0, 3.0):
        time.sleep(delay)
        node.kill()
        node.start()
    _wait_delivered(node, expected=len(files) * 3)
    st = node.status()
    assert st["instances"] == len(files)
    assert st["jobs_by_kind"]["analyse"]["done"] == len(files)
    # Orthanc holds exactly three objects per radiograph: nothing was rebuilt under a new UID.
    assert len(orthanc.get("/instances")) == len(files) * 3
    # Delivered once: each (result, destination) delivery ended once, delivered.
    store_rows = json.loads(node.cli("deliveries", "--json").stdout)["by_state"]
    assert store_rows == [{"destination": "pacs", "state": "delivered", "n": len(files) * 3}]


def test_unreachable_destination_parks_then_retry_delivers(
        node_factory: type[NodeProcess], dcmtk: None, rsna: list[Path], tmp_path: Path) -> None:
    pacs = OrthancProcess(tmp_path / "late-pacs")
    require(tool("Orthanc") is not None, "Orthanc")
    pacs.dicom_port, pacs.http_port = free_port(), free_port()
    node = node_factory(destinations=[pacs.destination()],
                        delivery={"max_attempts": 2, "backoff_s": 0.2}).start()
    assert storescu(node.port, rsna[:1]).returncode == 0
    deadline = time.monotonic() + 300
    while node.status()["jobs_by_kind"].get("deliver", {}).get("failed", 0) < 3:
        assert time.monotonic() < deadline, node.status()
        time.sleep(0.5)
    parked = json.loads(node.cli("deliveries", "--json").stdout)["parked"]
    assert len(parked) == 3 and all("association" in p["error"] for p in parked)
    pacs.start()
    try:
        out = node.cli("deliveries", "--retry")
        assert "3 parked deliveries queued again" in out.stdout
        _wait_delivered(node, expected=3)
        assert len(pacs.get("/instances")) == 3
    finally:
        pacs.stop()
    # The audit trail keeps every attempt: refused twice (retry, then parked), then delivered.
    audit = [json.loads(line) for line in node.cli("logs", "--audit", "--json", "--lines", "0").stdout.splitlines()]
    attempts: dict[str, list[str]] = {}
    for row in audit:
        if row["event"] == "delivery":
            assert row["peer_ae"] == pacs.destination()["ae_title"] and row["destination"] == "pacs", row
            attempts.setdefault(row["result_uid"], []).append(row["outcome"])
    assert sorted(attempts.values()) == [["retrying", "failed", "delivered"]] * 3, attempts
    assert {row["kind"] for row in audit if row["event"] == "delivery"} == {"sr", "gsps", "sc"}
    shown = node.cli("logs", "--audit", "--lines", "0").stdout
    assert shown.count("delivery") == 9 and "attempt 2" in shown
