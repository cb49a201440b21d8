"""Durable instance files: write to a temporary file, fsync, then link into place and fsync the folder.

The receiver's instances arrive straight into ``tmp/`` (:mod:`dicom_node.arriving`); results are
written there by :meth:`Spool.write_temp`.

A file is either absent or complete under its final name: a crash mid-write leaves only a temporary
file, which :meth:`Spool.sweep` removes at the next start. The final name is derived from UIDs that
the receiver has checked (digits and dots only), so no peer can choose a path.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(uid: str) -> bool:
    """A UID of PS3.5 §9.1: at most 64 characters, digits and dots, no empty component."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: how long a file on a shared spool must stay unchanged before a start-up sweep takes it as abandoned
#: (an association idle past node.network_timeout_s is dropped long before)
SHARED_IDLE_S = 3600.0


class Spool:
    """Files under ``root``: ``<study UID>/<SOP Instance UID>.dcm``, plus ``tmp/`` for writes in flight."""

    def __init__(self, root: Path, *, shared: bool = False) -> None:
        self.root = Path(root)
        #: on a spool other nodes share (docs/cluster.md), a file is theirs in flight until idle this long
        self.idle_s = SHARED_IDLE_S if shared else 0.0
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, sop_uid: str) -> Path:
        if not (is_valid_uid(study_uid) and is_valid_uid(sop_uid)):
            raise ValueError("UIDs must be digits and dots, at most 64 characters")
        return self.root / study_uid / f"{sop_uid}.dcm"

    def write_temp(self, chunks: Iterable[bytes | memoryview]) -> Path:
        """Write ``chunks`` to a new temporary file and fsync it; the caller links or discards it."""
        fd, name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in chunks:
                    fh.write(chunk)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Path(name)

    def sync(self, temp: Path) -> None:
        """fsync a temporary file written by someone else (the receiver's arriving instance)."""
        fd = os.open(temp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, temp: Path, final: Path, *, replace: bool = False) -> bool:
        """Move a fsynced temporary file to its final name durably.

        Returns False when ``final`` already exists and ``replace`` is False (the temp file stays,
        for the caller to replace with or discard): the first complete copy of an instance wins.
        """
        folder = final.parent
        if not folder.exists():
            folder.mkdir(parents=True, exist_ok=True)
            _fsync_dir(folder.parent)
        try:
            if replace:
                os.replace(temp, final)
            else:
                os.link(temp, final)
                temp.unlink()
        except FileExistsError:
            return False
        _fsync_dir(folder)
        return True

    def discard(self, temp: Path) -> None:
        temp.unlink(missing_ok=True)

    def open(self, path: Path | str) -> BinaryIO:
        return open(path, "rb")

    def abandoned(self, path: Path) -> bool:
        """Whether a start-up sweep may remove ``path``: always on a spool of one node's own; on a
        shared one only when it has not changed for :attr:`idle_s` (another node's C-STORE writes to
        its file at least once a network timeout, and commits its row moments after the link)."""
        if not self.idle_s:
            return True
        try:
            return path.stat().st_mtime <= time.time() - self.idle_s
        except FileNotFoundError:
            return False

    def sweep(self) -> int:
        """Remove temporary files left by a crash (see :meth:`abandoned`); returns how many."""
        n = 0
        for p in self.tmp.glob("*.part"):
            if self.abandoned(p):
                p.unlink(missing_ok=True)
                n += 1
        return n

    def sweep_orphans(self, has_instance: Callable[[str], bool]) -> int:
        """Remove instance files whose SOP Instance UID ``has_instance`` does not know (only those
        :meth:`abandoned` allows); returns how many.

        Such a file was linked into place by a C-STORE whose commit never happened (a crash between
        link and commit, or a commit that failed before that failure removed its file); its sender
        got no Success and still has it.
        """
        removed = 0
        for path in list(self.files()):
            if self.abandoned(path) and not has_instance(path.stem):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def files(self) -> Iterable[Path]:
        for study in self.root.iterdir():
            if study.is_dir() and study != self.tmp:
                yield from study.glob("*.dcm")

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free
