"""Detection metrics: COCO AP (pycocotools' own COCOeval), AP at chosen IoUs, and FROC sensitivities.

The columns match the seed paper's Table 1 (AP at IoU 0.2 / 0.4 / 0.5 / 0.7) plus COCO's AP, AP50 and
AP75. Sensitivity at 0.5 / 1 / 2 false positives per image is the FROC operating points radiology
papers report. All figures are fractions in 0..1.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.datasets import Sample
from models.detection import Detection, image_probability

TABLE1_IOUS = (0.2, 0.4, 0.5, 0.7)
FROC_FPPI = (0.5, 1.0, 2.0)

__all__ = [
    "TABLE1_IOUS",
    "FROC_FPPI",
    "auroc",
    "detect_all",
    "evaluate_detections",
    "evaluate_detector",
    "froc",
    "operating_point",
]


def _coco_gt(samples: Sequence[Sample]) -> COCO:
    images: list[dict] = []
    anns: list[dict] = []
    for s in samples:
        images.append({"id": s.image_id, "width": s.letterbox.cols, "height": s.letterbox.rows})
        for b in s.boxes_source:
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": s.image_id,
                    "category_id": 1,
                    "bbox": [float(b[0]), float(b[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "opacity"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _ap_at(gt: COCO, dets: list[dict], ious: Sequence[float] | None) -> np.ndarray:
    """COCOeval precision averaged over recall, per IoU threshold ('all' areas, 100 detections)."""
    if not dets:
        return np.zeros(len(ious) if ious is not None else 10)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        if ious is not None:
            ev.params.iouThrs = np.asarray(ious, dtype=np.float64)
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, 0, 0, -1]  # [iou, recall, class, area=all, maxDets=100]
    out = []
    for row in precision:
        valid = row[row > -1]
        out.append(float(valid.mean()) if valid.size else 0.0)
    return np.asarray(out)


def auroc(positive: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); None without both classes."""
    y = np.asarray(positive, dtype=bool)
    x = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if not n_pos or not n_neg:
        return None
    pos, neg = x[y][:, None], x[~y][None, :]  # every (positive, negative) pair; fine for thousands of images
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def _matches(
    samples: Sequence[Sample], detections: Sequence[Sequence[Detection]], iou: float
) -> list[tuple[float, bool]]:
    """(score, true positive) per detection: greedy by score, each ground-truth box matched once."""
    scored = []
    for s, dets in zip(samples, detections, strict=True):
        gts = s.boxes_source
        taken = np.zeros(len(gts), dtype=bool)
        for d in sorted(dets, key=lambda d: -d.score):
            hit = False
            if len(gts):
                ious = _iou_one(np.asarray(d.box), gts)
                ious[taken] = 0.0
                j = int(np.argmax(ious))
                if ious[j] >= iou:
                    taken[j] = True
                    hit = True
            scored.append((d.score, hit))
    scored.sort(key=lambda t: -t[0])
    return scored


def operating_point(
    samples: Sequence[Sample], detections: Sequence[Sequence[Detection]], iou: float = 0.5
) -> dict[str, float]:
    """The score threshold with the best box-level F1 at ``iou`` (the rule the shipped model uses).

    F1 weighs a missed opacity and a false box alike, which suits a second reader whose boxes a
    radiologist reviews. Returns the threshold with its precision, recall and F1.
    """
    total = sum(len(s.boxes_source) for s in samples)
    best = {"threshold": 0.5, "f1": 0.0, "precision": 0.0, "recall": 0.0, "iou": iou}
    tp = fp = 0
    scored = _matches(samples, detections, iou)
    for k, (score, hit) in enumerate(scored):
        tp += hit
        fp += not hit
        if k + 1 < len(scored) and scored[k + 1][0] == score:
            continue  # a threshold keeps every detection of equal score
        f1 = 2 * tp / max(1, 2 * tp + fp + (total - tp))
        if f1 > best["f1"]:
            best = {
                "threshold": round(float(score), 4),
                "f1": round(f1, 4),
                "precision": round(tp / (tp + fp), 4),
                "recall": round(tp / max(1, total), 4),
                "iou": iou,
            }
    return best


def froc(samples: Sequence[Sample], detections: Sequence[Sequence[Detection]], iou: float = 0.5) -> dict[float, float]:
    """Sensitivity (fraction of boxes found) at each false-positives-per-image rate of FROC_FPPI."""
    total = sum(len(s.boxes_source) for s in samples)
    scored = _matches(samples, detections, iou)
    n_images = max(1, len(samples))
    tp = fp = 0
    best = dict.fromkeys(FROC_FPPI, 0.0)
    for _score, hit in scored:
        if hit:
            tp += 1
        else:
            fp += 1
        for rate in FROC_FPPI:
            if fp / n_images <= rate and total:
                best[rate] = max(best[rate], tp / total)
    return best


def _iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def evaluate_detections(
    samples: Sequence[Sample], detections: Sequence[Sequence[Detection]]
) -> dict[str, float | int | None]:
    """Every metric for detections (source pixels) against the samples' ground truth."""
    gt = _coco_gt(samples)
    dets = []
    for s, ds in zip(samples, detections, strict=True):
        for d in ds:
            x0, y0, x1, y1 = d.box
            dets.append(
                {
                    "image_id": s.image_id,
                    "category_id": 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "score": d.score,
                }
            )
    coco = _ap_at(gt, dets, None)  # COCO's 0.50:0.05:0.95
    table = _ap_at(gt, dets, TABLE1_IOUS)
    sens = froc(samples, detections)
    result: dict[str, float | int | None] = {
        "AP": round(float(coco.mean()), 4),
        "AP50": round(float(coco[0]), 4),
        "AP75": round(float(coco[5]), 4),
    }
    for iou, ap in zip(TABLE1_IOUS, table, strict=True):
        result[f"AP@{iou}"] = round(float(ap), 4)
    for rate, value in sens.items():
        result[f"sensitivity@{rate:g}FP"] = round(value, 4)
    auc = auroc([len(s.boxes_source) > 0 for s in samples], [image_probability(d) for d in detections])
    result["image_auroc"] = None if auc is None else round(auc, 4)
    result["images"] = len(samples)
    result["boxes"] = int(sum(len(s.boxes_source) for s in samples))
    return result


def evaluate_detector(
    detector: object,
    samples: Sequence[Sample],
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float | int | None]:
    """Run ``detector`` (a :class:`models.detector.Detector`) on the samples with every score kept."""
    return evaluate_detections(samples, detect_all(detector, samples, batch_size, progress))


def detect_all(
    detector: object,
    samples: Sequence[Sample],
    batch_size: int = 4,
    progress: Callable[[int], None] | None = None,
) -> list[list[Detection]]:
    """Every detection of ``detector`` on the samples, whatever its score (for curves and thresholds)."""
    detections: list[list[Detection]] = []
    for i in range(0, len(samples), batch_size):
        batch = samples[i : i + batch_size]
        detections += detector.predict_prepared([s.prepared for s in batch], score_threshold=0.0)  # type: ignore[attr-defined]
        if progress:
            progress(len(batch))
    return detections
