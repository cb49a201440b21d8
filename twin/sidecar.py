"""Modality sidecar logs: files of events, one a line, dropped in ``twin.sidecar_dir``.

This module finds the files, opens only what is safe to read, decides where to resume reading each
one (rotation, renaming and truncation included), reads complete lines and parses them into
:class:`Event` or a reason to quarantine the line. :meth:`twin.store.TwinStore.ingest_sidecar`
persists the events and the offsets together, so each line is read once. The schema is documented
in docs/twin.md.

JSON Lines (``*.jsonl``), one object a line::

    {"time": "2025-03-01T08:15:00+01:00", "device": {"serial": "SN-1001"}, "kind": "fault",
     "code": "E123", "message": "generator overheat", "values": {"detector_temperature": 41.5}}

CSV (``*.csv``) with a header line naming ``time``, ``kind``, ``code``, ``message``, the device as
``serial`` / ``station`` / ``manufacturer`` / ``model`` (or ``device.serial`` ...), values as
``values.NAME`` columns and/or a ``values`` column holding a JSON object.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from twin.clock import TimeBound

EVENT_KINDS = ("fault", "warning", "telemetry", "calibration", "maintenance", "power")
DEVICE_FIELDS = ("serial", "station", "manufacturer", "model")
SUFFIXES = (".jsonl", ".csv")
MAX_LINE_BYTES = 65536
MAX_TEXT = 1000
#: Bytes at a file's start whose hash tells the file we read from one rewritten in place.
HEAD_BYTES = 1024
#: Opened without following a final symbolic link, without waiting on a FIFO or taking a terminal.
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC


class BadLine(ValueError):
    """A line that does not follow the schema; the message is the quarantine reason."""


class Refused(Exception):
    """A file the intake does not read; the message says why (never its content)."""


@dataclass(frozen=True, slots=True)
class Event:
    time: datetime
    device: dict[str, str]
    kind: str
    code: str | None = None
    message: str | None = None
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line: its 1-based number, its text (None when undecodable), and the offset after it."""

    number: int
    text: str | None
    end: int
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    """Where reading of one file (device, inode) stopped, as persisted in ``twin_sidecar_files``;
    ``path`` is the name it was last read under."""

    path: str
    dev: int
    inode: int
    offset: int
    line_no: int
    head: str
    head_len: int


@dataclass(frozen=True, slots=True)
class Found:
    """A log file under the sidecar folder: its name there, its lstat, why it is not read (or None)."""

    path: Path
    name: str
    st: os.stat_result
    skip: str | None

    @property
    def key(self) -> tuple[int, int]:
        return self.st.st_dev, self.st.st_ino


def owners(root: Path) -> frozenset[int]:
    """Users whose files are read: the node's own, and the sidecar folder's owner (the account the
    modalities drop their logs with)."""
    return frozenset({os.geteuid(), root.stat().st_uid})


def refusal(st: os.stat_result, allowed: frozenset[int]) -> str | None:
    """Why a file is not read, None when it is: a FIFO or device would block or have side effects,
    and a hard link or someone else's file may be a system file placed there to be read."""
    if stat.S_ISLNK(st.st_mode):
        return "symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink > 1:
        return f"hard link ({st.st_nlink} names)"
    if st.st_uid not in allowed:
        return f"owned by uid {st.st_uid}, not by the node's user or the folder's owner"
    return None


