"""Fixtures of the result-object tests: model, node identity, dciodvfy, RSNA labels."""

from __future__ import annotations

import shutil

import pytest

from dicom_node.results.identity import NodeIdentity
from models.detection import Detection, ModelInfo

from .support import MODEL, NODE, RSNA, missing, rsna_labels


@pytest.fixture(scope="session")
def model() -> ModelInfo:
    return MODEL


@pytest.fixture(scope="session")
def node() -> NodeIdentity:
    return NODE


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    path = shutil.which("dciodvfy")
    if path is None:
        missing("dciodvfy (Debian dicom3tools)")
    return str(path)


@pytest.fixture(scope="session")
def labels() -> dict[str, list[Detection]]:
    if RSNA is None:
        missing("shared/data/rsna-cxr-sample")
    return rsna_labels()


