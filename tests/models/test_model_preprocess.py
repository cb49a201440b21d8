"""Preprocessing on real files: the model must see what a radiologist's viewer shows."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from models import phantoms
from models.preprocess import Letterbox, display_image, letterbox, prepare

SIZE = 384


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1])


def _device(**changes: object) -> phantoms.DeviceProfile:
    base = dict(
        manufacturer="ACME",
        model="X1",
        serial="S1",
        station="XR01",
        software_versions="1.0",
        modality="DX",
        institution="Test Hospital",
        detector_id="D1",
    )
    base.update(changes)
    return phantoms.DeviceProfile(**base)  # type: ignore[arg-type]


def test_rsna_jpeg_baseline_files_prepare_like_their_pixels(rsna_dir):
    files = sorted((rsna_dir / "images").glob("*.dcm"))
    assert len(files) == 9
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"  # JPEG Baseline
        p = prepare(ds, SIZE)
        assert p.image.shape == (SIZE, SIZE) and p.image.dtype == np.uint8
        assert p.letterbox.scale_x == p.letterbox.scale_y == SIZE / 1024
        # 8-bit MONOCHROME2 without a VOI: the input is the stored image, resized and auto-windowed.
        raw = np.asarray(Image.fromarray(ds.pixel_array).resize((SIZE, SIZE), Image.BILINEAR))
        assert _corr(p.image, raw) > 0.99
        assert p.image.min() == 0 and p.image.max() == 255


def test_real_cr_monochrome1_jpeg2000_is_inverted_and_letterboxed():
    # A real CR chest (pydicom-data): 1955 x 1841, 15 bits stored, MONOCHROME1, JPEG 2000 lossless.
    path = get_testdata_file("RG1_J2KR.dcm")
    assert path is not None, "pydicom-data is not installed (requirements/dev.txt)"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.Modality == "CR" and ds.BitsStored == 15
    p = prepare(ds, SIZE)
    assert p.letterbox.resized == (SIZE, round(1841 * SIZE / 1955))
    w = p.letterbox.resized[1]
    assert np.all(p.image[:, w:] == 0)  # padding on the right, image top-left
    raw = np.asarray(Image.fromarray(ds.pixel_array.astype(np.float32)).resize((w, SIZE), Image.BILINEAR))
    # MONOCHROME1: high stored values are dark on screen, so the model input runs opposite to them.
    assert _corr(p.image[:, :w], raw) < -0.9
    # Lungs are dark on screen: the central lung fields are darker than the spine/mediastinum.
    mid = w // 2
    lung = p.image[SIZE // 3 : SIZE // 2, w // 5 : w // 3].mean()
    spine = p.image[SIZE // 3 : SIZE // 2, mid - 8 : mid + 8].mean()
    assert lung + 40 < spine


@pytest.mark.parametrize("name", ["JPEGLSNearLossless_16.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm"])
def test_compressed_syntaxes_and_bit_depths_decode(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    p = prepare(ds, SIZE)
    assert p.image.shape == (SIZE, SIZE)
    h, w = p.letterbox.resized
    assert max(h, w) == SIZE
    assert p.image[:h, :w].max() == 255 and p.image[:h, :w].min() == 0


def test_same_exposure_looks_the_same_at_any_bit_depth_and_polarity():
    ph = phantoms.generate(3, 1, size=512)
    inputs = []
    for bits, photometric, modality in [
        (10, "MONOCHROME2", "CR"),
        (12, "MONOCHROME1", "CR"),
        (16, "MONOCHROME2", "DX"),
    ]:
        ds = phantoms.to_dataset(ph, _device(bits_stored=bits, photometric=photometric, modality=modality))
        ds = pydicom.dcmread(_roundtrip(ds))
        assert ds.BitsStored == bits
        inputs.append(prepare(ds, SIZE).image.astype(np.int16))
    for other in inputs[1:]:
        assert np.abs(other - inputs[0]).mean() < 2.0


def test_modality_lut_and_window_are_applied():
    ph = phantoms.generate(3, 2, size=256)
    ds = phantoms.to_dataset(ph, _device(modality="CR", bits_stored=12))
    plain = display_image(ds)
    # A negative Rescale Slope (PS3.3 C.11.1) flips the values a viewer shows.
    flipped = phantoms.to_dataset(ph, _device(modality="CR", bits_stored=12))
    flipped.RescaleSlope = "-1"
    flipped.RescaleIntercept = "4095"
    flipped.WindowCenter = str(4095 - float(ds.WindowCenter))
    assert _corr(display_image(flipped), plain) < -0.99
    # A narrow window saturates most of the image, as it does on screen.
    narrow = phantoms.to_dataset(ph, _device(modality="CR", bits_stored=12))
    narrow.WindowWidth = "20"
    shown = display_image(narrow)
    assert np.mean((shown == 0.0) | (shown == 1.0)) > 0.8


def test_rle_compressed_instance_prepares_identically():
    ph = phantoms.generate(4, 0, size=256)
    ds = phantoms.to_dataset(ph, _device())
    before = prepare(ds, SIZE).image
    ds.compress(RLELossless)
    again = pydicom.dcmread(_roundtrip(ds))
    assert again.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(prepare(again, SIZE).image, before)


@pytest.mark.parametrize("rows,cols", [(1024, 1024), (1955, 1841), (2500, 3000), (64, 256), (333, 1)])
def test_box_mapping_round_trips_exactly(rows, cols):
    lb = Letterbox(rows=rows, cols=cols, size=SIZE)
    rng = np.random.default_rng(rows * 7 + cols)
    x0 = rng.uniform(0, cols, 50)
    y0 = rng.uniform(0, rows, 50)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, cols - x0), y0 + rng.uniform(0, rows - y0)], axis=1)
    back = lb.to_source(lb.to_model(boxes))
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9 * max(rows, cols))
    # The whole source image is exactly the non-padded part of the model input, and back.
    h, w = lb.resized
    np.testing.assert_allclose(lb.to_model([0, 0, cols, rows])[0], [0, 0, w, h])
    np.testing.assert_allclose(lb.to_source([0, 0, SIZE, SIZE])[0], [0, 0, cols, rows])


def test_box_mapping_follows_the_pixels():
    # A bright square drawn in the source lands where to_model says, in the resized input.
    img = np.zeros((600, 900), dtype=np.float32)
    img[150:300, 450:600] = 1.0
    p = letterbox(img, SIZE)
    x0, y0, x1, y1 = p.letterbox.to_model([450, 150, 600, 300])[0]
    ys, xs = np.nonzero(p.image > 127)
    assert abs(xs.min() - x0) <= 1 and abs(xs.max() + 1 - x1) <= 1
    assert abs(ys.min() - y0) <= 1 and abs(ys.max() + 1 - y1) <= 1


def _roundtrip(ds):
    import io

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    buf.seek(0)
    return buf
