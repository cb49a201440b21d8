"""QIDO-RS (PS3.18 §10.6): search for studies, series and instances of what the node holds.

Matching (PS3.4 C.2.2.2, as PS3.18 §8.3.4 uses it) on the index (:mod:`dicom_node.dicomweb.index`):
single value, wildcard (``*``, ``?``; Person Names case-insensitively), UID list (``,`` or ``\\``),
date and time ranges (``20240101-``, ``-20241231``, ``20240101-20240131``) and universal matching
(an empty value). Query keys are keywords or tags (``PatientID``, ``00100020``); a key that is not
one of the matching keys of Table 10.6.1-5 is ignored and named in a ``Warning: 299`` header
(PS3.18 §8.3.4.1). ``includefield`` adds attributes from each match's representative header;
``includefield=all`` adds all of them (bulk data left out). ``limit`` and ``offset`` page.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset

from dicom_node.dicomweb import index
from dicom_node.dicomweb.errors import Refusal
from dicom_node.ingest import read_header
from dicom_node.store import Store

Level = str  # "study", "series" or "instance"

#: The matching keys this node supports, per level (PS3.18 Table 10.6.1-5 and the series and
#: instance UIDs of the resources above).
MATCHING: dict[Level, tuple[str, ...]] = {
    "study": ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy", "ReferringPhysicianName",
              "PatientName", "PatientID", "StudyInstanceUID", "StudyID", "StudyDescription", "PatientBirthDate",
              "PatientSex"),
    "series": ("Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "BodyPartExamined"),
    "instance": ("SOPClassUID", "SOPInstanceUID", "InstanceNumber"),
}
#: What each level's answer holds besides its UIDs (PS3.18 Tables 10.6.3-3, -4, -5).
RETURNED: dict[Level, tuple[str, ...]] = {
    "study": index.STUDY_ATTRIBUTES,
    "series": index.SERIES_ATTRIBUTES,
    "instance": index.INSTANCE_ATTRIBUTES,
}
_UID_COLUMNS = {"StudyInstanceUID": "study_instance_uid", "SeriesInstanceUID": "series_instance_uid",
                "SOPInstanceUID": "sop_instance_uid", "SOPClassUID": "sop_class_uid"}
_CONTROL = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_BULK_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_DATE_VRS = frozenset({"DA", "TM", "DT"})
_BINARY_NUMBER_VRS = frozenset({"US", "UL", "SS", "SL"})
MAX_LIMIT = 1000


@dataclass
class Query:
    """A parsed QIDO-RS request: matching keys by keyword, the extra fields, the page."""

    level: Level
    keys: dict[str, str] = field(default_factory=dict)
    include: set[str] = field(default_factory=set)
    include_all: bool = False
    limit: int = MAX_LIMIT
    offset: int = 0
    ignored: list[str] = field(default_factory=list)


def parse_query(level: Level, params: Iterable[tuple[str, str]]) -> Query:
    """Read the query string; :class:`Refusal` 400 for a bad ``limit``/``offset`` or an unknown
    ``includefield``. Keys of this level and the levels above it match (PS3.18 §10.6.1.2)."""
    q = Query(level)
    allowed = {k for lvl in _levels_up_to(level) for k in MATCHING[lvl]}
    for name, value in params:
        if name in ("limit", "offset"):
            if not value.isdigit():
                raise Refusal(400, f"{name} must be a whole number (got {value[:20]!r})")
            setattr(q, name, min(int(value), MAX_LIMIT) if name == "limit" else int(value))
        elif name == "includefield":
            for item in value.split(","):
                item = item.strip()
                if item == "all":
                    q.include_all = True
                elif item:
                    keyword = _keyword(item)
                    if keyword is None:
                        raise Refusal(400, f"includefield: {item[:64]!r} is not a DICOM keyword or tag")
                    q.include.add(keyword)
        elif name in _CONTROL:
            continue  # fuzzymatching: not supported, matching stays exact (PS3.18 §8.3.4.5 allows it)
        else:
            keyword = _keyword(name)
            if keyword in allowed:
                q.keys[keyword] = value
            else:
                q.ignored.append(name[:64])
    return q


def _levels_up_to(level: Level) -> tuple[Level, ...]:
    return {"study": ("study",), "series": ("study", "series"), "instance": ("study", "series", "instance")}[level]


def _keyword(name: str) -> str | None:
    """A keyword for ``name`` (a keyword, or a tag as 8 hexadecimal digits), None if neither."""
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        return keyword_for_tag(int(name, 16)) or None
    return name if tag_for_keyword(name) is not None else None


def search(store: Store, q: Query, base_url: str, *, study: str | None = None,
           series: str | None = None) -> list[dict[str, Any]]:
    """The DICOM JSON (PS3.18 F.2) of the matches of ``q`` under the study or series given."""
    rows = index.objects(store, study=study, series=series)
    groups: dict[str, list[dict[str, Any]]] = {}
    key = {"study": "study_instance_uid", "series": "series_instance_uid", "instance": "sop_instance_uid"}[q.level]
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    if "ModalitiesInStudy" in q.keys:  # matched by the study's series, below the study level
        wanted = _values(q.keys["ModalitiesInStudy"])
        by_study: dict[str, set[str]] = {}
        for row in rows:
            by_study.setdefault(row["study_instance_uid"], set()).add(row["attributes"].get("Modality", ""))
        groups = {k: g for k, g in groups.items() if not wanted or by_study[g[0]["study_instance_uid"]] & wanted}
    matches = [g for g in groups.values() if all(_matches(g[0] if q.level == "instance" else _representative(g),
                                                          kw, v) for kw, v in q.keys.items()
                                                 if kw != "ModalitiesInStudy")]
    page = matches[q.offset:q.offset + q.limit]
    studies = _study_counts(rows) if q.level == "study" else {}
    return [_answer(q, g, base_url, studies).to_json_dict() for g in page]


def _representative(group: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The object whose attributes stand for a study or series: a received one before our results."""
    return next((r for r in group if r["origin"] == "received"), group[0])


