#!/usr/bin/env python
"""The cluster's figures (issue 13, docs/cluster.md), against the embedded node in the same run.

``queue``: jobs leased and finished per second by 1, 2 and 4 workers (threads, each with its own
connection, as the node's workers have), on PostgreSQL (``FOR UPDATE SKIP LOCKED``, a test server of
our own: initdb in a temp folder, fsync and synchronous_commit on) against SQLite (WAL,
``synchronous=FULL``, ``BEGIN IMMEDIATE``); every job is checked done exactly once.

``ingest``: the same ~10 MB CRs (scripts/bench_ingest.py's, fresh UIDs every round) sent by DCMTK
storescu (``--senders`` processes at once, one association each) through HAProxy (docs/cluster.md's
configuration, as the cluster tests fill it in) into ``--receivers`` nodes with ``node.roles:
[receive]`` on one PostgreSQL database and one shared ``storage.dir``, against the same files into one
embedded (SQLite) node with the same roles, alternating, for ``--rounds``; MB/s and instances/s of
each (median of rounds) and the ratio cluster / embedded. Every instance must be stored on both.

``failover``: three nodes (every role) on PostgreSQL and one shared ``storage.dir``, ``worker.lease_s``
short (``--lease-s``), ``worker.batch_size: 1``; each round sends ``--images`` RSNA radiographs (fresh
UIDs) to one node, SIGKILLs the node holding the first running analysis, and measures the seconds
from the kill until a survivor holds that job (it waits for the lease to run out, as
tests/cluster/test_cluster_nodes.py measures) and until it is done; the killed node is started again
for the next round. Each round and the median.

    .venv/bin/python scripts/bench_cluster.py queue --jobs 2000 --json
    .venv/bin/python scripts/bench_cluster.py ingest --images 20 --senders 4 --rounds 3 --json
    .venv/bin/python scripts/bench_cluster.py failover --rounds 3 --lease-s 6 --json

Progress goes to stderr, the figures to stdout (``--json``: one object). A missing peer (PostgreSQL,
HAProxy, DCMTK storescu, the RSNA sample) is one line and exit 2; an instance not stored or a job not
done is exit 1.

Timings depend on the machine: say which (2 cores here: what scales with workers is the database's
concurrency, not the CPU's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "cluster"))  # cluster_support: the backend's name, a server's check
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from cluster_support import BACKEND, BEHIND_HAPROXY, check_status, start_haproxy  # noqa: E402

from dicom_node.store import Store  # noqa: E402
from dicom_node.store.jobs import enqueue_in  # noqa: E402
from dicom_node.testing import (  # noqa: E402
    RSNA_DIR,
    HaproxyProcess,
    NodeProcess,
    PostgresProcess,
    load_script,
    missing_dcmtk,
    missing_haproxy,
    missing_postgres,
    rsna_files,
    storescu,
    wait_for,
)

_INGEST = load_script("bench_ingest")  # the ~10 MB CRs and the alternating rounds of the ingest benchmark
make_cr, write_round, alternate = _INGEST.make_cr, _INGEST.write_round, _INGEST.alternate


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def queue_rate(target: str, jobs: int, workers: int, batch: int) -> dict[str, Any]:
    """Enqueue ``jobs`` analyse jobs, then ``workers`` threads lease ``batch`` at a time and finish each;
    returns jobs/s from the first lease to the last finish, and whether each was done once."""
    store = Store(target)
    try:
        with store.transaction() as conn:
            now = time.time()
            for i in range(jobs):
                enqueue_in(conn, "analyse", f"1.2.826.0.1.{i}", None, 3, 0.0, now)
        done: list[int] = []
        lock = threading.Lock()

        def work(name: str) -> None:
            while taken := store.lease(["analyse"], name, limit=batch, lease_s=60):
                for job in taken:
                    if store.finish(job, "done"):
                        with lock:
                            done.append(job.id)

        threads = [threading.Thread(target=work, args=(f"bench:{w}:0:0",)) for w in range(workers)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        return {"jobs_per_s": round(jobs / seconds, 1), "seconds": round(seconds, 2),
                "each_once": len(done) == len(set(done)) == jobs}
    finally:
        store.close()


def bench_queue(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"jobs": args.jobs, "batch": args.batch, "sqlite": {}, "postgresql": {}}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, PostgresProcess(Path(tmp) / "pg") as pg:
        for workers in args.workers:
            out["sqlite"][workers] = queue_rate(str(Path(tmp) / f"q{workers}.db"), args.jobs, workers, args.batch)
            out["postgresql"][workers] = queue_rate(pg.create_database(f"q{workers}"), args.jobs, workers,
                                                    args.batch)
            progress(f"{workers} workers: SQLite {out['sqlite'][workers]['jobs_per_s']} jobs/s, PostgreSQL "
                     f"{out['postgresql'][workers]['jobs_per_s']} jobs/s")
    out["ratio_postgresql_vs_sqlite"] = {w: round(out["postgresql"][w]["jobs_per_s"] / out["sqlite"][w]["jobs_per_s"],
                                                  2) for w in args.workers}
    return out


def send_at_once(port: int, files: list[Path], senders: int) -> float:
    """``senders`` storescu processes at once, each one association with its share of ``files``; the
    seconds from the first start to the last end. Any storescu that fails is an error."""
    parts = [files[i::senders] for i in range(senders) if files[i::senders]]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(parts)) as pool:  # distinct calling AE titles: one modality each
        runs = list(pool.map(lambda i: storescu(port, parts[i], aet=f"SENDER{i + 1}"), range(len(parts))))
    seconds = time.perf_counter() - t0
    for r in runs:
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"storescu to port {port} failed ({r.returncode}): {last[:300]}")
    return seconds


def start_checked_haproxy(root: Path, servers: list[tuple[str, int]]) -> HaproxyProcess:
    """HAProxy in front of ``servers`` as the cluster tests start it; an error unless every receiver
    passed its DICOM health check."""
    ha = start_haproxy(root, servers, root / "admin.sock")
    for name, _ in servers:
        if (state := check_status(ha, name)) != "L7OK":
            raise RuntimeError(f"HAProxy's DICOM check of {name} failed: {state} (log {ha.log_path})")
    return ha


@contextmanager
def cluster_folder(name: str) -> Iterator[tuple[Path, Path, str]]:
    """A temporary folder with a PostgreSQL server of its own in it: (the folder, an empty ``src``
    folder for the files sent, the URL of a fresh database ``name``); all removed at the end."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp, PostgresProcess(Path(tmp) / "pg") as pg:
        root = Path(tmp)
        (root / "src").mkdir()
        yield root, root / "src", pg.create_database(name)


