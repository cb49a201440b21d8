"""Issue 13's checkpoint: three ``dicom-node serve`` processes on one PostgreSQL database and one shared
storage folder, HAProxy in front (docs/cluster.md's configuration), Orthanc as the PACS. DCMTK storescu
sends the RSNA sample through HAProxy; the node running an analysis is SIGKILLed; nothing acknowledged
is lost, the survivors finish the dead node's jobs, every result reaches Orthanc exactly once, and the
twin counts each acquisition and each sidecar line once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cluster_support import BEHIND_HAPROXY, HaproxyFactory

from dicom_node.store import Store
from dicom_node.testing import NodeProcess, OrthancProcess, PostgresProcess, wait_for

pytestmark = pytest.mark.engines("postgresql")  # the nodes share a database of their own on the test server


def _store(url: str) -> Store:
    return Store(url, readonly=True)


def _one(url: str, sql: str, params: tuple[Any, ...] = ()) -> Any:
    st = _store(url)
    try:
        return st.conn().execute(sql, params).fetchone()[0]
    finally:
        st.close()


def _row(url: str, sql: str) -> tuple[Any, ...] | None:
    st = _store(url)
    try:
        row = st.conn().execute(sql).fetchone()
        return tuple(row) if row is not None else None
    finally:
        st.close()


def _send(port: int, files: list[Path], log: Path) -> subprocess.Popen[bytes]:
    """storescu through HAProxy, one association for ``files``, every response in its log (-v)."""
    return subprocess.Popen(["storescu", "-v", "-xy", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1",
                             str(port), *map(str, files)], stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _acknowledged(logs: list[Path]) -> int:
    """How many C-STOREs storescu got Success for (its -v lines), over all its runs."""
    return sum(p.read_text(errors="replace").count("Received Store Response (Success)") for p in logs)


def test_three_nodes_behind_haproxy_survive_a_sigkill_with_nothing_lost_and_each_result_once(
    node_factory: type[NodeProcess], postgres: PostgresProcess, orthanc: OrthancProcess,
    haproxy_factory: HaproxyFactory, dcmtk: None, rsna: list[Path], tmp_path: Path,
) -> None:
    url = postgres.create_database("three_nodes")
    shared = tmp_path / "shared"
    sidecar = tmp_path / "sidecar"
    sidecar.mkdir()
    nodes = [
        node_factory(f"n{i}", storage={"dir": str(shared), "database": url}, node=BEHIND_HAPROXY,
                     logging={"dir": str(tmp_path / f"n{i}" / "logs")},
                     destinations=[orthanc.destination()],
                     worker={"lease_s": 6, "batch_size": 1},
                     twin={"sidecar_dir": str(sidecar), "sidecar_poll_s": 0.5, "evaluate_every_s": 2.0})
        for i in range(3)
    ]
    for node in nodes:
        node.start()
    lb = haproxy_factory([(f"n{i}", n.port) for i, n in enumerate(nodes)])
    # A modality's sidecar log, read by whichever node runs the schedules
    lines = [{"time": datetime.now(UTC).isoformat(), "device": {"serial": "SN-CLUSTER"}, "kind": "telemetry",
              "values": {"detector_temperature": 31.0 + i / 10}} for i in range(6)]
    (sidecar / "dr.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    logs = [tmp_path / f"storescu{i}.log" for i in range(3)]
    sends = [_send(lb.port, rsna[i::3], logs[i]) for i in range(3)]  # three associations at once
    # Kill the node that runs an analysis (it holds its lease), while the others still receive
    running = "SELECT id, worker FROM jobs WHERE kind = 'analyse' AND state = 'running' ORDER BY id LIMIT 1"
    wait_for("an analysis running on some node", lambda: _row(url, running) is not None, 180, 0.05)
    job_id, worker = _row(url, running)
    victim = next(n for n in nodes if n.proc is not None and n.proc.pid == int(worker.split(":")[1]))
    assert victim.proc is not None
    victim_pid = victim.proc.pid
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    victim.proc.wait()
    victim.proc = None
    # The dead node's job runs on another node once its lease (worker.lease_s, no longer renewed) is out
    holder = "SELECT worker FROM jobs WHERE id = ?"
    wait_for("the dead node's analysis taken by a survivor",
             lambda: not str(_one(url, holder, (job_id,)) or worker).startswith(f"analyse:{victim_pid}:"), 120, 0.1)
    recovered_s = time.monotonic() - killed_at
    for s in sends:
        s.wait(300)
    # A modality resends what it got no Success for; resending everything is the blunt way (a stored
    # instance sent again is answered Success and kept once).
    first_acks = _acknowledged(logs)
    resend = tmp_path / "resend.log"
    again = _send(lb.port, rsna, resend)
    assert again.wait(300) == 0, resend.read_text()[-2000:]
    assert _acknowledged([resend]) == len(rsna)

    survivors = [n for n in nodes if n is not victim]
    wait_for("every analysis done", lambda: _one(url, "SELECT count(*) FROM jobs WHERE kind = 'analyse'"
                                                 " AND state = 'done'") == len(rsna), 600, 0.5)
    wait_for("every result delivered", lambda: _one(url, "SELECT count(*) FROM deliveries WHERE"
                                                    " state = 'delivered'") == 3 * len(rsna), 600, 0.5)

    # Nothing acknowledged lost: every radiograph stored once, its bytes as sent
    st = _store(url)
    try:
        stored = {r["sop_instance_uid"]: r["path"] for r in st.conn().execute(
            "SELECT sop_instance_uid, path FROM instances")}
        results = {r[0] for r in st.conn().execute("SELECT sop_instance_uid FROM results")}
        nodes_seen = {r["pid"]: r["state"] for r in st.nodes()}
    finally:
        st.close()
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in rsna}
    assert set(stored) == set(sent) and first_acks <= len(rsna)
    for uid, path in stored.items():
        assert pydicom.dcmread(path).PixelData == pydicom.dcmread(sent[uid]).PixelData
    # Each result exactly once in Orthanc
    in_orthanc = [orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances")]
    assert len(in_orthanc) == len(results) == 3 * len(rsna) and set(in_orthanc) == results
    # The twin: each acquisition and each sidecar line once, whichever node read them
    twin = json.loads(survivors[0].cli("devices", "--json").stdout)
    assert sum(d["acquisitions"] for d in twin) == len(rsna)
    wait_for("the sidecar lines read once", lambda: _one(
        url, "SELECT count(*) FROM twin_events WHERE kind = 'telemetry'") == len(lines), 60, 0.5)
    time.sleep(2.0)  # another round of intake on whichever node leads reads nothing again
    assert _one(url, "SELECT count(*) FROM twin_events WHERE kind = 'telemetry'") == len(lines)
    assert nodes_seen[victim_pid] in ("alive", "gone") and sum(s == "alive" for s in nodes_seen.values()) >= 2
    print(f"\nkilled node {victim_pid}: its analysis ran elsewhere {recovered_s:.1f} s after the kill;"
          f" acknowledged before the kill and resend {first_acks} of {len(rsna)}")
    for node in survivors:
        assert node.stop() == 0
