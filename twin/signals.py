"""Named measurements a modality logs (sidecar ``telemetry`` values) and their trend forecast.

``twin.signals`` in config.yaml declares per signal name its unit, normal range (``warn`` and
``alert``, each ``[lo, hi]`` with null for an open side) and whether to forecast it; a ``counted``
signal (arcs since the last line) is summed per day and charted with the fault rule's Poisson CUSUM
instead. :data:`DEFAULT_SIGNALS` are the defaults (docs/twin.md gives the source of each).

The forecast is a Theil-Sen line (median of pairwise slopes, Sen 1968) through the signal's daily
medians, with Sen's rank-based confidence interval of the slope, fitted to the days after a knee (a
flat stretch, then a trend) when :func:`knee` finds one clearly better than one line: see
:func:`theil_sen`, :func:`knee` and :func:`forecast`.
"""

from __future__ import annotations

import bisect
import heapq
import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

Range = tuple[float | None, float | None]
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
#: two-sided 95% normal quantile of Sen's slope interval
Z95 = 1.959964
#: a knee is accepted when n·ln(SAR of one line / SAR of flat-then-line) exceeds this (the Laplace
#: log-likelihood ratio); set above the 99th percentile of stable simulator devices (docs/twin.md)
KNEE_LR = 30.0


@dataclass(frozen=True, slots=True)
class Signal:
    """One named measurement: ``warn`` / ``alert`` are the (lo, hi) bounds of the normal and of the
    tolerable range (None: open side)."""

    name: str
    unit: str = ""
    warn: Range = (None, None)
    alert: Range = (None, None)
    forecast: bool = True
    counted: bool = False

    @property
    def label(self) -> str:
        return self.name.replace("_", " ")

    def level(self, v: float) -> int:
        """0 inside the warn range, 1 outside it, 2 outside the alert range."""
        for rank, (lo, hi) in ((2, self.alert), (1, self.warn)):
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return rank
        return 0


def _bound(name: str, key: str, value: Any) -> Range:
    if value is None:
        return None, None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"twin.signals.{name}.{key}: [LO, HI] expected (null for an open side)")
    out: list[float | None] = []
    for v in value:
        if v is None:
            out.append(None)
        elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"twin.signals.{name}.{key}: bounds must be numbers or null")
        else:
            out.append(float(v))
    lo, hi = out
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"twin.signals.{name}.{key}: LO above HI")
    return lo, hi


def signal_from_config(name: str, spec: Mapping[str, Any]) -> Signal:
    """A :class:`Signal` from one ``twin.signals`` entry; ValueError naming the field when wrong."""
    if not NAME_RE.match(name):
        raise ValueError(f"twin.signals: name {name[:70]!r}: letters, digits, _ . - only (1-64)")
    unknown = set(spec) - {"unit", "warn", "alert", "forecast", "counted"}
    if unknown:
        raise ValueError(f"twin.signals.{name}: unknown field(s) {', '.join(sorted(unknown))}")
    warn, alert = _bound(name, "warn", spec.get("warn")), _bound(name, "alert", spec.get("alert"))
    for i, side in ((0, "low"), (1, "high")):
        w, a = warn[i], alert[i]
        if w is not None and a is not None and (a > w if i == 0 else a < w):
            raise ValueError(f"twin.signals.{name}: alert {side} bound inside the warn range")
    return Signal(
        name,
        str(spec.get("unit") or ""),
        warn,
        alert,
        bool(spec.get("forecast", True)),
        bool(spec.get("counted", False)),
    )


def signals_from_config(entries: Mapping[str, Any] | None) -> tuple[Signal, ...]:
    """The defaults, updated by ``twin.signals`` (an entry replaces the default of that name, a null
    entry removes it)."""
    table = {s.name: s for s in DEFAULT_SIGNALS}
    for name, spec in (entries or {}).items():
        if spec is None:
            table.pop(str(name), None)
        elif isinstance(spec, Mapping):
            table[str(name)] = signal_from_config(str(name), spec)
        else:
            raise ValueError(f"twin.signals.{name}: a mapping with unit, warn, alert, forecast expected")
    return tuple(table.values())


#: Defaults; docs/twin.md (Signals) and config.yaml give the source of each range.
DEFAULT_SIGNALS: tuple[Signal, ...] = (
    Signal("detector_temperature", "°C", (10.0, 40.0), (5.0, 45.0)),
    Signal("tube_housing_temperature", "°C", (None, 60.0), (None, 70.0)),
    Signal("generator_tank_temperature", "°C", (None, 55.0), (None, 65.0)),
    Signal("cooling_water_temperature", "°C", (5.0, 30.0), (2.0, 35.0)),
    Signal("cooling_water_flow", "L/min", (2.0, None), (1.0, None)),
    Signal("anode_bearing_vibration", "mm/s", (None, 1.8), (None, 4.5)),
    Signal("hv_arcs", "arcs", forecast=False, counted=True),
    Signal("battery_charge", "%", (30.0, None), (15.0, None)),
)


