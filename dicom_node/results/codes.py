"""The coded concepts the result objects use (PS3.16 codes: DCM, SCT, UCUM, and IHE's 99IHE).

One place for every code, so the SR, the GSPS and the SC say the same thing the same way; see
docs/results.md for why each was chosen.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

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

#: Target Region (TID 1602 row 2) of a chest film, CID 4031 "Common Anatomic Regions" (the PS3.16
#: Annex L code of Body Part Examined CHEST).
CHEST = Code("816094009", "SCT", "Chest")

#: Image View (TID 1603 row 1) values, CID 4010 "DX View", by View Position (0018,5101); FRONTAL is
#: what an unlabelled chest film is assumed to be (PA or AP, not known which).
IMAGE_VIEWS: dict[str, Code] = {
    "PA": Code("272479007", "SCT", "postero-anterior"),
    "AP": Code("399348003", "SCT", "antero-posterior"),
    "LL": Code("399173006", "SCT", "left lateral"),
    "RL": Code("399198007", "SCT", "right lateral"),
}

FRONTAL = Code("399033003", "SCT", "frontal")

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
