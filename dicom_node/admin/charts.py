"""Server-side SVG charts for the device page: no JavaScript, no external assets, hover text in <title>.

Every chart of one page shares a :class:`TimeAxis`, so the deviation-index chart, the exposures per
day and the event lanes line up under each other, and maintenance and configuration changes are
marked at the same x on each. Functions return ``Markup`` (all text is escaped here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from markupsafe import Markup, escape

WIDTH = 960
LEFT = 104  # room for the lane labels of the event chart; every chart uses it so the x axes align
RIGHT = 40
FONT = "system-ui,-apple-system,'Segoe UI',Roboto,sans-serif"  # an attribute: the CSP allows no inline style

INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
POINT = "#64748b"
EWMA = "#2563eb"
BAND = "#dbeafe"
LIMIT = "#dc2626"
WARN = "#d97706"
MAINT = "#059669"
CONFIG = "#7c3aed"
BAR = "#0ea5e9"
FAULT = "#dc2626"


@dataclass(frozen=True)
class Marker:
    """A moment to mark on every chart: a maintenance action or a configuration change."""

    at: datetime
    kind: str  # "maintenance" or "config"
    label: str
    detail: str = ""

    @property
    def colour(self) -> str:
        return MAINT if self.kind == "maintenance" else CONFIG


@dataclass(frozen=True)
class EwmaSeries:
    """The drift rule's EWMA chart (twin.health.ewma_chart) with the times of its points."""

    mean: float
    baseline_start: datetime
    baseline_end: datetime
    times: Sequence[datetime]
    z: Sequence[float]
    limits: Sequence[float]
    levels: Sequence[str]  # OK / WARN / ALERT per point


@dataclass(frozen=True)
class Lane:
    """One row of the event timeline: dots at times, each with its hover text."""

    name: str
    colour: str
    items: Sequence[tuple[datetime, str]] = field(default_factory=tuple)
    shape: str = "diamond"


