"""Labelled image sets for training and evaluation: phantoms, an RSNA labels CSV, or COCO JSON.

Every source becomes the same thing: :class:`Sample` records holding the model input (already
preprocessed exactly as the detector will see it at inference) and the boxes in both the model's
and the source image's pixels. :func:`fingerprint` hashes what the model is shown, so a checkpoint
can name the data it was trained on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from models import phantoms
from models.preprocess import Letterbox, Prepared, letterbox, prepare

__all__ = ["Sample", "coco_samples", "fingerprint", "phantom_samples", "rsna_samples", "split_by_group"]


@dataclass
class Sample:
    """One image: model input, its letterbox, and ground-truth boxes ``(x0, y0, x1, y1)``."""

    image_id: int
    name: str
    prepared: Prepared
    boxes_source: np.ndarray  # (N, 4) float, source pixels
    group: str = ""  # images of one group (a study) never straddle a train/validation split

    @property
    def boxes_model(self) -> np.ndarray:
        return self.prepared.letterbox.to_model(self.boxes_source)

    @property
    def letterbox(self) -> Letterbox:
        return self.prepared.letterbox


def _xywh_to_xyxy(boxes: Iterable[Iterable[float]]) -> np.ndarray:
    b = np.asarray(list(boxes), dtype=np.float64).reshape(-1, 4)
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def phantom_samples(
    n: int,
    seed: int,
    input_size: int,
    *,
    size: int = 1024,
    start: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[Sample]:
    """``n`` phantoms of ``seed`` via DICOM and the inference preprocessing (CR and DX, both polarities)."""
    fleet = phantoms.device_fleet(4, seed)
    out = []
    for i in range(start, start + n):
        ph = phantoms.generate(seed, i, size=size)
        # Through the DICOM instance, so pixels take the same Modality/VOI/polarity path as a received file.
        ds = phantoms.to_dataset(ph, fleet[i % len(fleet)])
        out.append(Sample(i, f"phantom_{seed}_{i:05d}", prepare(ds, input_size), _xywh_to_xyxy(ph.boxes)))
        if progress:
            progress(1)
    return out


def rsna_samples(csv_path: Path, images_dir: Path, input_size: int) -> list[Sample]:
    """The RSNA Pneumonia Detection Challenge layout: ``patientId,x,y,width,height,Target`` rows.

    A patient with ``Target`` 0 is an image with no opacity; each ``Target`` 1 row is one box.
    """
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"patientId", "x", "y", "width", "height", "Target"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing columns {sorted(missing)}")
        for row in reader:
            pid = row["patientId"].strip()
            boxes.setdefault(pid, [])
            if str(row["Target"]).strip() == "1":
                boxes[pid].append((float(row["x"]), float(row["y"]), float(row["width"]), float(row["height"])))
    out = []
    for image_id, pid in enumerate(sorted(boxes), start=1):
        path = Path(images_dir) / f"{pid}.dcm"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: listed in {csv_path} but not found")
        ds = pydicom.dcmread(path)
        out.append(Sample(image_id, pid, prepare(ds, input_size), _xywh_to_xyxy(boxes[pid])))
    return out


def coco_samples(json_path: Path, input_size: int, image_root: Path | None = None) -> list[Sample]:
    """COCO detection JSON (every category counts as ``opacity``); images are DICOM or PNG/JPEG files."""
    json_path = Path(json_path)
    root = Path(image_root) if image_root else json_path.parent
    data = json.loads(json_path.read_text())
    by_image: dict[int, list[list[float]]] = {img["id"]: [] for img in data["images"]}
    for ann in data.get("annotations", []):
        if not ann.get("iscrowd", 0):
            by_image[ann["image_id"]].append(ann["bbox"])
    out = []
    for img in data["images"]:
        path = root / img["file_name"]
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
            grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
            prepared = letterbox(grey, input_size)
        else:
            prepared = prepare(pydicom.dcmread(path), input_size)
        out.append(Sample(int(img["id"]), str(img["file_name"]), prepared, _xywh_to_xyxy(by_image[img["id"]])))
    return out


def split_by_group(samples: Sequence[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): a seeded share of the groups (studies) goes to validation, whole.

    Splitting by image would let a second image of the same study, the same patient on the same
    day, leak into the validation set and flatter every figure measured on it.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction {val_fraction}: must be at least 0 and below 1")
    groups = sorted({s.group or s.name for s in samples})
    rng = np.random.default_rng(seed)
    n_val = round(len(groups) * val_fraction)
    held = {groups[int(i)] for i in rng.permutation(len(groups))[:n_val]}
    train = [s for s in samples if (s.group or s.name) not in held]
    val = [s for s in samples if (s.group or s.name) in held]
    return train, val


def split_label(val_fraction: float, seed: int) -> str:
    """How a split is named in a checkpoint's metadata (``extra["split"]``); read back by :func:`parse_split`."""
    return f"by study, val_fraction={val_fraction}, seed={seed}"


def parse_split(label: str) -> tuple[float, int] | None:
    """(val_fraction, seed) of a :func:`split_label`; None for a checkpoint trained without a split."""
    match = re.fullmatch(r"by study, val_fraction=([0-9.]+), seed=(-?\d+)", label.strip())
    return (float(match.group(1)), int(match.group(2))) if match else None


def fingerprint(samples: Iterable[Sample]) -> str:
    """sha256 over every model input and its boxes, in order: names exactly the data a model saw."""
    h = hashlib.sha256()
    for s in samples:
        h.update(s.prepared.image.tobytes())
        h.update(np.ascontiguousarray(s.boxes_source, dtype=np.float64).tobytes())
    return h.hexdigest()
