"""The audit trail: associations, STOW-RS requests, deliveries (UIDs, AE titles, addresses, counts)."""

from __future__ import annotations

import json
import time
from typing import Any

from dicom_node.store.connections import Connections
from dicom_node.store.dbapi import Conn


def insert_audit(conn: Conn, at: float, event: str, peer_ae: str | None, peer_host: str | None,
                 outcome: str | None, detail: dict[str, Any] | None) -> None:
    """One audit row, inside the caller's transaction."""
    conn.execute("INSERT INTO audit (at, event, peer_ae, peer_host, outcome, detail) VALUES (?,?,?,?,?,?)",
                 (at, event, peer_ae, peer_host, outcome, json.dumps(detail) if detail else None))


class AuditLog(Connections):
    """Appends to the audit trail; rows are never updated or deleted by the node."""

    def audit(self, event: str, *, peer_ae: str | None = None, peer_host: str | None = None,
              outcome: str | None = None, detail: dict[str, Any] | None = None) -> None:
        """Append to the audit trail (UIDs, AE titles, addresses, counts: never patient data)."""
        with self.transaction() as conn:
            insert_audit(conn, time.time(), event, peer_ae, peer_host, outcome, detail)
