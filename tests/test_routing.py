"""Routing: what the detector sees, what is skipped (and why), and where results go."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.config import parse_config
from dicom_node.routing import destinations_for, skip_reason
from dicom_node.testing import require, rsna_files

RULES = parse_config({}).routing


def _chest(**changes: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.SamplesPerPixel = 1
    for k, v in changes.items():
        setattr(ds, k, v)
    return ds


def test_every_rsna_radiograph_is_analysed() -> None:
    files = rsna_files()
    require(bool(files), "the RSNA sample")
    assert [skip_reason(pydicom.dcmread(f, stop_before_pixels=True), RULES) for f in files] == [None] * 9


@pytest.mark.parametrize("changes, reason", [
    ({"Modality": "CT"}, "modality CT is not analysed"),
    ({"BodyPartExamined": "HAND"}, "body part HAND is not analysed"),
    ({"ViewPosition": "LL"}, "view LL is not analysed"),
    ({"PresentationIntentType": "FOR PROCESSING"}, "FOR PROCESSING"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}, "FOR PROCESSING"),
    ({"SamplesPerPixel": 3}, "colour image"),
    ({"NumberOfFrames": 2}, "multi-frame image"),
    ({"Manufacturer": "dicom-node"}, "made by this node"),
])
def test_skips_say_why(changes: dict[str, object], reason: str) -> None:
    got = skip_reason(_chest(**changes), RULES)
    assert got is not None and reason in got


def test_chest_without_view_is_analysed_but_not_without_body_part_and_view() -> None:
    assert skip_reason(_chest(ViewPosition=""), RULES) is None
    assert skip_reason(_chest(ViewPosition="", BodyPartExamined=""), RULES) is not None


def test_return_to_sender_destinations() -> None:
    cfg = parse_config({
        "destinations": [
            {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
            {"name": "ward", "ae_title": "WARD_WS", "host": "127.0.0.1", "port": 105, "kinds": ["sc"]},
        ],
        "delivery": {"return_to_sender": {"WARD_CR": "ward"}},
    })
    assert [d.name for d in destinations_for(cfg, "WARD_CR")] == ["pacs", "ward"]
    assert [d.name for d in destinations_for(cfg, "MODALITY1")] == ["pacs"]
