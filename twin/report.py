"""Read side of the twin: what the health rules need, and what admins read (CLI, API).

Everything here only reads, so the commands can run while the node serves (WAL readers do not
block the writer).
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from twin.ai_watch import ai_history, ai_view
from twin.db import from_iso, iso, one, rows
from twin.health import DeviceHistory, Health, Thresholds, assess, next_service_due
from twin.tube import TubeWear, tube_wear

MAINTENANCE_KINDS = ("preventive", "corrective", "calibration", "qc", "software", "tube", "other")
# maintenance after which the exposure-index baseline is learned again (the device was changed)
REBASELINE_KINDS = ("preventive", "corrective", "calibration")
# maintenance that restarts the service interval
SERVICE_KINDS = ("preventive",)
# maintenance that restarts the tube's load (a new tube, or a re-used one with its own count)
TUBE_KINDS = ("tube",)


def _in(kinds: tuple[str, ...]) -> str:
    return "(" + ", ".join(f"'{k}'" for k in kinds) + ")"


def _midnight(d: str | None) -> datetime | None:
    if not d:
        return None
    try:
        return datetime.combine(date.fromisoformat(d[:10]), time(), UTC)
    except ValueError:
        return None


def rebaseline_point(db: Any, device_id: int, now: datetime) -> str | None:
    row = one(
        db,
        f"SELECT max(at) AS at FROM twin_maintenance WHERE device_id = ? AND at <= ? "
        f"AND kind IN {_in(REBASELINE_KINDS)}",
        [device_id, iso(now)],
    )
    return row["at"] if row else None


def baseline_instances_sql(limit: int) -> str:
    """The first ``limit`` DI-bearing acquisitions after the rebaseline point (kept by retention)."""
    return (
        "SELECT sop_instance_uid FROM twin_acquisitions WHERE device_id = :device "
        "AND deviation_index IS NOT NULL "
        f"AND at >= :after ORDER BY at, sop_instance_uid LIMIT {int(limit)}"
    )


def history(db: Any, device_id: int, now: datetime, th: Thresholds) -> DeviceHistory:
    """Gather what :func:`twin.health.assess` needs for one device, as of ``now``."""
    stamp = iso(now)
    dev = one(db, "SELECT * FROM twin_devices WHERE id = ?", [device_id]) or {}
    after = rebaseline_point(db, device_id, now) or ""
    di = rows(
        db,
        "SELECT at, deviation_index FROM twin_acquisitions WHERE device_id = ? "
        "AND deviation_index IS NOT NULL "
        "AND at >= ? AND at <= ? ORDER BY at, sop_instance_uid",
        [device_id, after, stamp],
    )
    last = one(
        db, "SELECT max(at) AS at FROM twin_acquisitions WHERE device_id = ? AND at <= ?", [device_id, stamp]
    )
    last_at = from_iso(last["at"]) if last else None
    times: list[str] = []
    if last and last_at:
        window = iso(last_at - timedelta(days=th.silence_window_days))
        times = [
            r["at"]
            for r in rows(
                db,
                "SELECT at FROM twin_acquisitions WHERE device_id = ? AND at >= ? AND at <= ? ORDER BY at",
                [device_id, window, last["at"]],
            )
        ]
    fault_from = iso(now - timedelta(days=th.fault_window_days + th.fault_baseline_days + 1))
    faults: dict[date, dict[str, int]] = defaultdict(dict)
    for r in rows(
        db,
        "SELECT substr(at, 1, 10) AS day, coalesce(code, '') AS code, count(*) AS n FROM twin_events "
        "WHERE device_id = ? AND kind = 'fault' AND at >= ? AND at <= ? GROUP BY day, code",
        [device_id, fault_from, stamp],
    ):
        faults[date.fromisoformat(r["day"])][r["code"]] = r["n"]
    signals = signal_readings(db, device_id, now, th)
    service = one(
        db,
        f"SELECT max(at) AS at FROM twin_maintenance WHERE device_id = ? AND at <= ? "
        f"AND kind IN {_in(SERVICE_KINDS)}",
        [device_id, stamp],
    )
    service_start = from_iso(service["at"] if service else None) or from_iso(dev.get("first_seen"))
    used = one(
        db,
        "SELECT coalesce(sum(acquisitions), 0) AS n FROM twin_daily WHERE device_id = ? AND day >= ?",
        [device_id, iso(service_start)[:10] if service_start else ""],
    )
    recent_from = (now - timedelta(days=30)).date().isoformat()
    recent = one(
        db,
        "SELECT coalesce(sum(acquisitions), 0) AS n FROM twin_daily WHERE device_id = ? "
        "AND day >= ? AND day <= ?",
        [device_id, recent_from, stamp[:10]],
    )
    first_seen = from_iso(dev.get("first_seen"))
    span_days = min(30.0, max(1.0, (now - first_seen).total_seconds() / 86400)) if first_seen else 30.0
    return DeviceHistory(
        tube=tube(db, device_id, now, th, first_seen),
        ai=ai_history(db, device_id, now, th.ai_baseline_n, th.ai_window_days, th.ai_change_n),
        first_seen=first_seen,
        last_acquisition=last_at,
        deviation_indices=[(from_iso(r["at"]), r["deviation_index"]) for r in di],  # type: ignore[misc]
        acquisition_times=[from_iso(t) for t in times],  # type: ignore[misc]
        faults=dict(faults),
        last_calibration=last_calibration(db, device_id, now),
        signals=signals,
        service_start=service_start,
        exposures_since_service=int(used["n"]) if used else 0,
        daily_exposure_rate=(recent["n"] if recent else 0) / span_days,
    )


def tube(
    db: Any, device_id: int, now: datetime, th: Thresholds, first_seen: datetime | None
) -> TubeWear:
    """The tube's load since the last ``tube`` maintenance record (or since first seen)."""
    row = one(
        db,
        f"SELECT max(at) AS at FROM twin_maintenance WHERE device_id = ? AND at <= ? AND kind IN {_in(TUBE_KINDS)}",
        [device_id, iso(now)],
    )
    return tube_wear(
        db, device_id, now, since=from_iso(row["at"] if row else None), first_seen=first_seen,
        factor=th.tube_heat_unit_factor, rate_days=th.tube_rate_days, rated_life_hu=th.tube_rated_life,
    )


