"""Health of one device: eight rules, a rule per fault code that rises, and range, forecast or count
rules per signal (twin.signals), each OK / WARN / ALERT with a reason in words and since when.

The rules are pure functions of a :class:`DeviceHistory` (built by :mod:`twin.store`) and ``now``,
so they can be tested and measured without a database. Thresholds live in :class:`Thresholds`;
docs/twin.md gives each one with its source and the false-alarm and detection-delay figures measured
by tests/twin/measure_health.py.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache

import numpy as np

from twin.ai_watch import AiHistory, Comparison, Outcome, Reference, compare
from twin.signals import DEFAULT_SIGNALS, Forecast, Signal, forecast
from twin.tube import TubeWear


class Status(StrEnum):
    OK = "OK"
    WARN = "WARN"
    ALERT = "ALERT"

    @property
    def rank(self) -> int:
        return ("OK", "WARN", "ALERT").index(self.value)


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's verdict; ``since`` is when the current status of this rule began."""

    rule: str
    status: Status
    reason: str
    since: datetime | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "rule": self.rule,
            "status": self.status.value,
            "reason": self.reason,
            "since": self.since.isoformat() if self.since else None,
        }


@dataclass(frozen=True, slots=True)
class Health:
    status: Status
    findings: tuple[Finding, ...]
    forecasts: tuple[Forecast, ...] = ()

    @property
    def reasons(self) -> list[str]:
        """Reasons of the rules that are not OK, worst first."""
        bad = sorted((f for f in self.findings if f.status is not Status.OK), key=lambda f: -f.status.rank)
        return [f.reason for f in bad]

    @property
    def since(self) -> datetime | None:
        """Earliest start among the findings at the overall status (None when OK)."""
        times = [f.since for f in self.findings if f.status is self.status and f.since is not None]
        return min(times) if times and self.status is not Status.OK else None

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status.value,
            "reasons": self.reasons,
            "since": self.since.isoformat() if self.since else None,
            "findings": [f.as_dict() for f in self.findings],
            "forecasts": [f.as_dict() for f in self.forecasts],
        }


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Every threshold of the rules; docs/twin.md gives the source of each default."""

    # detector calibration age (days)
    calibration_warn_days: float = 180.0
    calibration_alert_days: float = 365.0
    # exposure-index drift: EWMA chart of the deviation index (Montgomery, SQC 8th ed. 9.2)
    ewma_lambda: float = 0.1
    ewma_l: float = 3.5
    baseline_n: int = 50
    sigma_floor: float = 0.3
    drift_warn_shift: float = 0.5
    drift_alert_shift: float = 1.0
    drift_persist: int = 3
    # absolute deviation index (AAPM TG-116 action levels: beyond ±3 DI calls for action)
    di_limit: float = 3.0
    di_window: int = 5
    di_warn_count: int = 3
    di_alert_count: int = 4
    # fault rate: Poisson CUSUM on faults per day (Lucas 1985)
    fault_window_days: int = 14
    fault_baseline_days: int = 90
    fault_min_baseline_days: int = 7
    fault_prior_rate: float = 0.2
    fault_rate_floor: float = 0.1
    fault_baseline_upper: bool = True
    fault_arl_warn_days: float = 2000.0
    fault_arl_alert_days: float = 20000.0
    # faults of one code (rule fault_code:CODE), each code through the same Poisson CUSUM
    fault_codes: bool = True
    # signals (sidecar telemetry values, detector temperature also from the headers): their ranges
    signals: tuple[Signal, ...] = DEFAULT_SIGNALS
    # a range rule needs the last temp_consecutive readings (at most temp_max_age_days old) outside
    temp_consecutive: int = 2
    temp_max_age_days: float = 7.0
    # forecast: Theil-Sen on daily medians over the window; WARN / ALERT when the crossing is this near
    forecast_window_days: int = 60
    forecast_min_days: int = 10
    forecast_warn_days: float = 14.0
    forecast_alert_days: float = 3.0
    forecast_horizon_days: float = 90.0
    # service interval
    service_interval_days: float = 182.0
    service_interval_exposures: int = 20000
    service_warn_days: float = 14.0
    # silence
    silence_window_days: float = 28.0
    silence_min_acquisitions: int = 20
    silence_min_days: int = 3
    silence_warn_factor: float = 2.0
    silence_alert_factor: float = 4.0
    silence_warn_min_h: float = 36.0
    silence_alert_min_h: float = 72.0
    # tube wear (twin.tube): heat units k·kVp·mAs since the last `tube` maintenance record against the
    # tube's rated life in heat units (None: unknown, the load is shown without a verdict)
    tube_rated_life: float | None = None
    tube_heat_unit_factor: float = 1.35
    tube_rate_days: float = 30.0
    tube_warn_fraction: float = 0.8
    tube_alert_fraction: float = 0.95
    # AI watch (twin.ai_watch): baseline of the first ai_baseline_n analysed images after the last
    # configuration change or qc record; looks need ai_min_images per group; false WARN <= ai_alpha per look
    ai_baseline_n: int = 200
    ai_change_n: int = 800  # images on each side of a configuration change that its look compares
    ai_min_images: int = 50
    ai_window_days: int = 7
    ai_alpha: float = 1e-4


@dataclass(slots=True)
class DeviceHistory:
    """What the rules need to know about one device; all times aware UTC."""

    first_seen: datetime | None = None
    last_acquisition: datetime | None = None
    # (time, DI) of acquisitions after the last maintenance that resets the baseline, oldest first
    deviation_indices: Sequence[tuple[datetime, float]] = ()
    # acquisition times in the silence window before the last acquisition, oldest first
    acquisition_times: Sequence[datetime] = ()
    # fault codes counted per UTC day ("" for a fault without code)
    faults: Mapping[date, Mapping[str, int]] = field(default_factory=dict)
    last_calibration: datetime | None = None
    # per signal name: (time, value) readings of the forecast window, oldest first (detector
    # temperature from the headers too); a counted signal's values are summed per day
    signals: Mapping[str, Sequence[tuple[datetime, float]]] = field(default_factory=dict)
    service_start: datetime | None = None
    exposures_since_service: int = 0
    daily_exposure_rate: float = 0.0
    tube: TubeWear | None = None
    ai: AiHistory | None = None


def assess(history: DeviceHistory, now: datetime, th: Thresholds | None = None) -> Health:
    """All rules on one device; the overall status is the worst rule's."""
    th = th or Thresholds()
    sig_findings, forecasts = signal_findings(history, now, th)
    findings = (
        calibration_rule(history, now, th),
        drift_rule(history, th),
        di_absolute_rule(history, th),
        fault_rule(history, now, th),
        *fault_code_rules(history, now, th),
        *sig_findings,
        service_rule(history, now, th),
        silence_rule(history, now, th),
        tube_rule(history, now, th),
        ai_rule(history, th),
    )
    worst = max((f.status for f in findings), key=lambda s: s.rank)
    return Health(worst, findings, tuple(forecasts))


