"""The figures a model is judged by: the operating point (best F1) and the image-level AUROC."""

from __future__ import annotations

import numpy as np
import pytest

from models.datasets import Sample
from models.detection import Detection, image_probability
from models.evaluate import auroc, evaluate_detections, operating_point
from models.preprocess import Letterbox, Prepared


def _sample(i: int, boxes: list[tuple[float, float, float, float]]) -> Sample:
    prepared = Prepared(np.zeros((64, 64), np.uint8), Letterbox(rows=1000, cols=1000, size=64))
    return Sample(i, f"im{i}", prepared, np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def _det(box: tuple[float, float, float, float], score: float) -> Detection:
    return Detection(box=box, score=score)


A, B, C = (100.0, 100.0, 300.0, 300.0), (500.0, 500.0, 700.0, 800.0), (50.0, 600.0, 250.0, 900.0)
FAR = (800.0, 50.0, 950.0, 200.0)


def test_operating_point_is_the_best_f1_threshold():
    samples = [_sample(1, [A, B]), _sample(2, [C]), _sample(3, [])]
    dets = [
        [_det(A, 0.9), _det(FAR, 0.8)],  # hit, false box
        [_det(C, 0.6), _det(FAR, 0.3)],  # hit, false box
        [_det(FAR, 0.2)],  # false box on a clear chest
    ]
    # thresholds 0.9: F1 2/4; 0.8: 2/5; 0.6: 4/6 (best); 0.3: 4/7; 0.2: 4/8
    point = operating_point(samples, dets)
    assert point["threshold"] == 0.6
    assert point["f1"] == pytest.approx(4 / 6, abs=1e-4)
    assert point["precision"] == pytest.approx(2 / 3, abs=1e-4) and point["recall"] == pytest.approx(2 / 3, abs=1e-4)


def test_image_probability_and_auroc():
    assert image_probability([]) == 0.0
    assert image_probability([_det(A, 0.2), _det(B, 0.7)]) == 0.7
    assert auroc([True, True, False, False], [0.9, 0.8, 0.3, 0.1]) == 1.0
    assert auroc([True, False], [0.1, 0.9]) == 0.0
    assert auroc([True, False, True, False], [0.5, 0.5, 0.5, 0.5]) == 0.5  # ties count half
    assert auroc([True, True], [0.1, 0.2]) is None  # one class only: undefined, not a number


def test_evaluation_reports_image_auroc_beside_the_box_metrics():
    samples = [_sample(1, [A]), _sample(2, []), _sample(3, [B]), _sample(4, [])]
    dets = [[_det(A, 0.9)], [_det(FAR, 0.4)], [_det(FAR, 0.3)], []]
    result = evaluate_detections(samples, dets)
    # positives score 0.9 and 0.3, negatives 0.4 and 0: 3 of 4 pairs ordered right
    assert result["image_auroc"] == 0.75
    assert result["AP50"] == pytest.approx(0.5, abs=0.02) and result["images"] == 4 and result["boxes"] == 2