def signal_readings(
    db: Any, device_id: int, now: datetime, th: Thresholds
) -> dict[str, list[tuple[datetime, float]]]:
    """Per declared signal, its (time, value) readings from sidecar telemetry (and, for detector
    temperature, DetectorTemperature in the headers) over the longest window a signal rule needs."""
    names = {s.name for s in th.signals}
    days = max(th.forecast_window_days + 1, th.temp_max_age_days)
    if any(s.counted for s in th.signals):
        days = max(days, th.fault_window_days + th.fault_baseline_days + 1)
    start, stamp = iso(now - timedelta(days=days)), iso(now)
    out: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    if "detector_temperature" in names:
        for r in rows(
            db,
            "SELECT at, detector_temperature AS t FROM twin_acquisitions WHERE device_id = ? "
            "AND at >= ? AND at <= ? AND detector_temperature IS NOT NULL",
            [device_id, start, stamp],
        ):
            if (t := from_iso(r["at"])) is not None:
                out["detector_temperature"].append((t, float(r["t"])))
    for r in rows(
        db,
        "SELECT at, values_json FROM twin_events WHERE device_id = ? AND kind = 'telemetry' "
        "AND at >= ? AND at <= ? ORDER BY at",
        [device_id, start, stamp],
    ):
        values = json.loads(r["values_json"] or "{}")
        t = from_iso(r["at"])
        if t is None or not isinstance(values, dict):
            continue
        for name in names & values.keys():
            v = values[name]
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[name].append((t, float(v)))
    return {k: sorted(v, key=lambda p: p[0]) for k, v in out.items()}


def deviation_indices(db: Any, device_id: int, since: datetime) -> list[tuple[datetime, float]]:
    """(time, DI) of every image of the device since ``since``, oldest first: the drift chart's points
    (IEC 62494-1 deviation index, as recorded per acquisition)."""
    found = rows(db, "SELECT at, deviation_index FROM twin_acquisitions WHERE device_id = ? AND at >= ? "
                     "AND deviation_index IS NOT NULL ORDER BY at, sop_instance_uid", [device_id, iso(since)])
    return [(t, float(r["deviation_index"])) for r in found if (t := from_iso(r["at"])) is not None]


def last_calibration(db: Any, device_id: int, now: datetime) -> datetime | None:
    """Latest of DateOfLastDetectorCalibration (else DateOfLastCalibration) in the headers, sidecar
    ``calibration`` events and ``calibration`` maintenance records."""
    stamp = iso(now)
    acq = (
        one(
            db,
            # a calibration date after today is a clock ahead, not a calibration: ignored
            "SELECT max(CASE WHEN detector_calibrated_on <= ? THEN detector_calibrated_on END) AS det, "
            "max(CASE WHEN device_calibrated_on <= ? THEN device_calibrated_on END) AS dev "
            "FROM twin_acquisitions WHERE device_id = ? AND at <= ?",
            [stamp[:10], stamp[:10], device_id, stamp],
        )
        or {}
    )
    ev = (
        one(
            db,
            "SELECT max(at) AS at FROM twin_events WHERE device_id = ? AND kind = 'calibration' AND at <= ?",
            [device_id, stamp],
        )
        or {}
    )
    mt = (
        one(
            db,
            "SELECT max(at) AS at FROM twin_maintenance WHERE device_id = ? "
            "AND kind = 'calibration' AND at <= ?",
            [device_id, stamp],
        )
        or {}
    )
    found = [
        _midnight(acq.get("det")) or _midnight(acq.get("dev")),
        from_iso(ev.get("at")),
        from_iso(mt.get("at")),
    ]
    return max((t for t in found if t is not None), default=None)


# --- what admins read --------------------------------------------------------------------------------


