"""The DICOMweb index (QIDO-RS, PS3.18 §10.6): one row per stored object, read from its header
by dicom_node.dicomweb.index, and the objects found unreadable."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dicom_node.store.connections import Connections
from dicom_node.store.schema import upsert


class WebIndex(Connections):
    """What QIDO-RS searches: a cache of the stored files' headers (the files stay the truth)."""

    def unindexed(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored instances and results that have no ``dicomweb_index`` row yet and are not marked
        unreadable: ``sop_instance_uid``, ``path``, ``origin`` (``received`` or ``result``)."""
        not_yet = " AND ".join(f"NOT EXISTS (SELECT 1 FROM {table} x WHERE x.sop_instance_uid = {{t}}.sop_instance_uid)"
                               for table in ("dicomweb_index", "dicomweb_unreadable"))
        return [dict(r) for r in self.conn().execute(
            f"SELECT sop_instance_uid, path, 'received' AS origin FROM instances i WHERE {not_yet.format(t='i')}"
            f" UNION ALL SELECT sop_instance_uid, path, 'result' FROM results r WHERE {not_yet.format(t='r')}"
            " LIMIT ?", (limit,))]

    def put_index(self, rows: Sequence[dict[str, Any]], unreadable: Sequence[dict[str, Any]] = ()) -> None:
        """Write index rows (idempotent: an instance indexed twice keeps one row) and mark the
        ``unreadable`` objects (``sop_instance_uid``, ``path``, ``mtime_ns``, ``size``, ``reason``)."""
        with self.transaction() as conn:
            conn.executemany(
                upsert("dicomweb_index", ("sop_instance_uid", "study_instance_uid", "series_instance_uid",
                                          "sop_class_uid", "transfer_syntax_uid", "path", "origin", "attributes"),
                       ["sop_instance_uid"], named=True), rows)
            conn.executemany(
                upsert("dicomweb_unreadable", ("sop_instance_uid", "path", "mtime_ns", "size", "reason"),
                       ["sop_instance_uid"], named=True), unreadable)

    def unreadable(self) -> list[dict[str, Any]]:
        """The objects marked unreadable for the index, with their file's ``mtime_ns`` and ``size`` then."""
        return [dict(r) for r in self.conn().execute(
            "SELECT sop_instance_uid, path, mtime_ns, size FROM dicomweb_unreadable")]

    def forget_unreadable(self, sop_instance_uids: Sequence[str]) -> None:
        """Unmark objects (their file changed): the next query reads them again."""
        with self.transaction() as conn:
            conn.executemany("DELETE FROM dicomweb_unreadable WHERE sop_instance_uid = ?",
                             [(u,) for u in sop_instance_uids])
