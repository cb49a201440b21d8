"""The SR reads back with highdicom as the TID 1500 report a viewer would find."""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.results import Assumption
from dicom_node.results.codes import LEFT, RIGHT
from dicom_node.results.geometry import box_polyline
from dicom_node.results.sr import build_sr
from models.detection import Detection

from .support import MODEL, NODE, built, load, source_names


def reread(ds: Dataset) -> hd.sr.Comprehensive3DSR:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.sr.srread(buffer)


@source_names
def test_sr_parses_back_with_one_group_per_detection(name: str) -> None:
    source, detections, results = built(name)
    sr = reread(results["sr"])
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.content[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == len(detections)
    for group, det in zip(groups, detections, strict=True):
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(region.value, box_polyline(det.box), atol=1e-3)
        assert region.value[0].tolist() == region.value[-1].tolist()
        assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
            source.SOPInstanceUID
        assert group.finding_type == codes.DCM.AbnormalOpacity
        [score] = group.get_measurements()
        assert score.value == pytest.approx(det.score)
        assert score.unit.value == "{probability}"
        assert group.tracking_uid
    assert len({g.tracking_uid for g in groups}) == len(groups)


@source_names
def test_sr_keeps_the_study_and_records_the_algorithm(name: str) -> None:
    source, _, results = built(name)
    sr = reread(results["sr"])
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.get("PatientID", "")
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID
    assert (source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
            source.SOPClassUID) in sr.get_evidence()
    [algorithm] = [
        item for item in sr.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "1630"
    ]
    purpose = algorithm.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodingSchemeDesignator, purpose.CodeMeaning) == ("99IHE", "Processing Algorithm")
    assert algorithm.DeviceUID == MODEL.device_uid
    assert algorithm.ManufacturerModelName == MODEL.name
    assert algorithm.SoftwareVersions == MODEL.version
    # observer: the node as a device
    observer = sr.content.get_observer_contexts(observer_type=codes.DCM.Device)[0]
    assert observer.observer_identifying_attributes.uid == NODE.device_uid


def test_negative_image_says_so_explicitly() -> None:
    source, _ = load("dx-lateral-novoi")
    sr = reread(build_sr(source, [], MODEL, NODE))
    assert sr.content.get_planar_roi_measurement_groups() == []
    [group] = sr.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations()
    assert evaluation.name == codes.DCM.AbnormalOpacity
    assert evaluation.value == codes.SCT.Absent
    assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID


@source_names
def test_image_level_probability_sits_beside_the_findings(name: str) -> None:
    source, detections, results = built(name)
    sr = reread(results["sr"])
    [group] = sr.content.get_image_measurement_groups()  # one per image, whatever the findings
    [evaluation] = group.get_qualitative_evaluations()
    assert evaluation.value == (codes.SCT.Present if detections else codes.SCT.Absent)
    [probability] = group.get_measurements()
    assert probability.name == codes.DCM.CertaintyOfFinding and probability.unit.value == "{probability}"
    assert probability.value == pytest.approx(max((d.score for d in detections), default=0.12))
    assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    assert group.tracking_identifier == ("opacity (image)" if detections else "no opacity")


def test_image_level_probability_outside_zero_to_one_is_refused() -> None:
    source, _ = load("dx-lateral-novoi")
    with pytest.raises(ValueError, match=r"opacity_probability must lie in \[0, 1\], got 1.5"):
        build_sr(source, [], MODEL, NODE, opacity_probability=1.5)


def _site(sr: hd.sr.Comprehensive3DSR) -> list:
    return [g.finding_sites[0].laterality for g in sr.content.get_planar_roi_measurement_groups()]