def _day(t: datetime | date | None) -> str:
    if t is None:
        return "unknown"
    return t.date().isoformat() if isinstance(t, datetime) else t.isoformat()


def _plus_days(t: datetime, days: float) -> datetime:
    """``t`` + ``days``, held at the calendar's ends: a year-9999 date must not overflow a rule."""
    try:
        return t + timedelta(days=days)
    except OverflowError:
        return (datetime.max if days > 0 else datetime.min).replace(tzinfo=t.tzinfo)


def _trailing_since(
    levels: Sequence[Status], times: Sequence[datetime], floor: Status | None = None
) -> datetime | None:
    """Start of the trailing run of points at or above ``floor`` (default: the last point's level)."""
    if not levels:
        return None
    floor = floor or levels[-1]
    if floor is Status.OK or levels[-1].rank < floor.rank:
        return None
    need = floor.rank
    i = len(levels) - 1
    while i > 0 and levels[i - 1].rank >= need:
        i -= 1
    return times[i]


# --- detector calibration ----------------------------------------------------------------------------


def calibration_rule(h: DeviceHistory, now: datetime, th: Thresholds) -> Finding:
    """Detector calibration older than the interval (dates from DateOfLastDetectorCalibration,
    DateOfLastCalibration, sidecar ``calibration`` events and maintenance records)."""
    if h.last_calibration is None:
        return Finding("calibration", Status.OK, "no calibration date known")
    age = (now - h.last_calibration).total_seconds() / 86400
    last = _day(h.last_calibration)
    for limit, status in ((th.calibration_alert_days, Status.ALERT), (th.calibration_warn_days, Status.WARN)):
        if age > limit:
            since = _plus_days(h.last_calibration, limit)
            text = f"detector calibration overdue: last calibrated {last}, {age:.0f} days ago"
            text += f" (limit {limit:.0f})"
            return Finding("calibration", status, f"{text}, since {_day(since)}", since)
    return Finding("calibration", Status.OK, f"detector calibrated {last} ({age:.0f} days ago)")


# --- exposure-index drift ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EwmaChart:
    mean: float
    sigma: float
    z: list[float]
    limits: list[float]
    levels: list[Status]


