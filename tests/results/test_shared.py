"""Shared behaviour: copied and dropped attributes, series, identity, input errors, own objects."""

from __future__ import annotations

import logging

import pydicom
import pytest

from dicom_node.results import build_all, is_own_object
from dicom_node.results.identity import NodeIdentity, series_uid
from dicom_node.results.sr import build_sr
from models.detection import Detection, ModelInfo

from .support import MODEL, NODE, built, load, missing, rsna_files, source_names


@source_names
def test_invalid_optional_values_are_not_copied(name: str) -> None:
    source, _, results = built(name)
    for ds in results.values():
        assert ds.PatientID == source.get("PatientID", "")
        if name.startswith("rsna-"):
            assert "PatientAge" not in ds  # "32" is no AS
        if name == "dx-mono1-16bit":
            assert "PatientAge" not in ds and "StudyDescription" not in ds
        if name == "cr-agfa":
            assert ds.PatientAge == "047Y"  # valid: copied


def test_series_are_stable_per_study_node_and_kind() -> None:
    source, detections = load("dx-mono1-16bit")
    first = build_all(source, detections, MODEL, NODE)
    second = build_all(source, detections, MODEL, NODE)
    for kind in ("sr", "gsps", "sc"):
        assert first[kind].SeriesInstanceUID == second[kind].SeriesInstanceUID
        assert first[kind].SeriesInstanceUID == series_uid(source, NODE, kind)
        assert first[kind].SOPInstanceUID != second[kind].SOPInstanceUID
    assert len({first[k].SeriesInstanceUID for k in first}) == 3
    other = NodeIdentity(ae_title="OTHER", device_uid="1.2.3.4")
    assert series_uid(source, other, "sr") != series_uid(source, NODE, "sr")


def test_build_all_builds_the_kinds_asked_for() -> None:
    source, detections = load("cr-agfa")
    assert set(build_all(source, detections, MODEL, NODE, kinds=("sr",))) == {"sr"}
    with pytest.raises(ValueError, match="kinds"):
        build_all(source, detections, MODEL, NODE, kinds=("pdf",))


@source_names
def test_own_objects_are_recognised(name: str) -> None:
    source, _, results = built(name)
    assert not is_own_object(source)
    for ds in results.values():
        assert is_own_object(ds)
        assert ds.Manufacturer == "dicom-node"
        assert ds.DeviceSerialNumber == NODE.device_uid


@pytest.mark.parametrize(
    ("change", "attribute"),
    [
        ({"box": (-1, 0, 10, 10)}, r"detections\[0\]\.box"),
        ({"box": (10, 10, 5, 20)}, r"detections\[0\]\.box"),
        ({"box": (0, 0, 10, 10_000)}, r"detections\[0\]\.box"),
        ({"score": 1.5}, r"detections\[0\]\.score"),
        ({"label": ""}, r"detections\[0\]\.label"),
    ],
)
def test_bad_detections_are_refused_naming_the_attribute(change: dict, attribute: str) -> None:
    source, _ = load("dx-lateral-novoi")
    det = Detection(**{"box": (1, 1, 10, 10), "score": 0.5, **change})
    with pytest.raises(ValueError, match=attribute):
        build_sr(source, [det], MODEL, NODE)


def test_bad_inputs_are_refused_naming_the_attribute() -> None:
    source, _ = load("dx-lateral-novoi")
    with pytest.raises(ValueError, match="NodeIdentity.ae_title"):
        NodeIdentity(ae_title="A" * 17, device_uid="1.2.3")
    with pytest.raises(ValueError, match="NodeIdentity.device_uid"):
        NodeIdentity(ae_title="NODE", device_uid="1.02.3")
    with pytest.raises(ValueError, match="ModelInfo.device_uid"):
        build_sr(source, [], ModelInfo(name="m", version="1", device_uid="x"), NODE)
    rgb = source.copy()
    rgb.PhotometricInterpretation = "RGB"
    with pytest.raises(ValueError, match="source.PhotometricInterpretation"):
        build_sr(rgb, [], MODEL, NODE)
    no_uid = source.copy()
    del no_uid.SOPInstanceUID
    with pytest.raises(ValueError, match="source.SOPInstanceUID"):
        build_sr(no_uid, [], MODEL, NODE)


def test_no_patient_data_in_logs(caplog: pytest.LogCaptureFixture, recwarn: pytest.WarningsRecorder
                                 ) -> None:
    paths = rsna_files()
    if not paths:
        missing("the RSNA sample")
    source = pydicom.dcmread(paths[0])
    with caplog.at_level(logging.DEBUG):
        build_all(source, [], MODEL, NODE)
    text = caplog.text + " ".join(str(w.message) for w in recwarn)
    assert str(source.PatientID) not in text
    assert "'32'" not in text and "PatientAge" in text  # the keyword, not the value