def _values(value: str) -> set[str]:
    return {v.strip() for v in re.split(r"[,\\]", value) if v.strip()}


def _matches(row: dict[str, Any], keyword: str, value: str) -> bool:
    if value in ("", "*"):
        return True  # universal matching
    if keyword in _UID_COLUMNS:
        return row[_UID_COLUMNS[keyword]] in _values(value)
    have = row["attributes"].get(keyword, "")
    vr = dictionary_VR(keyword)
    if vr in _DATE_VRS and "-" in value:
        lo, _, hi = value.partition("-")
        return bool(have) and (not lo or have >= lo) and (not hi or have[:len(hi)] <= hi)
    if vr == "PN":
        return _wildcard(have.lower(), value.lower())
    if "\\" in value and vr not in ("PN",):
        return have in _values(value)
    return _wildcard(have, value)


def _wildcard(have: str, pattern: str) -> bool:
    if "*" not in pattern and "?" not in pattern:
        return have == pattern
    return fnmatch.fnmatchcase(have, pattern.replace("[", "[[]"))


def _study_counts(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[int, int, list[str]]]:
    series: dict[str, set[str]] = {}
    instances: dict[str, int] = {}
    modalities: dict[str, set[str]] = {}
    for r in rows:
        st = r["study_instance_uid"]
        series.setdefault(st, set()).add(r["series_instance_uid"])
        instances[st] = instances.get(st, 0) + 1
        if r["attributes"].get("Modality"):
            modalities.setdefault(st, set()).add(r["attributes"]["Modality"])
    return {st: (len(series[st]), instances[st], sorted(modalities.get(st, ()))) for st in series}


def _answer(q: Query, group: Sequence[dict[str, Any]], base_url: str,
            studies: Mapping[str, tuple[int, int, list[str]]]) -> Dataset:
    first = group[0] if q.level == "instance" else _representative(group)
    ds = Dataset()
    for level in _levels_up_to(q.level):  # an instance answer carries its series and study too
        for keyword in RETURNED[level]:
            _set(ds, keyword, first["attributes"].get(keyword))
    ds.StudyInstanceUID = first["study_instance_uid"]
    url = f"{base_url}/studies/{first['study_instance_uid']}"
    if q.level == "study":
        n_series, n_instances, modalities = studies[first["study_instance_uid"]]
        ds.ModalitiesInStudy = modalities
        ds.NumberOfStudyRelatedSeries = n_series
        ds.NumberOfStudyRelatedInstances = n_instances
    else:
        ds.SeriesInstanceUID = first["series_instance_uid"]
        url += f"/series/{first['series_instance_uid']}"
        if q.level == "series":
            ds.NumberOfSeriesRelatedInstances = len(group)
        else:
            ds.SOPClassUID, ds.SOPInstanceUID = first["sop_class_uid"], first["sop_instance_uid"]
            url += f"/instances/{first['sop_instance_uid']}"
    ds.RetrieveURL = url
    if q.include or q.include_all:
        _include(ds, first["path"], q)
    return ds


def _set(ds: Dataset, keyword: str, value: str | None) -> None:
    if value is None or value == "":
        setattr(ds, keyword, None)  # Type 2 in the answer: present, empty
        return
    values: list[Any] = value.split("\\")
    if dictionary_VR(keyword) in _BINARY_NUMBER_VRS:
        values = [int(v) for v in values if v.strip().lstrip("-").isdigit()]
    setattr(ds, keyword, values if len(values) > 1 else values[0] if values else None)


def _include(ds: Dataset, path: str, q: Query) -> None:
    try:
        header = read_header(path)
    except Exception:  # gone or unreadable since it was indexed: the answer keeps what the index has
        return
    for elem in header:
        if elem.tag.group == 0x0002 or elem.tag.is_private or elem.VR in _BULK_VRS or elem.tag in ds:
            continue
        if q.include_all or elem.keyword in q.include:
            ds.add(elem)
