"""Fixtures for the detector tests: the real sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.testing import RSNA_DIR, SIIM_DIR, require


@pytest.fixture(scope="session")
def rsna_dir() -> Path:
    """The RSNA chest radiograph sample (see ``dicom_node.testing.RSNA_DIR``); missing fails in CI."""
    require((RSNA_DIR / "labels.csv").is_file(), f"the RSNA sample in {RSNA_DIR}")
    return RSNA_DIR


@pytest.fixture(scope="session")
def siim_dir() -> Path:
    """The SIIM-FISABIO-RSNA radiographs of shared/ (see ``dicom_node.testing.SIIM_DIR``); missing fails in CI."""
    require((SIIM_DIR / "train_image_level.csv").is_file(), f"the SIIM radiographs in {SIIM_DIR}")
    return SIIM_DIR


#: The recipe of the small phantom model the tests make (the shipped model is trained on real films).
PHANTOM_RECIPE = dict(phantoms=300, seed=5, val_phantoms=0, max_iter=400, score_threshold=0.4, opts=[
    "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256", "INPUT.MIN_SIZE_TRAIN", "(256,)",
    "INPUT.MAX_SIZE_TRAIN", "256", "SOLVER.WARMUP_ITERS", "50", "SOLVER.CHECKPOINT_PERIOD", "100000",
    "TEST.EVAL_PERIOD", "0",
])


@pytest.fixture(scope="session")
def phantom_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Cascade R-CNN trained here on phantoms (a few minutes on 2 CPUs), exported as the node ships
    weights: the phantom path of training and inference, checked against phantoms' known boxes."""
    from models.train import TrainOptions, train

    out = tmp_path_factory.mktemp("phantom-model")
    train(TrainOptions(output_dir=out, threads=2, device="cpu", export=out / "phantom.pth", **PHANTOM_RECIPE),
          log=lambda line: None)
    return out / "phantom.pth"
