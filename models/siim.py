"""The SIIM-FISABIO-RSNA COVID-19 Detection challenge layout (2021), as labelled training data.

Two forms of the same folder are read:

- the challenge's own download: ``train_image_level.csv`` and ``train/<study>/<series>/<image>.dcm``,
  where each image's size is in its DICOM header (Rows, Columns) and pixels go through the same
  display pipeline as a received instance (:func:`models.preprocess.prepare`);
- a reduced copy whose DICOMs were replaced by ``images/<image>.jpg`` (or ``.png``), each the whole
  frame squashed to a square without keeping the aspect ratio, with ``image_sizes.csv``
  (``image_id,width,height``) naming the original size. The picture is stretched back to the original
  aspect ratio while it is letterboxed, so the model sees the same geometry a DICOM would give it.

Boxes (``{x, y, width, height}`` in ORIGINAL pixels, ``boxes`` column) stay in original pixels
(:attr:`Sample.boxes_source`), clipped to the image; images without boxes are kept as negatives.
Each sample carries its StudyInstanceUID as ``group`` so that :func:`models.datasets.split_by_group`
never puts two images of one study on both sides of a split.
"""

from __future__ import annotations

import ast
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from models.datasets import Sample
from models.preprocess import Letterbox, Prepared, prepare

__all__ = ["SiimImage", "read_labels", "siim_samples"]

IMAGE_LEVEL_CSV = "train_image_level.csv"
SIZES_CSV = "image_sizes.csv"
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: A box may overhang its image by this fraction of the image's side (annotation slack) and is
#: clipped; more than that means the size or the box is wrong.
OVERHANG = 0.02


class SiimError(ValueError):
    """A SIIM folder that cannot be read as labelled data; the message is one line for the user."""


@dataclass(frozen=True)
class SiimImage:
    """One labelled image of the challenge: ids, boxes ``(x0, y0, x1, y1)`` in original pixels."""

    image_id: str
    study_uid: str
    boxes: np.ndarray


