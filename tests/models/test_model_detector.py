"""The detector on DICOM radiographs: a phantom-trained model finds phantom opacities, in source pixels;
the shipped model identifies itself and carries its own threshold."""

from __future__ import annotations

import io

import pydicom
import pytest

from models import phantoms
from models.detection import Detection, ModelInfo
from models.detector import Detector
from models.modeling import SHIPPED_WEIGHTS


@pytest.fixture(scope="module")
def detector(phantom_weights) -> Detector:
    return Detector.load(phantom_weights, device="cpu", threads=2)


@pytest.fixture(scope="module")
def shipped() -> Detector:
    assert SHIPPED_WEIGHTS.is_file(), f"shipped weights missing: {SHIPPED_WEIGHTS}"
    return Detector.load(device="cpu", threads=2)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _received(ds: pydicom.Dataset) -> pydicom.Dataset:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return pydicom.dcmread(buf)


def test_shipped_model_identifies_itself_and_carries_its_threshold(shipped):
    info = shipped.info
    assert isinstance(info, ModelInfo)
    assert info.classes == ("opacity",) and info.input_size == shipped.input_size == 256
    assert info.device_uid.startswith("2.25.") or info.device_uid[0].isdigit()
    assert info.version and len(info.extra["data_fingerprint"]) == 64
    assert info.extra["config"] == "cascade_rcnn_R18n_FPN_cxr256" and info.extra["split"].startswith("by study")
    # Chosen on its validation studies and carried in the checkpoint; the node uses it unless told otherwise.
    assert info.extra["threshold_rule"].startswith("best box F1 at IoU 0.5 on the validation set")
    assert 0.0 < info.score_threshold < 1.0 and info.score_threshold == shipped.metadata.score_threshold
    assert shipped.device == "cpu"


def test_predict_finds_each_opacity_in_source_pixels(detector):
    fleet = phantoms.device_fleet(3, 8080)
    images, truth, clear = [], [], []
    for index in range(3):
        ph = phantoms.generate(8080, index, size=1024, n_opacities=1)
        images.append(_received(phantoms.to_dataset(ph, fleet[index])))
        x, y, w, h = ph.boxes[0]
        truth.append((x, y, x + w, y + h))
        clear.append(
            _received(phantoms.to_dataset(phantoms.generate(8080, index, size=1024, n_opacities=0), fleet[index]))
        )
    results = detector.predict(images + clear)  # one batch
    assert len(results) == 6
    for dets, box in zip(results[:3], truth, strict=True):
        assert dets and all(isinstance(d, Detection) and d.score >= 0.4 for d in dets)
        best = max(dets, key=lambda d: _iou(d.box, box))
        # The test's small phantom model (400 iterations at 256 px) fits boxes less tightly than a shipped
        # model would; 0.4 still fails for any slip of the source-pixel mapping (that gives IoU near 0).
        assert _iou(best.box, box) >= 0.4, (best, box)
        assert 0 <= best.box[0] < best.box[2] <= 1024 and 0 <= best.box[1] < best.box[3] <= 1024
    # The same radiographs without the opacity: nothing reported where the opacity was.
    for dets, box in zip(results[3:], truth, strict=True):
        assert all(_iou(d.box, box) < 0.5 for d in dets)


def test_boxes_follow_the_source_grid_of_a_non_square_image(detector):
    ph = phantoms.generate(8081, 1, size=1024, n_opacities=1)
    ds = phantoms.to_dataset(ph, phantoms.device_fleet(1, 1)[0])
    # Crop to 1024 x 800 (rows x cols) keeping the opacity: the box must come back in the crop's pixels.
    x, y, w, h = ph.boxes[0]
    c0 = int(min(max(0, x - 100), 224))
    arr = ds.pixel_array[:, c0 : c0 + 800].copy()
    ds.Columns = 800
    ds.PixelData = arr.tobytes()
    (dets,) = detector.predict([_received(ds)])
    target = (x - c0, y, x - c0 + w, y + h)
    assert dets and max(_iou(d.box, target) for d in dets) >= 0.5
    assert all(d.box[2] <= 800 for d in dets)
