"""Wake-ups across nodes (issue 13): a job queued on one node wakes the idle workers of every node at
once, by PostgreSQL's LISTEN/NOTIFY, instead of waiting for their next poll.

The queue sends ``NOTIFY`` on :data:`CHANNEL` with the job's kind inside the transaction that queues
it (:func:`dicom_node.store.jobs.enqueue_in`), so it is delivered only when that commits. Each node
listens on a connection of its own; workers still poll (more slowly), so a notification lost while a
connection is being re-made costs a poll interval, never a job.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dicom_node.store.postgres import PgConnection

log = logging.getLogger("dicom_node.store.listen")

CHANNEL = "dicom_node_jobs"
RECONNECT_S = 2.0


class JobListener:
    """Calls ``wake(kind)`` for every job notification, on a thread of its own, until :meth:`stop`."""

    def __init__(self, url: str, wake: Callable[[str], None]) -> None:
        self.url = url
        self.wake = wake
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="job-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.is_set():
            conn: PgConnection | None = None
            try:
                conn = PgConnection(self.url)
                conn.execute(f"LISTEN {CHANNEL}")
                while not self._stop.is_set():
                    for note in conn.raw.notifies(timeout=1.0):
                        self.wake(note.payload)
            except Exception as exc:  # the server restarted: listen again; the workers' polls cover the gap
                if not self._stop.is_set():
                    log.warning("job notifications interrupted; listening again",
                                extra={"error": type(exc).__name__})
                    self._stop.wait(RECONNECT_S)
            finally:
                if conn is not None:
                    try:
                        conn.close()
                    except Exception:  # noqa: BLE001  (closing a broken session)
                        pass
