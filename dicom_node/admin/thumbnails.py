"""Small PNGs of the Secondary Capture overlays (detections burned in) for the dashboard.

The overlay is read from the outbox, downscaled with Pillow and kept in a small cache: an overlay
never changes once made (it is built once per source image), so its path and size identify it.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread

MIN_SIZE, MAX_SIZE = 48, 1024
_CACHE_ENTRIES = 256


class ThumbnailCache:
    """PNG bytes of downscaled overlays, least recently used dropped first."""

    def __init__(self, entries: int = _CACHE_ENTRIES) -> None:
        self._entries = entries
        self._cache: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def png(self, path: str | Path, size: int) -> bytes:
        """The overlay at ``path`` fitted into ``size``×``size`` pixels, as PNG."""
        size = max(MIN_SIZE, min(MAX_SIZE, int(size)))
        key = (str(path), size, Path(path).stat().st_mtime_ns)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        data = render_png(path, size)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self._entries:
                self._cache.popitem(last=False)
        return data


def render_png(path: str | Path, size: int) -> bytes:
    """Read an SC overlay (8-bit RGB or grey) and return it downscaled to fit ``size``, as PNG."""
    ds = dcmread(path)
    pixels = ds.pixel_array
    if pixels.dtype != np.uint8:
        lo, hi = float(pixels.min()), float(pixels.max())
        pixels = ((pixels - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()
