"""Work cut by a SIGKILL is taken back the moment the node restarts, not when a lease runs out; and a
second node on the same storage folder is refused, since the takeover relies on one owner."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from reliability_support import query, write_radiographs

from dicom_node.testing import NodeProcess, storescu, wait_for

# The embedded node owns its storage alone, so it takes back at start what its predecessor left running.
# Nodes on PostgreSQL share the database: a dead one's jobs come back when its heartbeat lease runs out
# (tests/cluster/test_cluster_nodes.py), and no node locks the shared storage.
pytestmark = pytest.mark.engines("sqlite")


def test_jobs_running_at_a_kill_are_taken_back_at_restart(node_factory: type[NodeProcess], dcmtk: None,
                                                         tmp_path: Path, record_property) -> None:
    # One job per batch and a long worker.lease_s: only the takeover at start can bring them back quickly.
    node = node_factory(worker={"batch_size": 1, "lease_s": 600}).start()
    files = write_radiographs(tmp_path / "xr", 6, seed=77, size=512)
    assert storescu(node.port, files).returncode == 0
    wait_for("a job running", lambda: query(node, "SELECT COUNT(*) FROM jobs WHERE kind='analyse'"
                                                  " AND state='running'")[0][0], 120, every_s=0.05)
    node.kill()
    cut = query(node, "SELECT COUNT(*) FROM jobs WHERE state='running'")[0][0]
    assert cut >= 1  # still marked running by the dead process
    t0 = time.monotonic()
    node.start()
    st = node.wait_jobs_settled(len(files), timeout_s=300)
    took = round(time.monotonic() - t0, 1)
    print(f"\nrecovery: {cut} job(s) cut by SIGKILL; restart to all {len(files)} analyses done: {took} s")
    record_property("restart_to_all_done_s", took)
    assert st["jobs_by_kind"]["analyse"]["done"] == len(files)
    assert "jobs of a stopped or killed predecessor taken back" in node.log_text()
    assert query(node, "SELECT COUNT(*) FROM jobs WHERE state='running'")[0][0] == 0


def test_a_second_node_on_the_same_storage_is_refused_in_one_line(node_factory: type[NodeProcess],
                                                                   dcmtk: None) -> None:
    first = node_factory("shared").start()
    second = node_factory("shared")
    done = second.cli("serve", check=False, timeout_s=60)
    assert done.returncode != 0
    line = done.stderr.strip()
    assert "\n" not in line and f"is in use by another dicom-node (pid {first.proc.pid})" in line
    assert first.status()["instances"] == 0  # the first one serves on, untouched
