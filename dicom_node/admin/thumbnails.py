"""Small PNGs of the Secondary Capture overlays (detections burned in) for the dashboard.

An overlay never changes once made, so its result UID identifies it. Each one is decoded once into
a *master* no larger than :data:`MAX_SIZE` (an uncompressed 8-bit overlay is read k rows at a time
and reduced by block mean, never held whole), and every size asked for is made from that master. Before,
each request for a size not yet cached decoded the whole overlay again: +954 MB of peak RSS for a
286 MB one, +3.6 GB for four sizes at once (docs/reliability.md, section 11). Masters and PNGs sit in
two LRU caches bounded in bytes, and one decode runs at a time, so concurrent requests wait for it
instead of each decoding.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.uid import UID

MIN_SIZE, MAX_SIZE = 48, 1024
MASTER_CACHE_BYTES = 48 * 2**20  # about 16 masters of 1024 x 1024 RGB
PNG_CACHE_BYTES = 16 * 2**20


class _LruBytes:
    """An LRU map whose values have a size; the oldest are dropped past ``limit`` bytes in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.bytes = 0
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()

    def get(self, key: Any) -> Any | None:
        hit = self._items.get(key)
        if hit is None:
            return None
        self._items.move_to_end(key)
        return hit[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        if size > self.limit:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.limit:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped

    def __len__(self) -> int:
        return len(self._items)


class ThumbnailCache:
    """PNG bytes of downscaled overlays by (result UID, size); thread-safe."""

    def __init__(self, master_bytes: int = MASTER_CACHE_BYTES, png_bytes: int = PNG_CACHE_BYTES) -> None:
        self._masters = _LruBytes(master_bytes)
        self._pngs = _LruBytes(png_bytes)
        self._lock = threading.Lock()  # guards the two caches
        self._decode = threading.Lock()  # one overlay decoded at a time: memory stays that of one
        self.decodes = 0  # overlays decoded (for /metrics and the tests)

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return self._masters.bytes + self._pngs.bytes

    def png(self, result_uid: str, path: str | Path, size: int) -> bytes:
        """The overlay ``result_uid`` (file ``path``) fitted into ``size`` x ``size`` pixels, as PNG."""
        size = max(MIN_SIZE, min(MAX_SIZE, int(size)))
        key = (result_uid, size)
        with self._lock:
            data = self._pngs.get(key)
        if data is not None:
            return data
        image = self._master(result_uid, path)
        width, height = image.size
        if max(width, height) > size:  # resize() makes the small image straight from the master, no copy
            scale = size / max(width, height)
            image = image.resize((max(1, round(width * scale)), max(1, round(height * scale))),
                                 Image.Resampling.LANCZOS)
        data = _png(image)
        with self._lock:
            self._pngs.put(key, data, len(data))
        return data

    def _master(self, result_uid: str, path: str | Path) -> Image.Image:
        with self._lock:
            image = self._masters.get(result_uid)
        if image is not None:
            return image
        with self._decode:
            with self._lock:  # another request may have decoded it while this one waited
                image = self._masters.get(result_uid)
            if image is not None:
                return image
            image = read_overlay(path, MAX_SIZE)
            self.decodes += 1
        with self._lock:
            self._masters.put(result_uid, image, _nbytes(image))
        return image


def _nbytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def read_overlay(path: str | Path, size: int) -> Image.Image:
    """An SC overlay (8-bit RGB or grey) fitted into ``size`` x ``size``; reads a fraction of a large one."""
    ds = dcmread(path, defer_size=1024)
    pixels = _reduced_native(ds, path, size)
    if pixels is None:  # compressed, or a layout the row reader does not take: decode it whole, once
        pixels = dcmread(path).pixel_array
        if pixels.dtype != np.uint8:
            lo, hi = float(pixels.min()), float(pixels.max())
            pixels = ((pixels - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(pixels))
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _reduced_native(ds: Any, path: str | Path, size: int) -> np.ndarray | None:
    """Uncompressed 8-bit pixels reduced by a whole factor k (block mean, so thin box lines stay),
    read k rows at a time from the file, k keeping at least ``size`` on the longer side; None when
    the data set is not such (the caller decodes it whole)."""
    tsyntax = UID(str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or ""))
    try:
        rows, cols, spp = int(ds.Rows), int(ds.Columns), int(ds.get("SamplesPerPixel", 1))
        ok = (tsyntax.is_transfer_syntax and not tsyntax.is_compressed and tsyntax.is_little_endian
              and int(ds.BitsAllocated) == 8 and int(ds.get("NumberOfFrames", 1) or 1) == 1
              and str(ds.get("PhotometricInterpretation", "")) in ("RGB", "MONOCHROME2")
              and spp in (1, 3) and (spp == 1 or int(ds.get("PlanarConfiguration", 0)) == 0))
    except (AttributeError, TypeError, ValueError):
        return None
    raw = ds.get_item(0x7FE00010, keep_deferred=True)  # its file offset, the value left unread
    row_bytes = cols * spp
    if not ok or not isinstance(raw, RawDataElement) or raw.value is not None or raw.length != rows * row_bytes:
        return None
    k = max(1, max(rows, cols) // size)
    width = cols // k
    if width == 0:
        return None
    out = np.empty(((rows + k - 1) // k, width, spp), np.uint8)
    with open(path, "rb") as f:
        f.seek(raw.value_tell)
        for i in range(out.shape[0]):
            n = min(k, rows - i * k)
            block = f.read(n * row_bytes)
            if len(block) != n * row_bytes:
                return None
            cells = np.frombuffer(block, np.uint8).reshape(n, cols, spp)[:, :width * k].reshape(n, width, k, spp)
            out[i] = (cells.mean(axis=(0, 2), dtype=np.float32) + 0.5).astype(np.uint8)
    return out[:, :, 0] if spp == 1 else out
