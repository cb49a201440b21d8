"""WADO-RS (PS3.18 §10.4): instances, metadata and frames of what the node holds, as stored.

Instances go out as ``multipart/related; type="application/dicom"`` with each file's bytes exactly as
they are on disk, read in 1 MiB pieces (a 600 MB instance costs one piece of memory). The node does
not transcode: a client that names a transfer syntax other than the stored one gets 406 with the
stored one named; ``transfer-syntax=*`` (or none) takes it as stored. Frames (``/frames/1,2``) are
sliced out of the stored Pixel Data: native data by offset, encapsulated data by its fragments and
Basic Offset Table (PS3.5 §A.4), each frame streamed from the file. Metadata is the DICOM JSON of
each header, bulk data left out.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian

from dicom_node.dicomweb.errors import Refusal
from dicom_node.dicomweb.multipart import DICOM
from dicom_node.ingest import read_header

CHUNK = 1 << 20
OCTET = "application/octet-stream"
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_END = b"\xfe\xff\xdd\xe0"
#: Media types of encapsulated frames (PS3.18 Table 8.7.3-2); anything else goes as octet-stream.
FRAME_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc", "1.2.840.10008.1.2.5": "image/dicom-rle",
}


@dataclass(frozen=True)
class Range:
    """Bytes ``length`` from ``offset`` of ``path``."""

    path: Path
    offset: int
    length: int


@dataclass(frozen=True)
class Accepted:
    """One media range of an Accept header: ``multipart/related; type=...; transfer-syntax=...``."""

    media: str
    type: str
    transfer_syntax: str


def parse_accept(header: str | None) -> list[Accepted]:
    """The media ranges of ``Accept`` in order (quality values are not weighed); none given: ``*/*``."""
    out = []
    for item in (header or "*/*").split(","):
        media, *params = [p.strip() for p in item.split(";")]
        named = {k.strip().lower(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in params)}
        out.append(Accepted(media.lower(), named.get("type", "").lower(), named.get("transfer-syntax", "*")))
    return out


def negotiate(header: str | None, part_type: str, stored: Iterable[str]) -> None:
    """Accept a response of ``part_type`` parts in the ``stored`` transfer syntaxes, or raise 406."""
    stored_set = set(stored)
    ranges = parse_accept(header)
    for a in ranges:
        if a.media in ("*/*", "multipart/*") or (a.media == "multipart/related" and a.type in ("", part_type)) \
                or a.media == part_type:
            if a.transfer_syntax == "*" or stored_set <= {a.transfer_syntax}:
                return
    asked = sorted({a.transfer_syntax for a in ranges if a.transfer_syntax != "*"})
    if asked:
        raise Refusal(406, f"stored as {', '.join(sorted(stored_set))}; this node does not transcode"
                           f" (asked {', '.join(asked)[:128]}): accept transfer-syntax=*")
    raise Refusal(406, f"this resource is served as multipart/related; type=\"{part_type}\"")


def multipart(parts: Sequence[tuple[str, Iterable[Range]]], boundary: str) -> Iterator[bytes]:
    """The body of a ``multipart/related`` response (RFC 2387): each part's Content-Type, then its
    ranges of files streamed in :data:`CHUNK` pieces."""
    for content_type, ranges in parts:
        yield f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode()
        for r in ranges:
            yield from _read(r)
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def new_boundary() -> str:
    return uuid.uuid4().hex


def _read(r: Range) -> Iterator[bytes]:
    with open(r.path, "rb") as fh:
        fh.seek(r.offset)
        left = r.length
        while left > 0:
            data = fh.read(min(CHUNK, left))
            if not data:
                raise OSError(f"{r.path.name} is shorter than its index says")
            left -= len(data)
            yield data


def whole(path: str | Path) -> Range:
    p = Path(path)
    return Range(p, 0, p.stat().st_size)


def instance_part(row: dict[str, Any]) -> tuple[str, list[Range]]:
    """One instance as a part: ``application/dicom; transfer-syntax=<stored>`` and its whole file."""
    return f"{DICOM}; transfer-syntax={row['transfer_syntax_uid']}", [whole(row["path"])]


