"""The ``nodes`` table: every node process on this database, its roles and its last heartbeat.

Each ``dicom-node serve`` beats every :data:`BEAT_S` seconds; one not seen for :data:`GONE_AFTER_BEATS`
beats is gone (killed, or its host died), one that stopped cleanly says so. ``dicom-node status`` and
the admin console list them, so an admin sees which host receives, analyses or delivers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from dicom_node.store.connections import Connections

BEAT_S = 5.0
GONE_AFTER_BEATS = 3
#: rows of processes gone longer than this are removed at the next beat of any node
KEEP_GONE_S = 7 * 86400.0


class Nodes(Connections):
    """Heartbeats of the node processes; a row per process (host and PID), kept a week after it ends."""

    def beat(self, node_id: str, *, host: str, pid: int, ae_title: str, roles: Sequence[str], version: str,
             started_at: float, model: Mapping[str, Any]) -> None:
        """Record that ``node_id`` is alive now with its ``model`` state (and, once a beat, forget
        long-gone processes)."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO nodes (id, host, pid, ae_title, roles, version, started_at, last_seen_at, model)"
                " VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET last_seen_at = excluded.last_seen_at,"
                " roles = excluded.roles, model = excluded.model, stopped_at = NULL",
                (node_id, host, pid, ae_title, json.dumps(list(roles)), version, started_at, now, json.dumps(model)),
            )
            conn.execute("DELETE FROM nodes WHERE last_seen_at < ?", (now - KEEP_GONE_S,))

    def node_model(self, node_id: str, model: Mapping[str, Any]) -> None:
        """``node_id``'s model changed state (loaded, failed): said at once, not at the next beat."""
        with self.transaction() as conn:
            conn.execute("UPDATE nodes SET model = ? WHERE id = ?", (json.dumps(model), node_id))

    def node_stopped(self, node_id: str, model: Mapping[str, Any]) -> None:
        """A clean stop: the node is listed as stopped at once, not gone three beats later."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute("UPDATE nodes SET stopped_at = ?, last_seen_at = ?, model = ? WHERE id = ?",
                         (now, now, json.dumps(model), node_id))

    def nodes(self, now: float | None = None) -> list[dict[str, Any]]:
        """Every node process known, newest first, with ``roles`` (a list) and ``state``: ``alive``,
        ``stopped`` or ``gone`` (no beat for :data:`GONE_AFTER_BEATS` beats)."""
        now = time.time() if now is None else now
        out = []
        for r in self.conn().execute("SELECT * FROM nodes ORDER BY started_at DESC, id"):
            row = dict(r)
            row["roles"] = json.loads(row["roles"])
            row["model"] = json.loads(row["model"]) if row["model"] else {"state": "unknown"}
            row["state"] = ("stopped" if row["stopped_at"] is not None
                            else "alive" if now - row["last_seen_at"] <= GONE_AFTER_BEATS * BEAT_S else "gone")
            out.append(row)
        return out