def ewma_chart(values: Sequence[float], th: Thresholds) -> EwmaChart | None:
    """EWMA of the deviation index against the device's own baseline (first ``baseline_n`` values).

    Limits are mean ± L·σ·sqrt(λ/(2-λ)·(1-(1-λ)^2i) + 1/n) (Montgomery, Introduction to Statistical
    Quality Control, 9.2; the 1/n term carries the uncertainty of a baseline mean estimated from n
    points), taken from the device's own spread as AAPM TG-232 takes DI action limits from the site's
    own DI distribution. A point is out when beyond the limit and at least ``drift_warn_shift`` DI
    from the baseline mean (WARN) or ``drift_alert_shift`` (ALERT; 1 DI is a 26% change of detector
    dose, half the width of the TG-116 target band), and the chart signals once ``drift_persist``
    points in a row are out. Returns None while the baseline is being learned.
    """
    n = max(th.baseline_n, 2)  # a spread needs two points
    if len(values) <= n:
        return None
    base = values[:n]
    mean = statistics.fmean(base)
    sigma = max(statistics.stdev(base), th.sigma_floor)
    lam = th.ewma_lambda
    z, zs, limits, levels = mean, [], [], []
    for i, x in enumerate(values[n:], start=1):
        z = lam * x + (1 - lam) * z
        width = th.ewma_l * sigma * math.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * i)) + 1 / n)
        shift = abs(z - mean)
        if shift > max(width, th.drift_alert_shift):
            level = Status.ALERT
        elif shift > max(width, th.drift_warn_shift):
            level = Status.WARN
        else:
            level = Status.OK
        zs.append(z)
        limits.append(width)
        levels.append(level)
    return EwmaChart(mean, sigma, zs, limits, _persisting(levels, th.drift_persist))


def _persisting(levels: list[Status], m: int) -> list[Status]:
    """Each point's level as the lowest of the last ``m`` points: a level counts once it persists."""
    return (
        [
            min(levels[i - m + 1 : i + 1], key=lambda s: s.rank) if i >= m - 1 else Status.OK
            for i in range(len(levels))
        ]
        if m > 1
        else levels
    )


def drift_rule(h: DeviceHistory, th: Thresholds) -> Finding:
    values = [di for _, di in h.deviation_indices]
    chart = ewma_chart(values, th)
    if chart is None:
        return Finding(
            "ei_drift", Status.OK, f"learning the exposure-index baseline ({len(values)}/{th.baseline_n})"
        )
    times = [t for t, _ in h.deviation_indices[max(th.baseline_n, 2) :]]
    status = chart.levels[-1]
    z = chart.z[-1]
    words = f"EWMA of deviation index {z:+.2f} vs baseline {chart.mean:+.2f} (limit ±{chart.limits[-1]:.2f})"
    if status is Status.OK:
        return Finding("ei_drift", Status.OK, f"exposure index stable: {words}")
    since = _trailing_since(chart.levels, times)
    direction = "over" if z > chart.mean else "under"
    text = f"exposure index drifting ({direction}exposure): {words}, since {_day(since)}"
    return Finding("ei_drift", status, text, since)


def di_levels(values: Sequence[float], th: Thresholds) -> list[Status]:
    """Per acquisition: how many of the last ``di_window`` DI lie beyond +limit (or beyond -limit)."""
    levels: list[Status] = []
    high: list[bool] = []
    low: list[bool] = []
    for di in values:
        high.append(di > th.di_limit)
        low.append(di < -th.di_limit)
        worst = max(sum(high[-th.di_window :]), sum(low[-th.di_window :]))
        if worst >= th.di_alert_count:
            levels.append(Status.ALERT)
        else:
            levels.append(Status.WARN if worst >= th.di_warn_count else Status.OK)
    return levels


def di_absolute_rule(h: DeviceHistory, th: Thresholds) -> Finding:
    """|DI| > 3 sustained: at least ``di_alert_count`` (ALERT) or ``di_warn_count`` (WARN) of the last
    ``di_window`` acquisitions beyond +3 (or as many beyond -3); AAPM TG-116 suggests action
    beyond ±3 DI, and the window keeps one mispositioned patient from raising it."""
    pts = h.deviation_indices
    levels = di_levels([di for _, di in pts], th)
    if not levels or levels[-1] is Status.OK:
        return Finding("di_absolute", Status.OK, f"deviation index within ±{th.di_limit:g}")
    window = [di for _, di in pts[-th.di_window :]]
    count = max(sum(d > th.di_limit for d in window), sum(d < -th.di_limit for d in window))
    since = _trailing_since(levels, [t for t, _ in pts])
    text = (
        f"deviation index beyond ±{th.di_limit:g} in {count} of the last {len(window)} acquisitions "
        f"(latest {window[-1]:+.1f}), since {_day(since)}"
    )
    return Finding("di_absolute", levels[-1], text, since)