def metadata(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """DICOM JSON of each object's header (PS3.18 §10.4.1.1.3): Pixel Data and other bulk data left
    out (the node serves no BulkDataURI), binary values of up to 1 KiB inline."""
    out = []
    for row in rows:
        try:
            ds = read_header(row["path"])
        except OSError:
            raise Refusal(404, f"instance {row['sop_instance_uid']} is no longer readable") from None
        out.append(ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=_omit))
    return [{k: v for k, v in d.items() if "BulkDataURI" not in v} for d in out]


def _omit(_elem: Any) -> str:
    return ""


def parse_frames(text: str) -> list[int]:
    """``1,3,5`` as frame numbers (PS3.18 §10.4.1.1.4: 1-based); 400 for anything else."""
    try:
        frames = [int(f) for f in text.split(",")]
    except ValueError:
        raise Refusal(400, f"frame list must be numbers separated by commas (got {text[:40]!r})") from None
    if not frames or min(frames) < 1:
        raise Refusal(400, "frame numbers start at 1")
    return frames


def frame_ranges(row: dict[str, Any], frames: Sequence[int]) -> tuple[str, list[list[Range]]]:
    """The media type of the instance's frames and, for each frame asked, where its bytes lie."""
    ts = UID(row["transfer_syntax_uid"])
    if ts in (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian):
        raise Refusal(406, f"frames of an instance stored as {ts} are not served; retrieve the instance")
    path = Path(row["path"])
    ds = dcmread(path, defer_size=256)
    raw = ds.get_item("PixelData", keep_deferred=True)
    if not isinstance(raw, RawDataElement) or raw.value_tell is None:
        raise Refusal(404, "this instance has no Pixel Data")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if max(frames) > n_frames:
        raise Refusal(404, f"frame {max(frames)} does not exist: the instance has {n_frames}")
    if not ts.is_compressed:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * int(ds.BitsAllocated) // 8
        return OCTET, [[Range(path, raw.value_tell + (f - 1) * size, size)] for f in frames]
    fragments, offsets = _fragments(path, raw.value_tell)
    per_frame = _group(fragments, offsets, n_frames)
    return FRAME_MEDIA.get(str(ts), OCTET), [per_frame[f - 1] for f in frames]


def _fragments(path: Path, start: int) -> tuple[list[tuple[int, Range]], list[int]]:
    """The fragments of encapsulated Pixel Data at ``start`` (each with its item's offset from the
    first fragment, as the Basic Offset Table counts), and the table's offsets (PS3.5 §A.4)."""
    found: list[tuple[int, Range]] = []
    with open(path, "rb") as fh:
        fh.seek(start)
        head = fh.read(8)
        if head[:4] != _ITEM:
            raise Refusal(500, "encapsulated Pixel Data does not start with its Basic Offset Table")
        bot_length = struct.unpack("<I", head[4:])[0]
        table = fh.read(bot_length)
        offsets = list(struct.unpack(f"<{bot_length // 4}I", table)) if bot_length else []
        first = fh.tell()
        while (head := fh.read(8))[:4] == _ITEM:
            length = struct.unpack("<I", head[4:])[0]
            found.append((fh.tell() - 8 - first, Range(path, fh.tell(), length)))
            fh.seek(length, 1)
        if head[:4] != _SEQUENCE_END:
            raise Refusal(500, "encapsulated Pixel Data does not end with its delimiter")
    return found, offsets


def _group(fragments: list[tuple[int, Range]], offsets: list[int], n_frames: int) -> list[list[Range]]:
    if n_frames == 1:
        return [[r for _, r in fragments]]
    if len(offsets) == n_frames:
        bounds = [*offsets[1:], 1 << 62]
        return [[r for at, r in fragments if lo <= at < hi] for lo, hi in zip(offsets, bounds, strict=True)]
    if len(fragments) == n_frames:
        return [[r] for _, r in fragments]
    raise Refusal(406, "frames cannot be told apart (no Basic Offset Table, fragments not one per frame)")