# --- Theil-Sen ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trend:
    """y = intercept + slope·x (x in days); ``low``/``high`` bound the slope (95%, Sen's interval)."""

    slope: float
    intercept: float
    low: float
    high: float
    n: int

    def at(self, x: float, slope: float | None = None) -> float:
        return self.intercept + (self.slope if slope is None else slope) * x


def theil_sen(xs: Sequence[float], ys: Sequence[float], z: float = Z95) -> Trend | None:
    """Median of the pairwise slopes (Theil 1950, Sen 1968) and its rank-based confidence interval:
    with N slopes sorted and C = z·sqrt(n(n-1)(2n+5)/18) (the variance of Kendall's S without ties),
    the bounds are the slopes of rank (N-C)/2 and (N+C)/2+1 (Hollander & Wolfe, Nonparametric
    Statistical Methods, 8.5). None with fewer than 3 distinct x."""
    n = len(xs)
    slopes = sorted(
        (ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(n) for j in range(i + 1, n) if xs[j] != xs[i]
    )
    if n < 3 or len(slopes) < 3:
        return None
    slope = statistics.median(slopes)
    intercept = statistics.median(y - slope * x for x, y in zip(xs, ys, strict=True))
    big_n = len(slopes)
    c = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    lo_rank = max(1, math.floor((big_n - c) / 2))
    hi_rank = min(big_n, math.ceil((big_n + c) / 2) + 1)
    return Trend(slope, intercept, slopes[lo_rank - 1], slopes[hi_rank - 1], n)


def _abs_residuals(xs: Sequence[float], ys: Sequence[float], slope: float, intercept: float) -> float:
    return sum(abs(y - intercept - slope * x) for x, y in zip(xs, ys, strict=True))


def _sad(ordered: Sequence[float]) -> float:
    """Sum of absolute deviations of sorted values from their median: upper half minus lower half."""
    h = len(ordered) // 2
    return sum(ordered[len(ordered) - h :]) - sum(ordered[:h])


@dataclass(frozen=True, slots=True)
class Knee:
    """The best flat-then-line split of a series: the line is fitted to ``xs[index:]``; ``lr`` is
    n·ln(SAR of one Theil-Sen line / SAR of the split), the Laplace log-likelihood ratio."""

    index: int
    lr: float


def knee(xs: Sequence[float], ys: Sequence[float], min_points: int, line: Trend | None = None) -> Knee | None:
    """The change point of a two-segment fit: for each index k with at least ``min_points`` points on
    either side, the median level of ``ys[:k]`` (flat) and a Theil-Sen line through ``xs[k:]``; k
    minimises the sum of absolute residuals (SAR) of both. None with fewer than 2·``min_points``
    points (or an exact fit). The slopes of the segment after k are the pairs of points at or after
    k, so going down from the end each k adds its pairs to a running median (two heaps): O(n² log n)
    in all, not one O(n²) fit per k. ``line``: the one Theil-Sen line through all points, when known."""
    n = len(xs)
    min_points = max(min_points, 3)
    if n < 2 * min_points:
        return None
    push, pop = heapq.heappush, heapq.heappop
    low: list[float] = []  # the lower half of the slopes, negated (a max-heap)
    high: list[float] = []  # the upper half
    n_low = n_high = 0
    before = sorted(ys)  # ys[:k], sorted
    best: tuple[float, int] | None = None
    for k in range(n - 1, min_points - 1, -1):
        del before[bisect.bisect_left(before, ys[k])]
        xk, yk = xs[k], ys[k]
        for j in range(k + 1, n):
            if xs[j] == xk:
                continue
            s = (ys[j] - yk) / (xs[j] - xk)
            if n_low == 0 or s <= -low[0]:
                push(low, -s)
                n_low += 1
            else:
                push(high, s)
                n_high += 1
            if n_low > n_high + 1:
                push(high, -pop(low))
                n_low, n_high = n_low - 1, n_high + 1
            elif n_high > n_low:
                push(low, -pop(high))
                n_low, n_high = n_low + 1, n_high - 1
        if n - k < min_points or n_low + n_high < 3:
            continue
        slope = -low[0] if n_low > n_high else (high[0] - low[0]) / 2
        sar = _sad(sorted([y - slope * x for x, y in zip(xs[k:], ys[k:], strict=True)])) + _sad(before)
        if best is None or sar < best[0]:
            best = (sar, k)
    line = line or theil_sen(xs, ys)
    if best is None or line is None or best[0] <= 0:
        return None
    one = _abs_residuals(xs, ys, line.slope, line.intercept)
    return Knee(best[1], n * math.log(one / best[0]) if one > 0 else 0.0)


def daily_medians(readings: Sequence[tuple[datetime, float]]) -> list[tuple[date, float]]:
    """One point per UTC day: the median of that day's readings (so a burst of lines on one day, or
    one wild reading, does not pull the line)."""
    days: dict[date, list[float]] = {}
    for t, v in readings:
        days.setdefault(t.astimezone(UTC).date(), []).append(v)
    return [(d, statistics.median(vs)) for d, vs in sorted(days.items())]


@dataclass(frozen=True, slots=True)
class Forecast:
    """When the trend line reaches ``limit`` (the ``kind`` bound, warn or alert, on ``side``);
    ``band`` is the earliest and latest crossing from the slope's confidence interval."""

    signal: str
    unit: str
    kind: str
    side: str
    limit: float
    crossing_at: datetime
    band: tuple[datetime, datetime]
    slope_per_day: float
    days: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "signal": self.signal,
            "unit": self.unit,
            "limit": self.limit,
            "limit_kind": self.kind,
            "side": self.side,
            "crossing_at": self.crossing_at.isoformat(),
            "band": [self.band[0].isoformat(), self.band[1].isoformat()],
            "slope_per_day": round(self.slope_per_day, 6),
            "days_of_data": self.days,
        }


