"""The twin's tables in the node's database (SQLite or PostgreSQL), and how to write them safely.

The twin works through the node store's connections (:mod:`dicom_node.store`): a ``sqlite3``
connection on SQLite, a :class:`dicom_node.store.postgres.PgConnection` on PostgreSQL, both taking the
same SQL (the dialect both engines share, sqlite3's ``?`` and ``:name`` parameters). Every twin call
asks ``connect()`` for the calling thread's connection and never keeps it. Tables are prefixed
``twin_`` and written only by this package. Times are stored as ISO 8601 UTC strings of one fixed
form, so they sort as text.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from dicom_node.store.postgres import PgConnection, is_postgres, pg_ddl
from dicom_node.store.schema import column, table_columns
from dicom_node.store.schema import upsert as upsert_sql

#: ``connect()``: the calling thread's connection (sqlite3.Connection or PgConnection)
Connect = Callable[[], Any]

try:  # the errors of the database itself (not of a file or a line): a pass stops on them
    import psycopg

    DB_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, psycopg.Error)
except ImportError:  # pragma: no cover - SQLite only
    DB_ERRORS = (sqlite3.Error,)

# The twin's tables. Written in SQLite's DDL; on PostgreSQL through pg_ddl (identity keys, BIGINT,
# DOUBLE PRECISION). Counters of twin_daily are NOT NULL DEFAULT 0. "offset" is quoted everywhere:
# a reserved word on PostgreSQL.
SCHEMA = """
CREATE TABLE IF NOT EXISTS twin_devices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT, manufacturer TEXT, model TEXT, serial TEXT, station TEXT, device_uid TEXT,
    institution TEXT, department TEXT, manufacturer_n TEXT, model_n TEXT, serial_n TEXT, station_n TEXT,
    first_seen TEXT, last_seen TEXT, last_acquisition TEXT, created_by TEXT
);
CREATE INDEX IF NOT EXISTS idx_twin_devices_serial_n ON twin_devices (serial_n);
CREATE INDEX IF NOT EXISTS idx_twin_devices_station_n ON twin_devices (station_n);
CREATE UNIQUE INDEX IF NOT EXISTS twin_devices_key_unique ON twin_devices (key);
CREATE TABLE IF NOT EXISTS twin_config (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER, since TEXT, software_versions TEXT, detector_id TEXT, detector_type TEXT,
    detector_manufacturer TEXT, detector_model TEXT, grid_id TEXT, grid TEXT, changes TEXT,
    first_instance TEXT
);
CREATE INDEX IF NOT EXISTS idx_twin_config_device_id_since ON twin_config (device_id, since);
CREATE TABLE IF NOT EXISTS twin_acquisitions (
    sop_instance_uid TEXT PRIMARY KEY,
    device_id INTEGER, config_id INTEGER, at TEXT, acquired_at TEXT, received_at TEXT, modality TEXT,
    body_part TEXT, view TEXT, kvp REAL, mas REAL, exposure_time_ms REAL, exposure_index REAL,
    target_exposure_index REAL, deviation_index REAL, deviation_index_computed INTEGER, dap REAL,
    detector_temperature REAL, exposures_since_calibration INTEGER, sid_mm REAL,
    detector_calibrated_on TEXT, device_calibrated_on TEXT, plate_id TEXT, cassette_id TEXT
);
CREATE INDEX IF NOT EXISTS idx_twin_acquisitions_device_id_at ON twin_acquisitions (device_id, at);
CREATE TABLE IF NOT EXISTS twin_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER, at TEXT, kind TEXT, code TEXT, message TEXT, values_json TEXT, file TEXT,
    line_no INTEGER
);
CREATE INDEX IF NOT EXISTS idx_twin_events_device_id_kind_at ON twin_events (device_id, kind, at);
CREATE TABLE IF NOT EXISTS twin_maintenance (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER, at TEXT, kind TEXT, note TEXT, source TEXT, recorded_at TEXT
);
CREATE INDEX IF NOT EXISTS idx_twin_maintenance_device_id_at ON twin_maintenance (device_id, at);
CREATE TABLE IF NOT EXISTS twin_health (
    device_id INTEGER PRIMARY KEY,
    status TEXT, since TEXT, reasons TEXT, findings TEXT, evaluated_at TEXT
);
CREATE TABLE IF NOT EXISTS twin_health_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id INTEGER, at TEXT, status TEXT, reasons TEXT
);
CREATE INDEX IF NOT EXISTS idx_twin_health_log_device_id_at ON twin_health_log (device_id, at);
CREATE TABLE IF NOT EXISTS twin_daily (
    device_id INTEGER, day TEXT,
    acquisitions INTEGER NOT NULL DEFAULT 0, di_n INTEGER NOT NULL DEFAULT 0,
    di_sum REAL NOT NULL DEFAULT 0, di_sumsq REAL NOT NULL DEFAULT 0, dap_sum REAL NOT NULL DEFAULT 0,
    mas_sum REAL NOT NULL DEFAULT 0, faults INTEGER NOT NULL DEFAULT 0,
    warnings INTEGER NOT NULL DEFAULT 0, events INTEGER NOT NULL DEFAULT 0,
    load_n INTEGER NOT NULL DEFAULT 0, kvp_mas_sum REAL NOT NULL DEFAULT 0,
    ai_analysed INTEGER NOT NULL DEFAULT 0, ai_positive INTEGER NOT NULL DEFAULT 0,
    ai_skipped INTEGER NOT NULL DEFAULT 0, ai_score_n INTEGER NOT NULL DEFAULT 0,
    ai_score_sum REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, day)
);
CREATE TABLE IF NOT EXISTS twin_ai_outcomes (
    sop_instance_uid TEXT PRIMARY KEY,
    device_id INTEGER, at TEXT, score REAL, findings INTEGER, positive INTEGER, skipped INTEGER,
    recorded_at TEXT
);
CREATE INDEX IF NOT EXISTS idx_twin_ai_outcomes_device_id_at ON twin_ai_outcomes (device_id, at);
CREATE TABLE IF NOT EXISTS twin_sidecar_files (
    path TEXT, dev INTEGER, inode INTEGER, "offset" INTEGER, line_no INTEGER, head TEXT, head_len INTEGER,
    updated_at TEXT,
    PRIMARY KEY (dev, inode)
);
CREATE TABLE IF NOT EXISTS twin_quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT, line_no INTEGER, reason TEXT, excerpt TEXT, recorded_at TEXT
);
CREATE INDEX IF NOT EXISTS idx_twin_quarantine_recorded_at ON twin_quarantine (recorded_at);
"""
# made after the migrations (below): an older table gains them once it is brought up to date
SCHEMA_AFTER = """
CREATE INDEX IF NOT EXISTS twin_sidecar_files_path ON twin_sidecar_files (path);
CREATE INDEX IF NOT EXISTS twin_ai_outcomes_analysed ON twin_ai_outcomes (device_id, skipped, at);
"""
TABLES = (
    "twin_devices", "twin_config", "twin_acquisitions", "twin_events", "twin_maintenance", "twin_health",
    "twin_health_log", "twin_daily", "twin_ai_outcomes", "twin_sidecar_files", "twin_quarantine",
)
SIDECAR_COLUMNS = ("path", "dev", "inode", '"offset"', "line_no", "head", "head_len", "updated_at")

# the last object ensure_schema creates: when it exists, the schema is complete (its name changes
# with each migration, so an older database is brought up to date once, on the first start)
SCHEMA_MARKER = "twin_ai_outcomes_analysed"
# made by the re-keying of issue 12: a database without it has its sidecar offsets keyed by path
SIDECAR_PATH_INDEX = "twin_sidecar_files_path"
COUNTERS = (
    "acquisitions",
    "di_n",
    "di_sum",
    "di_sumsq",
    "dap_sum",
    "mas_sum",
    "faults",
    "warnings",
    "events",
    "load_n",
    "kvp_mas_sum",
    "ai_analysed",
    "ai_positive",
    "ai_skipped",
    "ai_score_n",
    "ai_score_sum",
)
#: the counters that are sums of measurements (REAL); the others count (INTEGER)
#: the advisory lock a write transaction of the twin takes on PostgreSQL ('twin'): one writer at a
#: time, as SQLite's BEGIN IMMEDIATE (two nodes meeting one new device make one record, not two)
WRITE_LOCK = 0x7477696E
REAL_COUNTERS = frozenset({"di_sum", "di_sumsq", "dap_sum", "mas_sum", "kvp_mas_sum", "ai_score_sum"})


def conn_of(db: Any) -> Any:
    """The connection itself: a wrapper with a sqlite3 ``conn`` (as sqlite-utils' Database) is unwrapped
    to it; a sqlite3 connection or a PgConnection is returned as is."""
    inner = getattr(db, "conn", None)
    return inner if isinstance(inner, sqlite3.Connection) else db


def engine(db: Any) -> str:
    """``sqlite`` or ``postgresql``: the one statement that differs asks (see :func:`ensure_schema`)."""
    return "sqlite" if isinstance(conn_of(db), sqlite3.Connection) else "postgresql"


class thread_local_connect:  # noqa: N801  (a function to its callers: ``thread_local_connect(path)()``)
    """A ``connect`` giving each thread its own connection to one database: a SQLite file (WAL,
    autocommit, ``sqlite3.Row`` rows, as the node's store) or a ``postgresql://`` URL.

    The node passes its own (``Store.conn``); this one serves the CLI and the tests. :meth:`close`
    closes every connection it made.
    """

    def __init__(self, target: str | Path, busy_timeout_ms: int = 10000) -> None:
        self.target = target
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if is_postgres(self.target):
                conn = PgConnection(str(self.target))
            else:
                conn = sqlite3.connect(str(self.target), timeout=self.busy_timeout_ms / 1000,
                                       isolation_level=None, check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def _present(db: Any) -> set[str]:
    """The names of the twin's tables and indexes that exist (per engine: the catalogues differ)."""
    if engine(db) == "sqlite":
        sql = "SELECT name FROM sqlite_master WHERE name LIKE 'twin_%'"
    else:
        sql = ("SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() "
               "UNION SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    return {r["name"] for r in rows(db, sql)}


def _script(db: Any, ddl: str) -> None:
    conn = conn_of(db)
    for statement in (pg_ddl(ddl) if engine(conn) == "postgresql" else ddl).split(";"):
        if statement.strip():
            conn.execute(statement)


def ensure_schema(db: Any) -> None:
    """Create the twin's tables and indexes when missing (idempotent, safe beside other writers),
    and bring an older SQLite database up to date in place.

    When they all exist nothing is written, so a reader (the CLI) never waits for the write lock.
    """
    if set(TABLES) | {SIDECAR_PATH_INDEX, SCHEMA_MARKER} <= _present(db):
        return
    with writing(db):
        _script(db, SCHEMA)
        _key_sidecar_files_by_inode(db)
        _add_daily_counters(db)
        _script(db, SCHEMA_AFTER)


def _add_daily_counters(db: Any) -> None:
    """Add the counters ``twin_daily`` gained since it was created (issue 15: tube load, AI outcomes),
    0 by default; the tube load of the days whose raw acquisitions retention still holds is filled in
    from them, so a node upgraded mid-life counts its recent load (older days count 0, say the docs)."""
    present = table_columns(conn_of(db), "twin_daily")
    missing = [c for c in COUNTERS if c not in present]
    for name in missing:
        kind = "REAL" if name in REAL_COUNTERS else "INTEGER"
        _script(db, f"ALTER TABLE twin_daily ADD COLUMN {name} {kind} NOT NULL DEFAULT 0")
    if "kvp_mas_sum" in missing:
        execute(
            db,
            "UPDATE twin_daily SET "
            "load_n = (SELECT count(*) FROM twin_acquisitions a WHERE a.device_id = twin_daily.device_id "
            "AND substr(a.at, 1, 10) = twin_daily.day AND a.kvp IS NOT NULL AND a.mas IS NOT NULL), "
            "kvp_mas_sum = coalesce((SELECT sum(a.kvp * a.mas) FROM twin_acquisitions a "
            "WHERE a.device_id = twin_daily.device_id AND substr(a.at, 1, 10) = twin_daily.day), 0)",
        )


def primary_key(db: Any, table: str) -> list[str]:
    """The primary key columns of ``table``, in order (per engine: the catalogues differ)."""
    if engine(db) == "sqlite":
        info = rows(db, f"PRAGMA table_info({table})")
        return [r["name"] for r in sorted(info, key=lambda r: r["pk"]) if r["pk"]]
    return [r["name"] for r in rows(
        db,
        "SELECT a.attname AS name FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = CAST(? AS regclass) AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
        [table],
    )]


def _key_sidecar_files_by_inode(db: Any) -> None:
    """Re-key a ``twin_sidecar_files`` keyed by path (before issue 12) by (device, inode).

    Keyed by name, a rotation overwrote the renamed file's offset with the new file's, and a renamed
    file could be read again from its start; the latest row of each inode is kept. (Only SQLite
    databases are that old: the twin's tables on PostgreSQL are keyed by inode from the start.)
    """
    if engine(db) != "sqlite" or primary_key(db, "twin_sidecar_files") != ["path"]:
        return
    execute(db, "ALTER TABLE twin_sidecar_files RENAME TO twin_sidecar_files_by_path")
    for name in [r["name"] for r in rows(
        db,
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'twin_sidecar_files_by_path' "
        "AND sql IS NOT NULL",
    )]:
        execute(db, f"DROP INDEX {name}")
    _script(db, SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS twin_sidecar_files"):].split(";")[0])
    names = ", ".join(SIDECAR_COLUMNS)
    others = ", ".join(f"{c} = excluded.{c}" for c in SIDECAR_COLUMNS if c not in ("dev", "inode"))
    execute(
        db,
        f"INSERT INTO twin_sidecar_files ({names}) "
        f"SELECT {names} FROM twin_sidecar_files_by_path WHERE true ORDER BY updated_at "
        f"ON CONFLICT (dev, inode) DO UPDATE SET {others}",
    )
    execute(db, "DROP TABLE twin_sidecar_files_by_path")


def _in_transaction(conn: Any) -> bool:
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    from psycopg.pq import TransactionStatus

    return bool(conn.raw.info.transaction_status != TransactionStatus.IDLE)


@contextmanager
def writing(db: Any) -> Iterator[Any]:
    """One write transaction: on SQLite taken with BEGIN IMMEDIATE so that it waits (busy_timeout)
    for the write lock up front instead of failing on a read-to-write upgrade under WAL; on
    PostgreSQL BEGIN … COMMIT. Nested in another, a savepoint (both engines)."""
    conn = conn_of(db)
    if _in_transaction(conn):
        conn.execute("SAVEPOINT twin_writing")
        try:
            yield db
        except BaseException:
            conn.execute("ROLLBACK TO SAVEPOINT twin_writing")
            conn.execute("RELEASE SAVEPOINT twin_writing")
            raise
        conn.execute("RELEASE SAVEPOINT twin_writing")
        return
    if isinstance(conn, sqlite3.Connection):
        conn.execute("BEGIN IMMEDIATE")
    else:  # one twin writer at a time, as on SQLite (a device is resolved, then inserted)
        conn.execute("BEGIN")
    try:
        if not isinstance(conn, sqlite3.Connection):
            conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
        yield db
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def execute(db: Any, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
    """Run one statement on either engine; returns the cursor (``rowcount``, ``fetchone``)."""
    return conn_of(db).execute(sql, params)


def bump(db: Any, device_id: int, day: str, **counts: float) -> None:
    """Add to the device's daily rollup (rollups survive retention of raw rows)."""
    cols = [c for c in counts if c in COUNTERS]
    sets = ", ".join(f"{c} = twin_daily.{c} + excluded.{c}" for c in cols)
    execute(
        db,
        f"INSERT INTO twin_daily (device_id, day, {', '.join(cols)}) "
        f"VALUES (?, ?, {', '.join('?' * len(cols))}) "
        f"ON CONFLICT(device_id, day) DO UPDATE SET {sets}",
        [device_id, day, *(counts[c] for c in cols)],
    )


def insert(db: Any, table: str, row: Mapping[str, Any], *, returning: str | None = "id") -> int:
    """Insert one row and return its integer primary key (``RETURNING``, on both engines)."""
    cols = list(row)
    sql = (f"INSERT INTO {table} ({', '.join(column(c) for c in cols)}) VALUES ({', '.join('?' * len(cols))})"
           + (f" RETURNING {returning}" if returning else ""))
    cur = execute(db, sql, [row[c] for c in cols])
    return int(cur.fetchone()[0]) if returning else 0


def upsert(db: Any, table: str, row: Mapping[str, Any], key: Sequence[str]) -> None:
    """Insert the row, or replace the columns given of the row with that key (``ON CONFLICT``)."""
    execute(db, upsert_sql(table, list(row), key), list(row.values()))


def update(db: Any, table: str, row_id: int, values: Mapping[str, Any]) -> None:
    """Set ``values`` on the row of ``table`` whose ``id`` is ``row_id`` (nothing when empty)."""
    if values:
        sets = ", ".join(f"{column(c)} = ?" for c in values)
        execute(db, f"UPDATE {table} SET {sets} WHERE id = ?", [*values.values(), row_id])


def one(db: Any, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    found = rows(db, sql, params)
    return found[0] if found else None


def rows(db: Any, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """The rows as dicts by column name, on either engine."""
    cur = execute(db, sql, params or ())
    names = [d[0] for d in cur.description or ()]
    found = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    if found and not isinstance(cur, sqlite3.Cursor):
        # PostgreSQL's numerics (a sum of integers, a rounded number) as SQLite gives them: an int,
        # or a float when the number has decimals (round(x, 2) of 3 is 3.0, as on SQLite)
        for row in found:
            for k, v in row.items():
                if isinstance(v, Decimal):
                    exponent = v.as_tuple().exponent
                    row[k] = int(v) if isinstance(exponent, int) and exponent >= 0 else float(v)
    return found


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(dt: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken as the node's local time."""
    return (dt if dt.tzinfo else dt.astimezone()).astimezone(UTC)


def iso(dt: datetime) -> str:
    """The one stored form: ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``, sortable as text."""
    return aware(dt).isoformat(timespec="microseconds")


def from_iso(s: str | None) -> datetime | None:
    if not s:
        return None
    try:
        return aware(datetime.fromisoformat(s))
    except ValueError:
        return None
