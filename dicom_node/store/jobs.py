"""The job queue: ``queued → running → done | skipped | failed``, leased with a heartbeat.

A lease has an expiry: a job whose worker died is taken again once it has expired, until
``max_attempts`` is spent. ``finish`` is fenced by the lease owner, so a worker that lost its lease
cannot overwrite the state set by the one that took over.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicom_node.store.connections import Connections
from dicom_node.store.dbapi import Conn
from dicom_node.store.listen import CHANNEL
from dicom_node.store.postgres import PgConnection

JOB_STATES = ("queued", "running", "done", "skipped", "failed")
#: how a lease takes its rows: on PostgreSQL each node skips the rows another is taking (no waiting, no
#: job twice); SQLite's BEGIN IMMEDIATE already lets one writer in at a time
ROW_LOCKS = {"sqlite": "", "postgresql": " FOR UPDATE SKIP LOCKED"}


@dataclass(frozen=True)
class Job:
    """A leased job: what to do (``kind``), to what (``ref``), and which attempt this is."""

    id: int
    kind: str
    ref: str
    attempts: int
    max_attempts: int
    worker: str
    payload: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: sqlite3.Row | dict[str, Any]) -> Job:
        r = dict(row)
        return cls(
            id=r["id"],
            kind=r["kind"],
            ref=r["ref"],
            attempts=r["attempts"],
            max_attempts=r["max_attempts"],
            worker=r["worker"],
            payload=json.loads(r["payload"]) if r["payload"] else None,
        )


def enqueue_in(conn: Conn, kind: str, ref: str, payload: dict[str, Any] | None,
               max_attempts: int, not_before: float, now: float) -> bool:
    """Queue a job inside the caller's transaction (kept once per kind and ref); True when new.
    On PostgreSQL the other nodes' workers are told when it commits (:mod:`.listen`)."""
    cur = conn.execute(
        "INSERT INTO jobs (kind, ref, state, max_attempts, not_before, payload,"
        " created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?) ON CONFLICT (kind, ref) DO NOTHING",
        (kind, ref, max_attempts, not_before, json.dumps(payload) if payload else None, now, now),
    )
    if cur.rowcount == 1 and not_before <= now:
        notify_queued(conn, kind)
    return cur.rowcount == 1


def notify_queued(conn: Conn, kind: str) -> None:
    """Tell every node's idle workers that a ``kind`` job is due (PostgreSQL's NOTIFY, sent at commit;
    SQLite has one node, whose own pool is woken by its caller)."""
    if isinstance(conn, PgConnection):
        conn.execute(f"SELECT pg_notify('{CHANNEL}', ?)", (kind,))


