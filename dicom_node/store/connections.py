"""Connections to the node's database: one per thread, writes in transactions.

The engine-specific part of the store: every table module in this package reaches the database
through :meth:`Connections.conn` and :meth:`Connections.transaction` only. The target is a SQLite
file (the embedded default: WAL, ``synchronous=FULL``, ``BEGIN IMMEDIATE``, one writer at a time) or
a ``postgresql://`` URL (:mod:`dicom_node.store.postgres`: ``BEGIN`` at READ COMMITTED,
``synchronous_commit`` on).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dicom_node.store.postgres import PgConnection, is_postgres, pg_ddl
from dicom_node.store.schema import SCHEMA, SCHEMA_VERSION, migrate

#: the advisory lock under which a node creates or migrates the PostgreSQL schema
SCHEMA_LOCK = 0x64636D6E  # 'dcmn'


class Connections:
    """Thread-safe access to the node's database; one connection per thread."""

    def __init__(self, target: Path | str, *, readonly: bool = False) -> None:
        self.url = str(target) if is_postgres(target) else None
        self.path = Path(target) if self.url is None else Path()
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, Any]] = []  # (owner thread, its connection: sqlite3 or PgConnection)
        self._lock = threading.Lock()
        if not readonly:
            if self.url is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.conn().executescript(SCHEMA)  # type: ignore[attr-defined]  # its own transaction
            with self.transaction() as conn:
                if self.url is not None:  # one node at a time creates or migrates (a transaction lock)
                    conn.execute("SELECT pg_advisory_xact_lock(?)", (SCHEMA_LOCK,))
                    conn.executescript(pg_ddl(SCHEMA))  # type: ignore[attr-defined]
                migrate(conn)
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (str(SCHEMA_VERSION),),
                )

    # -- connections ---------------------------------------------------------------------------

    @property
    def engine(self) -> str:
        """``sqlite`` or ``postgresql``: the few statements that differ ask (the lease's row locks)."""
        return "sqlite" if self.url is None else "postgresql"

    def conn(self) -> Any:
        """This thread's connection (autocommit; use :meth:`transaction` to group writes): a
        ``sqlite3.Connection``, or a :class:`PgConnection` that takes the same SQL."""
        conn: Any = getattr(self._local, "conn", None)
        if conn is None:
            if self.url is not None:
                conn = PgConnection(self.url, readonly=self.readonly)
            elif self.readonly:
                uri = f"file:{self.path}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                                       check_same_thread=False)
            else:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
            if isinstance(conn, sqlite3.Connection):
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

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """``BEGIN`` … ``COMMIT``, all or nothing; on SQLite ``BEGIN IMMEDIATE``: one writer at a time."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE" if self.url is None else "BEGIN")
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
                except Exception:  # noqa: BLE001  (closing what may already be broken)
                    pass
            self._all = kept
        self._local = threading.local()