# --- fault rate --------------------------------------------------------------------------------------

_GRID = 20  # CUSUM grid steps per fault (Brook & Evans 1972 Markov-chain ARL)


def cusum_arl(lam: float, k_steps: int, n_states: int) -> float:
    """Average run length of a Poisson CUSUM with reference k and decision interval h, both in grid
    steps of 1/_GRID fault, by the Markov-chain method of Brook & Evans (Biometrika 1972)."""
    max_x = (n_states + k_steps) // _GRID + 2
    xs = np.arange(max_x + 1)
    log_pmf = xs * math.log(lam) - lam - np.array([math.lgamma(x + 1) for x in xs])
    pmf = np.exp(log_pmf)
    p = np.zeros((n_states, n_states))
    rows = np.arange(n_states)
    for x, px in zip(xs, pmf, strict=True):
        j = rows + x * _GRID - k_steps
        keep = j < n_states
        np.add.at(p, (rows[keep], np.maximum(j[keep], 0)), px)
    arl = np.linalg.solve(np.eye(n_states) - p, np.ones(n_states))
    return float(arl[0])


@lru_cache(maxsize=256)
def decision_interval(lam0: float, k_steps: int, arl0: float) -> int:
    """Smallest decision interval (grid steps) whose in-control ARL is at least ``arl0`` days."""
    lo, hi = 1, _GRID
    while cusum_arl(lam0, k_steps, hi) < arl0:
        lo, hi = hi, hi * 2
        if hi > 4000:
            return hi
    while lo < hi:
        mid = (lo + hi) // 2
        if cusum_arl(lam0, k_steps, mid) >= arl0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def fault_baseline(h: DeviceHistory, window_start: date, first_day: date, th: Thresholds) -> float:
    """Faults per day before the CUSUM window (at most ``fault_baseline_days``); a prior when short.

    The count's one-sigma upper bound, (n + 1 + sqrt(n + 1)) / days, is used rather than n / days:
    a baseline estimated low by chance would otherwise raise false alarms."""
    start = max(first_day, window_start - timedelta(days=th.fault_baseline_days))
    days = (window_start - start).days
    if days < th.fault_min_baseline_days:
        return th.fault_prior_rate
    total = sum(sum(c.values()) for d, c in h.faults.items() if start <= d < window_start)
    upper = total + 1 + math.sqrt(total + 1) if th.fault_baseline_upper else total
    return max(upper / days, th.fault_rate_floor)


@dataclass(frozen=True, slots=True)
class Cusum:
    """A Poisson CUSUM run over the days of the window: its level per day and what the text needs."""

    levels: list[Status]
    days: list[date]
    s: int
    lam0: float
    h_warn: int
    h_alert: int
    onset: date


def poisson_cusum(
    counts: Mapping[date, Mapping[str, int]], first_seen: datetime | None, now: datetime, th: Thresholds
) -> Cusum:
    """Poisson CUSUM (Lucas, Technometrics 1985) on counts per day over the last
    ``fault_window_days`` against the device's own earlier rate λ0, tuned to detect λ1 =
    max(2·λ0, λ0+1); decision intervals give in-control ARLs of ``fault_arl_warn_days`` and
    ``fault_arl_alert_days``. Faults, and counted signals such as high-voltage arcs, use it."""
    h = DeviceHistory(first_seen=first_seen, faults=counts)
    today = now.date()
    # never after today: a device first seen "tomorrow" (a clock ahead) would leave no day to chart
    first_day = min([*h.faults, *([h.first_seen.date()] if h.first_seen else []), today])
    window_start = max(first_day, today - timedelta(days=th.fault_window_days - 1))
    # baseline rate on a 5% log grid: decision intervals are cached per grid value
    lam0 = math.exp(round(math.log(fault_baseline(h, window_start, first_day, th)) / 0.05) * 0.05)
    lam1 = max(2 * lam0, lam0 + 1)
    k_steps = round((lam1 - lam0) / math.log(lam1 / lam0) * _GRID)
    h_warn = decision_interval(lam0, k_steps, th.fault_arl_warn_days)
    h_alert = decision_interval(lam0, k_steps, th.fault_arl_alert_days)
    s = 0
    levels: list[Status] = []
    days: list[date] = []
    onset = window_start  # first day of the CUSUM's current excursion: the estimated change point
    d = window_start
    while d <= today:
        s = max(0, s + sum(h.faults.get(d, {}).values()) * _GRID - k_steps)
        if s == 0:
            onset = d + timedelta(days=1)
        levels.append(Status.ALERT if s >= h_alert else Status.WARN if s >= h_warn else Status.OK)
        days.append(d)
        d += timedelta(days=1)
    return Cusum(levels, days, s, lam0, h_warn, h_alert, onset)


