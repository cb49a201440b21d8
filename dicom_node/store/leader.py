"""Which node runs the cluster-wide schedules (twin sidecar intake, health evaluation, retention,
the peers' C-ECHO): exactly one at a time, and another within a schedule's interval when it dies.

On PostgreSQL the leader holds a session advisory lock on a connection of its own: when its process
dies or its host goes away, the server ends the session and the lock is free for the next node that
tries (docs/cluster.md). A node alone on its SQLite file always leads.
"""

from __future__ import annotations

import logging
import threading

from dicom_node.store.postgres import PgConnection

log = logging.getLogger("dicom_node.store.leader")

#: the advisory lock of the cluster-wide schedules
SCHEDULE_LOCK = 0x64636D73  # 'dcms'


class Leadership:
    """``leads()`` is True on the one node that holds the lock (taking it when it is free)."""

    def __init__(self, url: str | None, key: int = SCHEDULE_LOCK) -> None:
        self.url = url
        self.key = key
        self._conn: PgConnection | None = None
        self._held = False
        self._lock = threading.Lock()

    def leads(self) -> bool:
        if self.url is None:
            return True
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = PgConnection(self.url)
                if self._held:
                    self._conn.execute("SELECT 1").fetchone()  # the session, and so the lock, still there
                else:
                    self._held = bool(self._conn.execute("SELECT pg_try_advisory_lock(?)", (self.key,)).fetchone()[0])
                    if self._held:
                        log.info("this node runs the cluster-wide schedules")
            except Exception as exc:  # the server restarted or is unreachable: the lock went with the session
                if self._held:
                    log.warning("cluster-wide schedules: the database session ended; trying again",
                                extra={"error": type(exc).__name__})
                self.close()
        return self._held

    def close(self) -> None:
        """Give the lock up (a clean stop: another node takes the schedules at its next try)."""
        conn, self._conn, self._held = self._conn, None, False
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001  (closing a broken session)
                pass