class JobQueue(Connections):
    """Queue, lease, heartbeat, finish, retry and release jobs; counts for status and metrics."""

    def enqueue(self, kind: str, ref: str, *, payload: dict[str, Any] | None = None,
                max_attempts: int = 3, delay_s: float = 0.0) -> bool:
        """Queue a job; a job with the same (kind, ref) is kept once (returns False)."""
        now = time.time()
        with self.transaction() as conn:
            return enqueue_in(conn, kind, ref, payload, max_attempts, now + delay_s, now)

    def lease(self, kinds: Sequence[str], worker: str, *, limit: int = 1, lease_s: float = 300.0) -> list[Job]:
        """Take up to ``limit`` due jobs of the given kinds for ``worker`` until the lease expires.

        Jobs whose lease expired are taken again; one that has used all its attempts is failed.
        """
        now = time.time()
        marks = ",".join("?" for _ in kinds)
        with self.transaction() as conn:
            conn.execute(
                f"UPDATE jobs SET state='failed', updated_at=?, lease_until=NULL,"
                f" error=COALESCE(error, 'lease expired') || ' (attempt ' || attempts || ' of '"
                f" || max_attempts || ')'"
                f" WHERE kind IN ({marks}) AND state='running' AND lease_until < ? AND attempts >= max_attempts",
                (now, *kinds, now),
            )
            rows = conn.execute(
                f"UPDATE jobs SET state='running', worker=?, lease_until=?, attempts=attempts+1, updated_at=?"
                f" WHERE id IN (SELECT id FROM jobs WHERE kind IN ({marks}) AND"
                f" ((state='queued' AND not_before <= ?) OR (state='running' AND lease_until < ?))"
                f" ORDER BY not_before, id LIMIT ?{ROW_LOCKS[self.engine]}) RETURNING *",
                (worker, now + lease_s, now, *kinds, now, now, limit),
            ).fetchall()
        return sorted((Job.from_row(r) for r in rows), key=lambda j: j.id)

    def finish(self, job: Job, state: str, *, error: str | None = None,
               detail: str | None = None) -> bool:
        """End a job as done, skipped or failed; False when this worker no longer holds its lease."""
        if state not in ("done", "skipped", "failed"):
            raise ValueError(f"state must be done, skipped or failed, not {state!r}")
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state=?, error=?, detail=?, lease_until=NULL, updated_at=?"
                " WHERE id=? AND worker=? AND state='running'",
                (state, error, detail, time.time(), job.id, job.worker),
            )
        return cur.rowcount == 1

    def retry_later(self, job: Job, delay_s: float, error: str) -> bool:
        """Put a running job back in the queue after ``delay_s``, keeping its error (back-off)."""
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state='queued', error=?, not_before=?, lease_until=NULL, updated_at=?"
                " WHERE id=? AND worker=? AND state='running'",
                (error, now + delay_s, now, job.id, job.worker),
            )
        return cur.rowcount == 1

    def requeue(self, kind: str, *, states: Sequence[str] = ("failed",)) -> int:
        """Send failed (parked) jobs of ``kind`` round again with fresh attempts."""
        now = time.time()
        marks = ",".join("?" for _ in states)
        with self.transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET state='queued', attempts=0, not_before=?, updated_at=?, worker=NULL"
                f" WHERE kind=? AND state IN ({marks})",
                (now, now, kind, *states),
            )
            if cur.rowcount:
                notify_queued(conn, kind)
        return cur.rowcount

    def renew(self, worker_prefix: str, lease_s: float) -> int:
        """Heartbeat: extend the leases of the running jobs of workers named ``worker_prefix...``.

        The holder renews while it works, so a lease only has to outlive a missed heartbeat, not the
        longest job: a lease held by a dead process runs out within seconds.
        """
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET lease_until=?, updated_at=? WHERE state='running' AND worker LIKE ? || '%'",
                (now + lease_s, now, worker_prefix),
            )
        return cur.rowcount

    def take_back_orphans(self, kinds: Sequence[str]) -> int:
        """Queue again at once every running job of ``kinds``: for a process that owns the database
        alone (the embedded node, see :class:`dicom_node.storelock.StorageLock`), whatever is still
        running at its start was cut by its predecessor's death. The attempt stays counted, so a job
        that kills the process every time is failed in the end, not retried for ever."""
        now = time.time()
        marks = ",".join("?" for _ in kinds)
        with self.transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET state='queued', lease_until=NULL, worker=NULL, not_before=?, updated_at=?,"
                f" error='taken back at start: its worker died (attempt ' || attempts || ' of ' || max_attempts"
                f" || ')' WHERE state='running' AND kind IN ({marks})",
                (now, now, *kinds),
            )
        return cur.rowcount

    def release(self, worker_prefix: str) -> int:
        """Give back the running jobs of workers whose name starts with ``worker_prefix`` (clean stop).

        The attempt is not counted: the job was interrupted, not failed.
        """
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "UPDATE jobs SET state='queued', attempts=CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END,"
                " lease_until=NULL, worker=NULL, updated_at=? WHERE state='running' AND worker LIKE ? || '%'"
                " RETURNING kind",
                (now, worker_prefix),
            )
            kinds = [r[0] for r in cur.fetchall()]
            for kind in sorted(set(kinds)):  # the other nodes' workers take them at once
                notify_queued(conn, kind)
        return len(kinds)

    def job_counts(self, kind: str | None = None) -> dict[str, int]:
        """Counts by state (every state present, zero when none)."""
        counts = dict.fromkeys(JOB_STATES, 0)
        sql = "SELECT state, COUNT(*) FROM jobs"
        args: tuple[Any, ...] = ()
        if kind:
            sql += " WHERE kind = ?"
            args = (kind,)
        for state, n in self.conn().execute(sql + " GROUP BY state", args):
            counts[state] = n
        return counts

    def jobs(self, *, state: str | None = None, kind: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, args = [], []
        if state:
            where.append("state = ?")
            args.append(state)
        if kind:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT id, kind, ref, state, attempts, max_attempts, error, detail, created_at, updated_at FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        return [dict(r) for r in self.conn().execute(sql, (*args, limit))]

    def job(self, kind: str, ref: str) -> dict[str, Any] | None:
        row = self.conn().execute("SELECT * FROM jobs WHERE kind=? AND ref=?", (kind, ref)).fetchone()
        return dict(row) if row else None
