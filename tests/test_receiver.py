"""The receiver against real DCMTK clients and real pynetdicom associations: what a sender sees."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, build_context
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import RTPlanStorage  # type: ignore[attr-defined]

from dicom_node.testing import NodeProcess, free_port, storescu

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
REAL_CRS = sorted((PYDICOM_FILES / "dicomdirtests" / "77654033").glob("CR*/*"))


def _spooled(node: NodeProcess) -> list[Path]:
    return sorted(p for p in (node.storage / "spool").rglob("*") if p.is_file())


def _fresh_copy(src: Path, dst: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst, enforce_file_format=True)
    return dst


def test_echoscu_is_answered(node: NodeProcess) -> None:
    res = subprocess.run(["echoscu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr


def test_storescu_sends_the_rsna_sample_and_every_job_finishes(node: NodeProcess, rsna: list[Path]) -> None:
    res = storescu(node.port, rsna)
    assert res.returncode == 0, res.stderr
    st = node.wait_jobs_settled(9)
    assert st["instances"] == 9
    assert st["jobs"]["failed"] == 0
    files = [p for p in _spooled(node) if p.suffix == ".dcm"]
    assert len(files) == 9
    # Stored as sent: still JPEG Baseline, the very fragments the modality sent, decodable; the
    # sender's AE title is on the instance's row.
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    sent = {str(s.SOPInstanceUID): s for s in map(pydicom.dcmread, rsna)}
    assert ds.PixelData == sent[str(ds.SOPInstanceUID)].PixelData
    assert ds.pixel_array.shape == (1024, 1024)
    callers = {r[0] for r in node.rows("SELECT calling_ae FROM instances")}
    assert callers == {"MODALITY1"}
    # No patient data in the log: the RSNA patient IDs are the file names.
    log = node.log_text() + (node.log_dir / "node.jsonl").read_text()
    for f in rsna:
        assert f.stem not in log
        assert str(pydicom.dcmread(f, stop_before_pixels=True).PatientName) not in log


def test_storescu_sends_pydicom_real_cr_files(node: NodeProcess) -> None:
    assert len(REAL_CRS) >= 3
    res = storescu(node.port, REAL_CRS, extra=["-xs"])
    assert res.returncode == 0, res.stderr
    assert node.status()["instances"] == len(REAL_CRS)


def test_unknown_calling_ae_is_rejected(node_factory: type[NodeProcess], dcmtk: None, rsna: list[Path]) -> None:
    node = node_factory(peers={"allow_any": False, "allowed": [{"ae_title": "MODALITY1"}]}).start()
    res = storescu(node.port, rsna[:1], aet="STRANGER")
    assert res.returncode != 0
    assert "Calling AE Title Not Recognized" in res.stderr or "Rejected" in res.stderr, res.stderr
    assert storescu(node.port, rsna[:1], aet="MODALITY1").returncode == 0
    assert node.status()["instances"] == 1


def test_host_rule_limits_wildcard_title(node_factory: type[NodeProcess], dcmtk: None, rsna: list[Path]) -> None:
    node = node_factory(peers={"allowed": [{"ae_title": "*", "host": "127.0.0.2"}]}).start()
    res = storescu(node.port, rsna[:1], aet="ANYONE")
    assert res.returncode != 0 and "Rejected" in res.stderr, res.stderr


def test_wrong_called_ae_is_rejected(node: NodeProcess) -> None:
    res = subprocess.run(["echoscu", "-aet", "MODALITY1", "-aec", "SOMEONE_ELSE", "127.0.0.1", str(node.port)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0
    assert "Called AE Title Not Recognized" in res.stderr, res.stderr


def test_rt_plan_is_refused_at_negotiation(node: NodeProcess) -> None:
    res = storescu(node.port, [PYDICOM_FILES / "rtplan.dcm"])
    assert res.returncode != 0
    assert "No presentation context" in res.stderr or "no acceptable presentation context" in res.stderr.lower()
    # And through pynetdicom: the context is rejected (abstract syntax not supported).
    ae = AE(ae_title="MODALITY1")
    ae.requested_contexts = [build_context(RTPlanStorage), build_context("1.2.840.10008.5.1.4.1.1.1")]
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    try:
        assert assoc.is_established
        assert [str(c.abstract_syntax) for c in assoc.accepted_contexts] == ["1.2.840.10008.5.1.4.1.1.1"]
        assert [str(c.abstract_syntax) for c in assoc.rejected_contexts] == [str(RTPlanStorage)]
    finally:
        assoc.release()
    assert node.status()["instances"] == 0


def test_compressed_and_deflated_syntaxes_are_negotiated(node: NodeProcess) -> None:
    wanted = {
        "1.2.840.10008.1.2.1.99": "deflated", "1.2.840.10008.1.2.4.50": "JPEG baseline",
        "1.2.840.10008.1.2.4.51": "JPEG extended", "1.2.840.10008.1.2.4.70": "JPEG lossless",
        "1.2.840.10008.1.2.4.80": "JPEG-LS", "1.2.840.10008.1.2.4.90": "JPEG 2000",
        "1.2.840.10008.1.2.5": "RLE", "1.2.840.10008.1.2": "implicit", "1.2.840.10008.1.2.1": "explicit",
    }
    ae = AE(ae_title="MODALITY1")
    for ts in wanted:
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1", [ts])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    try:
        accepted = {str(c.transfer_syntax[0]) for c in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted == set(wanted)


def test_truncated_file_gets_a_failure_and_leaves_no_file(node: NodeProcess, rsna: list[Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as-is
    raw = rsna[0].read_bytes()
    cut = tmp_path / "truncated.dcm"
    cut.write_bytes(raw[: len(raw) // 2])
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.7", ["1.2.840.10008.1.2.4.50"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(cut)
        assert rsp.Status in (0xA900, 0xC210), hex(rsp.Status)
        ok = assoc.send_c_store(rsna[1])  # and the association keeps working
        assert ok.Status == 0
    finally:
        assoc.release()
    assert node.status()["instances"] == 1
    assert len([p for p in _spooled(node)]) == 1
    assert "C-STORE refused" in node.log_text()


def test_declared_size_beyond_data_is_refused(node: NodeProcess) -> None:
    ds = pydicom.dcmread(REAL_CRS[0])
    ds.Rows = ds.Columns = 60000
    ds.SOPInstanceUID = generate_uid()
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    try:
        assert assoc.send_c_store(ds).Status == 0xA900
    finally:
        assoc.release()
    assert node.status()["instances"] == 0


def test_duplicate_is_stored_once_and_acknowledged(node: NodeProcess, rsna: list[Path]) -> None:
    assert storescu(node.port, rsna[:2]).returncode == 0
    again = storescu(node.port, rsna[:2])
    assert again.returncode == 0, again.stderr
    assert node.status()["instances"] == 2
    assert len(_spooled(node)) == 2
    assert "duplicate instance kept once" in node.log_text()


def test_disk_floor_refuses_with_out_of_resources(node_factory: type[NodeProcess], dcmtk: None,
                                                   rsna: list[Path]) -> None:
    free_mb = shutil.disk_usage("/tmp").free // 2**20
    node = node_factory(storage={"min_free_mb": free_mb + 10_000}).start()
    res = storescu(node.port, rsna[:1], extra=["-v"])
    out = res.stdout + res.stderr
    assert "Refused: OutOfResources" in out, out
    assert node.status()["instances"] == 0
    assert "free disk under the floor" in node.log_text()


def test_restart_keeps_the_queue(node_factory: type[NodeProcess], dcmtk: None, rsna: list[Path]) -> None:
    receive_only = node_factory("a", worker={"threads": 0}).start()
    assert storescu(receive_only.port, rsna[:3]).returncode == 0
    assert receive_only.status()["jobs"]["queued"] == 3
    assert receive_only.stop() == 0
    again = node_factory("a", worker={"threads": 1})
    st = again.start().wait_jobs_settled(3)
    assert st["instances"] == 3 and st["jobs"]["done"] == 3


def test_sigterm_stops_gracefully(node: NodeProcess, rsna: list[Path]) -> None:
    assert storescu(node.port, rsna[:1]).returncode == 0
    assert node.stop() == 0
    assert "node stopped" in node.log_text()


def test_dicom_node_send_and_echo_commands(node: NodeProcess, rsna: list[Path], tmp_path: Path) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    for f in rsna[:3]:
        shutil.copy(f, folder / f.name)
    (folder / "notes.txt").write_text("not DICOM")
    out = node.cli("send", f"DICOM_NODE@127.0.0.1:{node.port}", str(folder), "--aet", "MODALITY1", "--json")
    report = json.loads(out.stdout)
    assert report["sent"] == 3 and report["failed"] == []
    assert [s["file"].endswith("notes.txt") for s in report["skipped"]] == [True]
    assert node.status()["instances"] == 3
    ok = node.cli("echo", f"DICOM_NODE@127.0.0.1:{node.port}", "--json")
    assert json.loads(ok.stdout)["ok"] is True
    bad = node.cli("echo", f"NOBODY@127.0.0.1:{node.port}", check=False)
    assert bad.returncode == 1 and "rejected" in bad.stderr


@pytest.mark.parametrize("text, key", [
    ("node: {port: 99999}", "node.port"),
    ("node: {prot: 11112}", "node.prot: unknown key; allowed: "),
    ("peers: {allowed: [{ae_title: THIS_TITLE_IS_TOO_LONG}]}", "peers.allowed.0.ae_title"),
    ("admin: {host: 0.0.0.0}", "admin.token"),
    ("storage: [1, 2]", "storage"),
])
def test_bad_config_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "status", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert key in lines[0]


def test_version_flag_prints_the_installed_version() -> None:
    import importlib.metadata

    res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and res.stdout == f"dicom-node {importlib.metadata.version('dicom-node')}\n"


@pytest.mark.parametrize("busy", ["dicom", "admin"])
def test_busy_port_names_the_listener_and_exits(tmp_path: Path, busy: str) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    taken = holder.getsockname()[1]
    dicom_port = taken if busy == "dicom" else free_port()
    admin_port = taken if busy == "admin" else free_port()
    cfg = tmp_path / "node.yaml"
    cfg.write_text(f"node: {{host: 127.0.0.1, port: {dicom_port}}}\nstorage: {{dir: {tmp_path / 'var'}}}\n"
                   f"admin: {{host: 127.0.0.1, port: {admin_port}}}\nworker: {{threads: 0}}\n")
    try:
        res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(cfg)],
                             capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert res.returncode == 2
    error = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert error == [f"error: cannot listen on {'DICOM' if busy == 'dicom' else 'admin'} 127.0.0.1:{taken}: "
                     "Address already in use"], res.stderr


def test_sigterm_lets_an_inflight_association_finish(node: NodeProcess, rsna: list[Path], tmp_path: Path) -> None:
    """Graceful stop: the listener closes, but an association already sending completes, every
    instance it got Success for is stored, and running analysis jobs are released, not lost."""
    files = [_fresh_copy(rsna[i % len(rsna)], tmp_path / f"{i:02d}.dcm") for i in range(40)]
    sender = subprocess.Popen(["storescu", "-xy", "-v", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1",
                               str(node.port), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    assert node.proc is not None
    deadline = time.monotonic() + 60
    while "instance stored" not in node.log_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    node.proc.send_signal(signal.SIGTERM)
    out, _ = sender.communicate(timeout=120)
    assert node.stop() == 0
    acknowledged = out.count("Received Store Response (Success)")
    assert acknowledged == len(files), out[-2000:]
    assert sender.returncode == 0
    # A fresh start on the same storage finds every acknowledged instance and finishes every job.
    restarted = NodeProcess(node.root, port=node.port, database=node.database).start()
    try:
        st = restarted.wait_jobs_settled(len(files), timeout_s=600)
        assert st["instances"] == acknowledged
        assert st["jobs"]["running"] == 0 and st["jobs"]["failed"] == 0
    finally:
        restarted.stop()
