"""DICOM to model input, the way a viewer would show the image, and boxes back to source pixels.

The display pipeline follows PS3.4 Annex N (the grayscale pipeline): Modality LUT (Rescale Slope and
Intercept or a Modality LUT Sequence, PS3.3 C.11.1), then the VOI LUT or window (C.11.2), then the
polarity of the Photometric Interpretation (MONOCHROME1 shows low values bright, C.7.6.3.1.2). After
that the image is normalised robustly (percentile clip) so any bit depth, exposure or vendor
processing lands in the same 0..255 range, and it is letterboxed to a square model input.

:class:`Letterbox` records the exact scale used, so a box predicted in model pixels maps back to the
source pixel grid exactly (PS3.3 C.10.5.1.2 pixel-corner convention, which resizing preserves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5

__all__ = ["Letterbox", "Prepared", "display_image", "letterbox", "prepare"]


@dataclass(frozen=True)
class Letterbox:
    """How a source image of ``rows x cols`` was scaled into a ``size x size`` model input.

    The image is resized to ``(round(cols * s), round(rows * s))`` with ``s = size / max(rows, cols)``
    and placed at the top-left; the rest is padding. ``scale_x``/``scale_y`` are the exact ratios
    actually used (they differ from ``s`` by the rounding), so the mapping inverts exactly.
    """

    rows: int
    cols: int
    size: int

    @property
    def resized(self) -> tuple[int, int]:
        """(height, width) of the image inside the model input."""
        s = self.size / max(self.rows, self.cols)
        return max(1, round(self.rows * s)), max(1, round(self.cols * s))

    @property
    def scale_x(self) -> float:
        return self.resized[1] / self.cols

    @property
    def scale_y(self) -> float:
        return self.resized[0] / self.rows

    def to_model(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``(x0, y0, x1, y1)`` in source pixels to model-input pixels."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return b * np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes in model-input pixels back to source pixels, clipped to the source image."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = b / np.array([self.scale_x, self.scale_y, self.scale_x, self.scale_y])
        out[:, 0::2] = np.clip(out[:, 0::2], 0.0, self.cols)
        out[:, 1::2] = np.clip(out[:, 1::2], 0.0, self.rows)
        return out


@dataclass(frozen=True)
class Prepared:
    """A model input (``size x size`` uint8, 0 = black) and how it was made from the source."""

    image: np.ndarray
    letterbox: Letterbox


def _first_frame(ds: Dataset) -> np.ndarray:
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if samples > 1:
        # Colour (e.g. a Secondary Capture): luminance, ITU-R BT.601 weights.
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return arr


def _first_value(value: object) -> float:
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return float(value)  # type: ignore[arg-type]
    return float(value[0])  # type: ignore[index]


def _window(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """The first window of the VOI LUT module (PS3.3 C.11.2.1.2), output 0..1 (bright = 1).

    Written here rather than taken from pydicom's ``apply_windowing``, whose output range follows the
    sign of the Rescale Slope and so flips images with a negative slope.
    """
    center = _first_value(ds.WindowCenter)
    width = max(_first_value(ds.WindowWidth), 1.0)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (arr - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((arr - (center - width / 2.0)) / width, 0.0, 1.0)
    if width <= 1.0:
        return (arr > center - 0.5).astype(np.float32)
    return np.clip((arr - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def display_image(ds: Dataset) -> np.ndarray:
    """The image as a viewer shows it, float32 in [0, 1] on the source pixel grid (PS3.4 Annex N)."""
    arr = _first_frame(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1:
        arr = apply_modality_lut(arr, ds)
        if "VOILUTSequence" in ds:
            arr = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            arr = _window(np.asarray(arr, dtype=np.float32), ds)
    arr = np.asarray(arr, dtype=np.float32)
    # Robust normalisation: a percentile window over a coarse sample copes with any bit depth,
    # unused high bits, collimator blades and burnt-in labels.
    step = max(1, min(arr.shape) // 256)
    lo, hi = np.percentile(arr[::step, ::step], [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi <= lo:
        hi = lo + 1.0
    out = (arr - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    if samples == 1 and str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 1.0 - out
    return out


def letterbox(image: np.ndarray, size: int) -> Prepared:
    """Resize ``image`` (float [0, 1] or uint8) keeping its aspect ratio and pad to ``size x size``."""
    rows, cols = image.shape[:2]
    box = Letterbox(rows=int(rows), cols=int(cols), size=int(size))
    h, w = box.resized
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if (h, w) != (rows, cols):
        # Pillow's area-aware bilinear filter antialiases on downscaling.
        image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    out = np.zeros((size, size), dtype=np.uint8)
    out[:h, :w] = image
    return Prepared(image=out, letterbox=box)


def prepare(ds: Dataset, size: int) -> Prepared:
    """One DICOM image to a ``size x size`` model input plus its exact box mapping."""
    return letterbox(display_image(ds), size)
