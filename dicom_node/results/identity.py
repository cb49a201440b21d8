"""Who makes the result objects and where they go: the node's identity (PS3.16 TID 1004, PS3.3
C.7.5.1 General Equipment), the algorithm as Contributing Equipment (IHE AIR), result kinds and
their stable series.
"""

from __future__ import annotations

import datetime
import re
import uuid
from dataclasses import dataclass
from typing import Literal

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from dicom_node import __version__
from models.detection import ModelInfo

from .codes import PROCESSING_ALGORITHM

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

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # default repertoire, no backslash

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def check_uid(value: str, attribute: str) -> None:
    """A UID of PS3.5 §9.1, or a ValueError naming ``attribute``."""
    if not isinstance(value, str) or len(value) > 64 or not _UID.match(value):
        raise ValueError(f"{attribute} must be a valid DICOM UID (PS3.5 9.1), got {value!r}")


def check_lo(value: str, attribute: str, max_len: int = 64) -> None:
    """A non-empty LO (PS3.5 §6.2) value, or a ValueError naming ``attribute``."""
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
        check_uid(self.device_uid, "NodeIdentity.device_uid")
        if self.manufacturer != MANUFACTURER:
            raise ValueError(
                f"NodeIdentity.manufacturer must be {MANUFACTURER!r}: routing recognises the "
                "node's own objects by it"
            )
        check_lo(self.software_version, "NodeIdentity.software_version")
        check_lo(self.model_name, "NodeIdentity.model_name")
        if self.institution_name is not None:
            check_lo(self.institution_name, "NodeIdentity.institution_name")
        if self.institutional_department_name is not None:
            check_lo(self.institutional_department_name, "NodeIdentity.institutional_department_name")

    @property
    def station_name(self) -> str:
        """Station Name (SH): the AE title, so a PACS user can tell which node made an object."""
        return self.ae_title.strip()


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
