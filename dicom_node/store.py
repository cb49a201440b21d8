"""The node's SQLite tables: instances, jobs, results, deliveries, audit — and the job queue over them.

One database file in WAL mode is shared by the receiver, the workers, the twin and the commands (which
read it while the node serves). Each thread gets its own connection; writes take ``BEGIN IMMEDIATE``
so a lease or an insert is atomic, and ``synchronous=FULL`` so a committed row survives a power cut,
which is what lets the receiver answer Success only after the commit ("nothing lost").

Jobs move ``queued → running → done | skipped | failed``. A lease has an expiry: a job whose worker
died is taken again once it has expired, until ``max_attempts`` is spent. ``finish`` is fenced by the
lease owner, so a worker that lost its lease cannot overwrite the state set by the one that took over.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

JOB_STATES = ("queued", "running", "done", "skipped", "failed")
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    modality TEXT,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT,
    peer_host TEXT,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_instance_uid);
CREATE INDEX IF NOT EXISTS instances_received ON instances (received_at);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued',
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    not_before REAL NOT NULL DEFAULT 0,
    lease_until REAL,
    worker TEXT,
    error TEXT,
    detail TEXT,
    payload TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    UNIQUE (kind, ref)
);
CREATE INDEX IF NOT EXISTS jobs_pick ON jobs (kind, state, not_before, id);
CREATE TABLE IF NOT EXISTS findings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    x0 REAL NOT NULL, y0 REAL NOT NULL, x1 REAL NOT NULL, y1 REAL NOT NULL,
    score REAL NOT NULL,
    label TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_instance ON findings (sop_instance_uid);
CREATE TABLE IF NOT EXISTS analyses (
    sop_instance_uid TEXT PRIMARY KEY,
    outcome TEXT NOT NULL,
    reason TEXT,
    model_name TEXT,
    model_version TEXT,
    n_findings INTEGER NOT NULL DEFAULT 0,
    opacity_probability REAL,
    assumptions TEXT,
    preprocess_ms REAL,
    inference_ms REAL,
    total_ms REAL,
    analysed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    sop_instance_uid TEXT PRIMARY KEY,
    source_sop_instance_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    kind TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (source_sop_instance_uid, kind)
);
CREATE INDEX IF NOT EXISTS results_study ON results (study_instance_uid);
CREATE TABLE IF NOT EXISTS deliveries (
    result_uid TEXT NOT NULL,
    destination TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    delivered_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (result_uid, destination)
);
CREATE TABLE IF NOT EXISTS peer_status (
    name TEXT PRIMARY KEY,
    last_echo_at REAL,
    last_echo_ok INTEGER,
    last_echo_error TEXT,
    last_delivery_at REAL,
    last_delivery_ok INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    event TEXT NOT NULL,
    peer_ae TEXT,
    peer_host TEXT,
    outcome TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
-- What QIDO-RS matches on (PS3.18 §10.6), one row per stored instance or result, read from its
-- header by dicom_node.dicomweb.index the first time a query finds it missing: a cache of the files,
-- which stay the truth. Holds patient attributes, as the files do; they are never logged.
CREATE TABLE IF NOT EXISTS dicomweb_index (
    sop_instance_uid TEXT PRIMARY KEY,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    origin TEXT NOT NULL,
    attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS dicomweb_index_study ON dicomweb_index (study_instance_uid, series_instance_uid);
-- The objects a query found unreadable (gone, truncated, not DICOM), with the file's mtime and size
-- then (NULL when missing): not read again until the file changes, so each is said once.
CREATE TABLE IF NOT EXISTS dicomweb_unreadable (
    sop_instance_uid TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    mtime_ns INTEGER,
    size INTEGER,
    reason TEXT NOT NULL
);
"""


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


@dataclass(frozen=True)
class InstanceRow:
    """What the receiver records of one stored instance (UIDs and counts only: no patient data)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    transfer_syntax_uid: str
    path: str
    size: int
    calling_ae: str | None
    peer_host: str | None



def _insert_audit(conn: sqlite3.Connection, at: float, event: str, peer_ae: str | None, peer_host: str | None,
                  outcome: str | None, detail: dict[str, Any] | None) -> None:
    """One audit row, inside the caller's transaction."""
    conn.execute("INSERT INTO audit (at, event, peer_ae, peer_host, outcome, detail) VALUES (?,?,?,?,?,?)",
                 (at, event, peer_ae, peer_host, outcome, json.dumps(detail) if detail else None))

def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database written by an older version up to :data:`SCHEMA_VERSION`, in place."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(analyses)")}
    if "opacity_probability" not in columns:  # version 1 -> 2: the image-level answer
        conn.execute("ALTER TABLE analyses ADD COLUMN opacity_probability REAL")
    if "assumptions" not in columns:  # version 2 -> 3: what was assumed for an unlabelled film
        conn.execute("ALTER TABLE analyses ADD COLUMN assumptions TEXT")


