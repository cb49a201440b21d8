"""Deliveries of result objects to destinations and each destination's last echo and delivery."""

from __future__ import annotations

import time

from dicom_node.store.audit import insert_audit
from dicom_node.store.connections import Connections


class Deliveries(Connections):
    """The state of each result at each destination, and each destination's last contact."""

    def set_delivery(self, result_uid: str, destination: str, state: str, *, attempts: int,
                     peer_ae: str, peer_host: str, error: str | None = None) -> None:
        """Record the outcome of one delivery attempt: the delivery's state, the destination's last
        delivery, and a row in the audit trail (every attempt, not only the last)."""
        now = time.time()
        with self.transaction() as conn:
            insert_audit(conn, now, "delivery", peer_ae, peer_host, state,
                          {"destination": destination, "result_uid": result_uid, "attempts": attempts, "error": error})
            conn.execute(
                "UPDATE deliveries SET state=?, attempts=?, error=?, updated_at=?,"
                " delivered_at=CASE WHEN ?='delivered' THEN ? ELSE delivered_at END"
                " WHERE result_uid=? AND destination=?",
                (state, attempts, error, now, state, now, result_uid, destination),
            )
            conn.execute(
                "INSERT INTO peer_status (name, last_delivery_at, last_delivery_ok) VALUES (?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET last_delivery_at=excluded.last_delivery_at,"
                " last_delivery_ok=excluded.last_delivery_ok",
                (destination, now, 1 if state == "delivered" else 0),
            )

    def set_echo(self, name: str, ok: bool, error: str | None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO peer_status (name, last_echo_at, last_echo_ok, last_echo_error) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(name) DO UPDATE SET last_echo_at=excluded.last_echo_at,"
                " last_echo_ok=excluded.last_echo_ok, last_echo_error=excluded.last_echo_error",
                (name, time.time(), 1 if ok else 0, error),
            )
