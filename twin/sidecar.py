"""Modality sidecar logs: files of events, one a line, dropped in ``twin.sidecar_dir``.

This module finds the files, decides where to resume reading each one (rotation and truncation
included), reads complete lines and parses them into :class:`Event` or a reason to quarantine the
line. :meth:`twin.store.TwinStore.ingest_sidecar` persists the events and the offsets together, so
each line is read once. The schema is documented in docs/twin.md.

JSON Lines (``*.jsonl``), one object a line::

    {"time": "2025-03-01T08:15:00+01:00", "device": {"serial": "SN-1001"}, "kind": "fault",
     "code": "E123", "message": "generator overheat", "values": {"detector_temperature": 41.5}}

CSV (``*.csv``) with a header line naming ``time``, ``kind``, ``code``, ``message``, the device as
``serial`` / ``station`` / ``manufacturer`` / ``model`` (or ``device.serial`` ...), values as
``values.NAME`` columns and/or a ``values`` column holding a JSON object.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EVENT_KINDS = ("fault", "warning", "telemetry", "calibration", "maintenance", "power")
DEVICE_FIELDS = ("serial", "station", "manufacturer", "model")
SUFFIXES = (".jsonl", ".csv")
MAX_LINE_BYTES = 65536
MAX_TEXT = 1000
HEAD_BYTES = 64


class BadLine(ValueError):
    """A line that does not follow the schema; the message is the quarantine reason."""


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
    """Where reading of one file stopped, as persisted in ``twin_sidecar_files``."""

    path: str
    dev: int
    inode: int
    offset: int
    line_no: int
    head: str
    head_len: int


def discover(root: Path) -> list[Path]:
    """Log files under ``root`` (subfolders included), skipping hidden files and symbolic links."""
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if name.startswith(".") or path.suffix.lower() not in SUFFIXES or path.is_symlink():
                continue
            found.append(path)
    return found


def head_hash(path: Path, length: int) -> str:
    """SHA-1 of the first ``length`` bytes: tells a file rewritten in place from the one we read."""
    with path.open("rb") as fh:
        return hashlib.sha1(fh.read(length)).hexdigest()


def resume_point(
    path: Path, st: os.stat_result, by_path: Saved | None, by_inode: Saved | None
) -> tuple[int, int, str]:
    """(offset, lines already read, what happened) for a file about to be read.

    ``by_path`` is the saved state under this path, ``by_inode`` a saved state of the same
    (device, inode) under another path (the file was renamed, e.g. rotated to a name we also read).
    A new inode under a known path is a rotation; a file shorter than the offset, or whose first
    bytes changed, was truncated or rewritten: both are read from the start.
    """
    for saved, moved in ((by_path, False), (by_inode, True)):
        if saved is None or (saved.dev, saved.inode) != (st.st_dev, st.st_ino):
            continue
        if st.st_size < saved.offset:
            return 0, 0, "truncated"
        if saved.head_len and head_hash(path, saved.head_len) != saved.head:
            return 0, 0, "truncated"
        return saved.offset, saved.line_no, "moved" if moved else "resumed"
    if by_path is not None:
        return 0, 0, "rotated"
    return 0, 0, "new"


def read_lines(
    path: Path,
    offset: int,
    line_no: int,
    max_lines: int = 500,
    settle_s: float = 30.0,
) -> list[Line]:
    """Up to ``max_lines`` complete lines from ``offset``.

    A last line without its newline is left for the next poll (the writer may be mid-line), unless
    the file has not changed for ``settle_s`` seconds. A line longer than MAX_LINE_BYTES is returned
    with an error and skipped.
    """
    out: list[Line] = []
    settled = time.time() - path.stat().st_mtime >= settle_s
    with path.open("rb") as fh:
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


def first_line(path: Path) -> str | None:
    """The header line of a CSV file."""
    with path.open("rb") as fh:
        raw = fh.readline(MAX_LINE_BYTES)
    try:
        return raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return None


# --- parsing -----------------------------------------------------------------------------------------


def parse_time(value: Any) -> datetime:
    """ISO 8601 with or without offset (without: the node's local time), returned in UTC."""
    if not isinstance(value, str) or not value.strip():
        raise BadLine("time: missing (ISO 8601 expected)")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadLine(f"time: not ISO 8601: {value[:40]!r}") from None
    try:
        return (parsed if parsed.tzinfo else parsed.astimezone()).astimezone(UTC)
    except (OverflowError, OSError):
        raise BadLine(f"time: out of range: {value[:40]!r}") from None


def _text(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise BadLine(f"{name}: must be text")
    return str(value).strip()[:MAX_TEXT] or None


def event_from_object(obj: Any) -> Event:
    """Validate one decoded event against the schema."""
    if not isinstance(obj, dict):
        raise BadLine("not a JSON object")
    when = parse_time(obj.get("time"))
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


def parse_jsonl(text: str) -> Event:
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise BadLine("not valid JSON") from None
    return event_from_object(obj)


def csv_header(text: str | None) -> list[str]:
    """Column names of a CSV header; raises BadLine when ``time``, ``kind`` or a device column lacks."""
    if text is None:
        raise BadLine("CSV header: not UTF-8 text")
    names = [c.strip().lower() for c in next(csv.reader([text]), [])]
    device_cols = {n.removeprefix("device.") for n in names} & set(DEVICE_FIELDS)
    if "time" not in names or "kind" not in names or not device_cols:
        raise BadLine("CSV header: needs time, kind and one of serial, station, manufacturer, model")
    return names


def parse_csv(header: list[str], text: str) -> Event:
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
    return event_from_object(obj)
