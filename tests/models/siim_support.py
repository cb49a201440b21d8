"""Tiny SIIM-FISABIO-RSNA folders for the tests, in the reduced layout of shared/data/siim-covid-256."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

HEADER = ["id", "boxes", "label", "StudyInstanceUID"]


def boxes_text(boxes: list[tuple[float, float, float, float]]) -> str:
    return str([{"x": x, "y": y, "width": w, "height": h} for x, y, w, h in boxes]) if boxes else ""


def make_siim(
    root: Path,
    images: list[tuple[str, str, int, int, list[tuple[float, float, float, float]]]],
    *,
    header: list[str] = HEADER,
    sizes: bool = True,
) -> Path:
    """A folder in the reduced layout: 256 x 256 squashed pictures, image_sizes.csv, the labels file.

    ``images``: (image id, study, original width, original height, boxes x,y,w,h in original pixels).
    Each box is painted white into its squashed picture, so its pixels can be found again.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "train_image_level.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for image_id, study, *_, boxes in images:
            row = {"id": f"{image_id}_image", "boxes": boxes_text(boxes), "label": "", "StudyInstanceUID": study}
            w.writerow([row.get(col, "") for col in header])
    if sizes:
        with open(root / "image_sizes.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_id", "width", "height", "photometric_interpretation"])
            for image_id, _study, width, height, _boxes in images:
                w.writerow([image_id, width, height, "MONOCHROME2"])
    for image_id, _study, width, height, boxes in images:
        pic = np.full((256, 256), 40, dtype=np.uint8)
        for x, y, bw, bh in boxes:
            sx, sy = 256 / width, 256 / height
            pic[round(max(0, y) * sy) : round((y + bh) * sy), round(max(0, x) * sx) : round((x + bw) * sx)] = 255
        Image.fromarray(pic).save(root / "images" / f"{image_id}.jpg", quality=95)
    return root