def _parse_boxes(text: str, where: str) -> np.ndarray:
    text = (text or "").strip()
    if not text or text.lower() == "nan":
        return np.zeros((0, 4))
    try:
        items = ast.literal_eval(text)
        rows = [(float(b["x"]), float(b["y"]), float(b["width"]), float(b["height"])) for b in items]
    except (ValueError, SyntaxError, TypeError, KeyError) as exc:
        raise SiimError(f"{where}: boxes is not a list of {{x, y, width, height}} ({exc.__class__.__name__})") from None
    b = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def _csv_rows(path: Path, columns: set[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """(``file:line``, row) of a CSV file that must hold ``columns``; a missing one is one clear error."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = columns - set(reader.fieldnames or [])
        if missing:
            raise SiimError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            yield f"{path}:{line}", row


def read_labels(root: Path) -> list[SiimImage]:
    """``train_image_level.csv`` of ``root``: one :class:`SiimImage` per row, in file order."""
    path = Path(root) / IMAGE_LEVEL_CSV
    if not path.is_file():
        raise SiimError(f"{root}: no {IMAGE_LEVEL_CSV} (not a SIIM-FISABIO-RSNA folder)")
    out = []
    for where, row in _csv_rows(path, {"id", "boxes", "StudyInstanceUID"}):
        image_id = row["id"].strip().removesuffix("_image")
        study = row["StudyInstanceUID"].strip()
        if not image_id or not study:
            raise SiimError(f"{where}: empty id or StudyInstanceUID")
        out.append(SiimImage(image_id, study, _parse_boxes(row["boxes"], where)))
    return out


def _read_sizes(root: Path) -> dict[str, tuple[int, int]]:
    """``image_sizes.csv``: image id -> (width, height) of the original DICOM."""
    path = Path(root) / SIZES_CSV
    if not path.is_file():
        return {}
    sizes = {}
    for where, row in _csv_rows(path, {"image_id", "width", "height"}):
        try:
            w, h = int(row["width"]), int(row["height"])
        except ValueError:
            raise SiimError(f"{where}: width and height must be whole numbers") from None
        if w < 1 or h < 1:
            raise SiimError(f"{where}: width and height must be positive")
        sizes[row["image_id"].strip()] = (w, h)
    return sizes


def _dicom_index(root: Path) -> dict[str, Path]:
    """``train/<study>/<series>/<image>.dcm`` of the challenge download, by image id."""
    train = Path(root) / "train"
    return {p.stem: p for p in train.glob("*/*/*.dcm")} if train.is_dir() else {}


def _picture(path: Path, width: int, height: int, size: int) -> Prepared:
    """A squashed picture stretched back to ``width x height`` proportions and letterboxed to ``size``."""
    box = Letterbox(rows=height, cols=width, size=size)
    h, w = box.resized
    try:
        with Image.open(path) as im:
            grey = im.convert("L").resize((w, h), Image.Resampling.BILINEAR)
    except OSError as exc:
        raise SiimError(f"{path}: not a readable picture ({exc.__class__.__name__})") from None
    out = np.zeros((size, size), dtype=np.uint8)
    out[:h, :w] = np.asarray(grey)
    return Prepared(image=out, letterbox=box)


def _clip(boxes: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Boxes clipped to the image; one that overhangs by more than :data:`OVERHANG` is an error."""
    if not len(boxes):
        return boxes
    slack_x, slack_y = OVERHANG * width, OVERHANG * height
    bad = (
        (boxes[:, 0] < -slack_x)
        | (boxes[:, 1] < -slack_y)
        | (boxes[:, 2] > width + slack_x)
        | (boxes[:, 3] > height + slack_y)
        | (boxes[:, 2] <= boxes[:, 0])
        | (boxes[:, 3] <= boxes[:, 1])
    )
    if bad.any():
        x0, y0, x1, y1 = (round(float(v)) for v in boxes[int(np.argmax(bad))])
        raise SiimError(f"{where}: box ({x0}, {y0}, {x1}, {y1}) does not fit an image of {width} x {height}")
    out = boxes.copy()
    out[:, 0::2] = out[:, 0::2].clip(0, width)
    out[:, 1::2] = out[:, 1::2].clip(0, height)
    return out


def siim_samples(
    root: Path,
    input_size: int,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Sample]:
    """Every labelled image of a SIIM folder as model inputs with boxes in original pixels.

    ``limit`` keeps the first N rows of the labels file (for quick runs and tests).
    """
    root = Path(root)
    labels = read_labels(root)[:limit]
    sizes = _read_sizes(root)
    dicoms = _dicom_index(root)
    images_dir = root / "images"
    if not sizes and not dicoms:
        raise SiimError(f"{root}: neither {SIZES_CSV} with images/ nor train/<study>/<series>/*.dcm")
    out = []
    for n, item in enumerate(labels, start=1):
        where = f"image {item.image_id}"
        if item.image_id in dicoms:
            ds = pydicom.dcmread(dicoms[item.image_id])
            prepared = prepare(ds, input_size)
            width, height = int(ds.Columns), int(ds.Rows)
        else:
            if item.image_id not in sizes:
                raise SiimError(f"{where}: listed in {IMAGE_LEVEL_CSV} but not in {SIZES_CSV} or train/")
            picture = next((p for s in PICTURE_SUFFIXES if (p := images_dir / f"{item.image_id}{s}").is_file()), None)
            if picture is None:
                raise SiimError(f"{where}: no images/{item.image_id}.jpg or .png")
            width, height = sizes[item.image_id]
            prepared = _picture(picture, width, height, input_size)
        boxes = _clip(item.boxes, width, height, where)
        out.append(Sample(n, item.image_id, prepared, boxes, group=item.study_uid))
        if progress:
            progress(1)
    return out
