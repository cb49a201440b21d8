"""What happens to one received instance, from a file in the spool's ``tmp/`` to a stored, queued one.

The receiver (:mod:`dicom_node.scp`) calls :func:`Ingest.receive` with the file the data set arrived
into (:mod:`dicom_node.arriving`: written as received, never held in memory) and the request's
identifiers, and returns the status this function picks. The order is what makes the node lose
nothing: check (bulk values left on disk) → fsync → link into place → commit the instance row and its
analysis job in one transaction → only then Success. Anything that fails before the commit leaves no
file behind and returns a failure status, so the sender keeps its copy.

C-STORE statuses (PS3.4 Annex B.2.3 and PS3.7 Annex C):
0x0000 Success · 0xA700 Refused: out of resources · 0xA900 Error: data set does not match SOP
class · 0xC210 Error: cannot understand.
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import dcmread
from pydicom.datadict import dictionary_has_tag, dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import read_dataset, read_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from dicom_node.spool import Spool, is_valid_uid
from dicom_node.store import InstanceRow, Store

log = logging.getLogger("dicom_node.ingest")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210

# Image pixel attributes every image SOP class we accept requires (PS3.3 C.7.6.3, Type 1).
_UNDEFINED_LENGTH = 0xFFFFFFFF
_META_START = 132  # preamble and "DICM" (PS3.10 §7.1)
_INFLATE_STEP = 1 << 20
_DEFER_BYTES = 1 << 20  # values larger than this stay on disk while an instance is checked
_PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PhotometricInterpretation")


@dataclass(frozen=True)
class Outcome:
    """The status to send back, and a reason for the log (UIDs and codes only)."""

    status: int
    reason: str
    stored: bool = False
    duplicate: bool = False


class RejectInstance(Exception):
    """A check failed: carries the DIMSE status to return."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_received(path: Path, transfer_syntax: str, *, max_inflated_bytes: int | None = None) -> Dataset:
    """Decode a received instance file (PS3.10) with its bulk values left on disk while it is checked.

    The data set is as the sender encoded it in the negotiated transfer syntax (PS3.5 §10). Values
    larger than ``_DEFER_BYTES`` (Pixel Data, above all) are not read: their declared lengths are
    checked against the file instead, so a 600 MB radiograph is checked in a few kilobytes of memory.
    A deflated data set (PS3.5 §A.5) is inflated into a file beside it, and refused with 0xA700 as
    soon as it inflates past ``max_inflated_bytes`` (a deflate bomb). Deferred values of the returned
    data set are not to be read: the file they point to may be gone.
    """
    ts = UID(transfer_syntax)
    inflated = path.with_name(path.name + ".inflated.part") if ts == DeflatedExplicitVRLittleEndian else None
    try:
        with open(path, "rb") as fp:  # one open: the meta skipped, then the data set read or inflated
            _skip_file_meta(fp)
            if inflated is None:
                ds = _read_data_set(fp, ts)
            else:
                _inflate(fp, inflated, max_inflated_bytes)
        if inflated is not None:
            with open(inflated, "rb") as fp:
                ds = _read_data_set(fp, ts)
        source = inflated or path
        _check_encoding(ds, ts, source.stat().st_size)
        _walk(ds, str(source))  # every element once, so a malformed value raises here, not later in the worker
    except (InvalidDicomError, ValueError, KeyError, EOFError, OverflowError, NotImplementedError,
            zlib.error, TypeError, AttributeError, IndexError, BytesLengthException, struct.error) as exc:
        raise RejectInstance(CANNOT_UNDERSTAND, f"data set cannot be parsed: {type(exc).__name__}") from exc
    except OSError as exc:
        if exc.errno is not None:  # a real storage error: 0xA700 from Ingest.receive
            raise
        # pydicom's "No tag to read" on a stream cut inside a tag raises OSError without an errno.
        raise RejectInstance(CANNOT_UNDERSTAND, f"data set cannot be parsed: {type(exc).__name__}") from exc
    finally:
        if inflated is not None:
            inflated.unlink(missing_ok=True)
    if len(ds) == 0:
        raise RejectInstance(CANNOT_UNDERSTAND, "data set is empty")
    return ds


