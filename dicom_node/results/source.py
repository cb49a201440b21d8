"""The source radiograph as the results may use it: the builders' input checks, the checked header
(valid values only), the patient/study attributes copied into every result, and recognising the
node's own objects so that routing never analyses them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import validate_value

from models.detection import Detection, ModelInfo

from .identity import MANUFACTURER, NodeIdentity, check_lo, check_uid

logger = logging.getLogger(__name__)

_REQUIRED_SOURCE = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns",
)


def check_inputs(
    source: Dataset,
    detections: Sequence[Detection],
    model: ModelInfo,
    node: NodeIdentity,
) -> None:
    """Check the four inputs of every builder; each error names the attribute at fault."""
    if not isinstance(source, Dataset):
        raise TypeError(f"source must be a pydicom Dataset, got {type(source).__name__}")
    for keyword in _REQUIRED_SOURCE:
        if keyword not in source or source[keyword].value in (None, ""):
            raise ValueError(f"source.{keyword} is required (type 1) but missing or empty")
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        check_uid(str(source[keyword].value), f"source.{keyword}")
    if int(source.Rows) < 1 or int(source.Columns) < 1:
        raise ValueError("source.Rows and source.Columns must be positive")
    if int(source.get("SamplesPerPixel", 1)) != 1:
        raise ValueError(
            "source.SamplesPerPixel must be 1: results are made for grayscale radiographs only"
        )
    if str(source.get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(
            "source.PhotometricInterpretation must be MONOCHROME1 or MONOCHROME2, got "
            f"{source.get('PhotometricInterpretation')!r}"
        )
    if int(source.get("NumberOfFrames", 1) or 1) != 1:
        raise ValueError("source.NumberOfFrames must be 1: multi-frame sources are not supported")
    if not isinstance(node, NodeIdentity):
        raise TypeError(f"node must be a NodeIdentity, got {type(node).__name__}")
    if not isinstance(model, ModelInfo):
        raise TypeError(f"model must be a models.detection.ModelInfo, got {type(model).__name__}")
    check_lo(model.name, "ModelInfo.name")
    check_lo(model.version, "ModelInfo.version")
    check_uid(model.device_uid, "ModelInfo.device_uid")
    if not 0.0 <= float(model.score_threshold) <= 1.0:
        raise ValueError(f"ModelInfo.score_threshold must lie in [0, 1], got {model.score_threshold}")
    rows, columns = int(source.Rows), int(source.Columns)
    for i, det in enumerate(detections):
        if not isinstance(det, Detection):
            raise TypeError(f"detections[{i}] must be a Detection, got {type(det).__name__}")
        if len(det.box) != 4 or not all(math.isfinite(float(v)) for v in det.box):
            raise ValueError(f"detections[{i}].box must be four finite numbers (x0, y0, x1, y1)")
        x0, y0, x1, y1 = (float(v) for v in det.box)
        if not (0.0 <= x0 < x1 <= columns and 0.0 <= y0 < y1 <= rows):
            raise ValueError(
                f"detections[{i}].box {det.box} must satisfy 0 <= x0 < x1 <= Columns ({columns}) "
                f"and 0 <= y0 < y1 <= Rows ({rows})"
            )
        if not (math.isfinite(float(det.score)) and 0.0 <= float(det.score) <= 1.0):
            raise ValueError(f"detections[{i}].score must lie in [0, 1], got {det.score}")
        check_lo(det.label, f"detections[{i}].label")


#: Patient and study attributes copied into every result (PS3.3 C.7.1.1 Patient, C.7.2.1 General
#: Study, C.7.2.2 Patient Study). Invalid values are dropped, except the identifying ones below.
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    # Patient
    "PatientName", "PatientID", "IssuerOfPatientID", "TypeOfPatientID", "PatientBirthDate",
    "PatientBirthTime", "PatientSex", "PatientIdentityRemoved", "DeidentificationMethod",
    # General Study
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID",
    "AccessionNumber", "StudyDescription",
    # Patient Study
    "PatientAge", "PatientSize", "PatientWeight",
)

#: Type 2 attributes a PACS files results by: kept as received even when their value is invalid
#: (dropping them would misfile the result); any dciodvfy error on them is the source's.
IDENTIFYING_KEYWORDS: frozenset[str] = frozenset(
    {"PatientName", "PatientID", "StudyID", "AccessionNumber"}
)

#: Type 2 attributes of every result: present, empty when the source lacks a valid value.
TYPE2_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)

#: Attributes with enumerated values (PS3.3): any other value is invalid and dropped.
ENUMERATED_VALUES: dict[str, frozenset[str]] = {
    "PatientSex": frozenset({"M", "F", "O"}),
    "PatientIdentityRemoved": frozenset({"YES", "NO"}),
    "TypeOfPatientID": frozenset({"TEXT", "RFID", "BARCODE"}),
    "LossyImageCompression": frozenset({"00", "01"}),
}

#: Attributes of the source image the builders read (references, geometry, display, provenance).
IMAGE_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality",
    "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "PixelSpacing", "ImagerPixelSpacing",
    "PatientOrientation", "ViewPosition", "BodyPartExamined",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence",
    "WindowCenter", "WindowWidth", "WindowCenterWidthExplanation", "VOILUTFunction",
    "VOILUTSequence",
    "LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
    "InstitutionName", "InstitutionalDepartmentName", "StationName",
    "AcquisitionDate", "AcquisitionTime",
)


def _value_is_valid(vr: str, value: Any, keyword: str = "") -> bool:
    """Whether ``value`` is valid for ``vr`` (PS3.5 6.2) and, for an attribute with enumerated
    values, one of them; numbers are checked in their string form."""
    values = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    allowed = ENUMERATED_VALUES.get(keyword)
    if allowed is not None and any(str(v) not in allowed for v in values):
        return False
    try:
        for v in values:
            validate_value(vr, str(v) if vr in ("DS", "IS") else v, pydicom_config.RAISE)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def source_header(source: Dataset) -> Dataset:
    """Return the source's header as the results may use it: no pixel data, and no invalid value.

    Each attribute of :data:`PATIENT_STUDY_KEYWORDS` and :data:`IMAGE_KEYWORDS` is copied when its
    value is valid for its VR (PS3.5 6.2); an invalid optional one (e.g. the RSNA files' Patient's
    Age "32", not an AS) is dropped. Identifying type 2 attributes are kept as received; type 2
    attributes the source lacks are added empty.
    Sequences (the LUTs) are copied as they are. highdicom then copies from this header, never from
    the source itself.
    """
    header = Dataset()
    if hasattr(source, "file_meta"):
        header.file_meta = source.file_meta
    dropped: list[str] = []
    for keyword in (*IMAGE_KEYWORDS, *PATIENT_STUDY_KEYWORDS):
        if keyword not in source:
            continue
        element = source[keyword]
        try:
            value = element.value
        except (ValueError, TypeError, OverflowError):  # a number that does not even parse
            dropped.append(keyword)
            continue
        if element.VR == "SQ" or value is None or value == "" \
                or _value_is_valid(element.VR, value, keyword):
            header[element.tag] = element
        elif keyword in IDENTIFYING_KEYWORDS:
            header[element.tag] = element
            logger.warning("source %s: invalid %s kept to file the result",
                           source.SOPInstanceUID, keyword)
        else:
            dropped.append(keyword)
    for keyword in TYPE2_KEYWORDS:
        if keyword not in header:
            setattr(header, keyword, None)
    if dropped:
        # keywords only: values may be patient data
        logger.info("source %s: invalid values not copied: %s", source.SOPInstanceUID, ", ".join(dropped))
    return header


def copy_patient_study(target: Dataset, header: Dataset) -> None:
    """Copy the checked patient/study attributes of ``header`` into ``target`` (PS3.3 C.7.1.1,
    C.7.2.1, C.7.2.2), replacing highdicom's defaults; an attribute the header lacks is left as is.
    """
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in header:
            target[header[keyword].tag] = header[keyword]


def body_part_examined(header: Dataset) -> str:
    """Body Part Examined (PS3.3 C.7.3.1) of an image result: the source's when valid, else CHEST,
    the only body part the detector analyses. With it dciodvfy can tell Laterality is not needed."""
    return str(header.get("BodyPartExamined", "") or "CHEST")


def is_own_object(ds: Dataset) -> bool:
    """True when ``ds`` was made by a dicom-node (its Manufacturer in General Equipment, or an
    AIR Processing Algorithm item of ours in Contributing Equipment); routing must not analyse it.
    """
    if str(ds.get("Manufacturer", "") or "") == MANUFACTURER:
        return True
    for item in ds.get("ContributingEquipmentSequence", None) or DicomSequence():
        if str(item.get("Manufacturer", "") or "") != MANUFACTURER:
            continue
        for purpose in item.get("PurposeOfReferenceCodeSequence", None) or []:
            if (purpose.get("CodeValue"), purpose.get("CodingSchemeDesignator")) == ("1630", "99IHE"):
                return True
    return False
