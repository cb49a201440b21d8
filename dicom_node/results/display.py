"""The source as a viewer displays it (PS3.4 N.2 grayscale pipeline: Modality LUT, VOI, MONOCHROME1
inversion), for the burned-in overlay; and the texts drawn on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

NO_FINDING_TEXT = "no opacity detected"

BANNER_TEXT = "AI RESULT \u2014 NOT FOR PRIMARY DIAGNOSIS"


def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def reduction(rows: int, columns: int, max_side: int | None) -> int:
    """The whole factor by which an image of ``rows`` x ``columns`` is reduced to fit ``max_side``
    (1: not reduced)."""
    if max_side is None or max(rows, columns) <= max_side:
        return 1
    return -(-max(rows, columns) // max_side)


def _block_mean(arr: np.ndarray, k: int) -> np.ndarray:
    """``arr`` reduced k-fold by averaging k x k blocks (the last partial row and column of blocks
    dropped), rounded back to its integer type so that a Modality LUT can still index it."""
    rows, columns = arr.shape[0] // k * k, arr.shape[1] // k * k
    blocks = arr[:rows, :columns].reshape(rows // k, k, columns // k, k)
    return np.rint(blocks.mean(axis=(1, 3))).astype(arr.dtype)


def modality_pixels(source: Dataset, max_side: int | None = None) -> np.ndarray:
    """The source's single frame after the Modality LUT (PS3.3 C.11.1), as float64; reduced by
    :func:`reduction` first when it is larger than ``max_side``, so that no full-size float copy of
    a large image is ever made."""
    from pydicom.pixels import apply_modality_lut

    try:
        arr = source.pixel_array
    except Exception as exc:  # decoder errors come in many types
        raise ValueError(f"source.PixelData cannot be decoded: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"source.PixelData must hold one grayscale frame, got shape {arr.shape}")
    k = reduction(int(arr.shape[0]), int(arr.shape[1]), max_side)
    if k > 1:
        arr = _block_mean(arr, k)
    return np.asarray(apply_modality_lut(arr, source), dtype=np.float64)


def has_voi(header: Dataset) -> bool:
    """Whether the source carries a VOI LUT or a window (PS3.3 C.11.2)."""
    return "VOILUTSequence" in header or (
        header.get("WindowCenter") not in (None, "") and header.get("WindowWidth") not in (None, "")
    )


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """Window (center, width) spanning the modality values, as viewers do for a source without
    VOI: the range from the minimum to the maximum value (PS3.3 C.11.2.1.2.1 LINEAR)."""
    lo, hi = float(values.min()), float(values.max())
    width = max(hi - lo + 1.0, 2.0)
    return lo + (width - 1.0) / 2.0, width


def _window_unit(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to [0, 1] by the formulas of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - (center - width / 2.0)) / width, 0.0, 1.0)
    width = max(width, 1.0)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def display_pixels(source: Dataset, header: Dataset, max_side: int | None = None) -> np.ndarray:
    """The source as a viewer shows it, as 8-bit MONOCHROME2 (PS3.4 N.2 grayscale pipeline):
    Modality LUT, then the first VOI LUT or window (or the full range when there is none), then
    inversion of MONOCHROME1; reduced to fit ``max_side`` (see :func:`modality_pixels`)."""
    from pydicom.pixels import apply_voi

    values = modality_pixels(source, max_side)
    if "VOILUTSequence" in header:
        item = header.VOILUTSequence[0]
        out = np.asarray(apply_voi(values.astype(np.int64), header, index=0), dtype=np.float64)
        bits = int(item.LUTDescriptor[2])
        unit = np.clip(out / float(2**bits - 1), 0.0, 1.0)
    else:
        if has_voi(header):
            center, width = _first(header.WindowCenter), _first(header.WindowWidth)
        else:
            center, width = auto_window(values)
        function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR")
        unit = _window_unit(values, center, max(width, 1.0), function)
    if header.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8)
