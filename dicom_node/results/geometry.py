"""Box geometry shared by the SR and the GSPS: closed polylines in pixel coordinates (PS3.3
C.10.5.1.2, C.18.6.1.2), laterality of a finding, and the label drawn next to a box.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from models.detection import Detection

from .codes import LEFT, RIGHT


def box_polyline(box: Iterable[float]) -> np.ndarray:
    """A box ``(x0, y0, x1, y1)`` as a closed polyline of five (column, row) points, first == last,
    clockwise from the top-left corner (PS3.3 C.10.5.1.2, C.18.6.1.2 pixel coordinates)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _row_direction(header: Dataset) -> str | None:
    """The patient direction of increasing column index ('L' or 'R'), or None when it is unknown
    or not lateral (e.g. a lateral view)."""
    orientation = header.get("PatientOrientation")
    if orientation and len(orientation) == 2 and str(orientation[0]):
        first = str(orientation[0])
        if first[0] in "LR":
            return first[0]
        return None
    view = str(header.get("ViewPosition", "") or "").upper()
    if view in ("", "PA", "AP"):
        # Chest PA/AP are displayed as if facing the patient: patient's right on image left.
        return "L"
    return None


def laterality(det: Detection, header: Dataset) -> Code | None:
    """Right or left lung when the box lies within one half of the image, else None.

    Uses Patient Orientation (0020,0020) when present; otherwise the radiographic convention for PA
    and AP chest views (patient's right on the image's left). No laterality for lateral views.
    """
    direction = _row_direction(header)
    if direction is None:
        return None
    half = int(header.Columns) / 2.0
    x0, _, x1, _ = (float(v) for v in det.box)
    if x1 <= half:
        image_side = "left"
    elif x0 >= half:
        image_side = "right"
    else:
        return None
    # direction 'L': columns increase towards the patient's left, so the image's left is the
    # patient's right.
    if direction == "L":
        return RIGHT if image_side == "left" else LEFT
    return LEFT if image_side == "left" else RIGHT


def score_text(det: Detection) -> str:
    """Short label drawn next to a box: ``"opacity 0.87"``."""
    return f"{det.label} {float(det.score):.2f}"
