"""The node's tables (DDL) and the in-place migrations of databases written by older versions.

One place for the schema, so the queries of every module in this package agree on it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from dicom_node.store.dbapi import Conn

SCHEMA_VERSION = 4


#: column names that are reserved words on PostgreSQL, quoted where a statement is built
RESERVED = frozenset({"offset"})


def column(name: str) -> str:
    """A column name as a built statement writes it (quoted when PostgreSQL reserves it)."""
    return f'"{name}"' if name in RESERVED else name


def upsert(table: str, columns: Sequence[str], key: Sequence[str], *, named: bool = False) -> str:
    """``INSERT ... ON CONFLICT (key) DO UPDATE`` of every other column (``DO NOTHING`` when there is
    none): the row replaced in place, in the SQL both SQLite (3.24+) and PostgreSQL speak (not SQLite's
    own ``INSERT OR REPLACE``). Values by name (``:column``) with ``named``, else by position."""
    values = ", ".join(f":{c}" for c in columns) if named else ", ".join("?" for _ in columns)
    others = ", ".join(f"{column(c)} = excluded.{column(c)}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(column(c) for c in columns)}) VALUES ({values})"
            f" ON CONFLICT ({', '.join(key)}) " + (f"DO UPDATE SET {others}" if others else "DO NOTHING"))

SCHEMA = """
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
-- Every node process on this database (docs/cluster.md): its roles, and when it last beat.
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    ae_title TEXT,
    roles TEXT NOT NULL,
    version TEXT,
    started_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    stopped_at REAL,
    model TEXT  -- JSON: this process's model, loading, ready (name, version), failed (error), stopped
);
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


def table_columns(conn: Conn, table: str) -> set[str]:
    """The column names of ``table`` on either engine."""
    if isinstance(conn, sqlite3.Connection):
        return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    return {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = ?", (table,))}


def migrate(conn: Conn) -> None:
    """Bring a database written by an older version up to :data:`SCHEMA_VERSION`, in place."""
    columns = table_columns(conn, "analyses")
    if "opacity_probability" not in columns:  # version 1 -> 2: the image-level answer
        conn.execute("ALTER TABLE analyses ADD COLUMN opacity_probability REAL")
    if "assumptions" not in columns:  # version 2 -> 3: what was assumed for an unlabelled film
        conn.execute("ALTER TABLE analyses ADD COLUMN assumptions TEXT")
    if "model" not in table_columns(conn, "nodes"):  # version 3 -> 4: each node's model, not one for all
        conn.execute("ALTER TABLE nodes ADD COLUMN model TEXT")
        conn.execute("DELETE FROM meta WHERE key = 'model_state'")
