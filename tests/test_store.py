"""The job queue: leases expire, attempts are counted, a lost lease cannot overwrite, restarts keep jobs;
on both engines (the ``database`` fixture: a SQLite file and a PostgreSQL database)."""

from __future__ import annotations

import threading
import time
from contextlib import closing
from pathlib import Path

from dicom_node.store import SCHEMA_VERSION, Store


def test_lease_expiry_gives_the_job_to_another_worker(database: str) -> None:
    store = Store(database)
    store.enqueue("analyse", "1.2.3", max_attempts=3)
    [first] = store.lease(["analyse"], "w1", lease_s=0.05)
    assert store.lease(["analyse"], "w2", lease_s=10) == []  # still leased
    time.sleep(0.1)
    [again] = store.lease(["analyse"], "w2", lease_s=10)
    assert again.id == first.id and again.attempts == 2
    assert store.finish(first, "done") is False  # w1 lost its lease: fenced
    assert store.finish(again, "done") is True
    assert store.job_counts()["done"] == 1


def test_attempts_are_spent_then_the_job_fails_with_its_error(database: str) -> None:
    store = Store(database)
    store.enqueue("analyse", "1.2.3", max_attempts=2)
    for _ in range(2):
        store.lease(["analyse"], "crashy", lease_s=0.01)
        time.sleep(0.03)
    assert store.lease(["analyse"], "next", lease_s=10) == []
    [job] = store.jobs(state="failed")
    assert "lease expired" in job["error"] and job["attempts"] == 2


def test_release_requeues_without_counting_an_attempt(database: str) -> None:
    store = Store(database)
    store.enqueue("analyse", "1.2.3")
    store.lease(["analyse"], "pool:1:0", lease_s=60)
    assert store.release("pool:1:") == 1
    [job] = store.lease(["analyse"], "pool:2:0")
    assert job.attempts == 1


def test_queue_survives_reopening_and_enqueue_is_idempotent(database: str) -> None:
    store = Store(database)
    assert store.enqueue("deliver", "a:pacs") is True
    assert store.enqueue("deliver", "a:pacs") is False
    store.close()
    reopened = Store(database)
    assert reopened.job_counts()["queued"] == 1


def test_concurrent_workers_never_take_the_same_job(database: str) -> None:
    store = Store(database)
    for i in range(200):
        store.enqueue("analyse", f"1.2.{i}")
    taken: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while jobs := store.lease(["analyse"], name, limit=3, lease_s=60):
            with lock:
                taken.extend(j.id for j in jobs)
            for j in jobs:
                store.finish(j, "done")

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 200 and len(set(taken)) == 200
    assert store.job_counts()["done"] == 200


def test_connections_of_ended_threads_are_closed(tmp_path: Path) -> None:
    # Admin requests, scheduler jobs and ad-hoc threads each get a connection; a node that runs for
    # months must not keep one (and its file descriptors) per thread that ever touched the store.
    import psutil

    store = Store(tmp_path / "node.db")
    me = psutil.Process()

    def touch() -> None:
        store.conn().execute("SELECT COUNT(*) FROM jobs").fetchone()

    def burst(n: int) -> None:
        for _ in range(n):
            t = threading.Thread(target=touch)
            t.start()
            t.join()
        touch()  # a new connection in this thread prunes the ended ones

    threading.Thread(target=burst, args=(5,)).run()
    before = me.num_fds()
    threading.Thread(target=burst, args=(300,)).run()
    assert me.num_fds() <= before + 4, f"descriptors {before} -> {me.num_fds()}"
    store.close()


_CLOSE_WHILE_QUERYING = """
import sys, threading, time
from dicom_node.store import Store
store = Store(sys.argv[1])
store.conn().executemany("INSERT INTO meta (key, value) VALUES (?, 'x')", [(f"k{i}",) for i in range(20000)])
started, stop = threading.Event(), threading.Event()
def query():
    while not stop.is_set():
        store.conn().execute("SELECT COUNT(*), MAX(a.key) FROM meta a").fetchone()
        started.set()
t = threading.Thread(target=query)
t.start()
started.wait(30)
time.sleep(0.3)
store.close()  # another thread's connection is inside a query right now
time.sleep(0.3)
stop.set()
t.join()
print("survived")
"""


def test_closing_the_store_while_another_thread_queries_does_not_crash_the_process(tmp_path: Path) -> None:
    # A node that stopped while a twin job was querying died with SIGSEGV (CI, 2026-12-02): close()
    # closed that thread's sqlite3 connection under it. Run in a child so a crash fails this test.
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _CLOSE_WHILE_QUERYING, str(tmp_path / "node.db")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "survived" in res.stdout, (res.returncode, res.stderr[-2000:])



def _old_database(path: Path, version: int, columns: str, row: str) -> None:
    """A database as schema ``version`` wrote it: its meta and its analyses table with one row."""
    import sqlite3

    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        f"INSERT INTO meta VALUES ('schema_version', '{version}');"
        "CREATE TABLE analyses (sop_instance_uid TEXT PRIMARY KEY, outcome TEXT NOT NULL, reason TEXT,"
        f" model_name TEXT, model_version TEXT, n_findings INTEGER NOT NULL DEFAULT 0, {columns}"
        " preprocess_ms REAL, inference_ms REAL, total_ms REAL, analysed_at REAL NOT NULL);"
        f"INSERT INTO analyses {row};"
    )
    old.commit()
    old.close()


