"""End to end, for real: DCMTK storescu → dicom-node (Cascade R-CNN) → Orthanc, checked through its REST API."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import highdicom as hd
import pydicom
import pytest

from dicom_node.testing import NodeProcess, OrthancProcess, free_port, require, storescu, tool

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
    [inst] = shown["instances"]
    assert inst["outcome"] == "analysed"
    assert {r["kind"] for r in inst["results"]} == {"sr", "gsps", "sc"}
    assert all(d["state"] == "delivered" and d["destination"] == "pacs"
               for r in inst["results"] for d in r["deliveries"])


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
