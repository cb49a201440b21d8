#!/usr/bin/env python
"""The cluster's figures (issue 13, docs/cluster.md), against the embedded node in the same run.

``queue``: jobs leased and finished per second by 1, 2 and 4 workers (threads, each with its own
connection, as the node's workers have), on PostgreSQL (``FOR UPDATE SKIP LOCKED``, a test server of
our own: initdb in a temp folder, fsync and synchronous_commit on) against SQLite (WAL,
``synchronous=FULL``, ``BEGIN IMMEDIATE``); every job is checked done exactly once.

``ingest``: the same ~10 MB CRs sent by DCMTK storescu (one association per sender, ``--senders`` at
once) through HAProxy (docs/cluster.md's configuration) into two receive-only nodes on PostgreSQL and
one shared spool, against the same into one embedded node; MB/s and the ratio.

``failover``: three nodes on PostgreSQL; the node running an analysis is SIGKILLed; seconds until a
survivor runs that job (it waits for the lease, ``worker.lease_s``, to run out).

    .venv/bin/python scripts/bench_cluster.py queue --jobs 2000 --json

Timings depend on the machine: say which (2 cores here: what scales with workers is the database's
concurrency, not the CPU's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicom_node.store import Store  # noqa: E402
from dicom_node.store.jobs import enqueue_in  # noqa: E402
from dicom_node.testing import PostgresProcess, missing_postgres  # noqa: E402


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
            if not args.json:
                print(f"{workers} workers: SQLite {out['sqlite'][workers]['jobs_per_s']} jobs/s, PostgreSQL "
                      f"{out['postgresql'][workers]['jobs_per_s']} jobs/s", file=sys.stderr)
    out["ratio_postgresql_vs_sqlite"] = {w: round(out["postgresql"][w]["jobs_per_s"] / out["sqlite"][w]["jobs_per_s"],
                                                  2) for w in args.workers}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("queue", help="jobs leased and finished per second, PostgreSQL against SQLite")
    q.add_argument("--jobs", type=int, default=2000)
    q.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    q.add_argument("--batch", type=int, default=1, help="jobs per lease (the node's worker.batch_size)")
    for p in (q,):
        p.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if why := missing_postgres():
        print(f"error: PostgreSQL missing ({why}): make setup installs it", file=sys.stderr)
        return 2
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "load_average": os.getloadavg()[0],
              **bench_queue(args)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for w, r in result["ratio_postgresql_vs_sqlite"].items():
            print(f"{w} workers: PostgreSQL / SQLite {r:.2f}")
    ok = all(r["each_once"] for engine in ("sqlite", "postgresql") for r in result[engine].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
