"""A ``multipart/related`` request body (RFC 2387) written to one file per part as it arrives.

STOW-RS (PS3.18 §10.5.1) sends one PS3.10 instance per part. The body is fed here chunk by chunk
(python-multipart's streaming parser finds the boundaries), each part's bytes go straight into a
file in the spool's ``tmp/`` folder (so a stored part is linked into place, never copied), and two
bounds hold while it arrives: a part past ``max_part_bytes`` (``storage.max_instance_mb``) or a body
past ``max_body_bytes`` (``dicomweb.max_request_mb``) stops the request with 413 at once. Memory is
one chunk and one part's headers at a time. Whatever stops the request removes every file it wrote.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from dicom_node.dicomweb.errors import Refusal

DICOM = "application/dicom"
MAX_PART_HEADERS = 16
MAX_PART_HEADER_BYTES = 4096
MAX_BOUNDARY = 200


@dataclass
class Part:
    """One part as received: its file (in ``tmp/``), its Content-Type and its size."""

    path: Path
    content_type: str = ""
    size: int = 0


def related_boundary(content_type: str | None, *, expect_type: str = DICOM) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` Content-Type (PS3.18 §8.6.1.2);
    :class:`Refusal` 415 for any other media type, 400 when the boundary is missing."""
    media, params = parse_options_header(content_type or "")
    if media != b"multipart/related":
        raise Refusal(415, f"Content-Type must be multipart/related; type=\"{expect_type}\""
                             f" (got {media.decode('latin-1')[:64] or 'none'})")
    kind = params.get(b"type", b"").decode("latin-1").strip().lower()
    if kind and kind != expect_type:
        raise Refusal(415, f"multipart/related type must be {expect_type} (got {kind[:64]});"
                             " metadata and bulk data requests are not supported")
    boundary = params.get(b"boundary", b"")
    # RFC 2046 §5.1.1 says 1 to 70 characters, but real senders exceed it (Orthanc's STOW-RS client
    # joins two UUIDs: 73), so any boundary up to MAX_BOUNDARY is taken.
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise Refusal(400, f"multipart/related Content-Type has no boundary (or one over {MAX_BOUNDARY} characters)")
    return boundary


@dataclass
class PartWriter:
    """Feed it the body's chunks (:meth:`feed`), then :meth:`finish` for the parts; :meth:`discard`
    removes every file written. Not thread-safe: one request's body, in order."""

    boundary: bytes
    folder: Path
    max_part_bytes: int
    max_body_bytes: int
    parts: list[Part] = field(default_factory=list)
    received: int = 0
    _fh: BinaryIO | None = None
    _header: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])
    _headers: dict[str, str] = field(default_factory=dict)
    _ended: bool = False
    _error: Refusal | None = None

    def __post_init__(self) -> None:
        self._parser = MultipartParser(self.boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end_part,
            "on_header_field": self._field, "on_header_value": self._value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_end": self._end,
        }, max_header_count=MAX_PART_HEADERS, max_header_size=MAX_PART_HEADER_BYTES)

    def feed(self, chunk: bytes) -> None:
        """Parse and write one chunk of the body; :class:`Refusal` when the request must stop."""
        self.received += len(chunk)
        if self.received > self.max_body_bytes:
            raise Refusal(413, f"request body is larger than dicomweb.max_request_mb"
                                 f" ({self.max_body_bytes // 2**20} MB)")
        if self._ended:
            return  # the epilogue after the close delimiter is ignored (RFC 2046 §5.1.1)
        try:
            self._parser.write(chunk)
        except MultipartParseError as exc:
            raise Refusal(400, f"multipart/related body is malformed: {str(exc)[:120]}") from None
        except OSError as exc:  # the disk filled up under the part being written
            raise Refusal(503, f"a part could not be written ({exc.strerror}); try again later") from None
        if self._error is not None:
            raise self._error

    def finish(self) -> list[Part]:
        """The parts, once the whole body has come; :class:`Refusal` 400 when it ended early or held none."""
        if not self._ended:
            raise Refusal(400, "multipart/related body ends before its close delimiter")
        if not self.parts:
            raise Refusal(400, "multipart/related body holds no part")
        return self.parts

    def discard(self) -> None:
        """Close and remove every part file this writer made."""
        self._close()
        for part in self.parts:
            part.path.unlink(missing_ok=True)

    # -- python-multipart callbacks -----------------------------------------------------------

    def _begin(self) -> None:
        self._headers = {}

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        name, value = (bytes(b).decode("latin-1") for b in self._header)
        self._headers[name.strip().lower()] = value.strip()
        self._header = [bytearray(), bytearray()]

    def _headers_finished(self) -> None:
        fd, name = tempfile.mkstemp(dir=self.folder, suffix=".part")
        self._fh = os.fdopen(fd, "wb")
        self.parts.append(Part(Path(name), self._headers.get("content-type", "")))

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self.parts[-1]
        part.size += end - start
        if part.size > self.max_part_bytes:
            if self._error is None:
                self._error = Refusal(413, f"part {len(self.parts)} is larger than storage.max_instance_mb"
                                             f" ({self.max_part_bytes // 2**20} MB)")
            return
        assert self._fh is not None
        self._fh.write(data[start:end])

    def _end_part(self) -> None:
        self._close()

    def _end(self) -> None:
        self._ended = True

    def _close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None