def test_a_version_1_database_gains_the_image_level_probability_in_place(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    _old_database(path, 1, "", "(sop_instance_uid, outcome, analysed_at) VALUES ('1.2.3', 'analysed', 0)")
    store = Store(path)
    conn = store.conn()
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    assert conn.execute("SELECT opacity_probability FROM analyses WHERE sop_instance_uid='1.2.3'").fetchone()[0] is None
    store.record_analysis("1.2.4", "analysed", opacity_probability=0.83)
    assert conn.execute("SELECT opacity_probability FROM analyses WHERE sop_instance_uid='1.2.4'").fetchone()[0] == 0.83
    store.close()
    Store(path).close()  # opening again changes nothing


def test_a_version_2_database_gains_the_assumptions_in_place(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    _old_database(path, 2, "opacity_probability REAL,", "(sop_instance_uid, outcome, opacity_probability,"
                  " analysed_at) VALUES ('1.2.3', 'analysed', 0.4, 0)")
    store = Store(path)
    assert store.meta("schema_version") == "4" == str(SCHEMA_VERSION)
    before = store.analysis("1.2.3")
    assert before is not None and before["assumptions"] == [] and before["opacity_probability"] == 0.4
    said = ["chest assumed, not read: Body Part Examined is empty",
            "frontal view assumed, not read: View Position is empty"]
    store.record_analysis("1.2.4", "analysed", opacity_probability=0.7, assumptions=said)
    after = store.analysis("1.2.4")
    assert after is not None and after["assumptions"] == said
    store.close()
    again = Store(path)  # opening again changes nothing
    assert again.analysis("1.2.4")["assumptions"] == said  # type: ignore[index]
    again.close()


def test_a_version_3_database_keeps_each_nodes_model_in_its_row(tmp_path: Path) -> None:
    """Version 3 had one ``model_state`` for the whole database: on a cluster the last node to write it
    spoke for all. Version 4 keeps it in each node's row, and forgets the shared one."""
    import sqlite3

    path, now = tmp_path / "node.db", time.time()
    _old_database(path, 3, "opacity_probability REAL, assumptions TEXT,",
                  "(sop_instance_uid, outcome, analysed_at) VALUES ('1.2.3', 'analysed', 0)")
    with closing(sqlite3.connect(path)) as old:
        old.executescript(
            "INSERT INTO meta VALUES ('model_state', '{\"state\": \"ready\"}');"
            "CREATE TABLE nodes (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, ae_title TEXT,"
            " roles TEXT NOT NULL, version TEXT, started_at REAL NOT NULL, last_seen_at REAL NOT NULL,"
            " stopped_at REAL);"
            f"INSERT INTO nodes VALUES ('a:1', 'a', 1, 'NODE', '[\"analyse\"]', '1', {now}, {now}, NULL);")
    store = Store(path)
    assert store.meta("schema_version") == str(SCHEMA_VERSION) and store.meta("model_state") is None
    [old_row] = store.nodes()
    assert old_row["model"] == {"state": "unknown"}  # not the shared state, which may have been another node's
    store.beat("b:2", host="b", pid=2, ae_title="NODE", roles=["analyse"], version="2", started_at=now + 1,
               model={"state": "loading"})
    store.node_model("b:2", {"state": "ready", "version": "2.0.0"})
    assert {n["id"]: n["model"] for n in store.nodes()} == {
        "a:1": {"state": "unknown"}, "b:2": {"state": "ready", "version": "2.0.0"}}
    store.close()


def test_heartbeat_keeps_a_short_lease_alive_and_a_dead_holder_loses_it(database: str) -> None:
    store = Store(database)
    store.enqueue("analyse", "1.2.3")
    store.enqueue("analyse", "1.2.4")
    [alive] = store.lease(["analyse"], "analyse:1:1:0", lease_s=0.3)
    [dead] = store.lease(["analyse"], "analyse:2:2:0", lease_s=0.3)
    for _ in range(4):  # 0.6 s in all: the renewed lease outlives its 0.3 s, the other one expires
        time.sleep(0.15)
        assert store.renew("analyse:1:1:", 0.3) == 1
    [taken] = store.lease(["analyse"], "w3", lease_s=10)
    assert taken.ref == dead.ref and taken.attempts == 2
    assert store.finish(alive, "done") is True


def test_a_node_that_owns_the_database_takes_back_what_its_dead_predecessor_ran(database: str) -> None:
    store = Store(database)
    for ref in ("1", "2", "3"):
        store.enqueue("analyse", ref)
    store.enqueue("deliver", "r1")
    store.lease(["analyse"], "analyse:old:0", limit=2, lease_s=300)
    store.lease(["deliver"], "deliver:old:0", lease_s=300)
    assert store.take_back_orphans(["analyse", "deliver"]) == 3
    jobs = store.jobs()
    assert {j["state"] for j in jobs} == {"queued"}
    assert sum("taken back at start" in (j["error"] or "") for j in jobs) == 3
    # the attempt stays counted: a job that kills the node each time ends failed, not looping
    again = store.lease(["analyse"], "analyse:new:0", limit=3, lease_s=10)
    assert sorted(j.attempts for j in again) == [1, 2, 2]