def _cross(x0: float, trend: Trend, slope: float, limit: float) -> float | None:
    """Days after origin at which the line with ``slope`` (through the data's median point) reaches
    ``limit``, None when it heads away."""
    if slope == 0:
        return None
    # the line of this slope through the same centre (median x, median y of the fit)
    y0 = trend.at(x0)
    x = x0 + (limit - y0) / slope
    return x if x >= x0 else None


def forecast(
    sig: Signal,
    readings: Sequence[tuple[datetime, float]],
    now: datetime,
    window_days: int,
    min_days: int,
    horizon_days: float,
    knee_lr: float = KNEE_LR,
) -> list[Forecast]:
    """Forecasts of ``sig`` crossing its warn and alert bounds within ``horizon_days`` of ``now``.

    Only when the slope's whole 95% interval lies on the side of the bound (a trend, not noise), the
    daily medians of the last ``window_days`` cover at least ``min_days`` days and the fitted level
    today has not yet reached the bound (the range rule speaks then). The line is fitted to the days
    after the :func:`knee` when its log-likelihood ratio exceeds ``knee_lr`` (a recent onset), else
    to all of them."""
    start = (now - timedelta(days=window_days)).date()
    points = [(d, v) for d, v in daily_medians(readings) if start <= d <= now.date()]
    if len(points) < max(min_days, 3):
        return []
    origin = datetime.combine(points[0][0], time(12), UTC)
    xs = [(datetime.combine(d, time(12), UTC) - origin).total_seconds() / 86400 for d, _ in points]
    ys = [v for _, v in points]
    trend = theil_sen(xs, ys)
    if trend is None:
        return []
    split = knee(xs, ys, min_days, trend)
    if split is not None and split.lr > knee_lr:
        points = points[split.index :]
        origin = datetime.combine(points[0][0], time(12), UTC)
        xs = [x - xs[split.index] for x in xs[split.index :]]
        trend = theil_sen(xs, ys[split.index :])
        if trend is None:
            return []
    x_now = (now - origin).total_seconds() / 86400
    x_mid = statistics.median(xs)
    out: list[Forecast] = []
    for kind, (lo, hi) in (("warn", sig.warn), ("alert", sig.alert)):
        for side, limit, sign in (("high", hi, 1.0), ("low", lo, -1.0)):
            if limit is None or not (sign * trend.low > 0 and sign * trend.high > 0):
                continue
            if sign * (trend.at(x_now) - limit) >= 0:
                continue  # already there by the fit
            steep, shallow = (trend.high, trend.low) if sign > 0 else (trend.low, trend.high)
            mid, early, late = (_cross(x_mid, trend, s, limit) for s in (trend.slope, steep, shallow))
            if mid is None or early is None or late is None or mid - x_now > horizon_days:
                continue

            def when(x: float) -> datetime:
                try:
                    return max(origin + timedelta(days=x), now)
                except OverflowError:
                    return datetime.max.replace(tzinfo=UTC)

            out.append(
                Forecast(sig.name, sig.unit, kind, side, limit, when(mid), (when(early), when(late)),
                         trend.slope, len(points))
            )
    return sorted(out, key=lambda f: f.crossing_at)
