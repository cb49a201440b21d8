"""Routing: what the detector sees, what is skipped (and why), and where results go."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.config import parse_config
from dicom_node.results import Assumption
from dicom_node.routing import decide, destinations_for
from dicom_node.testing import require, rsna_files

RULES = parse_config({}).routing
STRICT = parse_config({"routing": {"assume_chest_when_unlabelled": False}}).routing
SC = "1.2.840.10008.5.1.4.1.1.7"


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
    routes = [decide(pydicom.dcmread(f, stop_before_pixels=True), RULES) for f in files]
    assert [(r.skip, r.assumptions) for r in routes] == [(None, ())] * 9  # chest, PA/AP: read, not assumed


@pytest.mark.parametrize("changes, reason", [
    ({"Modality": "CT"}, "modality CT is not analysed"),
    ({"BodyPartExamined": "HAND"}, "body part HAND is not analysed"),
    ({"ViewPosition": "LL"}, "view LL is not analysed"),
    ({"PresentationIntentType": "FOR PROCESSING"}, "FOR PROCESSING"),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.1.1.1"}, "FOR PROCESSING"),
    ({"SamplesPerPixel": 3}, "colour image"),
    ({"NumberOfFrames": 2}, "multi-frame image"),
    ({"Manufacturer": "dicom-node"}, "made by this node"),
    ({"Rows": 10000, "Columns": 10000}, "an image of 100 megapixels, over routing.max_megapixels (50)"),
])
def test_skips_say_why(changes: dict[str, object], reason: str) -> None:
    got = decide(_chest(**changes), RULES).skip
    assert got is not None and reason in got


def test_a_chest_film_of_a_real_size_is_analysed() -> None:
    assert decide(_chest(Rows=4320, Columns=4320), RULES).skip is None  # 18.7 MP: 43 cm at 100 um


def _unlabelled(sop_class: str = SC, modality: str = "DX", **changes: object) -> Dataset:
    """A de-identified, converted chest film: no Body Part Examined, no View Position."""
    ds = _chest(SOPClassUID=sop_class, Modality=modality, **changes)
    del ds.BodyPartExamined, ds.ViewPosition
    return ds


@pytest.mark.parametrize("sop_class, modality", [
    (SC, "DX"), (SC, "CR"), ("1.2.840.10008.5.1.4.1.1.1.1", "DX"), ("1.2.840.10008.5.1.4.1.1.1", "CR"),
])
def test_unlabelled_cr_dx_and_sc_are_analysed_as_frontal_chests_with_the_assumption(
        sop_class: str, modality: str) -> None:
    route = decide(_unlabelled(sop_class, modality), RULES)
    assert route.analysed
    assert [str(a) for a in route.assumptions] == [
        "chest assumed, not read: Body Part Examined is empty",
        "frontal view assumed, not read: View Position is empty",
    ]
    # empty values (not absent) are the same
    empty = decide(_chest(SOPClassUID=sop_class, Modality=modality, BodyPartExamined="", ViewPosition=" "), RULES)
    assert empty == route


def test_only_the_missing_value_is_assumed() -> None:
    assert decide(_chest(ViewPosition=""), RULES).assumptions == (Assumption.FRONTAL,)
    assert decide(_chest(BodyPartExamined=""), RULES).assumptions == (Assumption.CHEST,)


@pytest.mark.parametrize("changes, reason", [
    ({"ViewPosition": "LL"}, "view LL is not analysed"),
    ({"ViewPosition": "LATERAL"}, "view LATERAL is not analysed"),
    ({"BodyPartExamined": "HAND"}, "body part HAND is not analysed"),
    ({"PresentationIntentType": "FOR PROCESSING"}, "FOR PROCESSING"),
    ({"Modality": "CT"}, "modality CT is not analysed"),
    ({"Modality": "OT"}, "modality OT is not analysed"),
    ({"SamplesPerPixel": 3}, "colour image"),
    ({"NumberOfFrames": 4}, "multi-frame image"),
])
def test_what_the_header_does_say_is_still_read(changes: dict[str, object], reason: str) -> None:
    """One value given, the other empty: the given one decides (a lateral is never assumed frontal)."""
    base = _unlabelled()
    for k, v in changes.items():
        setattr(base, k, v)
    route = decide(base, RULES)
    assert route.skip is not None and reason in route.skip
    assert route.assumptions == ()


def test_switched_off_an_unlabelled_film_is_skipped() -> None:
    route = decide(_unlabelled(), STRICT)
    assert route.skip == "body part missing is not analysed (routing.body_parts, routing.assume_chest_when_unlabelled)"
    assert decide(_chest(ViewPosition=""), STRICT).skip == \
        "view missing is not analysed (routing.views, routing.assume_chest_when_unlabelled)"
    assert decide(_chest(), STRICT) == decide(_chest(), RULES)  # labelled films do not care
    # "" listed accepts one empty value anyway, and it is still recorded as assumed
    listed = parse_config({"routing": {"assume_chest_when_unlabelled": False, "body_parts": ["CHEST", ""],
                                       "views": ["PA", "AP", ""]}}).routing
    assert decide(_unlabelled(), listed).assumptions == (Assumption.CHEST, Assumption.FRONTAL)


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
