"""The Store Instances Response (PS3.18 §10.5.3, Annex I) and the two encodings a client may ask for.

DICOM JSON (PS3.18 Annex F.2, ``application/dicom+json``) is pydicom's; the XML form is the Native
DICOM Model of PS3.19 Annex A.1 (``application/dicom+xml``), written here for the few VRs the
response and the QIDO answers use (UI, UR, US, CS, and sequences).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from pydicom.dataset import Dataset

DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
NATIVE_DICOM_NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"


@dataclass(frozen=True)
class PartResult:
    """What happened to one part: stored (``status`` 0) or failed with a Failure Reason (PS3.18 I.2.2)."""

    sop_class_uid: str
    sop_instance_uid: str
    status: int
    reason: str
    retrieve_url: str | None = None


def store_response(results: Sequence[PartResult], study_url: str | None) -> Dataset:
    """The Store Instances Response Module (PS3.18 Table I.1-1): Retrieve URL of the study, Referenced
    SOP Sequence for what was stored, Failed SOP Sequence (with Failure Reason) for the rest."""
    ds = Dataset()
    ds.RetrieveURL = study_url or ""  # Type 2
    stored = [r for r in results if r.status == 0]
    failed = [r for r in results if r.status != 0]
    if failed:
        ds.FailedSOPSequence = [_reference(r, FailureReason=r.status) for r in failed]
    if stored:
        ds.ReferencedSOPSequence = [_reference(r, RetrieveURL=r.retrieve_url or "") for r in stored]
    return ds


def http_status(results: Sequence[PartResult]) -> int:
    """PS3.18 Table 10.5.3-1: 200 all stored, 202 some failed, 409 none stored; 400 (bad syntax) when
    no part was a DICOM instance at all (none has a SOP Instance UID)."""
    failed = sum(1 for r in results if r.status != 0)
    if failed == len(results) and not any(r.sop_instance_uid for r in results):
        return 400
    return 200 if not failed else 202 if failed < len(results) else 409


def _reference(r: PartResult, **extra: object) -> Dataset:
    # SOP Instance Reference Macro (PS3.3 Table 10-11)
    item = Dataset()
    item.ReferencedSOPClassUID = r.sop_class_uid
    item.ReferencedSOPInstanceUID = r.sop_instance_uid
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    return item


def wants_xml(accept: str | None) -> bool:
    """True when the client's Accept prefers the XML response (PS3.18 §10.5.2: JSON or XML)."""
    if not accept:
        return False
    ranked = [(a.split(";")[0].strip().lower(), i) for i, a in enumerate(accept.split(","))]
    order = {m: i for m, i in reversed(ranked)}
    xml = min((order[m] for m in (DICOM_XML, "application/xml") if m in order), default=None)
    js = min((order[m] for m in (DICOM_JSON, "application/json") if m in order), default=None)
    return xml is not None and (js is None or xml < js)


def to_json(ds: Dataset) -> bytes:
    return json.dumps(ds.to_json_dict()).encode()


def to_xml(ds: Dataset) -> bytes:
    """The Native DICOM Model (PS3.19 A.1) of ``ds``."""
    root = ET.Element("NativeDicomModel", xmlns=NATIVE_DICOM_NS)
    _xml_attributes(root, ds)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8")


def _xml_attributes(parent: ET.Element, ds: Dataset) -> None:
    for elem in ds:
        attr = ET.SubElement(parent, "DicomAttribute", {"tag": f"{elem.tag:08X}", "vr": elem.VR})
        if elem.keyword:
            attr.set("keyword", elem.keyword)
        if elem.VR == "SQ":
            for n, item in enumerate(elem.value, 1):
                _xml_attributes(ET.SubElement(attr, "Item", number=str(n)), item)
            continue
        values = elem.value if elem.VM > 1 else ([] if elem.value in (None, "") else [elem.value])
        for n, value in enumerate(values, 1):
            ET.SubElement(attr, "Value", number=str(n)).text = str(value)