def test_laterality_follows_the_image_side_and_patient_orientation() -> None:
    # RSNA AP view, no Patient Orientation: the radiographic convention, right lung on image left
    _, detections, results = built("rsna-00436515")
    lateralities = _site(reread(results["sr"]))
    assert lateralities == [RIGHT, LEFT]
    # constructed source with Patient Orientation R\F: the image is flipped
    source, _ = load("dx-mono1-16bit")
    sr = build_sr(source, [Detection(box=(10, 10, 100, 100), score=0.9),
                           Detection(box=(100, 10, 200, 100), score=0.9)], MODEL, NODE)
    assert _site(reread(sr)) == [LEFT, None]  # the second box straddles the midline
    # lateral view: no laterality
    source, _ = load("dx-lateral-novoi")
    sr = build_sr(source, [Detection(box=(10, 10, 100, 100), score=0.9)], MODEL, NODE)
    assert _site(reread(sr)) == [None]


def test_ohif_mode_writes_algorithm_tracking_identifiers() -> None:
    source, detections = load("dx-mono1-16bit")
    plain = reread(build_sr(source, detections, MODEL, NODE))
    ohif = reread(build_sr(source, detections, MODEL, NODE, ohif=True))
    assert [g.tracking_identifier for g in plain.content.get_planar_roi_measurement_groups()] == \
        ["opacity 1", "opacity 2"]
    assert [g.tracking_identifier for g in ohif.content.get_planar_roi_measurement_groups()] == \
        [f"{MODEL.name}@{MODEL.version}:opacity:1", f"{MODEL.name}@{MODEL.version}:opacity:2"]
    # what OHIF's SR viewport dereferences: an image library group naming the source
    root = ohif.ContentSequence
    library = next(i for i in root if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    group = library.ContentSequence[0]
    assert group.ConceptNameCodeSequence[0].CodeValue == "126200"
    assert group.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID


def _library_entry(sr: Dataset) -> dict[str, list[str]]:
    """The source's Image Library entry (TID 1601/1602/1603) as {concept meaning: [values]}: codes by
    meaning, text as written."""
    library = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028")
    [image] = library.ContentSequence[0].ContentSequence
    entry: dict[str, list[str]] = {}
    for item in image.ContentSequence:
        assert item.RelationshipType == "HAS ACQ CONTEXT"
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "CODE":
            value = item.ConceptCodeSequence[0]
            entry.setdefault(name, []).append(f"{value.CodeValue} {value.CodingSchemeDesignator} {value.CodeMeaning}")
        elif item.ValueType == "TEXT":
            entry.setdefault(name, []).append(str(item.TextValue))
    return entry


def test_unlabelled_film_says_chest_and_frontal_view_were_assumed_not_read() -> None:
    source, _, results = built("sc-dx-unlabelled")
    assert "BodyPartExamined" not in source and "ViewPosition" not in source and source.Modality == "DX"
    entry = _library_entry(reread(results["sr"]))
    assert entry["Modality"] == ["DX DCM Digital Radiography"]
    assert entry["Target Region"] == ["816094009 SCT Chest"]
    assert entry["Image View"] == ["399033003 SCT frontal"]
    assert entry["Comment"] == [
        "chest assumed, not read: Body Part Examined is empty",
        "frontal view assumed, not read: View Position is empty",
    ]


def test_labelled_film_has_its_region_and_view_read_and_no_comment() -> None:
    # RSNA: Body Part Examined CHEST, View Position AP
    entry = _library_entry(reread(built("rsna-00436515")[2]["sr"]))
    assert entry["Target Region"] == ["816094009 SCT Chest"]
    assert entry["Image View"] == ["399348003 SCT antero-posterior"]
    assert "Comment" not in entry
    # constructed lateral: CHEST, LL
    source, _ = load("dx-lateral-novoi")
    entry = _library_entry(reread(build_sr(source, [], MODEL, NODE)))
    assert entry["Image View"] == ["399173006 SCT left lateral"] and "Comment" not in entry


def test_an_assumption_the_header_contradicts_is_refused() -> None:
    source, _ = load("dx-mono1-16bit")  # View Position PA
    with pytest.raises(ValueError, match=r"assumptions\[0\] is FRONTAL, but source.ViewPosition is not empty"):
        build_sr(source, [], MODEL, NODE, assumptions=[Assumption.FRONTAL])
    with pytest.raises(TypeError, match=r"assumptions\[0\] must be an Assumption, got str"):
        build_sr(source, [], MODEL, NODE, assumptions=["chest"])  # type: ignore[list-item]