def fault_rule(h: DeviceHistory, now: datetime, th: Thresholds) -> Finding:
    """Fault events per day through :func:`poisson_cusum`; decision intervals give in-control ARLs
    of 2000 days (WARN) and 20000 (ALERT)."""
    c = poisson_cusum(h.faults, h.first_seen, now, th)
    levels, days = c.levels, c.days
    recent = sum(sum(h.faults.get(x, {}).values()) for x in days)
    if levels[-1] is Status.OK:
        text = f"fault rate normal: {recent} fault(s) in {len(days)} day(s) (baseline {c.lam0:.2f}/day)"
        return Finding("fault_rate", Status.OK, text)
    since_day = _trailing_since(levels, [datetime.combine(x, time(), now.tzinfo) for x in days])
    codes: Counter[str] = Counter()
    for x in days:
        if x >= c.onset:
            codes.update(h.faults.get(x, {}))
    named = ", ".join(f"{code or 'no code'} x{n}" for code, n in codes.most_common(5))
    limit = (c.h_alert if levels[-1] is Status.ALERT else c.h_warn) / _GRID
    text = (
        f"fault rate up: {codes.total()} faults since {c.onset.isoformat()} vs baseline {c.lam0:.2f}/day "
        f"(Poisson CUSUM {c.s / _GRID:.1f} >= {limit:.1f}); faults {named}; since {_day(since_day or now)}"
    )
    return Finding("fault_rate", levels[-1], text, since_day)


# --- signals: range, forecast, count ----------------------------------------------------------------

_LEVELS = (Status.OK, Status.WARN, Status.ALERT)


def _fmt(v: float) -> str:
    return f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def _range_words(sig: Signal, lo: float | None, hi: float | None) -> str:
    unit = f" {sig.unit}" if sig.unit else ""
    if lo is not None and hi is not None:
        return f"outside {lo:g}-{hi:g}{unit}"
    return f"above {hi:g}{unit}" if hi is not None else f"below {lo:g}{unit}"


def range_rule(sig: Signal, readings: Sequence[tuple[datetime, float]], now: datetime, th: Thresholds) -> Finding:
    """The last ``temp_consecutive`` readings (at most ``temp_max_age_days`` old) all outside the
    signal's warn range (WARN) or alert range (ALERT). Detector temperature was the first such rule."""
    unit = f" {sig.unit}" if sig.unit else ""
    recent = [(t, v) for t, v in readings if now - t <= timedelta(days=th.temp_max_age_days)]
    if len(recent) < max(th.temp_consecutive, 1):
        return Finding(sig.name, Status.OK, f"no recent {sig.label}")
    levels = [_LEVELS[sig.level(v)] for _, v in recent]
    status = min(levels[-max(th.temp_consecutive, 1) :], key=lambda s: s.rank)
    last = recent[-1][1]
    if status is Status.OK:
        return Finding(sig.name, Status.OK, f"{sig.label} {_fmt(last)}{unit}")
    since = _trailing_since(levels, [t for t, _ in recent], floor=status)
    lo, hi = sig.alert if status is Status.ALERT else sig.warn
    text = f"{sig.label} {_fmt(last)}{unit} {_range_words(sig, lo, hi)}, since {_day(since)}"
    return Finding(sig.name, status, text, since)


