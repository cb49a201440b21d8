"""The ``instances`` table: every stored instance, recorded with its analysis job in one transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from dicom_node.store.connections import Connections
from dicom_node.store.jobs import enqueue_in


@dataclass(frozen=True)
class InstanceRow:
    """What the receiver records of one stored instance (UIDs and counts only: no patient data)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    transfer_syntax_uid: str
    path: str
    size: int
    calling_ae: str | None
    peer_host: str | None


class Instances(Connections):
    """Stored instances: what the receiver committed before it answered Success."""

    def has_instance(self, sop_instance_uid: str) -> bool:
        row = self.conn().execute(
            "SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return row is not None

    def instance(self, sop_instance_uid: str) -> dict[str, Any] | None:
        row = self.conn().execute(
            "SELECT * FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,)
        ).fetchone()
        return dict(row) if row else None

    def add_instance(self, row: InstanceRow, *, job_kind: str = "analyse", max_attempts: int = 3) -> bool:
        """Record a stored instance and queue its analysis in one transaction.

        Returns False (and changes nothing) when the SOP Instance UID is already stored.
        """
        now = time.time()
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO instances (sop_instance_uid, sop_class_uid, study_instance_uid,"
                " series_instance_uid, modality, transfer_syntax_uid, path, size, calling_ae, peer_host,"
                " received_at) VALUES (?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (sop_instance_uid) DO NOTHING",
                (row.sop_instance_uid, row.sop_class_uid, row.study_instance_uid,
                 row.series_instance_uid, row.modality, row.transfer_syntax_uid, row.path, row.size,
                 row.calling_ae, row.peer_host, now),
            )
            if cur.rowcount == 0:
                return False
            enqueue_in(conn, job_kind, row.sop_instance_uid, None, max_attempts, 0.0, now)
        return True

    def instance_paths(self) -> set[str]:
        return {r[0] for r in self.conn().execute("SELECT path FROM instances")}
