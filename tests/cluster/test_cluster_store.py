"""What several nodes on one PostgreSQL and one spool need of the store (issue 13): a job queued on one
node wakes the others at once; one node at a time runs the cluster-wide schedules and another takes
over when it dies; start-up sweeps spare the files other nodes have in flight, and the leading node
sweeps what killed nodes left; ``storage.database`` refuses what is not a usable URL, never echoing it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, parse_config
from dicom_node.spool import Spool
from dicom_node.store import Store
from dicom_node.store.jobs import enqueue_in
from dicom_node.store.leader import Leadership
from dicom_node.store.listen import JobListener
from dicom_node.testing import NodeProcess, PostgresProcess, storescu, wait_for

HOLD = """
import sys, time
from dicom_node.store import Store
from dicom_node.store.jobs import enqueue_in
from dicom_node.store.leader import Leadership
from dicom_node.store.listen import JobListener
lead = Leadership(sys.argv[1])
print("leads" if lead.leads() else "follows", flush=True)
time.sleep(600)
"""


def test_one_node_leads_the_schedules_and_another_takes_over_when_it_dies(postgres: PostgresProcess) -> None:
    url = postgres.create_database("leader")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "leads"
        other = Leadership(url)
        assert other.leads() is False and other.leads() is False  # asked again: still held elsewhere
        os.kill(holder.pid, signal.SIGKILL)  # its session ends with it, and the lock with the session
        holder.wait(30)
        wait_for("the lock free once the dead node's session ended", other.leads, 30, 0.2)
        third = Leadership(url)
        assert third.leads() is False
        other.close()  # a clean stop gives it up at once
        assert third.leads() is True
        third.close()
    finally:
        holder.kill()
        holder.wait()


def test_a_node_alone_on_sqlite_always_leads() -> None:
    assert Leadership(None).leads() is True


def test_start_up_sweep_spares_files_written_lately_on_a_shared_spool(tmp_path: Path) -> None:
    shared = Spool(tmp_path / "spool", shared=True)
    old, fresh = shared.tmp / "old.part", shared.tmp / "fresh.part"
    old.write_bytes(b"left by a node that died an hour ago")
    fresh.write_bytes(b"another node's C-STORE arriving now")
    hour_ago = time.time() - 3700
    os.utime(old, (hour_ago, hour_ago))
    assert shared.sweep() == 1
    assert not old.exists() and fresh.exists()
    alone = Spool(tmp_path / "spool")
    assert alone.sweep() == 1 and not fresh.exists()  # alone on its spool: every partial file goes


@pytest.mark.engines("postgresql")
def test_the_leading_node_sweeps_what_killed_nodes_left_on_the_shared_spool(
        node_factory: type[NodeProcess], dcmtk: None, rsna: list[Path]) -> None:
    """A start-up sweep on a shared spool spares files younger than an hour, and a killed node may never
    start again: the node leading the schedules sweeps every ``storage.shared_sweep_every_s``."""
    node = node_factory(storage={"shared_sweep_every_s": 1}, worker={"threads": 0}).start()
    assert storescu(node.port, rsna[:1]).returncode == 0
    [(stored,)] = node.rows("SELECT path FROM instances")
    spool = node.storage / "spool"
    left_part, fresh_part = spool / "tmp" / "left.part", spool / "tmp" / "fresh.part"
    orphan = Path(stored).parent / "1.2.826.0.1.3680043.8.498.999.dcm"  # linked, its commit never made
    for path in (left_part, fresh_part, orphan):
        path.write_bytes(b"left by a node killed mid-C-STORE")
    hour_ago = time.time() - 3700
    for path in (left_part, orphan, Path(stored)):  # the stored one is as old, and has its row
        os.utime(path, (hour_ago, hour_ago))
    wait_for("the sweep", lambda: not left_part.exists() and not orphan.exists(), 20, 0.2)
    assert fresh_part.exists() and Path(stored).exists()  # another node's in flight; an instance with its row
    assert "swept files left on the shared spool by stopped or killed nodes" in node.log_text()
    assert node.status()["instances"] == 1


@pytest.mark.parametrize("url, words", [
    ("mysql://node:pw@db/node", "sqlite, or a postgresql://user:password@host:port/database URL"),
    ("postgresql://node:s3cret-pw@db.example:5432/", "a postgresql:// URL needs a host and a database name"),
    ("postgresql:///node", "a postgresql:// URL needs a host and a database name"),
])
def test_a_database_url_that_cannot_work_is_refused_without_echoing_it(tmp_path: Path, url: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"storage": {"dir": str(tmp_path), "database": url}})
    assert "storage.database" in str(err.value) and words in str(err.value), str(err.value)
    assert "s3cret" not in str(err.value) and "pw@" not in str(err.value)


def test_the_database_setting_keeps_its_password_out_of_the_printed_config(tmp_path: Path) -> None:
    cfg = parse_config({"storage": {"dir": str(tmp_path), "database": "postgresql://node:s3cret-pw@db:5432/node"}})
    assert cfg.database == "postgresql://node:s3cret-pw@db:5432/node"
    assert "s3cret" not in repr(cfg) and "s3cret" not in str(cfg.storage)
    assert parse_config({"storage": {"dir": str(tmp_path), "database": "sqlite"}}).database == str(
        tmp_path / "node.db")


def test_a_job_queued_by_one_node_wakes_the_others_when_it_commits(postgres: PostgresProcess) -> None:
    url = postgres.create_database("notify")
    woken: list[str] = []
    listener = JobListener(url, woken.append)
    listener.start()
    other = Store(url)
    try:
        time.sleep(1.0)  # listening
        with other.transaction() as conn:  # queued inside a transaction: nothing is said before it commits
            enqueue_in(conn, "analyse", "1.2.3", None, 3, 0.0, time.time())
            time.sleep(1.5)
            assert woken == []
        wait_for("the analyse job announced", lambda: woken == ["analyse"], 10, 0.05)
        other.enqueue("deliver", "r>pacs", delay_s=60)  # not due yet: nobody is woken for it
        other.enqueue("deliver", "s>pacs")
        wait_for("the due delivery announced", lambda: woken == ["analyse", "deliver"], 10, 0.05)
        [job] = other.lease(["analyse"], "analyse:dead:0", lease_s=60)
        assert other.release("analyse:dead:") == 1  # a node stopping gives its jobs back: the others hear
        wait_for("the released job announced", lambda: woken == ["analyse", "deliver", "analyse"], 10, 0.05)
        time.sleep(1.5)
        assert woken == ["analyse", "deliver", "analyse"] and job.ref == "1.2.3"
    finally:
        listener.stop()
        other.close()
