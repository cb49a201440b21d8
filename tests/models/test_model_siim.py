"""The SIIM-FISABIO-RSNA reader: boxes in original pixels, squashed pictures un-squashed, split by study,
one clear error per bad folder; and the real folder of shared/ as the challenge laid it out."""

from __future__ import annotations

import csv

import numpy as np
import pydicom
import pytest
from siim_support import HEADER, boxes_text, make_siim

from models import datasets, phantoms
from models.preprocess import prepare
from models.siim import SiimError, siim_samples


def test_boxes_stay_in_original_pixels_and_the_picture_is_unsquashed(tmp_path):
    # A landscape original (3000 x 2000): squashed to 256 x 256, it is stretched back to 3:2 in the input.
    images = [("aaa", "s1", 3000, 2000, [(600.0, 400.0, 900.0, 1000.0)]), ("bbb", "s2", 2000, 2500, [])]
    root = make_siim(tmp_path, images)
    first, clear = siim_samples(root, 256)
    np.testing.assert_allclose(first.boxes_source, [[600, 400, 1500, 1400]])
    assert (first.letterbox.cols, first.letterbox.rows) == (3000, 2000)
    assert first.letterbox.resized == (171, 256)  # 2000 * 256 / 3000 rows, the rest is padding
    model_box = first.boxes_model[0]
    np.testing.assert_allclose(model_box, [600 * 256 / 3000, 400 * 171 / 2000, 1500 * 256 / 3000, 1400 * 171 / 2000])
    # The painted box lands where the mapped box says, in the model input.
    ys, xs = np.nonzero(first.prepared.image > 150)
    np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], model_box, atol=2.5)
    assert first.prepared.image[172:].max() == 0  # padding below the picture
    # An image without boxes is kept as a negative, with its study.
    assert len(clear.boxes_source) == 0 and clear.group == "s2" and first.group == "s1"


def test_challenge_download_layout_reads_each_size_from_the_dicom_header(tmp_path):
    ph = phantoms.generate(21, 0, size=512, n_opacities=1)
    ds = phantoms.to_dataset(ph, phantoms.device_fleet(1, 21)[0])
    path = tmp_path / "train" / "study1" / "series1" / "ccc.dcm"
    path.parent.mkdir(parents=True)
    ds.save_as(path, enforce_file_format=True)
    x, y, w, h = ph.boxes[0]
    with open(tmp_path / "train_image_level.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([HEADER, ["ccc_image", boxes_text([(x, y, w, h)]), "", "study1"]])
    (sample,) = siim_samples(tmp_path, 256)  # no image_sizes.csv needed
    np.testing.assert_allclose(sample.boxes_source, [[x, y, x + w, y + h]])
    assert (sample.letterbox.rows, sample.letterbox.cols) == (int(ds.Rows), int(ds.Columns))
    np.testing.assert_array_equal(sample.prepared.image, prepare(pydicom.dcmread(path), 256).image)


def test_a_box_a_few_pixels_outside_is_clipped_one_far_outside_is_an_error(tmp_path):
    root = make_siim(tmp_path / "ok", [("aaa", "s1", 2000, 2000, [(-6.0, 10.0, 500.0, 500.0)])])
    (sample,) = siim_samples(root, 256)
    np.testing.assert_allclose(sample.boxes_source, [[0, 10, 494, 510]])
    bad = make_siim(tmp_path / "bad", [("bbb", "s1", 1000, 1000, [(600.0, 100.0, 900.0, 300.0)])])
    with pytest.raises(SiimError, match=r"image bbb: box \(600, 100, 1500, 400\) does not fit an image of 1000 x 1000"):
        siim_samples(bad, 256)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("no_labels", "no train_image_level.csv"),
        ("no_study_column", r"missing column\(s\) StudyInstanceUID"),
        ("unknown_id", "image zzz: listed in train_image_level.csv but not in image_sizes.csv"),
        ("no_picture", r"image aaa: no images/aaa.jpg or .png"),
        ("broken_picture", "not a readable picture"),
        ("bad_boxes", "boxes is not a list of"),
        ("bad_size", "width and height must be whole numbers"),
        ("no_sizes_no_dicom", r"neither image_sizes.csv with images/ nor train/"),
    ],
)
def test_bad_folders_give_one_clear_line(tmp_path, breakage, message):
    header = [c for c in HEADER if c != "StudyInstanceUID"] if breakage == "no_study_column" else HEADER
    root = make_siim(tmp_path, [("aaa", "s1", 2000, 2000, [(100.0, 100.0, 300.0, 300.0)])], header=header,
                     sizes=breakage != "no_sizes_no_dicom")
    labels = root / "train_image_level.csv"
    if breakage == "no_labels":
        labels.unlink()
    elif breakage == "unknown_id":
        with open(labels, "a", newline="") as fh:
            csv.writer(fh).writerow(["zzz_image", "", "none 1 0 0 1 1", "s9"])
    elif breakage == "no_picture":
        (root / "images" / "aaa.jpg").unlink()
    elif breakage == "broken_picture":
        (root / "images" / "aaa.jpg").write_bytes(b"not a jpeg at all")
    elif breakage == "bad_boxes":
        labels.write_text("id,boxes,label,StudyInstanceUID\naaa_image,\"[{'x': 1}]\",,s1\n")
    elif breakage == "bad_size":
        (root / "image_sizes.csv").write_text("image_id,width,height\naaa,wide,2000\n")
    with pytest.raises(SiimError, match=message) as caught:
        siim_samples(root, 256)
    assert "\n" not in str(caught.value)


def test_split_keeps_every_study_on_one_side_and_is_seeded(tmp_path):
    # 30 studies, some with several images (as in the challenge set).
    images = []
    for study in range(30):
        for k in range(1 + study % 3):
            images.append((f"im{study:02d}{k}", f"st{study:02d}", 2000, 2000, [(100.0, 100.0, 400.0, 400.0)] * (k % 2)))
    samples = siim_samples(make_siim(tmp_path, images), 128)
    train, val = datasets.split_by_group(samples, 0.2, seed=4)
    assert {s.group for s in train}.isdisjoint({s.group for s in val})
    assert len({s.group for s in val}) == 6 and len(train) + len(val) == len(samples)
    again = datasets.split_by_group(samples, 0.2, seed=4)[1]
    other = datasets.split_by_group(samples, 0.2, seed=5)[1]
    assert [s.name for s in again] == [s.name for s in val]
    assert {s.group for s in other} != {s.group for s in val}
    with pytest.raises(ValueError, match="--val-fraction 1.0"):
        datasets.split_by_group(samples, 1.0, seed=4)


def test_the_real_folder_reads_whole(siim_dir):
    samples = siim_samples(siim_dir, 256)
    assert len(samples) == 5034  # every image, negatives included (see its README)
    assert sum(1 for s in samples if len(s.boxes_source)) == 3459
    assert sum(len(s.boxes_source) for s in samples) == 6325
    assert len({s.group for s in samples}) == 4823
    for s in samples:
        b = s.boxes_source
        if len(b):
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= s.letterbox.cols).all() and (b[:, 3] <= s.letterbox.rows).all()
