"""Synthetic chest phantoms: deterministic, labelled, and valid CR / DX DICOM by the reference validator."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest

from models import phantoms


def test_same_seed_and_index_give_the_same_image_and_boxes():
    a = phantoms.generate(11, 4, size=512)
    b = phantoms.generate(11, 4, size=512)
    assert np.array_equal(a.pixels, b.pixels)
    assert a.boxes == b.boxes and a.kinds == b.kinds and a.view == b.view
    c = phantoms.generate(11, 5, size=512)
    assert not np.array_equal(a.pixels, c.pixels)
    assert a.pixels.dtype == np.uint16 and a.pixels.shape == (512, 512)


@pytest.mark.parametrize("size", [64, 100, 127, 300])
def test_any_size_from_64_gives_an_image_of_that_size(size):
    ph = phantoms.generate(5, 0, size=size, n_opacities=1)
    assert ph.pixels.shape == (size, size)
    assert all(0 <= x and 0 <= y and x + w <= size and y + h <= size for x, y, w, h in ph.boxes)


def test_size_below_64_is_refused():
    with pytest.raises(ValueError, match="size must be >= 64"):
        phantoms.generate(5, 0, size=32)


def test_opacities_are_the_only_difference_and_lie_in_their_boxes():
    kinds = set()
    for index in range(12):
        ph = phantoms.generate(5, index, size=512, n_opacities=2)
        clear = phantoms.generate(5, index, size=512, n_opacities=0)
        assert clear.boxes == [] and len(ph.boxes) == len(ph.kinds) <= 2
        diff = ph.pixels.astype(np.int32) - clear.pixels.astype(np.int32)
        inside = np.zeros(diff.shape, dtype=bool)
        for (x, y, w, h), kind in zip(ph.boxes, ph.kinds, strict=True):
            kinds.add(kind)
            assert 0 <= x and 0 <= y and x + w <= 512 and y + h <= 512
            assert 15 <= w <= 200 and 15 <= h <= 200
            box = diff[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))]
            # Visible: the opacity brightens its box by >= 2 % of full scale on average.
            assert box.mean() > 0.02 * 65535
            pad = int(0.2 * max(w, h)) + 4
            inside[max(0, int(y) - pad) : int(y + h) + pad, max(0, int(x) - pad) : int(x + w) + pad] = True
        # Nothing changed outside the boxes (the soft edge of ground glass, which the box cuts at
        # half strength, aside).
        assert np.abs(diff[~inside]).max(initial=0) < 0.01 * 65535
    assert kinds == {"consolidation", "ground_glass"}


def test_device_fleet_is_deterministic_and_mixed():
    fleet = phantoms.device_fleet(8, 42)
    assert fleet == phantoms.device_fleet(8, 42)
    assert {d.modality for d in fleet} == {"CR", "DX"}
    assert len({d.serial for d in fleet}) == 8


def _dciodvfy(path: Path) -> str:
    exe = shutil.which("dciodvfy")
    assert exe, "dciodvfy (dicom3tools) is not installed"
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


@pytest.mark.parametrize("modality,bits,photometric", [("CR", 10, "MONOCHROME1"), ("DX", 16, "MONOCHROME2")])
def test_instances_pass_dciodvfy_and_carry_device_headers(tmp_path, modality, bits, photometric):
    device = phantoms.DeviceProfile(
        manufacturer="Carestream Health",
        model="DRX-Evolution",
        serial="DRX12345",
        station="XR07",
        software_versions="5.7.507.1",
        modality=modality,
        institution="St. Elsewhere General Hospital",
        detector_id="D-778",
        bits_stored=bits,
        photometric=photometric,
        target_exposure_index=400.0,
    )
    ph = phantoms.generate(9, 2, size=256)
    when = datetime(2026, 3, 4, 10, 20, 30)
    exposure = phantoms.Exposure(kvp=118, mas=3.2, exposure_index=520.0, calibration_date=date(2026, 1, 15))
    ds = phantoms.to_dataset(ph, device, acquired_at=when, exposure=exposure, patient_id="P-1")
    path = tmp_path / "x.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)

    report = _dciodvfy(path)
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == [], report
    assert ("DXImageForPresentation" if modality == "DX" else "CRImage") in report

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == (phantoms.DX_PRESENTATION_STORAGE if modality == "DX" else phantoms.CR_IMAGE_STORAGE)
    assert back.Modality == modality and back.BodyPartExamined == "CHEST" and back.ViewPosition in ("PA", "AP")
    assert back.Manufacturer == "Carestream Health" and back.DeviceSerialNumber == "DRX12345"
    assert back.StationName == "XR07" and back.SoftwareVersions == "5.7.507.1"
    assert back.DetectorID == "D-778" and back.DateOfLastDetectorCalibration == "20260115"
    assert float(back.KVP) == 118 and back.ExposureInuAs == 3200
    assert float(back.TargetExposureIndex) == 400.0 and float(back.ExposureIndex) == 520.0
    assert float(back.DeviationIndex) == pytest.approx(10 * math.log10(520 / 400), abs=0.01)
    assert back.PatientID == "P-1" and back.StudyDate == "20260304" and back.AcquisitionTime == "102030"
    assert back.BitsStored == bits and back.PhotometricInterpretation == photometric
    if modality == "DX":
        assert back.PresentationIntentType == "FOR PRESENTATION"
    # Stored pixels are the phantom's top bits, inverted for MONOCHROME1.
    expected = ph.pixels >> (16 - bits)
    if photometric == "MONOCHROME1":
        expected = (1 << bits) - 1 - expected
    assert np.array_equal(back.pixel_array, expected)
    # Fresh UIDs on every call.
    again = phantoms.to_dataset(ph, device, acquired_at=when, exposure=exposure)
    assert again.SOPInstanceUID != ds.SOPInstanceUID


def test_write_dataset_writes_dicom_files_and_matching_coco(tmp_path):
    coco_path = phantoms.write_dataset(tmp_path / "set", n=4, seed=21, size=256)
    coco = json.loads(coco_path.read_text())
    assert [c["name"] for c in coco["categories"]] == ["opacity"]
    assert len(coco["images"]) == 4
    for image in coco["images"]:
        ds = pydicom.dcmread(coco_path.parent / image["file_name"])
        assert (ds.Rows, ds.Columns) == (image["height"], image["width"]) == (256, 256)
    index = int(coco["images"][1]["file_name"].split("_")[-1].split(".")[0])
    ph = phantoms.generate(21, index, size=256)
    anns = [a["bbox"] for a in coco["annotations"] if a["image_id"] == coco["images"][1]["id"]]
    assert np.allclose(anns, [list(b) for b in ph.boxes], atol=1e-3)
    report = _dciodvfy(next((tmp_path / "set").glob("*.dcm")))
    assert not [line for line in report.splitlines() if line.startswith("Error")], report
