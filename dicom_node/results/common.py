"""What the three result objects share: the node's identity, the codes, the checked source header,
box geometry, laterality, the display rendering of the source, and recognising our own objects.

The result modules (``sr``, ``gsps``, ``overlay``) each build one DICOM object kind with highdicom;
anything two of them need lives here so that the three stay consistent (same codes, same copied
attributes, same series UIDs).
"""

from __future__ import annotations

import datetime
import functools
import logging
import math
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import highdicom as hd
import numpy as np
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from dicom_node import __version__
from models.detection import Detection, ModelInfo

logger = logging.getLogger(__name__)
_F = TypeVar("_F", bound=Callable[..., Any])


_QUOTING_MESSAGES = (
    # pydicom quotes the invalid value, highdicom the patient's name: both may be patient data
    re.compile(r"Invalid value for VR|value length .* exceeds|is unlikely to represent the intended "
               r"person name|potentially invalid|patient_name"),
)


class _NoQuotedValues(logging.Filter):
    """Drop log records that quote a header value (no patient data in logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in _QUOTING_MESSAGES)


def no_patient_data_in_logs(builder: _F) -> _F:
    """Run a builder with pydicom's and highdicom's value-quoting warnings and log records
    suppressed: they would copy a source's (patient's) values into the node's logs.

    ``warnings.catch_warnings`` is process-wide: builders running in parallel threads may see
    each other's filters, which only ever suppress more.
    """

    @functools.wraps(builder)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log_filter = _NoQuotedValues()
        loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom", "highdicom.base")]
        for lg in loggers:
            lg.addFilter(log_filter)
        try:
            with warnings.catch_warnings():
                for pattern in _QUOTING_MESSAGES:
                    warnings.filterwarnings("ignore", message=f".*(?:{pattern.pattern})")
                return builder(*args, **kwargs)
        finally:
            for lg in loggers:
                lg.removeFilter(log_filter)

    return cast(_F, wrapper)


ResultKind = Literal["sr", "gsps", "sc"]
RESULT_KINDS: tuple[ResultKind, ...] = ("sr", "gsps", "sc")

#: Manufacturer (0008,0070) of every object the node makes; :func:`is_own_object` keys on it.
MANUFACTURER = "dicom-node"

#: Default Series Number per result kind (one series per kind and study).
DEFAULT_SERIES_NUMBERS: dict[ResultKind, int] = {"sr": 9901, "gsps": 9902, "sc": 9903}

SERIES_DESCRIPTIONS: dict[ResultKind, str] = {
    "sr": "AI opacity detection SR",
    "gsps": "AI opacity detection boxes",
    "sc": "AI opacity detection overlay",
}

NO_FINDING_TEXT = "no opacity detected"
BANNER_TEXT = "AI RESULT \u2014 NOT FOR PRIMARY DIAGNOSIS"

# --- Codes (see docs/results.md for why each was chosen) ---------------------------------------

#: Finding type: DICOM's own chest CAD vocabulary, CID 6101 "Chest Finding or Feature".
OPACITY = Code("112033", "DCM", "Abnormal opacity")
#: Finding category, CID 7150 "Segmentation Property Categories", as highdicom uses it.
MORPHOLOGICALLY_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")
LUNG = Code("39607008", "SCT", "Lung")
RIGHT = Code("24028007", "SCT", "Right")
LEFT = Code("7771000", "SCT", "Left")
#: Values of the qualitative evaluation "Abnormal opacity", CID 240 "Present/Absent".
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")
#: Score of a finding: the concept DICOM's CAD SR templates use for a detector's confidence.
CERTAINTY_OF_FINDING = Code("111012", "DCM", "Certainty of Finding")
PROBABILITY = Code("{probability}", "UCUM", "Probability")
#: Procedure reported in TID 1500.
CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
#: IHE AI Results: Purpose of Reference of the algorithm's Contributing Equipment item.
PROCESSING_ALGORITHM = Code("1630", "99IHE", "Processing Algorithm")
#: Purpose of Reference of the source in the SC's Source Image Sequence (CID 7202).
SOURCE_FOR_PROCESSING = Code("121322", "DCM", "Source image for image processing operation")



def ihe_coding_scheme() -> CodingSchemeIdentificationItem:
    """The 99IHE scheme is not in PS3.16 Table 8-1, so objects using it identify it (PS3.3 C.12.1)."""
    return CodingSchemeIdentificationItem(
        designator="99IHE",
        name="IHE Radiology Technical Framework codes",
        responsible_organization="IHE International",
    )


# --- Node identity ------------------------------------------------------------------------------

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def _check_uid(value: str, attribute: str) -> None:
    if not isinstance(value, str) or len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{attribute} must be a valid DICOM UID (PS3.5 9.1), got {value!r}")


def _check_lo(value: str, attribute: str, max_len: int = 64) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{attribute} must be a non-empty string")
    if len(value) > max_len or "\\" in value or any(ord(c) < 0x20 for c in value):
        raise ValueError(
            f"{attribute} must be at most {max_len} characters without backslash or control "
            f"characters, got {value!r}"
        )


@dataclass(frozen=True)
class NodeIdentity:
    """Who makes the result objects: the node as a device (PS3.16 TID 1004, PS3.3 C.7.5.1).

    ``device_uid`` identifies this node installation (Device Observer UID in the SR, Device UID in
    General Equipment); it is not the model's Device UID, which goes in Contributing Equipment.
    """

    ae_title: str
    device_uid: str
    manufacturer: str = MANUFACTURER
    software_version: str = __version__
    model_name: str = "dicom-node"
    institution_name: str | None = None
    institutional_department_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ae_title, str) or not _AE_TITLE.match(self.ae_title) \
                or not self.ae_title.strip():
            raise ValueError(
                "NodeIdentity.ae_title must be 1-16 printable ASCII characters without backslash, "
                f"got {self.ae_title!r}"
            )
        _check_uid(self.device_uid, "NodeIdentity.device_uid")
        if self.manufacturer != MANUFACTURER:
            raise ValueError(
                f"NodeIdentity.manufacturer must be {MANUFACTURER!r}: routing recognises the "
                "node's own objects by it"
            )
        _check_lo(self.software_version, "NodeIdentity.software_version")
        _check_lo(self.model_name, "NodeIdentity.model_name")
        if self.institution_name is not None:
            _check_lo(self.institution_name, "NodeIdentity.institution_name")
        if self.institutional_department_name is not None:
            _check_lo(self.institutional_department_name, "NodeIdentity.institutional_department_name")

    @property
    def station_name(self) -> str:
        """Station Name (SH): the AE title, so a PACS user can tell which node made an object."""
        return self.ae_title.strip()


# --- Input checks -------------------------------------------------------------------------------

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
        _check_uid(str(source[keyword].value), f"source.{keyword}")
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
    _check_lo(model.name, "ModelInfo.name")
    _check_lo(model.version, "ModelInfo.version")
    _check_uid(model.device_uid, "ModelInfo.device_uid")
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
        _check_lo(det.label, f"detections[{i}].label")


# --- The checked source header ------------------------------------------------------------------

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


def general_equipment(target: Dataset, node: NodeIdentity) -> None:
    """Fill the General Equipment module (PS3.3 C.7.5.1) with the node's identity.

    The node's Device UID is not written here: dciodvfy does not know Device UID in General
    Equipment yet; it goes in Device Serial Number (LO) and, in the SR, Device Observer UID.
    """
    target.Manufacturer = node.manufacturer
    target.ManufacturerModelName = node.model_name
    target.SoftwareVersions = node.software_version
    target.StationName = node.station_name
    target.DeviceSerialNumber = node.device_uid
    if node.institution_name is not None:
        target.InstitutionName = node.institution_name
    if node.institutional_department_name is not None:
        target.InstitutionalDepartmentName = node.institutional_department_name


def algorithm_equipment(model: ModelInfo) -> hd.ContributingEquipment:
    """The algorithm as Contributing Equipment, as IHE AI Results (AIR) asks (PS3.3 C.12.1.1.5).

    highdicom accepts only DCM purposes; the item is built with one and its purpose then replaced
    by (1630, 99IHE, "Processing Algorithm"), with the model's Device UID added.
    """
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=Code("109103", "DCM", "Processing Equipment"),
        manufacturer_model_name=model.name,
        software_versions=model.version,
        contribution_datetime=datetime.datetime.now(),
        contribution_description="Detection of lung opacities",
    )
    item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept.from_code(PROCESSING_ALGORITHM)]
    item.DeviceUID = model.device_uid
    return item


def algorithm_parameters(model: ModelInfo) -> list[str]:
    """The model's parameters as TID 4019 Algorithm Parameters text values, sorted by name."""
    params = {
        "score_threshold": f"{float(model.score_threshold):g}",
        "input_size": str(model.input_size),
        "classes": ",".join(model.classes),
        **{str(k): str(v) for k, v in model.extra.items()},
    }
    return [f"{k}={v}" for k, v in sorted(params.items())]