def bench_ingest(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(7)
    datasets = [make_cr(args.size, args.size, rng) for _ in range(args.images)]
    receive = {"node": {"roles": ["receive"]}}
    behind = {"node": {"roles": ["receive"], **BEHIND_HAPROXY}}
    with cluster_folder("ingest") as (root, src, url):
        receivers = [NodeProcess(root / f"r{i}", overrides={
            **behind, "storage": {"dir": str(root / "shared"), "database": url},
            "logging": {"dir": str(root / f"r{i}" / "logs")}}) for i in range(args.receivers)]
        embedded = NodeProcess(root / "embedded", overrides=receive)
        ha: HaproxyProcess | None = None
        try:
            for n in [*receivers, embedded]:
                n.start()
            ha = start_checked_haproxy(root / "haproxy", [(f"r{i}", n.port) for i, n in enumerate(receivers)])
            progress(f"{args.receivers} receivers on PostgreSQL behind HAProxy :{ha.port}, embedded node "
                     f":{embedded.port}; {args.images} images x {args.rounds} rounds, {args.senders} senders")
            targets = {"cluster": ha.port, "embedded": embedded.port}
            times, mb = alternate(list(targets), args.rounds, datasets, src,
                                  lambda name, files: send_at_once(targets[name], files, args.senders), quiet=False)
            stored = {"cluster": receivers[0].status()["instances"], "embedded": embedded.status()["instances"]}
            log = ha.log_text()  # one tcplog line per association passed on, naming its receiver
            associations = {name: log.count(f" {BACKEND}/{name} ") for name in (f"r{i}" for i in range(len(receivers)))}
        finally:
            if ha is not None:
                ha.stop()
            for n in [*receivers, embedded]:
                n.stop()
    expected = args.images * args.rounds
    seconds = {k: statistics.median(v) for k, v in times.items()}
    out: dict[str, Any] = {
        "images_per_round": args.images, "mb_per_image": round(mb / args.images, 2), "rounds": args.rounds,
        "senders": args.senders, "receivers": args.receivers,
        **{k: {"mb_s": round(mb / seconds[k], 1), "instances_s": round(args.images / seconds[k], 2),
               "seconds_per_round": [round(t, 2) for t in v], "stored": stored[k], "expected": expected}
           for k, v in times.items()},
        "ratio_cluster_vs_embedded": round(seconds["embedded"] / seconds["cluster"], 2),
        "associations_per_receiver": associations,
    }
    return out


def _warm(node: NodeProcess, before: int) -> bool:
    """Whether the node's model was loaded and warmed since its log said so ``before`` times."""
    text = node.log_text()
    if text.count("model failed to load") > 0:
        raise RuntimeError(f"{node.root.name}: the model failed to load (log {node.log_path})")
    return text.count("model warm") > before


def _start_warm(nodes: list[NodeProcess]) -> None:
    """Start the nodes and wait until each one's model is warm (a survivor must not be loading it)."""
    before = {n.root.name: n.log_text().count("model warm") for n in nodes}
    for n in nodes:
        n.start()
    for n in nodes:
        wait_for(f"the model warm on {n.root.name}", partial(_warm, n, before[n.root.name]), timeout_s=300,
                 every_s=0.3)


def _pid_of(worker: object) -> int | None:
    """The process id in a job's worker name (``analyse:PID:START:N``), None when it has none."""
    return int(str(worker).split(":")[1]) if worker else None


def _failover_round(db: Any, nodes: list[NodeProcess], files: list[Path], to: NodeProcess) -> dict[str, Any]:
    """Send ``files`` to node ``to``, SIGKILL the node holding the first running analysis, time the
    takeover and the end of that job; waits for every analysis to end. ``db`` is a store connection."""
    sent = storescu(to.port, files)
    if sent.returncode != 0:
        last = (sent.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"storescu to {to.root.name} failed ({sent.returncode}): {last[:300]}")

    def running() -> Any:
        return db.execute("SELECT id, worker FROM jobs WHERE kind = 'analyse' AND state = 'running'"
                          " ORDER BY id LIMIT 1").fetchone()

    job_id, worker = wait_for("an analysis running", running, timeout_s=180, every_s=0.05)
    pid = _pid_of(worker)
    victim = next(n for n in nodes if n.proc is not None and n.proc.pid == pid)
    killed = time.monotonic()
    victim.stop(signal.SIGKILL)  # SIGKILL and reap: it renews no lease from now on

    def job() -> tuple[Any, str]:
        row = db.execute("SELECT worker, state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row[0], str(row[1])

    def taken() -> int | None:
        holder = _pid_of(job()[0])
        return holder if holder not in (None, pid) else None

    survivor = wait_for("the killed node's analysis taken by a survivor", taken, timeout_s=120, every_s=0.05)
    taken_s = time.monotonic() - killed
    state = wait_for("the killed node's analysis ended",
                     lambda: job()[1] if job()[1] in ("done", "skipped", "failed") else None,
                     timeout_s=300, every_s=0.05)
    done_s = time.monotonic() - killed
    wait_for("every analysis of the round ended", lambda: db.execute(
        "SELECT count(*) FROM jobs WHERE kind = 'analyse' AND state IN ('queued', 'running')").fetchone()[0] == 0,
        timeout_s=300, every_s=0.2)
    return {"victim": victim.root.name, "job": int(job_id), "taken_by_pid": survivor, "taken_s": round(taken_s, 2),
            "done_s": round(done_s, 2), "state": state}


def bench_failover(args: argparse.Namespace) -> dict[str, Any]:
    sample = rsna_files()[: args.images]
    datasets = [pydicom.dcmread(f) for f in sample]
    rounds: list[dict[str, Any]] = []
    with cluster_folder("failover") as (root, src, url):
        nodes = [NodeProcess(root / f"n{i}", overrides={
            "storage": {"dir": str(root / "shared"), "database": url},
            "logging": {"dir": str(root / f"n{i}" / "logs")},
            "worker": {"lease_s": args.lease_s, "batch_size": 1}}) for i in range(3)]
        store: Store | None = None
        try:
            _start_warm(nodes)
            progress(f"3 nodes on PostgreSQL, worker.lease_s {args.lease_s}, models warm")
            store = Store(url, readonly=True)
            db = store.conn()
            for r in range(args.rounds):
                files = write_round(datasets, src)  # fresh UIDs: new instances, new jobs
                took = {"round": r + 1, **_failover_round(db, nodes, files, nodes[r % 3])}
                rounds.append(took)
                progress(f"round {r + 1}/{args.rounds}: {took['victim']} killed holding job {took['job']}; a survivor "
                         f"took it after {took['taken_s']:.2f} s, {took['state']} after {took['done_s']:.2f} s")
                if r + 1 < args.rounds:
                    _start_warm([n for n in nodes if n.proc is None])
            counts = {str(k): int(v) for k, v in db.execute(
                "SELECT state, count(*) FROM jobs WHERE kind = 'analyse' GROUP BY state").fetchall()}
            stored = int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
        finally:
            if store is not None:
                store.close()
            for n in nodes:
                n.stop()
    return {
        "images_per_round": len(sample), "lease_s": args.lease_s, "rounds": rounds,
        "median_taken_s": round(statistics.median(r["taken_s"] for r in rounds), 2),
        "median_done_s": round(statistics.median(r["done_s"] for r in rounds), 2),
        "analyses": counts, "stored": stored, "expected": len(sample) * args.rounds,
    }


def missing(what: str, args: argparse.Namespace) -> str | None:
    """The one line a missing peer of part ``what`` is, or None."""
    if why := missing_postgres():
        return f"error: PostgreSQL missing ({why}): make setup installs it"
    if what in ("ingest", "failover") and (why := missing_dcmtk("storescu")):
        return why
    if what == "ingest" and (why := missing_haproxy()):
        return f"error: HAProxy missing ({why}): make setup installs it"
    if what == "failover" and len(rsna_files()) < args.images:
        return (f"error: the RSNA sample ({RSNA_DIR}, or $RSNA_SAMPLE_DIR) has {len(rsna_files())} radiographs,"
                f" {args.images} wanted")
    return None


def report(what: str, result: dict[str, Any]) -> tuple[list[str], bool]:
    """The lines a person reads, and whether every check held."""
    if what == "queue":
        lines = [f"{w} workers: PostgreSQL / SQLite {r:.2f}" for w, r in result["ratio_postgresql_vs_sqlite"].items()]
        ok = all(r["each_once"] for engine in ("sqlite", "postgresql") for r in result[engine].values())
        return lines, ok
    if what == "ingest":
        lines = [f"{k:>9}: {result[k]['mb_s']:7.1f} MB/s, {result[k]['instances_s']:6.2f} instances/s, stored "
                 f"{result[k]['stored']} of {result[k]['expected']}" for k in ("cluster", "embedded")]
        lines.append(f"cluster / embedded: {result['ratio_cluster_vs_embedded']:.2f} (associations per receiver: "
                     f"{result['associations_per_receiver']})")
        ok = all(result[k]["stored"] == result[k]["expected"] for k in ("cluster", "embedded"))
        if not ok:
            lines.append("error: not every instance was stored")
        return lines, ok
    lines = [f"round {r['round']}: taken by a survivor {r['taken_s']:.2f} s after the kill, {r['state']} after "
             f"{r['done_s']:.2f} s" for r in result["rounds"]]
    lines.append(f"median: taken {result['median_taken_s']:.2f} s, done {result['median_done_s']:.2f} s "
                 f"(worker.lease_s {result['lease_s']})")
    ok = (all(r["state"] == "done" for r in result["rounds"]) and result["stored"] == result["expected"]
          and result["analyses"].get("done", 0) == result["expected"])
    if not ok:
        lines.append(f"error: analyses {result['analyses']}, stored {result['stored']} of {result['expected']}")
    return lines, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("queue", help="jobs leased and finished per second, PostgreSQL against SQLite")
    q.add_argument("--jobs", type=int, default=2000)
    q.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    q.add_argument("--batch", type=int, default=1, help="jobs per lease (the node's worker.batch_size)")
    i = sub.add_parser("ingest", help="C-STORE through HAProxy into receivers on PostgreSQL, against one embedded node")
    i.add_argument("--images", type=int, default=20, help="images per round")
    i.add_argument("--size", type=int, default=2300, help="rows = columns (2300 -> ~10 MB at 16 bits)")
    i.add_argument("--senders", type=int, default=4, help="storescu processes at once, one association each")
    i.add_argument("--receivers", type=int, default=2, help="receive-only nodes behind HAProxy")
    i.add_argument("--rounds", type=int, default=3)
    f = sub.add_parser("failover", help="seconds from a SIGKILLed node to a survivor running its analysis")
    f.add_argument("--rounds", type=int, default=3)
    f.add_argument("--lease-s", type=float, default=6.0, help="worker.lease_s of the three nodes")
    f.add_argument("--images", type=int, default=3, help="RSNA radiographs sent per round")
    for p in (q, i, f):
        p.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if why := missing(args.what, args):
        print(why, file=sys.stderr)
        return 2
    parts: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
        "queue": bench_queue, "ingest": bench_ingest, "failover": bench_failover}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        figures = parts[args.what](args)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"error: {args.what}: {exc}", file=sys.stderr)
        return 1
    result = {"part": args.what, "started": started, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_average": os.getloadavg()[0], **figures}
    lines, ok = report(args.what, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(lines))
    if not ok:
        print(next((x for x in lines if x.startswith("error")), "error: a check failed"), file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
