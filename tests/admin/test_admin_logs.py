"""``dicom-node logs``: the JSON log (rotated files too) and the audit trail, for people and scripts."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from admin_support import FedNode
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.cli.logs import parse_since
from dicom_node.store import Store

runner = CliRunner()


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"storage": {"dir": str(tmp_path / "var")}, "admin": {"enabled": False}}))
    return path


def _record(minutes_ago: float, message: str, **extra: object) -> str:
    t = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return json.dumps({"time": t.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "level": "INFO", "logger": "dicom_node.test",
                       "message": message, **extra}) + "\n"


def test_rotated_files_are_read_oldest_first_and_filtered(tmp_path: Path) -> None:
    config = _config(tmp_path)
    logs = tmp_path / "var" / "logs"
    logs.mkdir(parents=True)
    (logs / "node.jsonl.2").write_text(_record(300, "oldest"))
    (logs / "node.jsonl.1").write_text(_record(120, "older") + "{cut off mid-li")
    (logs / "node.jsonl").write_text(_record(30, "recent", calling_ae="MODALITY1")
                                     + _record(1, "newest \x1b[31mred\x1b[0m"))
    res = runner.invoke(app, ["logs", "--config", str(config)])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split(": ", 1)[1].split("  ")[0] for ln in lines] == ["oldest", "older", "recent", "newest red"]
    assert "\x1b" not in res.output and "calling_ae=MODALITY1" in lines[2]

    res = runner.invoke(app, ["logs", "--config", str(config), "--since", "1h", "--json"])
    assert [json.loads(ln)["message"] for ln in res.output.splitlines()] == ["recent", "newest \x1b[31mred\x1b[0m"]
    res = runner.invoke(app, ["logs", "--config", str(config), "-n", "1"])
    assert "newest" in res.output and "recent" not in res.output
    res = runner.invoke(app, ["logs", "--config", str(config), "--since", "yesterday"])
    assert res.exit_code == 2 and "--since" in res.output


def test_audit_trail_of_associations(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = Store(tmp_path / "var" / "node.db")
    store.audit("association", peer_ae="MODALITY1", peer_host="10.0.0.7", outcome="released",
                detail={"instances": 3, "bytes": 3 * 2**20, "seconds": 1.5})
    store.audit("association", peer_ae="INTRUDER", peer_host="10.0.0.9", outcome="rejected",
                detail={"called_ae": "DICOM_NODE", "reason": "calling AE title not recognised"})
    store.close()
    res = runner.invoke(app, ["logs", "--config", str(config), "--audit"])
    assert res.exit_code == 0, res.output
    first, second = res.output.splitlines()
    assert "MODALITY1@10.0.0.7" in first and "released" in first and "3 images, 3.0 MiB, 1.5 s" in first
    assert "INTRUDER@10.0.0.9" in second and "rejected" in second and "not recognised" in second
    rows = [json.loads(ln) for ln in runner.invoke(app, ["logs", "--config", str(config), "--audit",
                                                         "--json"]).output.splitlines()]
    assert [(r["peer_ae"], r["outcome"]) for r in rows] == [("MODALITY1", "released"), ("INTRUDER", "rejected")]
    assert rows[0]["instances"] == 3


def test_since_takes_ages_and_iso_times() -> None:
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2025-02-28T10:00:00+00:00", now) == datetime(2025, 2, 28, 10, tzinfo=UTC)
    assert parse_since("2025-02-28T10:00Z", now) == datetime(2025, 2, 28, 10, tzinfo=UTC)


def test_logs_of_a_running_node(fed_node: FedNode) -> None:
    node = fed_node.node
    audit = [json.loads(ln) for ln in node.cli("logs", "--audit", "--json", "-n", "0").stdout.splitlines()]
    by_ae = {r["peer_ae"]: r for r in audit if r["event"] == "association"}
    assert by_ae["MODALITY1"]["outcome"] == "released" and by_ae["MODALITY1"]["instances"] == 9
    assert by_ae["SIMULATOR"]["instances"] == fed_node.fleet["sent"]
    text = node.cli("logs", "--since", "1h", "-n", "0").stdout
    assert "node serving" in text and "admin console serving" in text

    device = fed_node.json(f"/api/devices/{fed_node.drifting_serial}")
    mine = [json.loads(ln) for ln in node.cli("logs", "--device", fed_node.drifting_serial, "--json", "-n", "0")
            .stdout.splitlines()]
    uids = {r["sop_instance_uid"] for r in mine if r.get("sop_instance_uid")}
    assert len(uids) == device["acquisitions"]  # each of its images was logged once as stored
    everything = [json.loads(ln) for ln in node.cli("logs", "--json", "-n", "0").stdout.splitlines()]
    assert len({r["sop_instance_uid"] for r in everything if r.get("sop_instance_uid")}) > len(uids)


def test_follow_prints_new_lines_as_they_come(fed_node: FedNode) -> None:
    node = fed_node.node
    cmd = [sys.executable, "-m", "dicom_node.cli", "logs", "--follow", "-n", "0", "--config", str(node.config_path)]
    procs = [subprocess.Popen(cmd + extra, stdout=subprocess.PIPE, text=True, env=dict(os.environ, COLUMNS="200"))
             for extra in ([], ["--audit"])]
    lines: queue.Queue[tuple[int, str]] = queue.Queue()
    for i, p in enumerate(procs):
        threading.Thread(target=lambda i=i, p=p: [lines.put((i, ln)) for ln in p.stdout], daemon=True).start()
    try:
        time.sleep(3)  # both have read what is there and wait for more
        subprocess.run(["echoscu", "-aet", "FOLLOWME", "-aec", "NOT_THIS_NODE", "127.0.0.1", str(node.port)],
                       capture_output=True, timeout=30)
        seen: dict[int, str] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            try:
                i, line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if "FOLLOWME" in line:
                seen[i] = line
        assert "association rejected" in seen.get(0, ""), seen
        assert "rejected" in seen.get(1, "") and "FOLLOWME@127.0.0.1" in seen[1], seen
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
