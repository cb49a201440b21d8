"""The twin commands on a database built by the store: the JSON contract, the record, maintenance."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from twin_support import event, make_ds, run_twin_cli, times, write_jsonl

from twin.db import thread_local_connect
from twin.store import TwinStore


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A config file whose storage.dir holds a node.db with two devices, one with faults (the
    commands judge health as of the real now, so the data is recent)."""
    now = datetime.now(UTC) - timedelta(minutes=5)
    storage = tmp_path / "var"
    storage.mkdir()
    (tmp_path / "config.yaml").write_text("storage:\n  dir: ./var\n")
    store = TwinStore(thread_local_connect(storage / "node.db"))
    for i, t in enumerate(times(5, now)):
        store.record_instance(make_ds(f"1.{i}", t, serial="SN-A", station="XR01"), received_at=t)
    store.record_instance(make_ds("2.0", now, serial="SN-B", station="XR02", software="VB20"), received_at=now)
    faults = [event(now - timedelta(minutes=i), "fault", serial="SN-A", code="E-DET-310") for i in range(12)]
    write_jsonl(tmp_path / "side" / "a.jsonl", faults)
    store.ingest_sidecar(tmp_path / "side", settle_s=0)
    return tmp_path




def test_devices_json_contract(site: Path) -> None:
    code, out, _ = run_twin_cli("devices", "--json", "--config", str(site / "config.yaml"))
    assert code == 0
    devices = json.loads(out)
    assert isinstance(devices, list) and len(devices) == 2
    for d in devices:
        assert {
            "id",
            "serial",
            "station",
            "manufacturer",
            "model",
            "acquisitions",
            "faults",
            "health",
        } <= set(d)
        assert d["health"]["status"] in ("OK", "WARN", "ALERT")
        assert all(isinstance(r, str) for r in d["health"]["reasons"])
    a = next(d for d in devices if d["serial"] == "SN-A")
    assert (a["acquisitions"], a["faults"], a["station"], a["model"]) == (5, 12, "XR01", "DR-9000")
    assert a["health"]["status"] == "ALERT" and any("E-DET-310" in r for r in a["health"]["reasons"])


def test_devices_table_and_device_record(site: Path) -> None:
    cfg = str(site / "config.yaml")
    code, out, _ = run_twin_cli("devices", "--config", cfg)
    assert code == 0 and "SN-A" in out and "ALERT" in out
    code, out, _ = run_twin_cli("device", "SN-B", "--json", "--config", cfg)
    rec = json.loads(out)
    assert code == 0 and rec["serial"] == "SN-B" and rec["configuration"]["software_versions"] == "VB20"
    for key in ("configuration_history", "usage_per_day", "fault_events", "maintenance", "health"):
        assert key in rec
    code, out, _ = run_twin_cli("device", "XR01", "--config", cfg)
    assert code == 0 and "configuration history" in out and "E-DET-310" in out


def test_maintenance_add(site: Path) -> None:
    cfg = str(site / "config.yaml")
    code, out, _ = run_twin_cli(
        "maintenance",
        "add",
        "SN-A",
        "--kind",
        "corrective",
        "--note",
        "replaced cable",
        "--at",
        datetime.now(UTC).isoformat(),
        "--config",
        cfg,
    )
    assert code == 0 and "recorded maintenance" in out
    rec = json.loads(run_twin_cli("device", "SN-A", "--json", "--config", cfg)[1])
    assert [(m["kind"], m["note"], m["source"]) for m in rec["maintenance"]] == [
        ("corrective", "replaced cable", "admin")
    ]
    code, _, err = run_twin_cli("maintenance", "add", "SN-A", "--kind", "polish", "--note", "x", "--config", cfg)
    assert code == 2 and "--kind: one of" in err
    code, _, err = run_twin_cli("maintenance", "add", "SN-A", "--kind", "qc", "--note", "x", "--at", "soon",
                                "--config", cfg)
    assert code == 2 and "--at" in err
    code, _, err = run_twin_cli("device", "NOPE", "--config", cfg)
    assert code == 1 and "no device 'NOPE'" in err


def test_reads_while_the_node_holds_the_write_lock(site: Path) -> None:
    """The commands must work while the node serves: a writer mid-transaction does not block them."""
    writer = sqlite3.connect(site / "var" / "node.db")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO twin_quarantine (file, line_no, reason) VALUES ('x', 1, 'held')")
    try:
        code, out, _ = run_twin_cli("devices", "--json", "--config", str(site / "config.yaml"))
        assert code == 0 and len(json.loads(out)) == 2
    finally:
        writer.rollback()
        writer.close()


def test_missing_database_and_bad_config(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("storage:\n  dir: ./nowhere\n")
    code, _, err = run_twin_cli("devices", "--config", str(tmp_path / "config.yaml"))
    assert code == 1 and "no database at" in err
    (tmp_path / "bad.yaml").write_text("twin:\n  sidecar_poll_s: -1\n")
    code, _, err = run_twin_cli("devices", "--config", str(tmp_path / "bad.yaml"))
    assert code == 2 and "twin.sidecar_poll_s" in err