def current_config(db: Any, device_id: int) -> dict[str, Any] | None:
    return one(
        db, "SELECT * FROM twin_config WHERE device_id = ? ORDER BY since DESC, id DESC LIMIT 1", [device_id]
    )


def counts(db: Any, device_id: int) -> tuple[int, int]:
    """(acquisitions, fault events); acquisitions from the rollups so retention does not lower it."""
    acq = one(
        db, "SELECT coalesce(sum(acquisitions), 0) AS n FROM twin_daily WHERE device_id = ?", [device_id]
    )
    flt = one(db, "SELECT count(*) AS n FROM twin_events WHERE device_id = ? AND kind = 'fault'", [device_id])
    return int(acq["n"] if acq else 0), int(flt["n"] if flt else 0)


def summary(
    db: Any,
    dev: dict[str, Any],
    now: datetime,
    th: Thresholds,
    health: Health | None = None,
) -> dict[str, Any]:
    """One device as `devices --json` lists it."""
    acquisitions, faults = counts(db, dev["id"])
    cfg = current_config(db, dev["id"]) or {}
    health = health or assess(history(db, dev["id"], now, th), now, th)
    return {
        "id": dev["id"],
        "key": dev["key"],
        "manufacturer": dev["manufacturer"],
        "model": dev["model"],
        "serial": dev["serial"],
        "station": dev["station"],
        "institution": dev["institution"],
        "department": dev["department"],
        "software_versions": cfg.get("software_versions"),
        "first_seen": dev["first_seen"],
        "last_seen": dev["last_seen"],
        "acquisitions": acquisitions,
        "faults": faults,
        "health": {"status": health.status.value, "reasons": health.reasons, "since": _opt_iso(health.since)},
    }


def _opt_iso(dt: datetime | None) -> str | None:
    return iso(dt) if dt else None


def _config_view(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k not in ("device_id", "changes")}
    out["changes"] = json.loads(row["changes"] or "[]")
    return out


def record(db: Any, dev: dict[str, Any], now: datetime, th: Thresholds) -> dict[str, Any]:
    """The whole twin of one device: identity, configuration and its history, usage per day,
    faults, maintenance and health with reasons."""
    device_id = dev["id"]
    hist = history(db, device_id, now, th)
    health = assess(hist, now, th)
    base = summary(db, dev, now, th, health)
    due = next_service_due(hist, now, th)
    configs = rows(db, "SELECT * FROM twin_config WHERE device_id = ? ORDER BY since, id", [device_id])
    usage = rows(
        db,
        "SELECT day, acquisitions, faults, warnings, events, "
        # round(CAST(.. AS NUMERIC), n): PostgreSQL rounds only numerics (SQLite: the same REAL)
        "CASE WHEN di_n > 0 THEN round(CAST(di_sum / di_n AS NUMERIC), 2) END AS mean_di, "
        "round(CAST(dap_sum AS NUMERIC), 3) AS dap_sum, "
        "round(CAST(mas_sum AS NUMERIC), 2) AS mas_sum FROM twin_daily WHERE device_id = ? AND day <= ? ORDER BY day",
        [device_id, iso(now)[:10]],  # as of now: a day ahead is a clock ahead, never charted
    )
    faults = rows(
        db,
        "SELECT at, code, message, values_json, file, line_no FROM twin_events WHERE device_id = ? "
        "AND kind = 'fault' ORDER BY at DESC LIMIT 200",
        [device_id],
    )
    for f in faults:
        f["values"] = json.loads(f.pop("values_json") or "{}")
    events = {
        r["kind"]: r["n"]
        for r in rows(
            db, "SELECT kind, count(*) AS n FROM twin_events WHERE device_id = ? GROUP BY kind", [device_id]
        )
    }
    plates = rows(
        db,
        "SELECT coalesce(plate_id, cassette_id) AS plate, count(*) AS n FROM twin_acquisitions "
        "WHERE device_id = ? AND coalesce(plate_id, cassette_id) IS NOT NULL GROUP BY plate ORDER BY plate",
        [device_id],
    )
    latest = one(
        db,
        "SELECT * FROM twin_acquisitions WHERE device_id = ? ORDER BY at DESC LIMIT 1",
        [device_id],
    )
    maintenance = rows(
        db,
        "SELECT id, at, kind, note, source, recorded_at FROM twin_maintenance "
        "WHERE device_id = ? ORDER BY at",
        [device_id],
    )
    base.update(
        device_uid=dev["device_uid"],
        configuration=_config_view(configs[-1]) if configs else None,
        configuration_history=[_config_view(r) for r in sorted(configs, key=lambda r: (r["since"], r["id"]))],
        plates=plates,
        latest_acquisition=latest,
        usage_per_day=usage,
        events=events,
        fault_events=faults,
        maintenance=maintenance,
        last_calibration=_opt_iso(hist.last_calibration),
        next_maintenance_due=_opt_iso(due[0]) if due else None,
        health=health.as_dict(),
        forecasts=[f.as_dict() for f in health.forecasts],
        tube=hist.tube.as_dict(now) if hist.tube else None,
        ai=ai_view(db, device_id, hist.ai, now) if hist.ai else None,
    )
    return base