def _analysis_row(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """An analyses row as callers see it: ``assumptions`` a list of sentences ([] when none)."""
    out = dict(row)
    if "assumptions" in out:
        out["assumptions"] = json.loads(out["assumptions"]) if out["assumptions"] else []
    return out


class Store:
    """Thread-safe access to the node's database; one connection per thread."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []  # (owner thread, its connection)
        self._lock = threading.Lock()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self.conn()
            conn.executescript(_SCHEMA)  # runs in its own transaction; every statement is idempotent
            with self.transaction() as conn:
                _migrate(conn)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )

    # -- connections ---------------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (autocommit; use :meth:`transaction` to group writes)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.readonly:
                uri = f"file:{self.path}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                # Connections of threads that have ended would hold their file descriptors for ever.
                ended = [entry for entry in self._all if not entry[0].is_alive()]
                for entry in ended:
                    entry[1].close()
                    self._all.remove(entry)
                self._all.append((threading.current_thread(), conn))
        return conn

    def db(self) -> sqlite_utils.Database:
        """This thread's connection wrapped by sqlite-utils (for the twin and for queries)."""
        wrapped: sqlite_utils.Database | None = getattr(self._local, "db", None)
        if wrapped is None:
            wrapped = sqlite_utils.Database(self.conn())
            self._local.db = wrapped
        return wrapped

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: one writer at a time, all or nothing."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection and those of ended threads.

        A connection of another thread that is still alive stays open (closed when the process
        ends): closing a sqlite3 connection while its thread is inside a query crashes the process.
        """
        me = threading.current_thread()
        with self._lock:
            kept = [(t, c) for t, c in self._all if t is not me and t.is_alive()]
            for owner, conn in self._all:
                if (owner, conn) in kept:
                    continue
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all = kept
        self._local = threading.local()

    # -- meta ----------------------------------------------------------------------------------

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row["value"] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                         " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def set_meta_once(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is there already; return what is stored."""
        with self.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, value))
            return str(conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    # -- instances -----------------------------------------------------------------------------

    def has_instance(self, sop_instance_uid: str) -> bool:
        row = self.conn().execute(
            "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return row is not None

    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        row = self.conn().execute(
            "SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return dict(row) if row else None

    def add_instance(self, row: InstanceRow, *, job_kind: str = "analyse", max_attempts: int = 3) -> bool:
        """Record a stored instance and queue its analysis in one transaction.

        Returns False (and changes nothing) when the SOP Instance UID is already stored.
        """
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT OR IGNORE INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,"
                " series_instance_uid, modality, transfer_syntax_uid, path, size, calling_ae, peer_host,"
                " received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (row.sop_instance_uid, row.sop_class_uid, row.study_instance_uid,
                 row.series_instance_uid, row.modality, row.transfer_syntax_uid, row.path, row.size,
                 row.calling_ae, row.peer_host, now),
            )
            if cur.rowcount == 0:
                return False
            self._enqueue(conn, job_kind, row.sop_instance_uid, None, max_attempts, 0.0, now)
        return True

    def instance_paths(self) -> set[str]:
        return {r[0] for r in self.conn().execute("SELECT path FROM instances")}

    # -- jobs ----------------------------------------------------------------------------------

    @staticmethod
    def _enqueue(conn: sqlite3.Connection, kind: str, ref: str, payload: dict[str, Any] | None,
                 max_attempts: int, not_before: float, now: float) -> bool:
        cur = conn.execute(
            "INSERT OR IGNORE INTO jobs (kind, ref, state, max_attempts, not_before, payload,"
            " created_at, updated_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?)",
            (kind, ref, max_attempts, not_before, json.dumps(payload) if payload else None, now, now),
        )
        return cur.rowcount == 1

    def enqueue(self, kind: str, ref: str, *, payload: dict[str, Any] | None = None,
                max_attempts: int = 3, delay_s: float = 0.0) -> bool:
        """Queue a job; a job with the same (kind, ref) is kept once (returns False)."""
        now = time.time()
        with self.transaction() as conn:
            return self._enqueue(conn, kind, ref, payload, max_attempts, now + delay_s, now)

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
                f" ORDER BY not_before, id LIMIT ?) RETURNING *",
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
                "UPDATE jobs SET state='queued', attempts=MAX(attempts-1, 0), lease_until=NULL,"
                " worker=NULL, updated_at=? WHERE state='running' AND worker LIKE ? || '%'",
                (now, worker_prefix),
            )
        return cur.rowcount

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

    # -- analyses, findings, results, deliveries ------------------------------------------------

    def record_analysis(self, sop_instance_uid: str, outcome: str, *, reason: str | None = None,
                        findings: Sequence[dict[str, Any]] = (), model_name: str | None = None,
                        model_version: str | None = None, timings_ms: dict[str, float] | None = None,
                        opacity_probability: float | None = None, assumptions: Sequence[str] = ()) -> None:
        """Replace this instance's analysis and findings (idempotent: a redo after a crash overwrites).

        ``assumptions`` are the sentences routing recorded for a film whose header left body part or
        view empty (``dicom_node.results.Assumption``), kept as a JSON list.
        """
        now = time.time()
        t = timings_ms or {}
        with self.transaction() as conn:
            conn.execute("DELETE FROM findings WHERE sop_instance_uid = ?", (sop_instance_uid,))
            conn.executemany(
                "INSERT INTO findings (sop_instance_uid, x0, y0, x1, y1, score, label, model_name, model_version,"
                " created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(sop_instance_uid, f["x0"], f["y0"], f["x1"], f["y1"], f["score"], f["label"], model_name,
                  model_version, now) for f in findings],
            )
            conn.execute(
                "INSERT OR REPLACE INTO analyses (sop_instance_uid, outcome, reason, model_name, model_version,"
                " n_findings, opacity_probability, assumptions, preprocess_ms, inference_ms, total_ms, analysed_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (sop_instance_uid, outcome, reason, model_name, model_version, len(findings), opacity_probability,
                 json.dumps(list(assumptions)) if assumptions else None,
                 t.get("preprocess"), t.get("inference"), t.get("total"), now),
            )

    def analysis(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """This instance's analysis row (outcome, reason, model, opacity probability, assumptions, timings)."""
        row = self.conn().execute("SELECT * FROM analyses WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return _analysis_row(row) if row else None

    def findings(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn().execute(
            "SELECT * FROM findings WHERE sop_instance_uid = ? ORDER BY score DESC", (sop_instance_uid,))]

    def results_for(self, source_sop_instance_uid: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn().execute(
            "SELECT * FROM results WHERE source_sop_instance_uid = ? ORDER BY kind", (source_sop_instance_uid,))]

    def add_results(self, source_sop_instance_uid: str, study_instance_uid: str,
                    results: Sequence[dict[str, Any]], destinations: Sequence[str], *,
                    max_attempts: int) -> None:
        """Record result objects (``sop_instance_uid``, ``kind``, ``sop_class_uid``, ``path``) and queue one
        delivery job per (result, destination) whose kinds include it — all in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            for r in results:
                conn.execute(
                    "INSERT OR IGNORE INTO results (sop_instance_uid, source_sop_instance_uid, study_instance_uid,"
                    " kind, sop_class_uid, path, created_at) VALUES (?,?,?,?,?,?,?)",
                    (r["sop_instance_uid"], source_sop_instance_uid, study_instance_uid, r["kind"],
                     r["sop_class_uid"], r["path"], now),
                )
                for dest in r.get("destinations", destinations):
                    conn.execute(
                        "INSERT OR IGNORE INTO deliveries (result_uid, destination, state, updated_at)"
                        " VALUES (?, ?, 'queued', ?)", (r["sop_instance_uid"], dest, now))
                    self._enqueue(conn, "deliver", f"{r['sop_instance_uid']}>{dest}", None, max_attempts, 0.0, now)

    def result(self, sop_instance_uid: str) -> dict[str, Any] | None:
        row = self.conn().execute("SELECT * FROM results WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return dict(row) if row else None

    def set_delivery(self, result_uid: str, destination: str, state: str, *, attempts: int,
                     peer_ae: str, peer_host: str, error: str | None = None) -> None:
        """Record the outcome of one delivery attempt: the delivery's state, the destination's last
        delivery, and a row in the audit trail (every attempt, not only the last)."""
        now = time.time()
        with self.transaction() as conn:
            _insert_audit(conn, now, "delivery", peer_ae, peer_host, state,
                          {"destination": destination, "result_uid": result_uid, "attempts": attempts, "error": error})
            conn.execute(
                "UPDATE deliveries SET state=?, attempts=?, error=?, updated_at=?,"
                " delivered_at=CASE WHEN ?='delivered' THEN ? ELSE delivered_at END"
                " WHERE result_uid=? AND destination=?",
                (state, attempts, error, now, state, now, result_uid, destination),
            )
            conn.execute(
                "INSERT INTO peer_status (name, last_delivery_at, last_delivery_ok) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET last_delivery_at=excluded.last_delivery_at,"
                " last_delivery_ok=excluded.last_delivery_ok",
                (destination, now, 1 if state == "delivered" else 0),
            )

    def set_echo(self, name: str, ok: bool, error: str | None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO peer_status (name, last_echo_at, last_echo_ok, last_echo_error) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET last_echo_at=excluded.last_echo_at,"
                " last_echo_ok=excluded.last_echo_ok, last_echo_error=excluded.last_echo_error",
                (name, time.time(), 1 if ok else 0, error),
            )

    def study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Each instance of a study with its analysis, findings, results and their deliveries."""
        conn = self.conn()
        out = []
        for inst in conn.execute(
            "SELECT i.sop_instance_uid, i.sop_class_uid, i.modality, i.calling_ae, i.received_at,"
            " a.outcome, a.reason, a.model_name, a.model_version, a.n_findings, a.opacity_probability,"
            " a.assumptions, a.inference_ms, a.total_ms"
            " FROM instances i LEFT JOIN analyses a USING (sop_instance_uid)"
            " WHERE i.study_instance_uid = ? ORDER BY i.received_at", (study_instance_uid,)):
            item = _analysis_row(inst)
            item["findings"] = [{k: f[k] for k in ("x0", "y0", "x1", "y1", "score", "label")}
                                for f in self.findings(inst["sop_instance_uid"])]
            item["results"] = []
            for r in self.results_for(inst["sop_instance_uid"]):
                deliveries = [dict(d) for d in conn.execute(
                    "SELECT destination, state, attempts, error, delivered_at FROM deliveries WHERE result_uid = ?",
                    (r["sop_instance_uid"],))]
                item["results"].append({"kind": r["kind"], "sop_instance_uid": r["sop_instance_uid"],
                                        "sop_class_uid": r["sop_class_uid"], "deliveries": deliveries})
            out.append(item)
        return out

    # -- DICOMweb index (QIDO-RS) -----------------------------------------------------------------

    def unindexed(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored instances and results that have no ``dicomweb_index`` row yet and are not marked
        unreadable: ``sop_instance_uid``, ``path``, ``origin`` (``received`` or ``result``)."""
        not_yet = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {table} x WHERE x.sop_instance_uid = {{t}}.sop_instance_uid)"
                               for table in ("dicomweb_index", "dicomweb_unreadable"))
        return [dict(r) for r in self.conn().execute(
            f"SELECT sop_instance_uid, path, 'received' AS origin FROM instances i WHERE {not_yet.format(t='i')}"
            f" UNION ALL SELECT sop_instance_uid, path, 'result' FROM results r WHERE {not_yet.format(t='r')}"
            " LIMIT ?", (limit,))]

    def put_index(self, rows: Sequence[dict[str, Any]], unreadable: Sequence[dict[str, Any]] = ()) -> None:
        """Write index rows (idempotent: an instance indexed twice keeps one row) and mark the
        ``unreadable`` objects (``sop_instance_uid``, ``path``, ``mtime_ns``, ``size``, ``reason``)."""
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO dicomweb_index (sop_instance_uid, study_instance_uid, series_instance_uid,"
                " sop_class_uid, transfer_syntax_uid, path, origin, attributes) VALUES"
                " (:sop_instance_uid, :study_instance_uid, :series_instance_uid, :sop_class_uid,"
                " :transfer_syntax_uid, :path, :origin, :attributes)", rows)
            conn.executemany(
                "INSERT OR REPLACE INTO dicomweb_unreadable (sop_instance_uid, path, mtime_ns, size, reason)"
                " VALUES (:sop_instance_uid, :path, :mtime_ns, :size, :reason)", unreadable)

    def unreadable(self) -> list[dict[str, Any]]:
        """The objects marked unreadable for the index, with their file's ``mtime_ns`` and ``size`` then."""
        return [dict(r) for r in self.conn().execute(
            "SELECT sop_instance_uid, path, mtime_ns, size FROM dicomweb_unreadable")]

    def forget_unreadable(self, sop_instance_uids: Sequence[str]) -> None:
        """Unmark objects (their file changed): the next query reads them again."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM dicomweb_unreadable WHERE sop_instance_uid = ?",
                             [(u,) for u in sop_instance_uids])

    # -- audit ---------------------------------------------------------------------------------

    def audit(self, event: str, *, peer_ae: str | None = None, peer_host: str | None = None,
              outcome: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Append to the audit trail (UIDs, AE titles, addresses, counts: never patient data)."""
        with self.transaction() as conn:
            _insert_audit(conn, time.time(), event, peer_ae, peer_host, outcome, detail)

    # -- summary -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``dicom-node status --json`` prints: instances stored and jobs by state."""
        conn = self.conn()
        instances = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        size = conn.execute("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()[0]
        last = conn.execute("SELECT MAX(received_at) FROM instances").fetchone()[0]
        by_kind: dict[str, dict[str, int]] = {}
        for kind, state, n in conn.execute("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state"):
            by_kind.setdefault(kind, dict.fromkeys(JOB_STATES, 0))[state] = n
        return {
            "instances": instances,
            "bytes": size,
            "last_received_at": last,
            "jobs": self.job_counts(),
            "jobs_by_kind": by_kind,
        }
