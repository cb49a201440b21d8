"""C-STORE data sets written to the spool while they arrive, never assembled in memory.

pynetdicom's ``STORE_RECV_CHUNKED_DATASET`` mode writes each P-DATA fragment of a C-STORE data set
(PS3.8 Annex E) to a temporary PS3.10 file as it is received, and hands the handler the file's path.
This module decides where that file goes and watches it grow:

- the file is created in the spool's ``tmp/`` folder (same file system as the spool), so a checked
  instance is linked into place as it was received: no second copy, no re-encoding;
- bytes are counted as they are written; an instance that passes ``storage.max_instance_mb`` is cut
  off at once, its file removed and its association aborted (A-ABORT, PS3.8 §7.3), so a large or
  hostile instance costs disk only up to the limit and memory only one PDU at a time;
- a file still arriving when its association ends (aborted, connection lost) is removed then, or,
  when pynetdicom ends it without an event, at the next association; a crash leaves it in ``tmp/``,
  which :meth:`dicom_node.spool.Spool.sweep` clears at the next start.

pynetdicom opens the file with ``NamedTemporaryFile`` from the DUL thread of the association that
receives it; :func:`install` routes that call, for the associations of a registered AE only, to an
:class:`Arrivals` of the receiver's. Other AEs in the process keep pynetdicom's behaviour.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pynetdicom.dimse_messages as _dimse_messages
from pynetdicom import _config
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

log = logging.getLogger("dicom_node.arriving")

_registry: weakref.WeakKeyDictionary[ApplicationEntity, Arrivals] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()
_installed = False


class ArrivingFile:
    """One C-STORE data set being written; the file-like object pynetdicom writes into.

    pynetdicom uses ``write``, ``file.flush``, ``name`` and ``close``; nothing else.
    """

    def __init__(self, arrivals: Arrivals, assoc: Association) -> None:
        fd, name = tempfile.mkstemp(dir=arrivals.folder, suffix=".part")
        self._fh = os.fdopen(fd, "wb")
        self.name = name
        self.file = self  # pynetdicom flushes ``_data_set_file.file``
        self.written = 0
        self.cut_off = False
        self._arrivals = arrivals
        self._assoc = assoc

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.cut_off:
            return len(data)  # the rest of a refused instance is read off the wire and dropped
        self.written += len(data)
        if self.written > self._arrivals.max_bytes:
            self._cut_off("instance larger than storage.max_instance_mb while arriving")
            return len(data)
        try:
            return self._fh.write(data)
        except OSError as exc:  # the disk filled up (ENOSPC) under a sender: no traceback, an abort
            self._write_failed(exc)
            return len(data)

    def _write_failed(self, exc: OSError) -> None:
        self._cut_off(f"instance could not be written while arriving ({exc.strerror})")

    def _cut_off(self, reason: str) -> None:
        self.cut_off = True
        self.discard()
        self._arrivals.refuse(self._assoc, self.written, reason)

    def flush(self) -> None:
        if self.cut_off or self._fh.closed:
            return
        try:  # the last bytes may still sit in the buffer: the disk can fill here, not in write()
            self._fh.flush()
        except OSError as exc:
            self._write_failed(exc)

    def close(self) -> None:
        self._fh.close()

    def discard(self) -> None:
        """Close and remove the file (an instance that will not be stored)."""
        try:
            self._fh.close()  # flushing what is buffered may fail on a full disk: the file goes anyway
        except OSError:
            pass
        Path(self.name).unlink(missing_ok=True)


class Arrivals:
    """The instances arriving on one receiver's associations: where they are written, how large they
    may grow, and what happens to an association whose instance grows past that."""

    def __init__(self, folder: Path, max_bytes: int,
                 on_refused: Callable[[Association, int], None] | None = None) -> None:
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.on_refused = on_refused
        self._open: dict[int, tuple[Association, list[ArrivingFile]]] = {}
        self._lock = threading.Lock()

    def open(self, assoc: Association) -> ArrivingFile:
        self.reap()
        f = ArrivingFile(self, assoc)
        with self._lock:
            self._open.setdefault(id(assoc), (assoc, []))[1].append(f)
        return f

    def taken(self, assoc: Association, path: Path | str) -> None:
        """The handler has the complete file: it is the handler's to link or remove from now on."""
        with self._lock:
            entry = self._open.get(id(assoc))
            if entry is not None:
                entry[1][:] = [f for f in entry[1] if f.name != str(path)]

    def ended(self, assoc: Association) -> int:
        """The association is over: remove what was still arriving on it; returns how many."""
        with self._lock:
            _, files = self._open.pop(id(assoc), (assoc, []))
        for f in files:
            f.discard()
        return len(files) + self.reap()

    def reap(self) -> int:
        """Remove the files of associations whose threads have ended without an event saying so
        (pynetdicom kills an association hard when decoding a PDU raises: a fuzzed context ID, say)."""
        with self._lock:
            dead = [k for k, (a, _) in self._open.items() if not (a.is_alive() or a.dul.is_alive())]
            files = [f for k in dead for f in self._open.pop(k)[1]]
        for f in files:
            f.discard()
        return len(files)

    def refuse(self, assoc: Association, size: int, reason: str) -> None:
        """An instance cannot be received (past ``max_bytes``, or the disk is full): abort its
        association (A-ABORT, PS3.8 §7.3.1), the only answer possible while it arrives."""
        log.warning(f"{reason}: association aborted",
                    extra={"bytes": size, "limit_bytes": self.max_bytes,
                           "calling_ae": str(assoc.requestor.ae_title).strip()})
        if self.on_refused is not None:
            self.on_refused(assoc, size)
        # Called on the association's own DUL thread: queue the A-ABORT, do not wait for it.
        assoc.abort(block=False)


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    """Stands in for ``NamedTemporaryFile`` in pynetdicom's DIMSE decoder (see the module doc)."""
    thread = threading.current_thread()
    assoc = thread.assoc if isinstance(thread, DULServiceProvider) else None
    arrivals = _registry.get(assoc.ae) if assoc is not None else None
    if arrivals is None or assoc is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    return arrivals.open(assoc)


def install(ae: ApplicationEntity, arrivals: Arrivals) -> None:
    """Receive C-STORE data sets of ``ae``'s associations into ``arrivals`` (process-wide switch:
    pynetdicom's ``STORE_RECV_CHUNKED_DATASET``; other AEs' files go to the system temp folder)."""
    global _installed
    with _install_lock:
        _registry[ae] = arrivals
        if not _installed:
            _config.STORE_RECV_CHUNKED_DATASET = True
            _dimse_messages.NamedTemporaryFile = _named_temporary_file  # type: ignore[assignment]
            _installed = True
