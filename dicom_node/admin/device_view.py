"""What the device page shows: the twin record of one device and its charts.

The record comes from ``TwinStore.device`` and the drift chart from the same functions the health rule
uses (``twin.report.history`` and ``twin.health.ewma_chart``), so the limits drawn are the limits that
raise the alarm; every image's deviation index comes from ``twin.report.deviation_indices``.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from markupsafe import Markup

from dicom_node.admin import charts
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
        "window_days": int(WINDOW_DAYS),
        "points": len(points),
    }


def health_chart_note(record: dict[str, Any]) -> Markup:
    """One line under the drift chart: the drift rule's own words."""
    for f in record["health"].get("findings", []):
        if f["rule"] == "ei_drift":
            return Markup.escape(f["reason"])
    return Markup("")
