"""What the device page shows: the twin record of one device and its charts.

The record comes from ``TwinStore.device`` and the drift chart from the same functions the health rule
uses (``twin.report.history`` and ``twin.health.ewma_chart``), so the limits drawn are the limits that
raise the alarm; every image's deviation index comes from ``twin.report.deviation_indices``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from markupsafe import Markup

from dicom_node.admin import charts, signal_charts
from twin import report
from twin.db import from_iso, utcnow
from twin.health import ewma_chart

WINDOW_DAYS = 90.0


def ewma_series(db: Any, device_id: int, now: datetime, thresholds: Any) -> charts.EwmaSeries | None:
    """The drift rule's chart over the images since the last rebaselining maintenance, or None while
    the baseline is still being learned."""
    hist = report.history(db, device_id, now, thresholds)
    pts = list(hist.deviation_indices)
    chart = ewma_chart([v for _, v in pts], thresholds)
    if chart is None:
        return None
    n = thresholds.baseline_n
    return charts.EwmaSeries(
        mean=chart.mean, baseline_start=pts[0][0], baseline_end=pts[n - 1][0],
        times=[t for t, _ in pts[n:]], z=chart.z, limits=chart.limits, levels=[s.value for s in chart.levels],
    )


def markers(record: dict[str, Any]) -> list[charts.Marker]:
    """Maintenance actions and configuration changes (not the first configuration seen) of a device."""
    out = []
    for m in record.get("maintenance", []):
        at = from_iso(m["at"])
        if at:
            out.append(charts.Marker(at, "maintenance", m["kind"], m.get("note") or ""))
    for c in record.get("configuration_history", [])[1:]:
        at = from_iso(c["since"])
        if at:
            changed = ", ".join(f"{x['field']} {x['from']} → {x['to']}" for x in c.get("changes", []))
            fields = sorted({x["field"].replace("_", " ") for x in c.get("changes", [])})
            out.append(charts.Marker(at, "config", ", ".join(fields) or "configuration", changed))
    return out


def device_page(twin: Any, db: Any, device_id: int, now: datetime | None = None) -> dict[str, Any]:
    """The twin record of one device plus its three charts (``di_chart``, ``exposures_chart``,
    ``events_chart``); KeyError when there is no such device."""
    now = now or utcnow()
    record = twin.device(device_id, now)
    marks = markers(record)
    points = report.deviation_indices(db, device_id, now - timedelta(days=WINDOW_DAYS))
    usage = [(date.fromisoformat(u["day"]), int(u["acquisitions"])) for u in record["usage_per_day"]]
    faults = [(t, f"{f['code'] or 'fault'} {f['message'] or ''}".strip())
              for f in record["fault_events"] if (t := from_iso(f["at"])) is not None]
    times = [t for t, _ in points] + [t for t, _ in faults] + [m.at for m in marks]
    times += [datetime.combine(d, datetime.min.time(), now.tzinfo) for d, _ in usage]
    axis = charts.TimeAxis.spanning(times, now, WINDOW_DAYS)
    lanes = [
        charts.Lane("faults", charts.FAULT, faults),
        charts.Lane("maintenance", charts.MAINT, [(m.at, f"{m.label}: {m.detail}".rstrip(": "))
                                                  for m in marks if m.kind == "maintenance"], shape="bar"),
        charts.Lane("config", charts.CONFIG, [(m.at, f"{m.label}: {m.detail}".rstrip(": "))
                                              for m in marks if m.kind == "config"], shape="bar"),
    ]
    return {
        "device": record,
        "di_chart": charts.deviation_index_chart(points, ewma_series(db, device_id, now, twin.thresholds),
                                                 marks, axis, di_limit=twin.thresholds.di_limit),
        "exposures_chart": charts.exposures_chart(usage, marks, axis),
        "events_chart": charts.event_timeline(lanes, axis),
        "signal_charts": signal_section(db, device_id, record, now, twin.thresholds),
        "tube_chart": tube_section(record, twin.thresholds),
        "ai_chart": ai_section(record, marks, axis),
        "window_days": int(WINDOW_DAYS),
        "points": len(points),
    }


def signal_section(db: Any, device_id: int, record: dict[str, Any], now: datetime,
                   thresholds: Any) -> list[dict[str, Any]]:
    """Per declared signal with readings (counted ones aside): its chart, its forecast rule's words and
    its range rule's status; the readings come from ``twin.report.signal_readings``, the forecasts from
    the record, so the chart draws what the rules judged."""
    readings = report.signal_readings(db, device_id, now, thresholds)
    findings = {f["rule"]: f for f in record["health"].get("findings", [])}
    out = []
    for sig in thresholds.signals:
        pts = readings.get(sig.name)
        if sig.counted or not pts:
            continue
        mine = [f for f in record.get("forecasts", []) if f["signal"] == sig.name]
        out.append({
            "name": sig.name,
            "label": sig.label,
            "chart": signal_charts.signal_chart(sig.name, sig.unit, sig.warn, sig.alert, pts, mine, now,
                                                window_days=thresholds.forecast_window_days),
            "range": findings.get(sig.name),
            "forecast": findings.get(f"{sig.name}_forecast"),
        })
    return out


def tube_section(record: dict[str, Any], thresholds: Any) -> Markup | None:
    """The tube's used-life bar, when the twin keeps its load (``record["tube"]``)."""
    tube = record.get("tube")
    if not tube or not tube.get("exposures"):
        return None
    return signal_charts.tube_chart(tube, thresholds.tube_warn_fraction, thresholds.tube_alert_fraction)


def ai_section(record: dict[str, Any], marks: list[charts.Marker], axis: charts.TimeAxis) -> Markup | None:
    """The AI's positive rate per day on the page's time axis, with the configuration changes marked."""
    ai = record.get("ai")
    if not ai or not ai.get("daily"):
        return None
    changes = [m for m in marks if m.kind == "config"]
    return signal_charts.ai_rate_chart(ai["daily"], ai["baseline"].get("positive_rate"), changes, axis)


def health_chart_note(record: dict[str, Any]) -> Markup:
    """One line under the drift chart: the drift rule's own words."""
    for f in record["health"].get("findings", []):
        if f["rule"] == "ei_drift":
            return Markup.escape(f["reason"])
    return Markup("")
