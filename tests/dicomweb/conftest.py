"""The DICOMweb tests' peer: Orthanc with its DICOMweb plugin (a missing plugin fails the run in CI)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.testing import OrthancProcess, missing_orthanc_dicomweb, require


@pytest.fixture
def orthanc_web(tmp_path: Path) -> Iterator[OrthancProcess]:
    """Orthanc with its DICOMweb plugin; a missing plugin fails the run in CI."""
    why = missing_orthanc_dicomweb()
    require(why is None, why or "")
    pacs = OrthancProcess(tmp_path / "orthanc", dicomweb=True).start()
    yield pacs
    pacs.stop()