@dataclass(frozen=True)
class TimeAxis:
    """Maps times in [start, end] onto the plot's x range."""

    start: datetime
    end: datetime
    left: float = LEFT
    right: float = WIDTH - RIGHT

    @classmethod
    def spanning(cls, times: Iterable[datetime], now: datetime, max_days: float = 90.0) -> TimeAxis:
        """From the earliest time (at most ``max_days`` back) to ``now``, with a little room either side."""
        floor = now - timedelta(days=max_days)
        start = max(min((t for t in times if t <= now), default=now - timedelta(days=1)), floor)
        span = max((now - start).total_seconds(), 3600.0)
        pad = timedelta(seconds=span * 0.02)
        return cls(start - pad, now + pad)

    def x(self, t: datetime) -> float:
        total = (self.end - self.start).total_seconds() or 1.0
        return self.left + (t - self.start).total_seconds() / total * (self.right - self.left)

    def contains(self, t: datetime) -> bool:
        return self.start <= t <= self.end

    def ticks(self) -> list[tuple[datetime, str]]:
        """Round times to label: 6-hourly, daily, weekly or monthly, whichever gives at most ~12."""
        span_days = (self.end - self.start).total_seconds() / 86400
        if span_days <= 2:
            step, fmt = timedelta(hours=6), "%d %b %H:%M"
            first = self.start.replace(minute=0, second=0, microsecond=0)
            first += timedelta(hours=(6 - first.hour % 6) % 6)
        elif span_days <= 120:
            days = 1 if span_days <= 12 else 2 if span_days <= 24 else 7
            step, fmt = timedelta(days=days), "%d %b"
            first = datetime.combine(self.start.date() + timedelta(days=1), time(), UTC)
            if days == 7:
                first += timedelta(days=(7 - first.weekday()) % 7)  # Mondays
        else:
            out, d = [], date(self.start.year, self.start.month, 1)
            while datetime.combine(d, time(), UTC) <= self.end:
                t = datetime.combine(d, time(), UTC)
                if t >= self.start:
                    out.append((t, t.strftime("%b %Y")))
                d = date(d.year + d.month // 12, d.month % 12 + 1, 1)
            return out
        out, t = [], first
        while t <= self.end:
            out.append((t, t.strftime(fmt)))
            t += step
        return out


# --- primitives ------------------------------------------------------------------------------------


def _f(v: float) -> str:
    return f"{v:.1f}"


def _text(x: float, y: float, s: str, *, size: int = 11, fill: str = MUTED, anchor: str = "start",
          weight: str = "normal") -> str:
    return (f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" fill="{fill}" text-anchor="{anchor}" '
            f'font-weight="{weight}">{escape(s)}</text>')


def _svg(chart_id: str, height: int, title: str, body: Sequence[str], **data: object) -> Markup:
    attrs = " ".join(f'data-{k.replace("_", "-")}="{escape(str(v))}"' for k, v in data.items())
    return Markup(
        f'<svg id="{chart_id}" class="chart" viewBox="0 0 {WIDTH} {height}" width="100%" role="img" '
        f'aria-label="{escape(title)}" font-family="{FONT}" {attrs} xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>" + "".join(body) + "</svg>"
    )


def _x_axis(axis: TimeAxis, top: float, bottom: float) -> list[str]:
    out = []
    for t, label in axis.ticks():
        x = axis.x(t)
        if not axis.left <= x <= axis.right:
            continue
        out.append(f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(top)}" y2="{_f(bottom)}" stroke="{GRID}"/>')
        out.append(_text(x, bottom + 14, label, anchor="middle"))
    return out


def _markers(axis: TimeAxis, markers: Sequence[Marker], top: float, bottom: float, *,
             labels: bool = False) -> list[str]:
    out = []
    for i, m in enumerate(sorted(markers, key=lambda m: m.at)):
        if not axis.contains(m.at):
            continue
        x = axis.x(m.at)
        tip = escape(f"{m.at:%Y-%m-%d %H:%M} UTC — {m.label}" + (f": {m.detail}" if m.detail else ""))
        out.append(f'<g class="marker marker-{m.kind}"><title>{tip}</title>'
                   f'<line x1="{_f(x)}" x2="{_f(x)}" y1="{_f(top)}" y2="{_f(bottom)}" stroke="{m.colour}" '
                   f'stroke-width="1.5" stroke-dasharray="5 3"/>')
        if labels:
            y = top + 11 + (i % 2) * 12
            anchor = "end" if x > axis.right - 120 else "start"
            dx = -4 if anchor == "end" else 4
            out.append(f'<rect x="{_f(x - 2)}" y="{_f(y - 8)}" width="4" height="4" fill="{m.colour}"/>')
            out.append(_text(x + dx, y, m.label, size=10, fill=m.colour, anchor=anchor, weight="600"))
        out.append("</g>")
    return out


def _legend(items: Sequence[tuple[str, str]], y: float) -> list[str]:
    """Legend entries (svg swatch, label) from the left edge of the plot."""
    out, x = [], float(LEFT)
    for swatch, label in items:
        out.append(f'<g transform="translate({_f(x)},{_f(y - 4)})">{swatch}</g>')
        out.append(_text(x + 20, y, label, size=11, fill=INK))
        x += 34 + 6.6 * len(label)
    return out


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / max(ticks, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


# --- charts ----------------------------------------------------------------------------------------


def deviation_index_chart(points: Sequence[tuple[datetime, float]], ewma: EwmaSeries | None,
                          markers: Sequence[Marker], axis: TimeAxis, *, di_limit: float = 3.0,
                          height: int = 300) -> Markup:
    """Deviation index of each image, its EWMA with the control limits the drift rule uses, the
    baseline the limits come from, and the ±``di_limit`` action levels (AAPM TG-116)."""
    top, bottom = 44.0, float(height - 26)
    shown = [(t, v) for t, v in points if axis.contains(t)]
    values = [v for _, v in shown] + (list(ewma.z) if ewma else [])
    if ewma:
        values += [ewma.mean + lim for lim in ewma.limits] + [ewma.mean - lim for lim in ewma.limits]
    lo = math.floor(min([-di_limit - 1, *values]) - 0.25)
    hi = math.ceil(max([di_limit + 1, *values]) + 0.25)

    def y(v: float) -> float:
        return bottom - (v - lo) / (hi - lo) * (bottom - top)

    body: list[str] = [f'<rect x="{LEFT}" y="{_f(top)}" width="{_f(axis.right - LEFT)}" '
                       f'height="{_f(bottom - top)}" fill="#fff" stroke="{GRID}"/>']
    step = _nice_step(hi - lo, 6)
    v = math.ceil(lo / step) * step
    while v <= hi:
        body.append(f'<line x1="{LEFT}" x2="{_f(axis.right)}" y1="{_f(y(v))}" y2="{_f(y(v))}" stroke="{GRID}"/>')
        body.append(_text(LEFT - 8, y(v) + 4, f"{v:+g}" if v else "0", anchor="end"))
        v += step
    body += _x_axis(axis, top, bottom)
    body.append(_text(14, (top + bottom) / 2, "deviation index", size=11, anchor="middle").replace(
        "<text ", f'<text transform="rotate(-90 14 {_f((top + bottom) / 2)})" '))
    if ewma and ewma.times:
        x0, x1 = axis.x(max(ewma.baseline_start, axis.start)), axis.x(ewma.baseline_end)
        body.append(f'<rect class="baseline" x="{_f(x0)}" y="{_f(top)}" width="{_f(max(x1 - x0, 1))}" '
                    f'height="{_f(bottom - top)}" fill="#f1f5f9"><title>baseline: the first images after '
                    f'the last calibration or repair; mean {ewma.mean:+.2f}</title></rect>')
        body.append(_text(x0 + 4, bottom - 6, "baseline", size=10))
        pairs = [(axis.x(t), z, lim) for t, z, lim in zip(ewma.times, ewma.z, ewma.limits, strict=True)]
        upper = " ".join(f"{_f(x)},{_f(y(ewma.mean + lim))}" for x, _, lim in pairs)
        lower = " ".join(f"{_f(x)},{_f(y(ewma.mean - lim))}" for x, _, lim in reversed(pairs))
        body.append(f'<polygon class="control-limits" points="{upper} {lower}" fill="{BAND}" opacity="0.8">'
                    f"<title>EWMA control limits: mean {ewma.mean:+.2f} ± {ewma.limits[-1]:.2f}</title></polygon>")
        body.append(f'<polyline points="{upper}" fill="none" stroke="{EWMA}" stroke-width="1" opacity="0.5"/>')
        body.append(f'<polyline points="{" ".join(reversed(lower.split()))}" fill="none" stroke="{EWMA}" '
                    f'stroke-width="1" opacity="0.5"/>')
        body.append(f'<line x1="{_f(x0)}" x2="{_f(axis.right)}" y1="{_f(y(ewma.mean))}" y2="{_f(y(ewma.mean))}" '
                    f'stroke="{EWMA}" stroke-dasharray="2 3" opacity="0.7"/>')
    for level in (di_limit, -di_limit):
        body.append(f'<line class="action-level" x1="{LEFT}" x2="{_f(axis.right)}" y1="{_f(y(level))}" '
                    f'y2="{_f(y(level))}" stroke="{LIMIT}" stroke-width="1.2" stroke-dasharray="6 4"/>')
        body.append(_text(axis.right + 4, y(level) + 4, f"{level:+g}", size=10, fill=LIMIT))
    dots = []
    for t, val in shown:
        colour = LIMIT if abs(val) > di_limit else POINT
        dots.append(f'<circle cx="{_f(axis.x(t))}" cy="{_f(y(val))}" r="2.4" fill="{colour}" opacity="0.65">'
                    f"<title>{t:%Y-%m-%d %H:%M} UTC: DI {val:+.2f}</title></circle>")
    body.append('<g class="di-points">' + "".join(dots) + "</g>")
    if ewma and ewma.times:
        line = " ".join(f"{_f(axis.x(t))},{_f(y(z))}" for t, z in zip(ewma.times, ewma.z, strict=True))
        body.append(f'<polyline class="ewma" points="{line}" fill="none" stroke="{EWMA}" stroke-width="2.2" '
                    f'stroke-linejoin="round"/>')
        for t, z, status in zip(ewma.times, ewma.z, ewma.levels, strict=True):
            if status != "OK":
                body.append(f'<circle cx="{_f(axis.x(t))}" cy="{_f(y(z))}" r="3.2" '
                            f'fill="{LIMIT if status == "ALERT" else WARN}"><title>{t:%Y-%m-%d %H:%M} UTC: '
                            f"EWMA {z:+.2f}, {status}</title></circle>")
    body += _markers(axis, markers, top, bottom, labels=True)
    body += _legend([
        (f'<circle cx="6" cy="0" r="3" fill="{POINT}"/>', "DI per image"),
        (f'<line x1="0" x2="14" y1="0" y2="0" stroke="{EWMA}" stroke-width="2.2"/>', "EWMA"),
        (f'<rect x="0" y="-5" width="14" height="10" fill="{BAND}" stroke="{EWMA}" stroke-width="0.5"/>',
         "control limits"),
        (f'<line x1="0" x2="14" y1="0" y2="0" stroke="{LIMIT}" stroke-dasharray="4 3"/>',
         f"action level ±{di_limit:g} (TG-116)"),
        (f'<line x1="7" x2="7" y1="-6" y2="6" stroke="{MAINT}" stroke-dasharray="3 2" stroke-width="1.5"/>',
         "maintenance"),
        (f'<line x1="7" x2="7" y1="-6" y2="6" stroke="{CONFIG}" stroke-dasharray="3 2" stroke-width="1.5"/>',
         "configuration change"),
    ], 18)
    return _svg("di-chart", height, "Deviation index over time with its control limits", body,
                points=len(shown), ewma_points=len(ewma.z) if ewma else 0)


def exposures_chart(per_day: Sequence[tuple[date, int]], markers: Sequence[Marker], axis: TimeAxis, *,
                    height: int = 170) -> Markup:
    """Exposures (acquisitions) per UTC day as bars."""
    top, bottom = 16.0, float(height - 26)
    days = [(d, n) for d, n in per_day if datetime.combine(d + timedelta(days=1), time(), UTC) > axis.start
            and datetime.combine(d, time(), UTC) < axis.end]
    peak = max([n for _, n in days] + [1])
    step = _nice_step(peak, 3)
    hi = math.ceil(peak / step) * step

    def y(v: float) -> float:
        return bottom - v / hi * (bottom - top)

    body: list[str] = [f'<rect x="{LEFT}" y="{_f(top)}" width="{_f(axis.right - LEFT)}" '
                       f'height="{_f(bottom - top)}" fill="#fff" stroke="{GRID}"/>']
    v = 0.0
    while v <= hi:
        body.append(f'<line x1="{LEFT}" x2="{_f(axis.right)}" y1="{_f(y(v))}" y2="{_f(y(v))}" stroke="{GRID}"/>')
        body.append(_text(LEFT - 8, y(v) + 4, f"{v:g}", anchor="end"))
        v += step
    body += _x_axis(axis, top, bottom)
    body.append(_text(14, (top + bottom) / 2, "per day", size=11, anchor="middle").replace(
        "<text ", f'<text transform="rotate(-90 14 {_f((top + bottom) / 2)})" '))
    bars = []
    for d, n in days:
        x0 = max(axis.x(datetime.combine(d, time(), UTC)), axis.left)
        x1 = min(axis.x(datetime.combine(d + timedelta(days=1), time(), UTC)), axis.right)
        w = max((x1 - x0) * 0.8, 1.5)
        bars.append(f'<rect x="{_f(x0 + (x1 - x0 - w) / 2)}" y="{_f(y(n))}" width="{_f(w)}" '
                    f'height="{_f(bottom - y(n))}" fill="{BAR}" rx="1"><title>{d:%Y-%m-%d}: {n} '
                    f"exposure{'s' if n != 1 else ''}</title></rect>")
    body.append('<g class="bars">' + "".join(bars) + "</g>")
    body += _markers(axis, markers, top, bottom)
    return _svg("exposures-chart", height, "Exposures per day", body, days=len(days),
                exposures=sum(n for _, n in days))


def event_timeline(lanes: Sequence[Lane], axis: TimeAxis, *, lane_h: int = 30) -> Markup:
    """Faults, maintenance and configuration changes as dots on lanes against time."""
    top = 8.0
    bottom = top + lane_h * len(lanes)
    height = int(bottom + 26)
    body: list[str] = [f'<rect x="{LEFT}" y="{_f(top)}" width="{_f(axis.right - LEFT)}" '
                       f'height="{_f(bottom - top)}" fill="#fff" stroke="{GRID}"/>']
    body += _x_axis(axis, top, bottom)
    for i, lane in enumerate(lanes):
        cy = top + lane_h * i + lane_h / 2
        if i:
            body.append(f'<line x1="{LEFT}" x2="{_f(axis.right)}" y1="{_f(top + lane_h * i)}" '
                        f'y2="{_f(top + lane_h * i)}" stroke="{GRID}"/>')
        body.append(_text(LEFT - 8, cy + 4, f"{lane.name} ({len(lane.items)})", size=11, fill=INK,
                          anchor="end"))
        dots = []
        for t, tip in lane.items:
            if not axis.contains(t):
                continue
            x = axis.x(t)
            if lane.shape == "diamond":
                shape = (f'<path d="M{_f(x)} {_f(cy - 6)} L{_f(x + 5)} {_f(cy)} L{_f(x)} {_f(cy + 6)} '
                         f'L{_f(x - 5)} {_f(cy)} Z" fill="{lane.colour}" opacity="0.75"')
            else:
                shape = f'<rect x="{_f(x - 1.5)}" y="{_f(cy - 8)}" width="3" height="16" fill="{lane.colour}"'
            dots.append(f'{shape}><title>{escape(f"{t:%Y-%m-%d %H:%M} UTC — {tip}")}</title>'
                        f'{"</path>" if lane.shape == "diamond" else "</rect>"}')
        body.append(f'<g class="lane lane-{escape(lane.name)}">' + "".join(dots) + "</g>")
    return _svg("events-chart", height, "Faults, maintenance and configuration changes over time", body,
                **{f"lane_{lane.name}": len(lane.items) for lane in lanes})