def series_uid(source: Dataset, node: NodeIdentity, kind: ResultKind) -> str:
    """Series Instance UID of ``kind`` for the source's study: the same for every call, so repeated
    results of one study land in one series per kind.

    A 2.25 UID from a name-based UUID (PS3.5 B.2) of study, node and kind. (pydicom's
    ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy sources and is random.)
    """
    if kind not in RESULT_KINDS:
        raise ValueError(f"kind must be one of {RESULT_KINDS}, got {kind!r}")
    name = f"dicom-node/results/{kind}/{node.device_uid}/{source.StudyInstanceUID}"
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


def check_series_number(series_number: int) -> int:
    """Series Number (IS, PS3.3 C.7.3.1) must be a positive integer that fits an IS."""
    if isinstance(series_number, bool) or not isinstance(series_number, int) \
            or not 1 <= series_number < 2**31:
        raise ValueError(f"series_number must be an integer in [1, 2**31), got {series_number!r}")
    return series_number


def fresh_uid() -> str:
    """A new SOP Instance UID (2.25 form)."""
    return str(generate_uid(prefix=None))


# --- Geometry -----------------------------------------------------------------------------------

def box_polyline(box: Iterable[float]) -> np.ndarray:
    """A box ``(x0, y0, x1, y1)`` as a closed polyline of five (column, row) points, first == last,
    clockwise from the top-left corner (PS3.3 C.10.5.1.2, C.18.6.1.2 pixel coordinates)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _row_direction(header: Dataset) -> str | None:
    """The patient direction of increasing column index ('L' or 'R'), or None when it is unknown
    or not lateral (e.g. a lateral view)."""
    orientation = header.get("PatientOrientation")
    if orientation and len(orientation) == 2 and str(orientation[0]):
        first = str(orientation[0])
        if first[0] in "LR":
            return first[0]
        return None
    view = str(header.get("ViewPosition", "") or "").upper()
    if view in ("", "PA", "AP"):
        # Chest PA/AP are displayed as if facing the patient: patient's right on image left.
        return "L"
    return None


def laterality(det: Detection, header: Dataset) -> Code | None:
    """Right or left lung when the box lies within one half of the image, else None.

    Uses Patient Orientation (0020,0020) when present; otherwise the radiographic convention for PA
    and AP chest views (patient's right on the image's left). No laterality for lateral views.
    """
    direction = _row_direction(header)
    if direction is None:
        return None
    half = int(header.Columns) / 2.0
    x0, _, x1, _ = (float(v) for v in det.box)
    if x1 <= half:
        image_side = "left"
    elif x0 >= half:
        image_side = "right"
    else:
        return None
    # direction 'L': columns increase towards the patient's left, so the image's left is the
    # patient's right.
    if direction == "L":
        return RIGHT if image_side == "left" else LEFT
    return LEFT if image_side == "left" else RIGHT


def score_text(det: Detection) -> str:
    """Short label drawn next to a box: ``"opacity 0.87"``."""
    return f"{det.label} {float(det.score):.2f}"


# --- Display rendering --------------------------------------------------------------------------

def _first(value: Any) -> float:
    return float(value[0]) if isinstance(value, (MultiValue, list, tuple)) else float(value)


def modality_pixels(source: Dataset) -> np.ndarray:
    """The source's single frame after the Modality LUT (PS3.3 C.11.1), as float64."""
    from pydicom.pixels import apply_modality_lut

    try:
        arr = source.pixel_array
    except Exception as exc:  # decoder errors come in many types
        raise ValueError(f"source.PixelData cannot be decoded: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"source.PixelData must hold one grayscale frame, got shape {arr.shape}")
    return np.asarray(apply_modality_lut(arr, source), dtype=np.float64)


def has_voi(header: Dataset) -> bool:
    """Whether the source carries a VOI LUT or a window (PS3.3 C.11.2)."""
    return "VOILUTSequence" in header or (
        header.get("WindowCenter") not in (None, "") and header.get("WindowWidth") not in (None, "")
    )


def auto_window(values: np.ndarray) -> tuple[float, float]:
    """Window (center, width) spanning the modality values, as viewers do for a source without
    VOI: the range from the minimum to the maximum value (PS3.3 C.11.2.1.2.1 LINEAR)."""
    lo, hi = float(values.min()), float(values.max())
    width = max(hi - lo + 1.0, 2.0)
    return lo + (width - 1.0) / 2.0, width


def _window_unit(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI window to [0, 1] by the formulas of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - (center - width / 2.0)) / width, 0.0, 1.0)
    width = max(width, 1.0)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def display_pixels(source: Dataset, header: Dataset) -> np.ndarray:
    """The source as a viewer shows it, as 8-bit MONOCHROME2 (PS3.4 N.2 grayscale pipeline):
    Modality LUT, then the first VOI LUT or window (or the full range when there is none), then
    inversion of MONOCHROME1."""
    from pydicom.pixels import apply_voi

    values = modality_pixels(source)
    if "VOILUTSequence" in header:
        item = header.VOILUTSequence[0]
        out = np.asarray(apply_voi(values.astype(np.int64), header, index=0), dtype=np.float64)
        bits = int(item.LUTDescriptor[2])
        unit = np.clip(out / float(2**bits - 1), 0.0, 1.0)
    else:
        if has_voi(header):
            center, width = _first(header.WindowCenter), _first(header.WindowWidth)
        else:
            center, width = auto_window(values)
        function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR")
        unit = _window_unit(values, center, max(width, 1.0), function)
    if header.PhotometricInterpretation == "MONOCHROME1":
        unit = 1.0 - unit
    return np.round(unit * 255.0).astype(np.uint8)


# --- Recognising our own objects ----------------------------------------------------------------

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
