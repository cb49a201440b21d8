"""Connections to the node's database: one per thread, writes in ``BEGIN IMMEDIATE`` transactions.

The engine-specific part of the store: every table module in this package reaches the database
through :meth:`Connections.conn` and :meth:`Connections.transaction` only.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from dicom_node.store.schema import SCHEMA, SCHEMA_VERSION, migrate


class Connections:
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
            conn.executescript(SCHEMA)  # runs in its own transaction; every statement is idempotent
            with self.transaction() as conn:
                migrate(conn)
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
