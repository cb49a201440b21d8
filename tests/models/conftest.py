"""Fixtures for the detector tests: the real sample files."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.testing import RSNA_DIR, require


@pytest.fixture(scope="session")
def rsna_dir() -> Path:
    """The RSNA chest radiograph sample (see ``dicom_node.testing.RSNA_DIR``); missing fails in CI."""
    require((RSNA_DIR / "labels.csv").is_file(), f"the RSNA sample in {RSNA_DIR}")
    return RSNA_DIR