def discover(root: Path) -> list[Found]:
    """Log files under ``root`` (subfolders included; hidden ones and linked folders are not entered),
    each with the reason it is skipped, if any. Nothing is opened here."""
    if not root.is_dir():
        return []
    allowed = owners(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in SUFFIXES:
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:  # gone since listed
                continue
            found.append(Found(path, path.relative_to(root).as_posix(), st, refusal(st, allowed)))
    return found


def open_log(path: Path, allowed: frozenset[int]) -> tuple[BinaryIO, os.stat_result]:
    """The file opened for reading and its fstat, checked on the opened descriptor itself (the name
    may have been swapped for a link or a FIFO since :func:`discover` looked); Refused otherwise."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused("symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        reason = refusal(st, allowed)
        if reason is not None:
            raise Refused(reason)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb"), st


def head_hash(fh: BinaryIO, length: int) -> str:
    """SHA-1 of the first ``length`` bytes: tells a file rewritten in place from the one we read."""
    return hashlib.sha1(os.pread(fh.fileno(), length, 0)).hexdigest()


def resume_point(
    fh: BinaryIO, st: os.stat_result, saved: Saved | None, name: str, name_known: bool
) -> tuple[int, int, str]:
    """(offset, lines already read, what happened) for a file about to be read.

    ``saved`` is the state of this very (device, inode), whatever name it had, so a renamed file
    continues where it was. A new inode under a name read before is a rotation; a file shorter than
    the offset, or whose first bytes changed, was truncated or rewritten: both are read from the start.
    """
    if saved is None:
        return 0, 0, "rotated" if name_known else "new"
    if st.st_size < saved.offset or (saved.head_len and head_hash(fh, saved.head_len) != saved.head):
        return 0, 0, "truncated"
    return saved.offset, saved.line_no, "resumed" if saved.path == name else "moved"


def read_lines(
    fh: BinaryIO,
    offset: int,
    line_no: int,
    max_lines: int = 500,
    settle_s: float = 30.0,
) -> list[Line]:
    """Up to ``max_lines`` complete lines from ``offset`` of the opened file.

    A last line without its newline is left for the next poll (the writer may be mid-line), unless
    the file has not changed for ``settle_s`` seconds. A line longer than MAX_LINE_BYTES is returned
    with an error and skipped.
    """
    out: list[Line] = []
    settled = time.time() - os.fstat(fh.fileno()).st_mtime >= settle_s
    fh.seek(offset)
    while len(out) < max_lines:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            break
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(MAX_LINE_BYTES)
            line_no += 1
            out.append(Line(line_no, None, fh.tell(), f"line longer than {MAX_LINE_BYTES} bytes"))
            continue
        if not raw.endswith(b"\n") and not settled:
            break
        line_no += 1
        start = fh.tell() - len(raw)
        if start == 0 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            out.append(Line(line_no, None, fh.tell(), "not UTF-8 text"))
            continue
        out.append(Line(line_no, text, fh.tell()))
    return out


def first_line(fh: BinaryIO) -> str | None:
    """The header line of a CSV file (read without moving the file's position)."""
    raw = os.pread(fh.fileno(), MAX_LINE_BYTES, 0).split(b"\n", 1)[0]
    try:
        return raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


# --- parsing -----------------------------------------------------------------------------------------


def parse_time(value: Any, bound: TimeBound) -> datetime:
    """ISO 8601 with or without offset (without: the node's local time), returned in UTC and within
    ``bound`` (a clock far ahead or reset makes the line a bad line, not a broken twin)."""
    if not isinstance(value, str) or not value.strip():
        raise BadLine("time: missing (ISO 8601 expected)")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadLine(f"time: not ISO 8601: {value[:40]!r}") from None
    try:
        when = (parsed if parsed.tzinfo else parsed.astimezone()).astimezone(UTC)
    except (OverflowError, OSError, ValueError):  # e.g. year 1 shifted to the local zone: year 0
        raise BadLine(f"time: out of range: {value[:40]!r}") from None
    problem = bound.problem(when)
    if problem is not None:
        raise BadLine(f"time: {value[:40]!r} is {problem}")
    return when


def _text(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadLine(f"{name}: must be text")
    return str(value).strip()[:MAX_TEXT] or None


def event_from_object(obj: Any, bound: TimeBound) -> Event:
    """Validate one decoded event against the schema, its time against ``bound``."""
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    when = parse_time(obj.get("time"), bound)
    device = obj.get("device")
    if not isinstance(device, dict):
        raise BadLine("device: must be an object with serial, station, manufacturer or model")
    ident = {k: v for k in DEVICE_FIELDS if (v := _text(f"device.{k}", device.get(k)))}
    if not ident:
        raise BadLine("device: needs at least one of serial, station, manufacturer, model")
    kind = obj.get("kind")
    if kind not in EVENT_KINDS:
        raise BadLine(f"kind: must be one of {', '.join(EVENT_KINDS)} (got {str(kind)[:20]!r})")
    values = obj.get("values") or {}
    if not isinstance(values, dict):
        raise BadLine("values: must be an object of numbers")
    clean: dict[str, float] = {}
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise BadLine(f"values.{str(name)[:40]}: not a number")
        clean[str(name)[:64]] = float(v)
    return Event(
        when, ident, kind, _text("code", obj.get("code")), _text("message", obj.get("message")), clean
    )


def parse_jsonl(text: str, bound: TimeBound) -> Event:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise BadLine("not valid JSON") from None
    return event_from_object(obj, bound)


def csv_header(text: str | None) -> list[str]:
    """Column names of a CSV header; raises BadLine when ``time``, ``kind`` or a device column lacks."""
    if text is None:
        raise BadLine("CSV header: not UTF-8 text")
    names = [c.strip().lower() for c in next(csv.reader([text]), [])]
    device_cols = {n.removeprefix("device.") for n in names} & set(DEVICE_FIELDS)
    if "time" not in names or "kind" not in names or not device_cols:
        raise BadLine("CSV header: needs time, kind and one of serial, station, manufacturer, model")
    return names


def parse_csv(header: list[str], text: str, bound: TimeBound) -> Event:
    try:
        cells = next(csv.reader([text]), [])
    except csv.Error as exc:
        raise BadLine(f"not valid CSV: {exc}") from None
    if len(cells) != len(header):
        raise BadLine(f"CSV: {len(cells)} cells, header has {len(header)}")
    obj: dict[str, Any] = {"device": {}, "values": {}}
    for name, cell in zip(header, cells, strict=True):
        cell = cell.strip()
        if name.removeprefix("device.") in DEVICE_FIELDS:
            obj["device"][name.removeprefix("device.")] = cell
        elif name == "values" and cell:
            try:
                extra = json.loads(cell)
            except json.JSONDecodeError:
                raise BadLine("values: not a JSON object") from None
            if not isinstance(extra, dict):
                raise BadLine("values: not a JSON object")
            obj["values"].update(extra)
        elif name.startswith("values.") and cell:
            try:
                obj["values"][name.removeprefix("values.")] = float(cell)
            except ValueError:
                raise BadLine(f"{name}: not a number") from None
        else:
            obj[name] = cell
    return event_from_object(obj, bound)
