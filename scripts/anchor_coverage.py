"""How well a set of RPN anchors covers a data set's boxes: the measurement behind the anchor sizes.

For every ground-truth box (in model-input pixels) the best IoU with any anchor that Detectron2's
``DefaultAnchorGenerator`` places on the feature maps; the RPN trains a box only from anchors with
IoU >= 0.7 (and the best anchor per box), so the share of boxes at >= 0.7 and >= 0.5 is what counts.

    python scripts/anchor_coverage.py --siim ../shared/data/siim-covid-256 --size 256 \
        --sizes 24,48,96,192 --ratios 1.0,1.5,2.2
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.structures import Boxes, pairwise_iou

from models.siim import siim_samples


def coverage(boxes: np.ndarray, size: int, sizes: list[float], ratios: list[float], strides: list[int]) -> dict:
    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[s] for s in sizes]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [ratios]
    gen = DefaultAnchorGenerator(cfg, [ShapeSpec(stride=s) for s in strides])
    feats = [torch.zeros(1, 1, -(-size // s), -(-size // s)) for s in strides]
    anchors = Boxes.cat(gen(feats))
    best = pairwise_iou(Boxes(torch.as_tensor(boxes, dtype=torch.float32)), anchors).max(dim=1).values.numpy()
    return {
        "sizes": sizes,
        "ratios": ratios,
        "median_best_iou": round(float(np.median(best)), 3),
        "share_iou_0.7": round(float((best >= 0.7).mean()), 3),
        "share_iou_0.5": round(float((best >= 0.5).mean()), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--siim", required=True)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sizes", action="append", help="comma-separated anchor sizes, one per FPN level")
    ap.add_argument("--ratios", action="append", help="comma-separated aspect ratios (height / width)")
    ap.add_argument("--strides", default="8,16,32,64")
    args = ap.parse_args()
    samples = siim_samples(args.siim, args.size)
    boxes = np.concatenate([s.boxes_model for s in samples if len(s.boxes_source)])
    strides = [int(x) for x in args.strides.split(",")]
    for sizes in args.sizes or ["32,64,128,256"]:
        for ratios in args.ratios or ["0.5,1.0,2.0"]:
            size_list = [float(x) for x in sizes.split(",")]
            ratio_list = [float(x) for x in ratios.split(",")]
            res = coverage(boxes, args.size, size_list, ratio_list, strides)
            print(json.dumps({"boxes": len(boxes), **res}))


if __name__ == "__main__":
    main()
