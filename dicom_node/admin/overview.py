"""What the dashboard's front page shows, gathered in one call from the store, the receiver and the twin."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime
from typing import Any

from dicom_node.admin import queries
from dicom_node.admin.metrics import HEALTH_STATUSES, active_associations
from dicom_node.dicomweb import study_url
from dicom_node.status import node_status
from twin import report
from twin.db import rows, utcnow

STATUS_ORDER = {"ALERT": 0, "WARN": 1, "OK": 2}


def device_rows(twin: Any, db: Any, now: datetime | None = None) -> list[dict[str, Any]]:
    """Every device as ``devices --json`` lists it, plus ``nearest_crossing``: the soonest forecast of
    a signal crossing a limit (twin.signals), or None; one health assessment per device."""
    now = now or utcnow()
    out = []
    for dev in rows(db, "SELECT * FROM twin_devices ORDER BY id"):
        health = twin.health(dev["id"], now)
        row = report.summary(db, dev, now, twin.thresholds, health)
        row["nearest_crossing"] = health.forecasts[0].as_dict() if health.forecasts else None
        out.append(row)
    return out


def overview(node: Any, started_at: float, *, studies: int = 10, associations: int = 8) -> dict[str, Any]:
    """Node status, queue, destinations, recent studies (each with its DICOMweb URL, None when the listener
    is off) and associations, and the devices (worst first)."""
    store = node.store
    status = node_status(node.cfg, store)
    devices = sorted(device_rows(node.twin, store.conn()),
                     key=lambda d: (STATUS_ORDER.get(d["health"]["status"], 3), d["id"]))
    health = Counter(d["health"]["status"] for d in devices)
    by_destination: dict[str, dict[str, int]] = {}
    for r in queries.deliveries_by_destination(store):
        by_destination.setdefault(r["destination"], {})[r["state"]] = r["n"]
    for d in status["destinations"]:
        d["deliveries"] = by_destination.get(d["name"], {})
    queue = status["jobs"]
    studies_shown = queries.recent_studies(store, studies, thumbs=1)
    for study in studies_shown:
        study["dicomweb_url"] = study_url(node.cfg.dicomweb, study["study_instance_uid"])
    return {
        "status": status,
        "counters": dict(node.receiver.counters) if node.receiver is not None else {},
        "active_associations": active_associations(node),
        "association_outcomes": queries.association_outcomes(store),
        "associations": queries.recent_associations(store, associations),
        "studies": studies_shown,
        "study_count": queries.study_count(store),
        "devices": devices,
        "health": {s: health.get(s, 0) for s in HEALTH_STATUSES},
        "model": queries.latest_model(store),
        "queue_busy": queue["queued"] + queue["running"],
        "started_at": started_at,
        "now": time.time(),
    }
