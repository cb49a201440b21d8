"""Fixtures for the detector tests: the real sample files and small phantom instances."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def rsna_dir() -> Path:
    """The RSNA chest radiograph sample in shared/ (inside or beside the checkout)."""
    env = os.environ.get("RSNA_SAMPLE_DIR")
    candidates = [Path(env)] if env else []
    candidates += [
        REPO / "shared" / "data" / "rsna-cxr-sample",
        REPO.parent / "shared" / "data" / "rsna-cxr-sample",
    ]
    for c in candidates:
        if (c / "labels.csv").is_file():
            return c
    raise FileNotFoundError(f"RSNA sample not found in any of {[str(c) for c in candidates]}")
