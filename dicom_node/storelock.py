"""One node process per storage folder: an exclusive lock on ``<storage.dir>/node.lock``.

The embedded default (SQLite and a local spool) assumes one owner. Holding the lock lets a starting
node know that every job still marked running belongs to a dead predecessor, and take it back at once
instead of waiting for its lease to run out. The lock is ``flock``: the kernel drops it when the
process dies, however it dies, so a SIGKILL leaves no stale lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["StorageLock", "StorageInUse"]


class StorageInUse(OSError):
    """Another live process holds the storage folder."""


class StorageLock:
    """Hold ``path`` exclusively for the life of this object (or until :meth:`release`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise StorageInUse(
                f"storage.dir {self.path.parent} is in use by another dicom-node (pid {holder})"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
