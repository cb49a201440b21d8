"""What the dashboard's front page shows, gathered in one call from the store, the receiver and the twin."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from dicom_node.admin import queries
from dicom_node.admin.metrics import HEALTH_STATUSES, active_associations
from dicom_node.status import node_status

STATUS_ORDER = {"ALERT": 0, "WARN": 1, "OK": 2}


def overview(node: Any, started_at: float, *, studies: int = 10, associations: int = 8) -> dict[str, Any]:
    """Node status, queue, destinations, recent studies and associations, and the devices (worst first)."""
    store = node.store
    status = node_status(node.cfg, store)
    devices = sorted(node.twin.devices(), key=lambda d: (STATUS_ORDER.get(d["health"]["status"], 3), d["id"]))
    health = Counter(d["health"]["status"] for d in devices)
    by_destination: dict[str, dict[str, int]] = {}
    for r in queries.deliveries_by_destination(store):
        by_destination.setdefault(r["destination"], {})[r["state"]] = r["n"]
    for d in status["destinations"]:
        d["deliveries"] = by_destination.get(d["name"], {})
    queue = status["jobs"]
    return {
        "status": status,
        "counters": dict(node.receiver.counters),
        "active_associations": active_associations(node),
        "association_outcomes": queries.association_outcomes(store),
        "associations": queries.recent_associations(store, associations),
        "studies": queries.recent_studies(store, studies, thumbs=1),
        "study_count": queries.study_count(store),
        "devices": devices,
        "health": {s: health.get(s, 0) for s in HEALTH_STATUSES},
        "model": queries.latest_model(store),
        "queue_busy": queue["queued"] + queue["running"],
        "started_at": started_at,
        "now": time.time(),
    }
