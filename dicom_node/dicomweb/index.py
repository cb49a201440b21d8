"""What QIDO-RS and WADO-RS find: every stored instance and result, by study, series and instance.

The ``dicomweb_index`` table (dicom_node.store) holds each object's UIDs, transfer syntax, file and
the attributes a query matches on (PS3.18 Table 10.6.1-5) plus the ones a search answer returns
(Table 10.6.3-3 to -5). A row is written the first time a query finds an object without one, from the
file's header (:func:`dicom_node.ingest.read_header`, bulk data left on disk): the C-STORE and
STOW-RS paths and the result builders stay as they are, and the files remain the truth. An object
whose file cannot be read is marked in ``dicomweb_unreadable`` with the file's mtime and size, said
once in the log, and read again only once its file has changed.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from pydicom.dataset import Dataset

from dicom_node.ingest import read_header
from dicom_node.store import Store

log = logging.getLogger("dicom_node.dicomweb.index")

#: Attributes kept per level (as strings, PS3.5 encoded values): what a query matches and returns.
STUDY_ATTRIBUTES = ("StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName", "PatientName",
                    "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDescription")
SERIES_ATTRIBUTES = ("Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined")
INSTANCE_ATTRIBUTES = ("InstanceNumber", "Rows", "Columns", "NumberOfFrames", "BitsAllocated")
INDEXED = STUDY_ATTRIBUTES + SERIES_ATTRIBUTES + INSTANCE_ATTRIBUTES

_refreshing = threading.Lock()


def refresh(store: Store) -> int:
    """Index every stored instance and result that has no row yet; returns how many were added.

    One that cannot be read is marked with its file's mtime and size and said once in the log; it is
    not opened again until its file changes (replaced, restored), then it is read again.
    """
    added = 0
    with _refreshing:  # one thread reads the new headers; the others then find them indexed
        changed = [m["sop_instance_uid"] for m in store.unreadable()
                   if _stat(m["path"]) != (m["mtime_ns"], m["size"])]
        if changed:
            store.forget_unreadable(changed)
        while batch := store.unindexed():
            rows, unreadable = [], []
            for item in batch:
                mtime_ns, size = _stat(item["path"])  # before the read: a file replaced meanwhile is read again
                try:
                    ds = read_header(item["path"])
                except Exception as exc:  # gone from the outbox, unreadable: not searchable until its file changes
                    log.warning("object not indexed for DICOMweb", extra={
                        "sop_instance_uid": item["sop_instance_uid"], "reason": type(exc).__name__})
                    unreadable.append({"sop_instance_uid": item["sop_instance_uid"], "path": str(item["path"]),
                                       "mtime_ns": mtime_ns, "size": size, "reason": type(exc).__name__})
                    continue
                rows.append(_row(item, ds))
            store.put_index(rows, unreadable)
            added += len(rows)
    return added


def _stat(path: str) -> tuple[int | None, int | None]:
    """The file's (mtime in ns, size), or (None, None) when it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None, None
    return st.st_mtime_ns, st.st_size


def _row(item: dict[str, Any], ds: Dataset) -> dict[str, Any]:
    """The index row of ``item`` (an :meth:`Store.unindexed` row) from its file's header ``ds``."""
    return {
        "sop_instance_uid": item["sop_instance_uid"],
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "transfer_syntax_uid": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "path": str(item["path"]),
        "origin": item["origin"],
        "attributes": json.dumps(attributes(ds)),
    }


def attributes(ds: Dataset) -> dict[str, str]:
    """The indexed attributes of ``ds`` that are present, as strings (multi-valued ones joined by ``\\``)."""
    out: dict[str, str] = {}
    for keyword in INDEXED:
        elem = ds.get(keyword)
        if elem is None or elem == "":
            continue
        out[keyword] = "\\".join(str(v) for v in elem) if _multi(elem) else str(elem)
    return out


def _multi(value: object) -> bool:
    return isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"


def objects(store: Store, *, study: str | None = None, series: str | None = None,
            instance: str | None = None) -> list[dict[str, Any]]:
    """Index rows (``attributes`` decoded), oldest first (by when the instance was received or the
    result made), narrowed by the UIDs given."""
    refresh(store)
    where, args = [], []
    for column, value in (("study_instance_uid", study), ("series_instance_uid", series),
                          ("sop_instance_uid", instance)):
        if value is not None:
            where.append(f"x.{column} = ?")
            args.append(value)
    # Not SQLite's rowid (PostgreSQL has none): the object's own time, then its UID, on either engine.
    # An object no longer in instances or results (none is deleted today) comes last.
    sql = ("SELECT x.* FROM dicomweb_index x"
           " LEFT JOIN instances i ON x.origin = 'received' AND i.sop_instance_uid = x.sop_instance_uid"
           " LEFT JOIN results r ON x.origin = 'result' AND r.sop_instance_uid = x.sop_instance_uid"
           + (" WHERE " + " AND ".join(where) if where else "")
           + " ORDER BY CASE WHEN COALESCE(i.received_at, r.created_at) IS NULL THEN 1 ELSE 0 END,"
           " COALESCE(i.received_at, r.created_at), x.sop_instance_uid")
    rows = []
    for r in store.conn().execute(sql, args):
        row = dict(r)
        row["attributes"] = json.loads(row["attributes"])
        rows.append(row)
    return rows
