"""Crash safety: SIGKILL the node at seeded random moments while DCMTK storescu sends, while the worker
analyses and while it delivers to Orthanc; restart it each time. Afterwards every instance a sender
got Success for is stored whole, every one is analysed and its three results are in Orthanc exactly
once (no result rebuilt under a new UID), jobs whose lease expired were taken again, and no job is
left running.

Like a real modality, the sender sends again whatever it did not get Success for. ``worker.lease_s``
is short so analysis jobs of a killed process come back within seconds; ``worker.max_attempts`` is
raised from 3 so that a job hit by several kills in a row is not parked as failed (that parking is
the designed guard against a poison instance, not what is tested here). ``delivery.lease_s`` is short
too, so a killed process's deliveries are taken again within the final wait.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from reliability_support import SEED, job_states, query, spool_files, storescu_statuses, write_radiographs

from dicom_node.testing import NodeProcess, OrthancProcess, wait_for

CYCLES = 6             # kills; each phase twice, in a seeded order
PER_CYCLE = 4          # new radiographs each cycle (plus whatever was not acknowledged yet)
SIZE = 512             # ~0.5 MB each: sending takes long enough to be interrupted
DELIVERY_LEASE_S = 15  # delivery.lease_s: a killed process's deliveries are taken again after this


def _sender(node: NodeProcess, files: list[Path]) -> subprocess.Popen[str]:
    return subprocess.Popen(["storescu", "-v", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1",
                             str(node.port), *map(str, files)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _running(node: NodeProcess, kind: str) -> int:
    """Jobs of ``kind`` this node process holds now (a killed one's leases stay 'running' until they expire).

    Workers are named ``<pool>:<pid>:…`` (dicom_node.worker.WorkerPool); the pools are ``analyse`` and
    ``deliver``.
    """
    assert node.proc is not None
    return query(node, "SELECT COUNT(*) FROM jobs WHERE kind=? AND state='running' AND worker LIKE ?",
                 kind, f"{kind}:{node.proc.pid}:%")[0][0]


def _wait_until(cond: Callable[[], bool], timeout_s: float, every_s: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every_s)
    return False


def test_sigkill_at_random_moments_loses_nothing_and_delivers_once(
        node_factory: type[NodeProcess], orthanc: OrthancProcess, dcmtk: None, tmp_path: Path,
        record_property: pytest.RecordProperty) -> None:
    rng = random.Random(SEED)
    files = write_radiographs(tmp_path / "in", CYCLES * PER_CYCLE, SEED, size=SIZE)
    uid_of = {str(f): str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    node = node_factory("crash", destinations=[orthanc.destination()],
                        worker={"lease_s": 5, "batch_size": 2, "max_attempts": 10},
                        delivery={"backoff_s": 0.5, "backoff_max_s": 5, "lease_s": DELIVERY_LEASE_S})
    phases = ["sending", "analysing", "delivering"] * (CYCLES // 3)
    rng.shuffle(phases)

    acked: set[str] = set()
    pending: list[Path] = []
    kills: list[dict[str, object]] = []
    for cycle, phase in enumerate(phases):
        node.start()
        batch = pending + files[cycle * PER_CYCLE:(cycle + 1) * PER_CYCLE]
        before = query(node, "SELECT COUNT(*) FROM instances")[0][0]
        sender = _sender(node, batch)
        if phase == "sending":
            # once the first instance of this batch is committed, a few ms more
            hit = _wait_until(lambda b=before: query(node, "SELECT COUNT(*) FROM instances")[0][0] > b, 30)
            time.sleep(rng.uniform(0.0, 0.03))
        elif phase == "analysing":
            # the detector is warm (one job done since this start) and works on the next batch
            done0 = job_states(node, "analyse").get("done", 0)
            hit = _wait_until(lambda d=done0: job_states(node, "analyse").get("done", 0) > d
                              and _running(node, "analyse") > 0, 120)
            time.sleep(rng.uniform(0.0, 0.8))
        else:
            hit = _wait_until(lambda: _running(node, "deliver") > 0, 120)
            time.sleep(rng.uniform(0.0, 0.05))
        state = {"sender_running": sender.poll() is None, "analyse_running": _running(node, "analyse"),
                 "deliver_running": _running(node, "deliver")}
        node.kill()
        out = sender.communicate(timeout=60)[0]
        statuses = storescu_statuses(out)
        newly = {uid_of[f] for f, s in statuses.items() if s == "Success"}
        acked |= newly
        pending = [f for f in batch if statuses.get(str(f)) != "Success"]
        kills.append({"cycle": cycle, "phase": phase, "triggered": hit, **state, "acked": len(newly),
                      "not_acked": len(pending)})

    # The last start: the sender sends what is still unacknowledged, then the node drains.
    node.start()
    for _ in range(3):
        if not pending:
            break
        out = _sender(node, pending).communicate(timeout=120)[0]
        statuses = storescu_statuses(out)
        acked |= {uid_of[f] for f, s in statuses.items() if s == "Success"}
        pending = [f for f in pending if statuses.get(str(f)) != "Success"]
    assert not pending, f"never acknowledged: {pending}"
    n = len(files)
    assert acked == set(uid_of.values())

    def drained() -> bool:
        a, d = job_states(node, "analyse"), job_states(node, "deliver")
        return a.get("done", 0) == n and d.get("done", 0) == 3 * n and not (
            a.get("running") or a.get("queued") or d.get("running") or d.get("queued"))

    t0 = time.monotonic()
    wait_for("every analysis and delivery done", drained, DELIVERY_LEASE_S + 240, every_s=1.0)
    drain_s = time.monotonic() - t0

    # 1. Every acknowledged instance is stored, whole and as sent; no orphan file, no temporary file.
    rows = dict(query(node, "SELECT sop_instance_uid, path FROM instances"))
    assert set(rows) == acked
    for f in files:
        stored = pydicom.dcmread(rows[uid_of[str(f)]])
        assert stored.PixelData == pydicom.dcmread(f).PixelData
    left = {str(p) for p in spool_files(node)}
    if node.engine == "sqlite":
        assert left == set(rows.values())  # the sweep at each restart took every partial file
    else:  # a shared spool's sweep spares files younger than an hour (another node's in flight): only
        # the killed associations' temporaries stay, in spool/tmp, never a file in the studies' folders
        assert set(rows.values()) <= left
        assert {Path(p).parent for p in left - set(rows.values())} <= {node.storage / "spool" / "tmp"}
    # 2. Each analysed: one analysis job per instance, done; one analysis, three results each.
    assert job_states(node, "analyse") == {"done": n}
    assert query(node, "SELECT COUNT(*) FROM analyses WHERE outcome='analysed'")[0][0] == n
    per_source = Counter(r[0] for r in query(node, "SELECT source_sop_instance_uid FROM results"))
    assert set(per_source) == acked and set(per_source.values()) == {3}
    # 3. Each result in Orthanc exactly once: as many instances as results, and the very same UIDs.
    results = {r[0] for r in query(node, "SELECT sop_instance_uid FROM results")}
    in_pacs = [orthanc.get(f"/instances/{i}")["MainDicomTags"]["SOPInstanceUID"] for i in orthanc.get("/instances")]
    assert len(in_pacs) == 3 * n and set(in_pacs) == results
    assert query(node, "SELECT state, COUNT(*) FROM deliveries GROUP BY state") == [("delivered", 3 * n)]
    # 4. Leases that expired were taken again; nothing is left running.
    retaken = dict(query(node, "SELECT kind, COUNT(*) FROM jobs WHERE attempts > 1 GROUP BY kind"))
    assert sum(retaken.values()) > 0, "no kill left a job to be taken again"
    assert query(node, "SELECT COUNT(*) FROM jobs WHERE state='running'")[0][0] == 0
    # The kills landed where they were meant to.
    assert all(k["triggered"] for k in kills), kills
    assert any(k["phase"] == "sending" and k["sender_running"] for k in kills), kills
    assert any(k["analyse_running"] for k in kills), kills
    assert any(k["deliver_running"] for k in kills), kills

    duplicates = node.log_text().count("duplicate instance kept once")
    summary = {"kills": len(kills), "instances_acknowledged": len(acked), "lost": 0, "radiographs": n,
               "orthanc_instances": len(in_pacs), "jobs_retaken_after_lease": retaken,
               "duplicates_acknowledged_again": duplicates, "final_drain_s": round(drain_s, 1), "cycles": kills}
    print(f"\ncrash: {summary}")
    record_property("crash", summary)
