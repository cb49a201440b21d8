"""Training/evaluation sources read the way the user's files are laid out."""

from __future__ import annotations

import numpy as np

from models import datasets, phantoms


def test_rsna_csv_with_dicom_folder(rsna_dir):
    samples = datasets.rsna_samples(rsna_dir / "labels.csv", rsna_dir / "images", 384)
    assert len(samples) == 9
    assert sum(len(s.boxes_source) for s in samples) == 6
    first = next(s for s in samples if s.name == "00436515-870c-4b36-a041-de91049b9ab4")
    # CSV x,y,width,height -> (x0, y0, x1, y1) in the 1024 x 1024 source, and scaled for the model.
    np.testing.assert_allclose(first.boxes_source[0], [264, 152, 477, 531])
    np.testing.assert_allclose(first.boxes_model[0], np.array([264, 152, 477, 531]) * 384 / 1024)


def test_coco_json_from_write_dataset_matches_phantom_samples(tmp_path):
    coco = phantoms.write_dataset(tmp_path, n=3, seed=12, size=512)
    from_coco = datasets.coco_samples(coco, 384)
    direct = datasets.phantom_samples(3, 12, 384, size=512)
    for a, b in zip(from_coco, direct, strict=True):
        np.testing.assert_allclose(a.boxes_source, b.boxes_source, atol=1e-3)
        assert a.prepared.image.shape == (384, 384)
    assert datasets.fingerprint(direct) == datasets.fingerprint(datasets.phantom_samples(3, 12, 384, size=512))
    assert datasets.fingerprint(direct) != datasets.fingerprint(datasets.phantom_samples(3, 13, 384, size=512))