def forecast_rule(
    sig: Signal, readings: Sequence[tuple[datetime, float]], now: datetime, th: Thresholds
) -> tuple[Finding, list[Forecast]]:
    """Theil-Sen trend of the daily medians, from their knee when one is found
    (:func:`twin.signals.forecast`): WARN when it crosses a warn or alert bound within
    ``forecast_warn_days``, ALERT when it crosses the alert bound within ``forecast_alert_days``;
    the reason names the signal, the bound and the date."""
    rule = f"{sig.name}_forecast"
    recent = [(t, v) for t, v in readings if t <= now]
    fresh = bool(recent) and now - recent[-1][0] <= timedelta(days=th.temp_max_age_days)
    found = (
        forecast(sig, recent, now, th.forecast_window_days, th.forecast_min_days, th.forecast_horizon_days)
        if fresh
        else []
    )
    if not found:
        return Finding(rule, Status.OK, f"{sig.label}: no trend towards its limits"), []
    best: tuple[Status, Forecast] | None = None
    for f in found:
        days = (f.crossing_at - now).total_seconds() / 86400
        status = Status.OK
        if f.kind == "alert" and days <= th.forecast_alert_days:
            status = Status.ALERT
        elif days <= th.forecast_warn_days:
            status = Status.WARN
        if best is None or status.rank > best[0].rank:
            best = (status, f)
    assert best is not None
    status, f = best
    unit = f" {f.unit}" if f.unit else ""
    verb = "rise above" if f.side == "high" else "fall below"
    text = (
        f"{sig.label} forecast to {verb} its {f.kind} limit {f.limit:g}{unit} on {_day(f.crossing_at)} "
        f"(95% band {_day(f.band[0])} to {_day(f.band[1])}; Theil-Sen {f.slope_per_day:+.3g}{unit}/day "
        f"over {f.days} days)"
    )
    if status is Status.OK:
        return Finding(rule, Status.OK, text), found
    since = _plus_days(f.crossing_at, -(th.forecast_alert_days if status is Status.ALERT else th.forecast_warn_days))
    return Finding(rule, status, text, min(since, now)), found


def counted_finding(rule: str, label: str, per_day: Mapping[date, Mapping[str, int]],
                    first_seen: datetime | None, now: datetime, th: Thresholds) -> Finding:
    """Counts per UTC day charted with the fault rule's Poisson CUSUM (:func:`poisson_cusum`): a
    counted signal, or the faults of one code."""
    c = poisson_cusum(per_day, first_seen, now, th)
    recent = sum(sum(per_day.get(x, {}).values()) for x in c.days)
    if c.levels[-1] is Status.OK:
        text = f"{label} normal: {recent} in {len(c.days)} day(s) (baseline {c.lam0:.2f}/day)"
        return Finding(rule, Status.OK, text)
    since_day = _trailing_since(c.levels, [datetime.combine(x, time(), now.tzinfo) for x in c.days])
    n = sum(sum(per_day.get(x, {}).values()) for x in c.days if x >= c.onset)
    limit = (c.h_alert if c.levels[-1] is Status.ALERT else c.h_warn) / _GRID
    text = (
        f"{label} up: {n} since {c.onset.isoformat()} vs baseline {c.lam0:.2f}/day "
        f"(Poisson CUSUM {c.s / _GRID:.1f} >= {limit:.1f}); since {_day(since_day or now)}"
    )
    return Finding(rule, c.levels[-1], text, since_day)


def count_rule(sig: Signal, readings: Sequence[tuple[datetime, float]], first_seen: datetime | None,
               now: datetime, th: Thresholds) -> Finding:
    """A counted signal (e.g. high-voltage arcs since the last line) summed per UTC day and charted
    with the fault rule's Poisson CUSUM."""
    per_day: dict[date, dict[str, int]] = {}
    for t, v in readings:
        if t <= now and v > 0:
            day = per_day.setdefault(t.date(), {sig.name: 0})
            day[sig.name] += round(v)
    return counted_finding(sig.name, sig.label, per_day, first_seen, now, th)


def fault_code_rules(h: DeviceHistory, now: datetime, th: Thresholds) -> list[Finding]:
    """The faults of each code seen in the CUSUM window, counted per day through the same Poisson
    CUSUM against that code's own earlier rate (rule ``fault_code:CODE``): one finding per code that
    rises, none for the others, so a rare code that jumps is named even when a common code's noise
    hides it in the fault rate. Each code's chart has the fault rule's in-control ARLs."""
    if not th.fault_codes:
        return []
    window_start = now.date() - timedelta(days=th.fault_window_days - 1)
    codes = sorted({c for d, day in h.faults.items() if window_start <= d <= now.date() for c in day if c})
    out = []
    for code in codes:
        per_day = {d: {code: day[code]} for d, day in h.faults.items() if day.get(code)}
        finding = counted_finding(f"fault_code:{code}", f"fault {code}", per_day, h.first_seen, now, th)
        if finding.status is not Status.OK:
            out.append(finding)
    return out


