"""The twin's tables in the node's shared SQLite database, and how to write them safely.

The node shares one SQLite file (WAL) across threads; every twin call asks ``connect()`` for the
calling thread's connection and never keeps it. Tables are prefixed ``twin_`` and written only by
this package. Times are stored as ISO 8601 UTC strings of one fixed form, so they sort as text.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import sqlite_utils

Connect = Callable[[], sqlite_utils.Database]

TEXT, INT, REAL = str, int, float

# table -> (columns, primary key, indexes); columns not null default 0 where they count things
TABLES: dict[str, tuple[dict[str, type], str | tuple[str, ...], list[tuple[str, ...]]]] = {
    "twin_devices": (
        {
            "id": INT,
            "key": TEXT,
            "manufacturer": TEXT,
            "model": TEXT,
            "serial": TEXT,
            "station": TEXT,
            "device_uid": TEXT,
            "institution": TEXT,
            "department": TEXT,
            "manufacturer_n": TEXT,
            "model_n": TEXT,
            "serial_n": TEXT,
            "station_n": TEXT,
            "first_seen": TEXT,
            "last_seen": TEXT,
            "last_acquisition": TEXT,
            "created_by": TEXT,
        },
        "id",
        [("serial_n",), ("station_n",)],
    ),
    "twin_config": (
        {
            "id": INT,
            "device_id": INT,
            "since": TEXT,
            "software_versions": TEXT,
            "detector_id": TEXT,
            "detector_type": TEXT,
            "detector_manufacturer": TEXT,
            "detector_model": TEXT,
            "grid_id": TEXT,
            "grid": TEXT,
            "changes": TEXT,
            "first_instance": TEXT,
        },
        "id",
        [("device_id", "since")],
    ),
    "twin_acquisitions": (
        {
            "sop_instance_uid": TEXT,
            "device_id": INT,
            "config_id": INT,
            "at": TEXT,
            "acquired_at": TEXT,
            "received_at": TEXT,
            "modality": TEXT,
            "body_part": TEXT,
            "view": TEXT,
            "kvp": REAL,
            "mas": REAL,
            "exposure_time_ms": REAL,
            "exposure_index": REAL,
            "target_exposure_index": REAL,
            "deviation_index": REAL,
            "deviation_index_computed": INT,
            "dap": REAL,
            "detector_temperature": REAL,
            "exposures_since_calibration": INT,
            "sid_mm": REAL,
            "detector_calibrated_on": TEXT,
            "device_calibrated_on": TEXT,
            "plate_id": TEXT,
            "cassette_id": TEXT,
        },
        "sop_instance_uid",
        [("device_id", "at")],
    ),
    "twin_events": (
        {
            "id": INT,
            "device_id": INT,
            "at": TEXT,
            "kind": TEXT,
            "code": TEXT,
            "message": TEXT,
            "values_json": TEXT,
            "file": TEXT,
            "line_no": INT,
        },
        "id",
        [("device_id", "kind", "at")],
    ),
    "twin_maintenance": (
        {
            "id": INT,
            "device_id": INT,
            "at": TEXT,
            "kind": TEXT,
            "note": TEXT,
            "source": TEXT,
            "recorded_at": TEXT,
        },
        "id",
        [("device_id", "at")],
    ),
    "twin_health": (
        {
            "device_id": INT,
            "status": TEXT,
            "since": TEXT,
            "reasons": TEXT,
            "findings": TEXT,
            "evaluated_at": TEXT,
        },
        "device_id",
        [],
    ),
    "twin_health_log": (
        {"id": INT, "device_id": INT, "at": TEXT, "status": TEXT, "reasons": TEXT},
        "id",
        [("device_id", "at")],
    ),
    "twin_daily": (
        {
            "device_id": INT,
            "day": TEXT,
            "acquisitions": INT,
            "di_n": INT,
            "di_sum": REAL,
            "di_sumsq": REAL,
            "dap_sum": REAL,
            "mas_sum": REAL,
            "faults": INT,
            "warnings": INT,
            "events": INT,
            # tube load (twin.tube): exposures with both kVp and mAs, and their sum of kVp x mAs
            "load_n": INT,
            "kvp_mas_sum": REAL,
            # AI outcomes (twin.ai_watch): images analysed, positive, skipped; sum and count of scores
            "ai_analysed": INT,
            "ai_positive": INT,
            "ai_skipped": INT,
            "ai_score_n": INT,
            "ai_score_sum": REAL,
        },
        ("device_id", "day"),
        [],
    ),
    "twin_ai_outcomes": (
        {
            "sop_instance_uid": TEXT,
            "device_id": INT,
            "at": TEXT,
            "score": REAL,
            "findings": INT,
            "positive": INT,
            "skipped": INT,
            "recorded_at": TEXT,
        },
        "sop_instance_uid",
        [("device_id", "at")],
    ),
    "twin_sidecar_files": (
        {
            "path": TEXT,
            "dev": INT,
            "inode": INT,
            "offset": INT,
            "line_no": INT,
            "head": TEXT,
            "head_len": INT,
            "updated_at": TEXT,
        },
        ("dev", "inode"),
        [],
    ),
    "twin_quarantine": (
        {"id": INT, "file": TEXT, "line_no": INT, "reason": TEXT, "excerpt": TEXT, "recorded_at": TEXT},
        "id",
        [("recorded_at",)],
    ),
}

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


def thread_local_connect(path: str | Path, busy_timeout_ms: int = 10000) -> Connect:
    """A ``connect`` giving each thread its own connection to one WAL database file.

    The node passes its own; this one serves the CLI and the tests.
    """
    local = threading.local()

    def connect() -> sqlite_utils.Database:
        db = getattr(local, "db", None)
        if db is None:
            conn = sqlite3.connect(str(path), timeout=busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            local.db = db
        return db

    return connect


def ensure_schema(db: sqlite_utils.Database) -> None:
    """Create the twin's tables and indexes when missing (idempotent, safe beside other writers).

    When they all exist nothing is written, so a reader (the CLI) never waits for the write lock.
    """
    present = {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE name LIKE 'twin_%'")}
    if set(TABLES) | {SIDECAR_PATH_INDEX, SCHEMA_MARKER} <= present:
        return
    with writing(db):
        for name, (columns, pk, indexes) in TABLES.items():
            table = db.table(name)
            defaults = {c: 0 for c in COUNTERS if c in columns} if name == "twin_daily" else None
            not_null = set(defaults) if defaults else None
            table.create(columns, pk=pk, if_not_exists=True, defaults=defaults, not_null=not_null)
            for cols in indexes:
                table.create_index(list(cols), if_not_exists=True)
        db.table("twin_devices").create_index(
            ["key"], unique=True, if_not_exists=True, index_name="twin_devices_key_unique"
        )
        _key_sidecar_files_by_inode(db)
        db.table("twin_sidecar_files").create_index(
            ["path"], if_not_exists=True, index_name=SIDECAR_PATH_INDEX
        )
        _add_daily_counters(db)
        db.table("twin_ai_outcomes").create_index(
            ["device_id", "skipped", "at"], if_not_exists=True, index_name=SCHEMA_MARKER
        )


def _add_daily_counters(db: sqlite_utils.Database) -> None:
    """Add the counters ``twin_daily`` gained since it was created (issue 15: tube load, AI outcomes),
    0 by default; the tube load of the days whose raw acquisitions retention still holds is filled in
    from them, so a node upgraded mid-life counts its recent load (older days count 0, say the docs)."""
    present = {c.name for c in db.table("twin_daily").columns}
    missing = [c for c in COUNTERS if c not in present]
    for name in missing:
        kind = "REAL" if TABLES["twin_daily"][0][name] is REAL else "INTEGER"
        db.execute(f"ALTER TABLE twin_daily ADD COLUMN {name} {kind} NOT NULL DEFAULT 0")
    if "kvp_mas_sum" in missing:
        db.execute(
            "UPDATE twin_daily SET "
            "load_n = (SELECT count(*) FROM twin_acquisitions a WHERE a.device_id = twin_daily.device_id "
            "AND substr(a.at, 1, 10) = twin_daily.day AND a.kvp IS NOT NULL AND a.mas IS NOT NULL), "
            "kvp_mas_sum = coalesce((SELECT sum(a.kvp * a.mas) FROM twin_acquisitions a "
            "WHERE a.device_id = twin_daily.device_id AND substr(a.at, 1, 10) = twin_daily.day), 0)"
        )


def _key_sidecar_files_by_inode(db: sqlite_utils.Database) -> None:
    """Re-key a ``twin_sidecar_files`` keyed by path (before issue 12) by (device, inode).

    Keyed by name, a rotation overwrote the renamed file's offset with the new file's, and a renamed
    file could be read again from its start; the latest row of each inode is kept.
    """
    if db.table("twin_sidecar_files").pks != ["path"]:
        return
    columns, pk, _ = TABLES["twin_sidecar_files"]
    db.execute("ALTER TABLE twin_sidecar_files RENAME TO twin_sidecar_files_by_path")
    for name in [r["name"] for r in db.query(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'twin_sidecar_files_by_path' "
        "AND sql IS NOT NULL"
    )]:
        db.execute(f"DROP INDEX {name}")
    db.table("twin_sidecar_files").create(columns, pk=pk)
    names = ", ".join(columns)
    db.execute(
        f"INSERT OR REPLACE INTO twin_sidecar_files ({names}) "
        f"SELECT {names} FROM twin_sidecar_files_by_path ORDER BY updated_at"
    )
    db.execute("DROP TABLE twin_sidecar_files_by_path")


@contextmanager
def writing(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """One write transaction, taken with BEGIN IMMEDIATE so that it waits (busy_timeout) for the
    write lock up front instead of failing on a read-to-write upgrade under WAL."""
    if db.conn.in_transaction:
        with db.atomic():
            yield db
        return
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.rollback()
        raise
    db.conn.execute("COMMIT")


def bump(db: sqlite_utils.Database, device_id: int, day: str, **counts: float) -> None:
    """Add to the device's daily rollup (rollups survive retention of raw rows)."""
    cols = [c for c in counts if c in COUNTERS]
    sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in cols)
    db.execute(
        f"INSERT INTO twin_daily (device_id, day, {', '.join(cols)}) "
        f"VALUES (?, ?, {', '.join('?' * len(cols))}) "
        f"ON CONFLICT(device_id, day) DO UPDATE SET {sets}",
        [device_id, day, *(counts[c] for c in cols)],
    )


def insert(db: sqlite_utils.Database, table: str, row: dict[str, Any]) -> int:
    """Insert one row and return its integer primary key."""
    return int(cast(int, db.table(table).insert(row).last_pk))


def one(db: sqlite_utils.Database, sql: str, params: list[Any] | None = None) -> dict[str, Any] | None:
    return next(iter(db.query(sql, params or [])), None)


def rows(db: sqlite_utils.Database, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
    return list(db.query(sql, params or []))


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
