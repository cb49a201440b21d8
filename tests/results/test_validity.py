"""Every result object passes dciodvfy (Debian dicom3tools) with no error of our making, on all
RSNA radiographs, a real CR, constructed MONOCHROME1/16-bit and lateral sources, and an unlabelled
film (SC, Modality DX, no body part or view) whose SR states the chest and view it assumed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .support import ASSUMED, built, source_names

#: dciodvfy warnings that are not ours to fix: the source's own values (empty type 2 attributes
#: a DICOMDIR would need, single-component patient names), and Device UID in Contributing
#: Equipment, which IHE AIR requires and this dciodvfy (2022) predates.
ACCEPTED_WARNINGS = [
    re.compile(r"^Warning - Missing attribute or value that would be needed to build DICOMDIR"),
    re.compile(r"^Warning - Value dubious for this VR - \(0x0010,0x0010\) PN .* Retired Person Name form"),
    re.compile(
        r"^Warning - Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID"
    ),
    re.compile(r"^Warning - Dicom dataset contains attributes not present in standard DICOM IOD"),
]


def dciodvfy_report(dciodvfy: str, path: Path) -> tuple[list[str], list[str]]:
    run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    return errors, warnings


@source_names
@pytest.mark.parametrize("kind", ["sr", "gsps", "sc"])
def test_dciodvfy_has_no_error(name: str, kind: str, dciodvfy: str, tmp_path: Path) -> None:
    _, _, results = built(name)
    path = tmp_path / f"{kind}.dcm"
    results[kind].save_as(path, enforce_file_format=True)
    errors, warnings = dciodvfy_report(dciodvfy, path)
    assert errors == []
    unexpected = [w for w in warnings if not any(p.match(w) for p in ACCEPTED_WARNINGS)]
    assert unexpected == []


def test_sr_of_an_unlabelled_film_with_its_assumptions_passes(dciodvfy: str, tmp_path: Path) -> None:
    _, _, results = built("sc-dx-unlabelled")
    path = tmp_path / "sr.dcm"
    results["sr"].save_as(path, enforce_file_format=True)
    assert ASSUMED["sc-dx-unlabelled"] and all(str(a) in path.read_bytes().decode("latin-1")
                                              for a in ASSUMED["sc-dx-unlabelled"])
    errors, warnings = dciodvfy_report(dciodvfy, path)
    assert errors == []
    assert [w for w in warnings if not any(p.match(w) for p in ACCEPTED_WARNINGS)] == []