def signal_findings(h: DeviceHistory, now: datetime, th: Thresholds) -> tuple[list[Finding], list[Forecast]]:
    """Per declared signal with readings (detector temperature always): its range rule, or its count
    rule when counted, and its forecast rule when forecast."""
    findings: list[Finding] = []
    forecasts: list[Forecast] = []
    for sig in th.signals:
        readings = h.signals.get(sig.name, ())
        if not readings and sig.name != "detector_temperature":
            continue
        if sig.counted:
            findings.append(count_rule(sig, readings, h.first_seen, now, th))
            continue
        findings.append(range_rule(sig, readings, now, th))
        if sig.forecast:
            finding, found = forecast_rule(sig, readings, now, th)
            findings.append(finding)
            forecasts.extend(found)
    return findings, sorted(forecasts, key=lambda f: f.crossing_at)


# --- service interval --------------------------------------------------------------------------------


def next_service_due(h: DeviceHistory, now: datetime, th: Thresholds) -> tuple[datetime, str] | None:
    """The earlier of start + interval and the day the exposure count reaches the interval at the
    recent daily rate; None when the device has no history."""
    start = h.service_start or h.first_seen
    if start is None:
        return None
    by_time = _plus_days(start, th.service_interval_days)
    remaining = th.service_interval_exposures - h.exposures_since_service
    if h.daily_exposure_rate > 0:
        by_use = _plus_days(now, remaining / h.daily_exposure_rate)
        if by_use < by_time:
            return by_use, f"{h.exposures_since_service} of {th.service_interval_exposures} exposures"
    elif remaining <= 0:
        return now, f"{h.exposures_since_service} of {th.service_interval_exposures} exposures"
    return by_time, f"{th.service_interval_days:.0f}-day interval from {_day(start)}"


def service_rule(h: DeviceHistory, now: datetime, th: Thresholds) -> Finding:
    due = next_service_due(h, now, th)
    if due is None:
        return Finding("service", Status.OK, "no usage recorded yet")
    when, basis = due
    if when <= now:
        return Finding("service", Status.ALERT, f"maintenance overdue since {_day(when)} ({basis})", when)
    warn_from = _plus_days(when, -th.service_warn_days)
    if warn_from <= now:
        return Finding("service", Status.WARN, f"maintenance due {_day(when)} ({basis})", warn_from)
    return Finding("service", Status.OK, f"next maintenance due {_day(when)} ({basis})")


# --- silence -----------------------------------------------------------------------------------------


def silence_rule(h: DeviceHistory, now: datetime, th: Thresholds) -> Finding:
    """A device that usually sends (at least ``silence_min_acquisitions`` on ``silence_min_days``
    days in the window before its last acquisition) and has been quiet for longer than its own
    longest usual gap times 2 (WARN, at least 36 h) or 4 (ALERT, at least 72 h)."""
    last = h.last_acquisition
    times = sorted(h.acquisition_times)
    if last is None or len(times) < th.silence_min_acquisitions:
        return Finding("silence", Status.OK, "not enough history to judge silence")
    if len({t.date() for t in times}) < th.silence_min_days:
        return Finding("silence", Status.OK, "not enough history to judge silence")
    longest = max((b - a for a, b in zip(times, times[1:], strict=False)), default=timedelta(0))
    gap = now - last
    limits = (
        (Status.ALERT, max(longest * th.silence_alert_factor, timedelta(hours=th.silence_alert_min_h))),
        (Status.WARN, max(longest * th.silence_warn_factor, timedelta(hours=th.silence_warn_min_h))),
    )
    for status, limit in limits:
        if gap > limit:
            hours = gap.total_seconds() / 3600
            text = (
                f"silent: no image for {hours:.0f} h (usual longest gap "
                f"{longest.total_seconds() / 3600:.1f} h), since {last.isoformat(timespec='minutes')}"
            )
            return Finding("silence", status, text, last)
    return Finding("silence", Status.OK, f"last image {last.isoformat(timespec='minutes')}")


# --- tube wear ---------------------------------------------------------------------------------------


def _hu(value: float) -> str:
    for scale, unit in ((1e6, "MHU"), (1e3, "kHU")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} HU"


