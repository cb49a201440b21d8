"""``dicom-node db copy --to postgresql://...`` (issue 13): an embedded node grows into a cluster
without losing its history. Every table of the SQLite file (the node's and the twin's) is copied into
an empty PostgreSQL database in one transaction, and checked by counts before it commits.

The source is read in one read transaction (a consistent snapshot, even while a node writes; stop it
first so nothing arrives after the copy). The destination's tables are made by the store's own schema
(:class:`dicom_node.store.Store` and the twin's), so they are exactly what a node on PostgreSQL uses;
identity columns continue after the highest copied id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.store import Store
from dicom_node.store.schema import table_columns

BATCH = 1000
#: rows the destination writes when its schema is made; copied over them
MADE_BY_SCHEMA = {"meta"}


class CopyError(RuntimeError):
    """Why a copy did not happen (one line); the destination is left as it was."""


@dataclass
class CopyReport:
    tables: dict[str, int] = field(default_factory=dict)  # rows copied, checked equal on both sides

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def copy_database(source: Path, dest_url: str, *, make_schema: Callable[[Store], None] | None = None,
                  progress: Callable[[str, int, int], None] | None = None) -> CopyReport:
    """Copy every table of the SQLite database ``source`` into the empty PostgreSQL database
    ``dest_url``; ``make_schema`` adds the tables the store does not make (the twin's);
    ``progress(table, done, total)`` after each batch."""
    if not source.is_file():
        raise CopyError(f"no database at {source}")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    src.row_factory = sqlite3.Row
    dest = Store(dest_url)
    try:
        if make_schema is not None:
            make_schema(dest)
        src.execute("BEGIN")  # one snapshot of the source for the whole copy
        tables = [r[0] for r in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        conn = dest.conn()
        report = CopyReport()
        with dest.transaction():
            for table in tables:
                report.tables[table] = _copy_table(src, conn, table, progress)
        return report
    finally:
        src.close()
        dest.close()


def _copy_table(src: sqlite3.Connection, conn: Any, table: str,
                progress: Callable[[str, int, int], None] | None) -> int:
    theirs = table_columns(conn, table)
    if not theirs:
        raise CopyError(f"table {table} is not in the destination's schema (a newer source?): nothing copied")
    ours = [r[1] for r in src.execute(f'PRAGMA table_info("{table}")')]
    extra = [c for c in ours if c not in theirs]
    if extra:
        raise CopyError(f"table {table}: columns {', '.join(extra)} are not in the destination: nothing copied")
    total = int(src.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    if table not in MADE_BY_SCHEMA and conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]:
        raise CopyError(f"the destination's table {table} is not empty: copy into a new database")
    cols = ", ".join(f'"{c}"' for c in ours)  # quoted: the twin's "offset" is a reserved word on PostgreSQL
    marks = ", ".join("?" for _ in ours)
    conflict = " ON CONFLICT DO NOTHING" if table in MADE_BY_SCHEMA else ""
    done = 0
    cur = src.execute(f'SELECT {cols} FROM "{table}"')
    while batch := cur.fetchmany(BATCH):
        conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks}){conflict}", [tuple(r) for r in batch])
        done += len(batch)
        if progress is not None:
            progress(table, done, total)
    sequence = conn.execute("SELECT pg_get_serial_sequence(?, 'id')", (table,)).fetchone()[0] if "id" in ours \
        else None
    if sequence is not None:  # an identity column: new rows continue after the copied ones
        conn.execute(f"SELECT setval(?, (SELECT COALESCE(MAX(id), 0) + 1 FROM {table}), false)", (sequence,))
    copied = int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    if copied != total and table not in MADE_BY_SCHEMA:
        raise CopyError(f"table {table}: {total} rows in the source, {copied} in the destination: nothing copied")
    return total