def _skip_file_meta(fp: BinaryIO) -> None:
    """Seek past the preamble and File Meta Information (PS3.10 §7.1: 128 bytes, "DICM", then
    (0002,0000) UL File Meta Group Length first). The receiver wrote this header itself
    (pynetdicom), so it is well formed."""
    head = fp.read(_META_START + 12)
    if head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        raise InvalidDicomError("not a PS3.10 file with a File Meta group length")
    fp.seek(_META_START + 12 + struct.unpack("<I", head[140:144])[0])


def _inflate(fp: BinaryIO, into: Path, max_bytes: int | None) -> None:
    """Inflate the rest of ``fp`` (raw deflate, PS3.5 §A.5) into ``into``, one MiB at a time."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    written = 0
    with open(into, "wb") as out:
        while chunk := fp.read(_INFLATE_STEP):
            while chunk:
                data = inflater.decompress(chunk, _INFLATE_STEP)  # at most one step of output per call
                written += len(data)
                if max_bytes is not None and written > max_bytes:
                    raise RejectInstance(OUT_OF_RESOURCES, "deflated data set inflates past storage.max_instance_mb")
                out.write(data)
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                break
        out.write(inflater.flush())


def _read_data_set(fp: BinaryIO, ts: UID) -> Dataset:
    """The data set from where ``fp`` stands, read as encoded: pydicom's ``dcmread`` would report
    the file meta's transfer syntax as the encoding instead of the one it detected. (Inflated
    data is explicit VR little endian, PS3.5 §A.5.)"""
    implicit, little = (False, True) if ts == DeflatedExplicitVRLittleEndian else (ts.is_implicit_VR,
                                                                                 ts.is_little_endian)
    return read_dataset(fp, implicit, little, defer_size=_DEFER_BYTES)


def _is_deferred(raw: object) -> bool:
    return isinstance(raw, RawDataElement) and raw.value is None and raw.length not in (0, _UNDEFINED_LENGTH)


def _walk(ds: Dataset, filename: str) -> None:
    """Decode every element but deferred bulk values (their bounds are checked in _check_encoding)."""
    # A deferred sequence is read from the file when it is decoded: say which file (pydicom keeps
    # the name only on a FileDataset).
    ds.filename, ds.fileobj_type, ds.timestamp, ds.buffer = filename, open, None, None
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        vr = raw.VR if raw.VR is not None else (dictionary_VR(tag) if dictionary_has_tag(tag) else "UN")
        if _is_deferred(raw) and vr != "SQ":
            continue
        elem = ds[tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _walk(item, filename)


def _check_encoding(ds: Dataset, ts: UID, file_size: int) -> None:
    """Refuse a data set that pydicom could only read by guessing (PS3.5 §7.1, §10).

    pydicom reads leniently: it switches to implicit VR when the bytes look implicit, and a value
    whose length field runs past the end of the data is returned short (or, when deferred, points
    past the end of the file). Stored as sent, either would give a file that other readers (DCMTK,
    a PACS) cannot open, so both are refused here.
    """
    implicit, little = ds.original_encoding
    if implicit != ts.is_implicit_VR or little != ts.is_little_endian:
        raise RejectInstance(CANNOT_UNDERSTAND, "data set is not encoded in the negotiated transfer syntax")
    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.length == _UNDEFINED_LENGTH:
            continue
        present = len(raw.value) if raw.value is not None else max(0, file_size - raw.value_tell)
        if present < raw.length:
            raise RejectInstance(
                CANNOT_UNDERSTAND,
                f"data set is truncated: {tag} declares {raw.length} bytes, {present} are present",
            )


def check_dataset(ds: Dataset, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> None:
    """Raise :class:`RejectInstance` unless the data set is a complete instance of its SOP class."""
    ds_class = str(ds.get("SOPClassUID", ""))
    ds_inst = str(ds.get("SOPInstanceUID", ""))
    if ds_class != sop_class_uid:
        raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from the negotiated class")
    if ds_inst != sop_instance_uid:
        raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs from the request")
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        if not is_valid_uid(str(ds.get(keyword, ""))):
            raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing or not a valid UID")
    missing = [k for k in _PIXEL_MODULE if ds.get(k) in (None, "")]
    if missing:
        raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, f"Image Pixel module lacks {missing[0]}")
    if "PixelData" not in ds:
        raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, "Pixel Data is missing")
    _check_pixel_length(ds, transfer_syntax)


def _check_pixel_length(ds: Dataset, transfer_syntax: str) -> None:
    """Declared size against the data present: native data must hold every pixel (PS3.5 §8.1.1);
    encapsulated data must hold at least one non-empty fragment and end with its delimiter (§A.4)."""
    raw = ds.get_item("PixelData", keep_deferred=True)  # not ds["PixelData"]: that would read a deferred value
    undefined = raw.length == _UNDEFINED_LENGTH if isinstance(raw, RawDataElement) \
        else bool(getattr(raw, "is_undefined_length", False))
    present = raw.length if isinstance(raw, RawDataElement) and _is_deferred(raw) else len(raw.value or b"")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits, spp = int(ds.BitsAllocated), int(ds.SamplesPerPixel)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError) as exc:
        raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, "Image Pixel module has a non-numeric size") from exc
    if min(rows, cols, bits, spp, frames) <= 0:
        raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, "Image Pixel module declares a zero size")
    if UID(transfer_syntax).is_compressed:
        if not undefined or present < 16:
            raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, "encapsulated Pixel Data is incomplete")
        return
    expected = (rows * cols * frames * spp * bits + 7) // 8
    if present < expected:
        raise RejectInstance(
            DOES_NOT_MATCH_SOP_CLASS,
            f"Pixel Data holds {present} bytes; {rows}x{cols}x{frames} at {bits} bits needs {expected}",
        )


class Ingest:
    """Receives instances into the spool and the store; one instance per call, thread-safe."""

    def __init__(self, store: Store, spool: Spool, *, min_free_bytes: int, max_instance_bytes: int,
                 max_attempts: int = 3, on_stored: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_stored = on_stored
        self.spool = spool
        self.min_free_bytes = min_free_bytes
        self.max_instance_bytes = max_instance_bytes
        self.max_attempts = max_attempts

    def receive(self, path: Path, *, sop_class: str, sop_instance: str, transfer_syntax: str,
                calling_ae: str | None, peer_host: str | None, study_uid: str | None = None) -> Outcome:
        """Check, store durably and queue one received instance; return the status to send (never raises).

        ``path`` is the instance as received (:mod:`dicom_node.arriving`), in the spool's ``tmp/``;
        the identifiers are the request's (Affected SOP Class and Instance UID) and the accepted
        presentation context's transfer syntax. ``study_uid``, when given, is the study the instance
        must belong to (a STOW-RS request to ``/studies/{study}``, PS3.18 §10.5): another one is refused
        as 0xA900. The file is linked into the spool or removed.
        """
        try:
            return self._receive(path, sop_class, sop_instance, transfer_syntax, calling_ae, peer_host, study_uid)
        except RejectInstance as rej:
            log.warning("C-STORE refused", extra={"sop_instance_uid": sop_instance, "status": f"0x{rej.status:04X}",
                                                  "reason": rej.reason, "calling_ae": calling_ae})
            return Outcome(rej.status, rej.reason)
        except OSError as exc:
            log.error("C-STORE failed on storage", extra={"sop_instance_uid": sop_instance,
                                                          "reason": f"{type(exc).__name__}: {exc.strerror}"})
            return Outcome(OUT_OF_RESOURCES, f"storage error: {exc.strerror}")
        finally:
            self.spool.discard(path)  # gone already when it was linked into place

    def _receive(self, path: Path, sop_class: str, sop_inst: str, ts: str, calling_ae: str | None,
                 peer_host: str | None, study_uid: str | None) -> Outcome:
        size = path.stat().st_size
        if size > self.max_instance_bytes:
            raise RejectInstance(OUT_OF_RESOURCES, f"instance of {size} bytes exceeds storage.max_instance_mb")
        free = self.spool.free_bytes()
        if free < self.min_free_bytes:  # the instance is on this disk already, in tmp/
            log.error("free disk under the floor: refusing instances",
                      extra={"free_mb": free // 2**20, "floor_mb": self.min_free_bytes // 2**20})
            raise RejectInstance(OUT_OF_RESOURCES, "free disk space is under storage.min_free_mb")
        if not is_valid_uid(sop_inst):
            raise RejectInstance(CANNOT_UNDERSTAND, "Affected SOP Instance UID is not a valid UID")
        if self.store.has_instance(sop_inst):
            log.info("duplicate instance kept once", extra={"sop_instance_uid": sop_inst, "calling_ae": calling_ae})
            return Outcome(SUCCESS, "duplicate", stored=False, duplicate=True)

        ds = read_received(path, ts, max_inflated_bytes=self.max_instance_bytes)
        check_dataset(ds, sop_class, sop_inst, ts)
        study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        if study_uid is not None and study != study_uid:
            raise RejectInstance(DOES_NOT_MATCH_SOP_CLASS, "StudyInstanceUID differs from the study of the request")
        final = self.spool.path_for(study, sop_inst)
        self.spool.sync(path)
        inode = path.stat().st_ino
        try:
            if not self.spool.commit(path, final):
                # A file under this name and no row: a crash came between link and commit last time.
                if self.store.has_instance(sop_inst):
                    return Outcome(SUCCESS, "duplicate", duplicate=True)
                self.spool.commit(path, final, replace=True)
            row = InstanceRow(
                sop_instance_uid=sop_inst, sop_class_uid=sop_class, study_instance_uid=study,
                series_instance_uid=series, modality=str(ds.get("Modality", "")) or None,
                transfer_syntax_uid=ts, path=str(final), size=final.stat().st_size,
                calling_ae=calling_ae, peer_host=peer_host,
            )
            if not self.store.add_instance(row, max_attempts=self.max_attempts):
                return Outcome(SUCCESS, "duplicate", duplicate=True)
        except sqlite3.Error as exc:
            # SQLITE_FULL ("database or disk is full"), a lock held past the busy timeout, an I/O
            # error: no row, so the file linked above goes too, or it would stay an orphan; the
            # sender keeps its copy and gets 0xA700 (PS3.4 B.2.3: refused, out of resources).
            self._unlink_unrecorded(final, inode, sop_inst)
            log.error("instance refused: the database could not commit it",
                      extra={"sop_instance_uid": sop_inst, "reason": f"{type(exc).__name__}: {exc}"})
            raise RejectInstance(OUT_OF_RESOURCES, f"database error: {exc}") from exc
        if self.on_stored is not None:
            self.on_stored()
        log.info("instance stored", extra={"sop_instance_uid": sop_inst, "bytes": row.size,
                                            "calling_ae": calling_ae})
        return Outcome(SUCCESS, "stored", stored=True)

    def _unlink_unrecorded(self, final: Path, inode: int, sop_inst: str) -> None:
        """Remove ``final`` if it is the file this call linked and no row names it (a commit that
        raised may still have committed: then the file stays, and a resend is a duplicate)."""
        try:
            if self.store.has_instance(sop_inst):
                return
        except sqlite3.Error:  # the database cannot say: the orphan sweep at the next start will
            return
        try:
            if final.stat().st_ino == inode:
                final.unlink()
        except FileNotFoundError:
            pass


def read_header(path: Path | str) -> Dataset:
    """The header of a spooled instance (every element but bulk values over ``_DEFER_BYTES``, Pixel
    Data above all), in bounded memory: pydicom would inflate a whole deflated file into memory even
    to stop before its pixels, so a deflated one is inflated into a temporary file first."""
    path = Path(path)
    meta = read_file_meta_info(path)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return dcmread(path, stop_before_pixels=True)
    with tempfile.TemporaryDirectory(prefix="dicom-node-header-") as tmp:
        inflated = Path(tmp) / "inflated"
        with open(path, "rb") as fp:
            _skip_file_meta(fp)
            _inflate(fp, inflated, None)
        with open(inflated, "rb") as fp:
            ds = _read_data_set(fp, DeflatedExplicitVRLittleEndian)
        for tag in [t for t in ds.keys() if _is_deferred(ds.get_item(t, keep_deferred=True))]:
            del ds[tag]  # their file is about to go
    ds.file_meta = meta
    return ds
