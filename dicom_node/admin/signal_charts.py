"""SVG charts of the device page for issue 15: each telemetry signal with its limits and forecast, the
tube's used life, and the AI's positive rate per day. Server-rendered like :mod:`charts` (whose
primitives they use), no JavaScript, hover text in ``<title>``; functions return ``Markup``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from markupsafe import Markup, escape

from dicom_node.admin.charts import (
    BAND,
    BAR,
    CONFIG,
    EWMA,
    GRID,
    INK,
    LEFT,
    LIMIT,
    MUTED,
    POINT,
    WARN,
    Marker,
    TimeAxis,
    _f,
    _legend,
    _markers,
    _nice_step,
    _svg,
    _text,
    _x_axis,
)

WARN_ZONE = "#fef3c7"
ALERT_ZONE = "#fee2e2"
OK_ZONE = "#f0fdf4"


def _day(t: datetime) -> str:
    return t.astimezone(UTC).date().isoformat()


def _y_scale(lo: float, hi: float, top: float, bottom: float) -> Any:
    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    return y


def _y_grid(lo: float, hi: float, y: Any, right: float, fmt: str = "{:g}") -> list[str]:
    out = []
    step = _nice_step(hi - lo, 5)
    v = math.ceil(lo / step) * step
    while v <= hi + 1e-9:
        out.append(f'<line x1="{LEFT}" x2="{_f(right)}" y1="{_f(y(v))}" y2="{_f(y(v))}" stroke="{GRID}"/>')
        out.append(_text(LEFT - 8, y(v) + 4, fmt.format(round(v, 10)), anchor="end"))
        v += step
    return out


def _y_label(text: str, top: float, bottom: float) -> str:
    mid = (top + bottom) / 2
    return _text(14, mid, text, size=11, anchor="middle").replace(
        "<text ", f'<text transform="rotate(-90 14 {_f(mid)})" ')


def _frame(axis: TimeAxis, top: float, bottom: float) -> str:
    return (f'<rect x="{LEFT}" y="{_f(top)}" width="{_f(axis.right - LEFT)}" height="{_f(bottom - top)}" '
            f'fill="#fff" stroke="{GRID}"/>')


def _now_line(axis: TimeAxis, now: datetime, top: float, bottom: float) -> list[str]:
    x = axis.x(now)
    return [f'<line class="now" x1="{_f(x)}" x2="{_f(x)}" y1="{_f(top)}" y2="{_f(bottom)}" stroke="{INK}" '
            f'stroke-width="1" opacity="0.5"/>', _text(x + 3, top + 11, "now", size=10, fill=INK)]


def signal_axis(readings: Sequence[tuple[datetime, float]], forecasts: Sequence[Mapping[str, Any]], now: datetime,
                window_days: float) -> TimeAxis:
    """From the first reading of the window to the latest end of a forecast band (or now)."""
    ends = [now]
    for f in forecasts:
        band_end = datetime.fromisoformat(f["band"][1])
        ends.append(min(band_end, now + timedelta(days=120)))
    end = max(ends)
    start = max(min((t for t, _ in readings), default=now - timedelta(days=1)), now - timedelta(days=window_days))
    pad = timedelta(seconds=max((end - start).total_seconds(), 3600.0) * 0.02)
    return TimeAxis(start - pad, end + pad)


def _zones(warn: tuple[float | None, float | None], alert: tuple[float | None, float | None], lo: float, hi: float,
           y: Any, axis: TimeAxis, unit: str) -> list[str]:
    """The normal range (green), beyond warn (amber) and beyond alert (red), with labelled limit lines."""
    out = []
    w_lo, w_hi = warn
    a_lo, a_hi = alert
    bands = [
        (max(lo, w_lo if w_lo is not None else lo), min(hi, w_hi if w_hi is not None else hi), OK_ZONE, "normal"),
        (max(lo, w_hi), min(hi, a_hi if a_hi is not None else hi), WARN_ZONE, "warn") if w_hi is not None else None,
        (max(lo, a_hi), hi, ALERT_ZONE, "alert") if a_hi is not None else None,
        (max(lo, a_lo if a_lo is not None else lo), min(hi, w_lo), WARN_ZONE, "warn") if w_lo is not None else None,
        (lo, min(hi, a_lo), ALERT_ZONE, "alert") if a_lo is not None else None,
    ]
    for band in bands:
        if band is None or band[1] <= band[0]:
            continue
        b0, b1, colour, name = band
        out.append(f'<rect class="zone zone-{name}" x="{LEFT}" y="{_f(y(b1))}" width="{_f(axis.right - LEFT)}" '
                   f'height="{_f(y(b0) - y(b1))}" fill="{colour}"/>')
    u = f" {unit}" if unit else ""
    for kind, colour, bounds in (("warn", WARN, warn), ("alert", LIMIT, alert)):
        for v in bounds:
            if v is None or not lo <= v <= hi:
                continue
            out.append(f'<line class="{kind}-limit" x1="{LEFT}" x2="{_f(axis.right)}" y1="{_f(y(v))}" '
                       f'y2="{_f(y(v))}" stroke="{colour}" stroke-width="1.2" stroke-dasharray="6 4">'
                       f"<title>{kind} limit {v:g}{escape(u)}</title></line>")
            out.append(_text(axis.right + 4, y(v) + 4, f"{v:g}", size=10, fill=colour))
    return out


def _forecast_marks(f: Mapping[str, Any], medians: Sequence[tuple[datetime, float]], axis: TimeAxis, y: Any,
                    unit: str) -> list[str]:
    """The fitted Theil-Sen line up to the crossing, the fan of the slope's 95% band and the crossing."""
    crossing = datetime.fromisoformat(f["crossing_at"])
    early, late = (datetime.fromisoformat(t) for t in f["band"])
    limit, slope = float(f["limit"]), float(f["slope_per_day"])

    def line(t: datetime) -> float:
        return limit + slope * (t - crossing).total_seconds() / 86400

    start = medians[0][0] if medians else axis.start
    pivot = medians[len(medians) // 2][0] if medians else start
    u = f" {unit}" if unit else ""
    words = (f"forecast: {f['limit_kind']} limit {limit:g}{u} crossed on {_day(crossing)} "
             f"(95% band {_day(early)} to {_day(late)}; {slope:+.3g}{u}/day over {f['days_of_data']} days)")
    out = []
    if axis.contains(early) and axis.contains(late):
        out.append(f'<polygon class="forecast-band" points="{_f(axis.x(pivot))},{_f(y(line(pivot)))} '
                   f'{_f(axis.x(early))},{_f(y(limit))} {_f(axis.x(late))},{_f(y(limit))}" fill="{BAND}" '
                   f'opacity="0.8"><title>{escape(words)}</title></polygon>')
    out.append(f'<polyline class="forecast" points="{_f(axis.x(start))},{_f(y(line(start)))} '
               f'{_f(axis.x(crossing))},{_f(y(limit))}" fill="none" stroke="{EWMA}" stroke-width="2" '
               f'stroke-dasharray="7 4"><title>{escape(words)}</title></polyline>')
    x = axis.x(crossing)
    colour = LIMIT if f["limit_kind"] == "alert" else WARN
    out.append(f'<g class="crossing" data-crossing="{_day(crossing)}"><title>{escape(words)}</title>'
               f'<circle cx="{_f(x)}" cy="{_f(y(limit))}" r="5" fill="#fff" stroke="{colour}" stroke-width="2.5"/>')
    anchor = "end" if x > axis.right - 150 else "start"
    out.append(_text(x + (-8 if anchor == "end" else 8), y(limit) - 8, f"{limit:g}{u} on {_day(crossing)}", size=11,
                     fill=colour, anchor=anchor, weight="600") + "</g>")
    return out


def signal_chart(name: str, unit: str, warn: tuple[float | None, float | None],
                 alert: tuple[float | None, float | None], readings: Sequence[tuple[datetime, float]],
                 forecasts: Sequence[Mapping[str, Any]], now: datetime, *, window_days: float = 60.0,
                 height: int = 230) -> Markup:
    """One signal's readings and daily medians against its normal (warn) and tolerable (alert) ranges,
    with the forecast line, its 95% band and the predicted crossing date of each limit the forecast
    rule expects to be crossed (``device ID --json`` ``forecasts`` of this signal)."""
    top, bottom = 34.0, float(height - 26)
    axis = signal_axis(readings, forecasts, now, window_days)
    shown = [(t, v) for t, v in readings if axis.contains(t)]
    days: dict[date, list[float]] = {}
    for t, v in shown:
        days.setdefault(t.astimezone(UTC).date(), []).append(v)
    medians = [(datetime.combine(d, time(12), UTC), statistics.median(vs)) for d, vs in sorted(days.items())]
    bounds = [b for b in (*warn, *alert) if b is not None]
    values = [v for _, v in shown] + bounds + [float(f["limit"]) for f in forecasts]
    lo, hi = min(values, default=0.0), max(values, default=1.0)
    pad = max((hi - lo) * 0.08, 0.5 if hi - lo < 5 else 1.0, abs(hi) * 0.01)
    lo, hi = lo - pad, hi + pad
    y = _y_scale(lo, hi, top, bottom)
    label = name.replace("_", " ")
    body = [_frame(axis, top, bottom), *_zones(warn, alert, lo, hi, y, axis, unit), *_y_grid(lo, hi, y, axis.right)]
    body += _x_axis(axis, top, bottom)
    body.append(_y_label(unit or label, top, bottom))
    dots = "".join(f'<circle cx="{_f(axis.x(t))}" cy="{_f(y(v))}" r="1.8" fill="{POINT}" opacity="0.55">'
                   f"<title>{t:%Y-%m-%d %H:%M} UTC: {v:g}{escape(' ' + unit if unit else '')}</title></circle>"
                   for t, v in shown)
    body.append(f'<g class="readings">{dots}</g>')
    if medians:
        pts = " ".join(f"{_f(axis.x(t))},{_f(y(v))}" for t, v in medians)
        body.append(f'<polyline class="daily-median" points="{pts}" fill="none" stroke="{INK}" stroke-width="1.6"/>')
    for f in forecasts:
        body += _forecast_marks(f, medians, axis, y, unit)
    body += _now_line(axis, now, top, bottom)
    body += _legend([
        (f'<circle cx="6" cy="0" r="2.5" fill="{POINT}"/>', "reading"),
        (f'<line x1="0" x2="14" y1="0" y2="0" stroke="{INK}" stroke-width="1.6"/>', "daily median"),
        (f'<line x1="0" x2="14" y1="0" y2="0" stroke="{WARN}" stroke-dasharray="4 3"/>', "warn limit"),
        (f'<line x1="0" x2="14" y1="0" y2="0" stroke="{LIMIT}" stroke-dasharray="4 3"/>', "alert limit"),
        (f'<line x1="0" x2="14" y1="0" y2="0" stroke="{EWMA}" stroke-width="2" stroke-dasharray="5 3"/>',
         "forecast (Theil-Sen) and 95% band"),
    ], 16)
    first = forecasts[0] if forecasts else None
    return _svg(f"signal-{name}", height, f"{label} over time with its limits and forecast", body,
                signal=name, readings=len(shown), forecasts=len(forecasts),
                crossing=_day(datetime.fromisoformat(first["crossing_at"])) if first else "")


def tube_chart(tube: Mapping[str, Any], warn_fraction: float, alert_fraction: float, *, height: int = 96) -> Markup:
    """The tube's used life as a bar against its rated life, with the warn and alert fractions and the
    projected replacement date (``device ID --json`` ``tube``); the load alone while the rated life is
    unknown."""
    left, right = float(LEFT), 920.0
    top, bottom = 30.0, 62.0
    used = tube.get("used_fraction")
    hu = float(tube.get("heat_units") or 0.0)
    words = f"{hu:,.0f} HU in {tube.get('exposures', 0)} exposures"
    body = [f'<rect x="{_f(left)}" y="{_f(top)}" width="{_f(right - left)}" height="{_f(bottom - top)}" fill="#f1f5f9" '
            f'stroke="{GRID}" rx="3"/>']
    if used is None:
        body.append(_text(left + 8, (top + bottom) / 2 + 4, f"{words}; rated life unknown (twin.tube_rated_life)",
                          size=12, fill=INK))
    else:
        frac = max(0.0, float(used))
        colour = LIMIT if frac >= alert_fraction else WARN if frac >= warn_fraction else BAR
        x = left + min(frac, 1.0) * (right - left)
        body.append(f'<rect class="used" x="{_f(left)}" y="{_f(top)}" width="{_f(x - left)}" '
                    f'height="{_f(bottom - top)}" fill="{colour}" rx="3"><title>{frac:.1%} of the rated life '
                    f"({escape(words)})</title></rect>")
        for f, c, name in ((warn_fraction, WARN, "warn"), (alert_fraction, LIMIT, "alert")):
            xf = left + f * (right - left)
            body.append(f'<line class="{name}-limit" x1="{_f(xf)}" x2="{_f(xf)}" y1="{_f(top - 4)}" '
                        f'y2="{_f(bottom + 4)}" stroke="{c}" stroke-width="1.5" stroke-dasharray="4 3"/>')
            body.append(_text(xf, bottom + 16, f"{name} {f:.0%}", size=10, fill=c, anchor="middle"))
        body.append(_text(left, top - 8, f"{frac:.1%} of the rated life used: {words}", size=12, fill=INK,
                          weight="600"))
    projected = tube.get("projected_replacement")
    rate = tube.get("rate_hu_per_day")
    ahead = (f"replacement projected {projected} at {float(rate):,.0f} HU/day" if projected and rate
             else "no replacement date projected")
    body.append(_text(right, top - 8, ahead, size=11, fill=MUTED, anchor="end"))
    return _svg("tube-chart", height, "Tube used life", body, used=f"{used:.4f}" if used is not None else "",
                projected=projected or "")


def ai_rate_chart(daily: Sequence[Mapping[str, Any]], baseline_rate: float | None, changes: Sequence[Marker],
                  axis: TimeAxis, *, height: int = 200) -> Markup:
    """The AI's positive rate per UTC day (share of analysed images with a finding; dot area by the
    day's images) against the baseline rate, with the configuration changes marked."""
    top, bottom = 30.0, float(height - 26)
    pts = []
    for d in daily:
        day = date.fromisoformat(d["day"])
        at = datetime.combine(day, time(12), UTC)
        if d["analysed"] and axis.contains(at):
            pts.append((at, d["positive"] / d["analysed"], int(d["analysed"]), int(d["positive"])))
    hi = max([r for _, r, _, _ in pts] + [baseline_rate or 0.0, 0.2])
    hi = min(1.0, math.ceil(hi * 10 + 0.5) / 10)
    y = _y_scale(0.0, hi, top, bottom)
    body = [_frame(axis, top, bottom), *_y_grid(0.0, hi, y, axis.right, "{:.0%}"), *_x_axis(axis, top, bottom)]
    body.append(_y_label("positive", top, bottom))
    if baseline_rate is not None:
        body.append(f'<line class="baseline-rate" x1="{LEFT}" x2="{_f(axis.right)}" y1="{_f(y(baseline_rate))}" '
                    f'y2="{_f(y(baseline_rate))}" stroke="{EWMA}" stroke-dasharray="2 3"><title>baseline positive '
                    f"rate {baseline_rate:.0%}</title></line>")
    if pts:
        body.append('<polyline class="ai-rate" points="' + " ".join(f"{_f(axis.x(t))},{_f(y(r))}" for t, r, _, _ in pts)
                    + f'" fill="none" stroke="{BAR}" stroke-width="1.4"/>')
    peak = max([n for _, _, n, _ in pts] + [1])
    dots = "".join(f'<circle cx="{_f(axis.x(t))}" cy="{_f(y(r))}" r="{_f(2 + 3 * math.sqrt(n / peak))}" fill="{BAR}">'
                   f"<title>{t:%Y-%m-%d}: {p} of {n} positive ({r:.0%})</title></circle>" for t, r, n, p in pts)
    body.append(f'<g class="ai-days">{dots}</g>')
    body += _markers(axis, changes, top, bottom, labels=True)
    body += _legend([
        (f'<circle cx="6" cy="0" r="3.5" fill="{BAR}"/>', "positive rate per day"),
        (f'<line x1="0" x2="14" y1="0" y2="0" stroke="{EWMA}" stroke-dasharray="2 3"/>', "baseline"),
        (f'<line x1="7" x2="7" y1="-6" y2="6" stroke="{CONFIG}" stroke-dasharray="3 2" stroke-width="1.5"/>',
         "configuration change"),
    ], 16)
    return _svg("ai-chart", height, "AI positive rate per day with configuration changes", body, days=len(pts),
                changes=sum(1 for m in changes if axis.contains(m.at)))