def tube_rule(h: DeviceHistory, now: datetime, th: Thresholds) -> Finding:
    """Heat units since the last ``tube`` maintenance record (:mod:`twin.tube`) against the rated
    life: WARN from ``tube_warn_fraction`` of it, ALERT from ``tube_alert_fraction``; the reason gives
    the load and the replacement date projected at the recent rate. No verdict while the rated life
    is unknown."""
    t = h.tube
    if t is None or t.total.exposures == 0:
        return Finding("tube_life", Status.OK, "no exposures recorded for the tube")
    start = f"since the tube record of {_day(t.since)}" if t.since else "since the device was first seen"
    load = f"{_hu(t.heat_units)} in {t.total.exposures} exposures {start}"
    if t.unknown_load:
        load += f" ({t.unknown_load} without kVp or mAs, not counted)"
    fraction, rated, rate = t.used_fraction, t.rated_life_hu, t.rate_hu_per_day
    if fraction is None or rated is None:
        return Finding("tube_life", Status.OK, f"tube load {load}; rated life unknown (twin.tube_rated_life)")
    projected = t.projected_replacement(now)
    if projected is not None and rate:
        ahead = f"; replacement projected {_day(projected)} at {_hu(rate)}/day"
    else:
        ahead = "; no recent use to project a replacement date from"
    text = f"tube at {fraction:.0%} of its rated life of {_hu(rated)}: {load}{ahead}"
    for limit, status in ((th.tube_alert_fraction, Status.ALERT), (th.tube_warn_fraction, Status.WARN)):
        if fraction >= limit:
            over = t.heat_units - limit * rated
            since = _plus_days(now, -over / rate) if rate else now
            return Finding("tube_life", status, text, max(since, t.since) if t.since else since)
    return Finding("tube_life", Status.OK, text)


# --- AI watch ----------------------------------------------------------------------------------------


def _shift_words(c: Comparison, rate: bool, scores: bool, level: float) -> str:
    parts = []
    if rate:
        parts.append(f"Fisher exact p {c.p_rate:.1g} < {level:.1g}")
    if scores and c.mean_a is not None and c.mean_b is not None:
        parts.append(
            f"mean score {c.mean_a:.2f} -> {c.mean_b:.2f}, Kolmogorov-Smirnov D {c.ks_d:.2f} p {c.p_scores:.1g}"
            f" < {level:.1g}"
        )
    return "; ".join(parts)


def _since_words(ref: Reference | None) -> str:
    return f"{ref.what} ({_day(ref.at)})" if ref else "the first images"


def ai_rule(h: DeviceHistory, th: Thresholds) -> Finding:
    """The device's AI positive rate (Fisher's exact test) and score distribution (Kolmogorov-Smirnov)
    against its own baseline (:mod:`twin.ai_watch`): at a configuration change, the images after it
    against those before it; then the last ``ai_window_days`` days against the baseline. Each test at
    ``ai_alpha`` / tests of the look (Bonferroni), one look a day: a false WARN at most ``ai_alpha``
    per look. The reason names the configuration change the shift came with."""
    ai = h.ai
    if ai is None or not (ai.baseline or ai.before):
        return Finding("ai_shift", Status.OK, "no analysed images before today")
    need, ref = max(th.ai_min_images, 1), ai.reference
    looks: list[tuple[str, Sequence[Outcome], Sequence[Outcome]]] = []
    if ref is not None and ref.config_change and len(ai.before) >= need and len(ai.changed()) >= need:
        looks.append(("change", ai.before, ai.changed()))
    if len(ai.baseline) >= th.ai_baseline_n and len(ai.recent) >= need:
        looks.append(("drift", ai.baseline, ai.recent))
    if not looks:
        return Finding(
            "ai_shift", Status.OK,
            f"learning the AI baseline ({len(ai.baseline)}/{th.ai_baseline_n} images since {_since_words(ref)})",
        )
    level = th.ai_alpha / (2 * len(looks))
    calm: list[str] = []
    for kind, a, b in looks:
        c = compare(a, b)
        rate, scores = c.shifted(level)
        if not (rate or scores):
            after, before = ((f"since {_since_words(ref)}", "before") if kind == "change"
                             else ("lately", "in the baseline"))
            calm.append(f"{c.rate_b:.0%} of {c.n_b} images {after} vs {c.rate_a:.0%} of {c.n_a} {before}")
            continue
        why = _shift_words(c, rate, scores, level)
        what = f"AI positive rate {c.rate_a:.0%} -> {c.rate_b:.0%}" if rate else "AI score distribution shifted"
        if kind == "change":
            assert ref is not None
            text = f"{what} since {_since_words(ref)}: {c.n_b} images after, {c.n_a} before ({why})"
            return Finding("ai_shift", Status.WARN, text, ref.at)
        text = (
            f"{what} over the last {th.ai_window_days} days: {c.n_b} images vs the baseline of {c.n_a} since "
            f"{_since_words(ref)} ({why})"
        )
        return Finding("ai_shift", Status.WARN, text, b[0].at)
    text = (
        f"AI positive rate {'; '.join(calm)}: within chance "
        f"(Fisher exact and Kolmogorov-Smirnov, false WARN <= {th.ai_alpha:g} a daily look)"
    )
    return Finding("ai_shift", Status.OK, text)
