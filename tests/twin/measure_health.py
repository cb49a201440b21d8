"""Measure the health rules' false-alarm rates and detection delays over many seeds.

Run: ``.venv/bin/python tests/twin/measure_health.py [--seeds N]``; it prints the Markdown tables
that docs/twin.md quotes. It drives the rule functions of twin.health directly with synthetic
devices (the same models as scripts/simulate_modality.py: DI normal around a device mean drawn
from U(-0.5, 0.5); faults Poisson per day; acquisitions at random times), so a run takes minutes,
not hours. The ``tube`` group builds twin.tube.TubeWear from synthetic daily loads and the ``ai``
group slices synthetic outcome streams as twin.ai_watch.ai_history does, so neither needs a database.
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import bisect
import random
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dicom_node.testing import load_script  # noqa: E402
from twin.ai_watch import AiHistory, Outcome, Reference  # noqa: E402
from twin.health import (  # noqa: E402
    DeviceHistory,
    Finding,
    Status,
    Thresholds,
    ai_rule,
    count_rule,
    di_levels,
    ewma_chart,
    fault_rule,
    forecast_rule,
    range_rule,
    silence_rule,
    tube_rule,
)
from twin.signals import Signal, daily_medians  # noqa: E402
from twin.tube import Load, TubeWear  # noqa: E402

TH = Thresholds()
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _simulator() -> ModuleType:
    """scripts/simulate_modality.py (not a package): its signal model is the one measured here."""
    return load_script("simulate_modality")


SIM = _simulator()


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; fine for the small daily rates here."""
    limit, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


# --- exposure index ----------------------------------------------------------------------------------


def di_values(
    rng: random.Random, n: int, sigma: float, k: int = 0, step: float = 0.0, ramp: float = 0.0
) -> list[float]:
    mean = rng.uniform(-0.5, 0.5)
    out = []
    for i in range(1, n + 1):
        x = rng.gauss(mean, sigma)
        if k and i >= k:
            x += step + ramp * (i - k + 1)
        out.append(x)
    return out


def ei_levels(values: list[float]) -> list[int]:
    """Worst of the two exposure-index rules at each acquisition (0 OK, 1 WARN, 2 ALERT)."""
    chart = ewma_chart(values, TH)
    drift = [Status.OK] * TH.baseline_n + (chart.levels if chart else [])
    return [max(a.rank, b.rank) for a, b in zip(drift, di_levels(values, TH), strict=True)]


def ei_false_alarms(seeds: int, sigma: float, n: int = 500) -> tuple[float, float]:
    warn = alert = 0
    for s in range(seeds):
        levels = ei_levels(di_values(random.Random(f"fa{sigma}:{s}"), n, sigma))
        warn += any(x >= 1 for x in levels)
        alert += any(x >= 2 for x in levels)
    return warn / seeds, alert / seeds


def ei_delay(seeds: int, sigma: float, step: float, ramp: float, k: int = 101) -> tuple[float, int, float]:
    """(median, 90th percentile, share detected within 30) of acquisitions from drift start to first
    WARN/ALERT; devices that alarm before the drift are counted as detected at 0."""
    delays = []
    for s in range(seeds):
        levels = ei_levels(di_values(random.Random(f"dl{sigma}:{step}:{ramp}:{s}"), k + 299, sigma, k, step, ramp))
        first = next((i for i, x in enumerate(levels) if x), None)
        delays.append(10**6 if first is None else max(0, first - (k - 1) + 1))
    delays.sort()
    return (
        statistics.median(delays),
        delays[int(0.9 * len(delays)) - 1],
        sum(d <= 30 for d in delays) / len(delays),
    )


# --- faults ------------------------------------------------------------------------------------------


def fault_levels(counts: list[int], start: int) -> list[int]:
    """Fault-rule level evaluated at the end of each day from ``start`` on."""
    faults = {(T0 + timedelta(days=d)).date(): {"E": c} for d, c in enumerate(counts) if c}
    out = []
    for d in range(start, len(counts)):
        now = T0 + timedelta(days=d, hours=23)
        window = {day: v for day, v in faults.items() if day <= now.date()}
        h = DeviceHistory(first_seen=T0, faults=window)
        out.append(fault_rule(h, now, TH).status.rank)
    return out


def fault_false_alarms(seeds: int, lam: float, days: int = 365, warmup: int = 30) -> tuple[float, float]:
    warn = alert = 0
    for s in range(seeds):
        rng = random.Random(f"ffa{lam}:{s}")
        levels = fault_levels([_poisson(rng, lam) for _ in range(warmup + days)], warmup)
        warn += any(x >= 1 for x in levels)
        alert += any(x >= 2 for x in levels)
    return warn / seeds, alert / seeds


def fault_delay(seeds: int, lam: float, factor: float, k: int = 60) -> tuple[float, int]:
    """Days from a rate rise to first WARN/ALERT (median, 90th percentile)."""
    delays = []
    for s in range(seeds):
        rng = random.Random(f"fdl{lam}:{factor}:{s}")
        counts = [_poisson(rng, lam if d < k else lam * factor) for d in range(k + 60)]
        levels = fault_levels(counts, k)
        first = next((i for i, x in enumerate(levels) if x), None)
        delays.append(10**6 if first is None else first + 1)
    delays.sort()
    return statistics.median(delays), delays[int(0.9 * len(delays)) - 1]


def burst_needed(lam: float) -> tuple[int, int]:
    """Fewest faults in one day that raise WARN and ALERT the same day, after 60 days at ``lam``."""
    base = [round(lam * (d + 1)) - round(lam * d) for d in range(60)]  # evenly spread history
    found = []
    for level in (1, 2):
        n = 1
        while fault_levels([*base, n], 60)[-1] < level:
            n += 1
        found.append(n)
    return found[0], found[1]


# --- silence -----------------------------------------------------------------------------------------


def silence_false_alarms(seeds: int, per_day: float, days: int = 28) -> float:
    """Share of devices (acquisitions at random times) that look silent, checked just before each
    acquisition after the first week, i.e. at the end of every real gap."""
    bad = 0
    for s in range(seeds):
        rng = random.Random(f"sil{per_day}:{s}")
        ts = sorted(T0 + timedelta(days=days * rng.random()) for _ in range(int(per_day * days)))
        for i in range(len(ts) - 1):
            # the rule cannot fire on a gap shorter than its floor: skip those cheaply
            if ts[i] < T0 + timedelta(days=7) or ts[i + 1] - ts[i] <= timedelta(hours=TH.silence_warn_min_h):
                continue
            window = [t for t in ts[: i + 1] if t >= ts[i] - timedelta(days=TH.silence_window_days)]
            h = DeviceHistory(last_acquisition=ts[i], acquisition_times=window)
            if silence_rule(h, ts[i + 1] - timedelta(seconds=1), TH).status is not Status.OK:
                bad += 1
                break
    return bad / seeds


# --- signals: range and forecast rules, counted arcs ------------------------------------------------

WARMUP_DAYS = 60  # a full forecast window of history before the first evaluated day


def telemetry(model: object, days: int, rng: random.Random) -> list[tuple[datetime, float]]:
    """Readings every ``TELEMETRY_EVERY_H`` hours (at a random minute) for ``days`` days from T0, as the
    simulator logs them."""
    out = []
    for d in range(days):
        for hour in range(0, 24, SIM.TELEMETRY_EVERY_H):
            t = T0 + timedelta(days=d, hours=hour, minutes=rng.randint(0, 59))
            out.append((t, model.value(t)))  # type: ignore[attr-defined]
    return out


def signal_levels(sig: Signal, readings: list[tuple[datetime, float]], first: int, last: int) -> list[tuple[int, int]]:
    """(range rule, forecast rule) rank at 23:00 of each day ``first``..``last``, from the readings up
    to then. The forecast rule gets the daily medians (what it reduces the readings to anyway)."""
    times = [t for t, _ in readings]
    medians = [(datetime.combine(d, clock(12), UTC), v) for d, v in daily_medians(readings)]
    days = [t for t, _ in medians]
    out = []
    for d in range(first, last + 1):
        now = T0 + timedelta(days=d, hours=23)
        k = bisect.bisect_right(times, now)
        rng_rank = range_rule(sig, readings[max(0, k - 12) : k], now, TH).status.rank
        m = bisect.bisect_right(days, now)
        finding, _ = forecast_rule(sig, medians[max(0, m - TH.forecast_window_days - 2) : m], now, TH)
        out.append((rng_rank, finding.status.rank))
    return out


def _episodes(levels: list[int]) -> int:
    """How many times the level went from OK to WARN or worse."""
    return sum(1 for a, b in zip([0, *levels], levels, strict=False) if a == 0 and b > 0)


def signal_false_alarms(sig: Signal, devices: int, days: int = 365, level: float | None = None) -> dict[str, float]:
    """Stable devices of the simulator's model (at ``level`` instead of the normal one when given),
    one year each after the warm-up, judged daily."""
    episodes = {"range": 0, "forecast": 0}
    any_warn = {"range": 0, "forecast": 0}
    any_alert = {"range": 0, "forecast": 0}
    for s in range(devices):
        rng = random.Random(f"sfa:{sig.name}:{level}:{s}")
        model = SIM.SignalModel(sig.name, rng, T0)
        model.level = model.level if level is None else level
        readings = telemetry(model, WARMUP_DAYS + days, rng)
        levels = signal_levels(sig, readings, WARMUP_DAYS, WARMUP_DAYS + days - 1)
        for i, rule in enumerate(("range", "forecast")):
            series = [lv[i] for lv in levels]
            episodes[rule] += _episodes(series)
            any_warn[rule] += any(x >= 1 for x in series)
            any_alert[rule] += any(x >= 2 for x in series)
    years = devices * days / 365
    return {f"{k}_{r}": v[r] / (years if k == "per_year" else devices)
            for k, v in (("per_year", episodes), ("warn", any_warn), ("alert", any_alert)) for r in episodes}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def signal_lead(sig: Signal, devices: int, ramp_days: float) -> dict[str, float]:
    """Ramps from the normal level to the alert limit over ``ramp_days`` after the warm-up: days from
    the first WARN (forecast or range) to the true warn-limit crossing, and from the first ALERT to the
    alert-limit crossing (negative: after it)."""
    side, warn_limit, alert_limit = SIM.ramp_limits(sig.name)
    rate = SIM.ramp_rate(sig.name, ramp_days)
    level = SIM.NORMAL[sig.name][0]
    warn_at = WARMUP_DAYS + (warn_limit - level) / rate
    alert_at = WARMUP_DAYS + ramp_days
    lead_warn: list[float] = []
    lead_alert: list[float] = []
    by_forecast = 0
    end = int(alert_at) + 10
    for s in range(devices):
        rng = random.Random(f"slead:{sig.name}:{ramp_days}:{s}")
        model = SIM.SignalModel(sig.name, rng, T0, ramp_from=T0 + timedelta(days=WARMUP_DAYS), rate=rate)
        levels = signal_levels(sig, telemetry(model, end + 1, rng), WARMUP_DAYS, end)
        first_warn = next((i for i, (r, f) in enumerate(levels) if max(r, f) >= 1), None)
        first_alert = next((i for i, (r, f) in enumerate(levels) if max(r, f) >= 2), None)
        for first, truth, out in ((first_warn, warn_at, lead_warn), (first_alert, alert_at, lead_alert)):
            # evaluated at 23:00 of day WARMUP_DAYS + i
            out.append(truth - (WARMUP_DAYS + first + 23 / 24) if first is not None else -99.0)
        if first_warn is not None and levels[first_warn][1] >= 1 and levels[first_warn][0] == 0:
            by_forecast += 1
    return {"warn_median": statistics.median(lead_warn), "warn_p10": _pct(lead_warn, 0.1),
            "warn_p90": _pct(lead_warn, 0.9), "alert_median": statistics.median(lead_alert),
            "alert_p10": _pct(lead_alert, 0.1), "by_forecast": by_forecast / devices,
            "per_day": rate}


def arc_counts(rng: random.Random, days: int, rise_from: int | None = None, rise_days: float = 7.0,
               peak: float = 4.0) -> list[tuple[datetime, float]]:
    """hv_arcs per telemetry line at the simulator's base rate, rising linearly from ``rise_from`` to
    ``peak`` per day over ``rise_days`` (and staying there)."""
    out = []
    per_line = SIM.TELEMETRY_EVERY_H / 24
    for d in range(days):
        for hour in range(0, 24, SIM.TELEMETRY_EVERY_H):
            t = T0 + timedelta(days=d, hours=hour)
            share = 0.0 if rise_from is None else min(max((d + hour / 24 - rise_from) / rise_days, 0.0), 1.0)
            lam = SIM.ARC_BASE_RATE + (peak - SIM.ARC_BASE_RATE) * share
            out.append((t, float(SIM.poisson(rng, lam * per_line))))
    return out


def arc_levels(readings: list[tuple[datetime, float]], first: int, last: int) -> list[int]:
    sig = next(s for s in TH.signals if s.name == "hv_arcs")
    times = [t for t, _ in readings]
    out = []
    for d in range(first, last + 1):
        now = T0 + timedelta(days=d, hours=23)
        k = bisect.bisect_right(times, now)
        window = readings[bisect.bisect_left(times, now - timedelta(days=TH.fault_window_days
                                                                      + TH.fault_baseline_days + 1)) : k]
        out.append(count_rule(sig, window, T0, now, TH).status.rank)
    return out


def arc_false_alarms(devices: int, days: int = 365) -> tuple[float, float, float]:
    episodes = warn = alert = 0
    for s in range(devices):
        levels = arc_levels(arc_counts(random.Random(f"afa:{s}"), WARMUP_DAYS + days), WARMUP_DAYS,
                            WARMUP_DAYS + days - 1)
        episodes += _episodes(levels)
        warn += any(x >= 1 for x in levels)
        alert += any(x >= 2 for x in levels)
    return episodes / (devices * days / 365), warn / devices, alert / devices


def arc_delay(devices: int, rise_days: float, peak: float) -> tuple[float, float, float]:
    """Days from the start of the rise to the first WARN / ALERT (median, 90th percentile of WARN)."""
    warn: list[float] = []
    alert: list[float] = []
    for s in range(devices):
        rng = random.Random(f"adl:{rise_days}:{peak}:{s}")
        levels = arc_levels(arc_counts(rng, WARMUP_DAYS + 40, WARMUP_DAYS, rise_days, peak), WARMUP_DAYS,
                            WARMUP_DAYS + 39)
        for lvl, out in ((1, warn), (2, alert)):
            first = next((i for i, x in enumerate(levels) if x >= lvl), None)
            out.append(first + 23 / 24 if first is not None else 99.0)
    return statistics.median(warn), _pct(warn, 0.9), statistics.median(alert)


def signal_tables(m: int) -> None:
    stable = [s for s in TH.signals if not s.counted and s.name in SIM.NORMAL]
    print(f"\n## signals: range and forecast rules ({m} stable devices per signal, one year each after "
          f"{WARMUP_DAYS} days, judged daily)\n")
    print("| signal | normal level (reading σ, day σ) | forecast WARN episodes per device-year | "
          "device-years with a forecast WARN | with a range WARN |")
    print("|---|---|---|---|---|")
    rows = [(sig, SIM.NORMAL[sig.name][0]) for sig in stable]
    tube = next(s for s in stable if s.name == "tube_housing_temperature")
    rows += [(tube, 55.0), (tube, 57.0)]  # stable, but nearer its 60 °C warn limit
    for sig, level in rows:
        _, sd, day_sd = SIM.NORMAL[sig.name]
        fa = signal_false_alarms(sig, m, level=level)
        print(f"| `{sig.name}` | {level:g} ({sd:g}, {day_sd:g}) | {fa['per_year_forecast']:.2f} | "
              f"{fa['warn_forecast']:.1%} | {fa['warn_range']:.1%} |")
    print(f"\n| ramp to the alert limit ({m} devices per row) | slope | WARN lead before the warn limit: "
          "median | 90% at least | 90th pct | first WARN from the forecast | ALERT lead before the alert "
          "limit: median | 90% at least |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("tube_housing_temperature", "cooling_water_flow", "anode_bearing_vibration"):
        sig = next(s for s in stable if s.name == name)
        for ramp_days in (30.0, 60.0, 90.0):
            r = signal_lead(sig, m, ramp_days)
            print(f"| `{name}` in {ramp_days:g} days | {r['per_day']:+.3g} {sig.unit}/day | {r['warn_median']:.1f} d | "
                  f"{r['warn_p10']:.1f} d | {r['warn_p90']:.1f} d | {r['by_forecast']:.0%} | "
                  f"{r['alert_median']:.1f} d | {r['alert_p10']:.1f} d |")


def arc_tables(m: int) -> None:
    per_year, warn, alert = arc_false_alarms(m)
    print(f"\n## high-voltage arcs: count rule ({m} devices per row)\n")
    print("| stable, 0.2 arcs/day | WARN episodes per device-year | device-years with any WARN | with any ALERT |")
    print("|---|---|---|---|")
    print(f"| one year after {WARMUP_DAYS} days | {per_year:.2f} | {warn:.1%} | {alert:.1%} |")
    print("\n| rise from 0.2/day | days to WARN: median | 90th pct | days to ALERT: median |")
    print("|---|---|---|---|")
    for rise_days, peak in ((7.0, 4.0), (14.0, 2.0), (0.0, 1.0)):
        med, p90, alert_med = arc_delay(m, max(rise_days, 1e-9), peak)
        label = f"to {peak:g}/day over {rise_days:g} days" if rise_days else f"step to {peak:g}/day"
        print(f"| {label} | {med:.1f} | {p90:.1f} | {alert_med:.1f} |")


# --- tube wear: the tube_life rule ---------------------------------------------------------------------

TUBE_FACTOR = 1.35  # high-frequency generator, the default twin.tube_heat_unit_factor


def tube_daily_load(rng: random.Random, days: int, day_sd: float, weekend: float, rise: float) -> list[float]:
    """kVp x mAs per UTC day in arbitrary units: lognormal day-to-day variation (``day_sd`` of the log),
    Saturdays and Sundays at ``weekend`` of a weekday, use growing linearly by ``rise`` (0.5: +50%)
    over ``days``. T0 is a Wednesday."""
    out = []
    for d in range(days):
        weekday = (T0 + timedelta(days=d)).weekday()
        scale = (weekend if weekday >= 5 else 1.0) * (1.0 + rise * d / days)
        out.append(scale * rng.lognormvariate(-day_sd * day_sd / 2, day_sd))
    return out


def tube_levels(kvp_mas: list[float], rated_hu: float,
                exposures_per_unit: float = 40.0) -> list[tuple[int, float | None]]:
    """tube_life at 23:59 of each day: (rank, projected replacement day counted from T0, or None).
    The load runs from a ``tube`` record at T0 00:00; the recent window is the last
    ``tube_rate_days`` whole days (the days since T0 while fewer), as twin.tube.tube_wear sums them."""
    out = []
    cum = [0.0]
    for x in kvp_mas:
        cum.append(cum[-1] + x)
    rate_days = int(TH.tube_rate_days)
    for d in range(len(kvp_mas)):
        now = T0 + timedelta(days=d + 1, minutes=-1)
        first = max(0, d + 1 - rate_days)
        window_days = max(1.0, (now - max(T0, now - timedelta(days=TH.tube_rate_days))).total_seconds() / 86400)
        total, recent = cum[d + 1], cum[d + 1] - cum[first]
        n_total, n_recent = round(total * exposures_per_unit) or 1, round(recent * exposures_per_unit) or 1
        wear = TubeWear(since=T0, total=Load(n_total, n_total, 0.0, total),
                        recent=Load(n_recent, n_recent, 0.0, recent), window_days=window_days,
                        factor=TUBE_FACTOR, rated_life_hu=rated_hu)
        rank = tube_rule(DeviceHistory(first_seen=T0 - timedelta(days=400), tube=wear), now, TH).status.rank
        projected = wear.projected_replacement(now)
        out.append((rank, (projected - T0).total_seconds() / 86400 if projected else None))
    return out


def tube_false_alarms(devices: int, days: int = 365) -> tuple[float, float, float]:
    """Ordinary use: the tube starts the year at U(0, 0.3) of its rated life and uses U(0.1, 0.4) of it
    a year (lognormal day-to-day variation σ 0.3, weekends at 20%). (devices with any WARN, with any
    ALERT, highest used fraction reached)."""
    warn = alert = 0
    top = 0.0
    for s in range(devices):
        rng = random.Random(f"tfa:{s}")
        load = tube_daily_load(rng, days, 0.3, 0.2, 0.0)
        start, per_year = rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.4)
        rated = TUBE_FACTOR * sum(load) / per_year
        # the load before the year: one day of it on T0 (the window then averages it with the next days)
        load[0] += start * rated / TUBE_FACTOR
        levels = [r for r, _ in tube_levels(load, rated)]
        warn += any(x >= 1 for x in levels)
        alert += any(x >= 2 for x in levels)
        top = max(top, TUBE_FACTOR * sum(load) / rated)
    return warn / devices, alert / devices, top


def tube_lead(devices: int, day_sd: float, weekend: float, rise: float) -> dict[str, float]:
    """Heavy use from a new tube, the rated life reached on day L ~ U(200, 300): days from the first
    WARN and the first ALERT to day L, and the replacement date projected at the first WARN minus the
    true one (days)."""
    warn: list[float] = []
    alert: list[float] = []
    err: list[float] = []
    err_alert: list[float] = []
    for s in range(devices):
        rng = random.Random(f"tld:{day_sd}:{weekend}:{rise}:{s}")
        life_day = rng.randint(200, 300)
        load = tube_daily_load(rng, life_day + 20, day_sd, weekend, rise)
        # rated life = the load up to the middle of day L: the life runs out on day L
        rated = TUBE_FACTOR * (sum(load[:life_day]) + load[life_day] / 2)
        truth = life_day + 0.5
        levels = tube_levels(load, rated)
        for lvl, lead, proj in ((1, warn, err), (2, alert, err_alert)):
            first = next((d for d, (r, _) in enumerate(levels) if r >= lvl), None)
            if first is None:
                lead.append(-99.0)
                continue
            lead.append(truth - (first + 1))  # judged at the end of day ``first``
            p = levels[first][1]
            proj.append((p - truth) if p is not None else 99.0)
    return {"warn_median": statistics.median(warn), "warn_p10": _pct(warn, 0.1), "warn_p90": _pct(warn, 0.9),
            "alert_median": statistics.median(alert), "alert_p10": _pct(alert, 0.1),
            "err_abs_median": statistics.median(abs(e) for e in err), "err_abs_p90": _pct([abs(e) for e in err], 0.9),
            "err_median": statistics.median(err),
            "err_alert_abs_median": statistics.median(abs(e) for e in err_alert)}


def tube_tables(m: int) -> None:
    w, a, top = tube_false_alarms(m)
    print(f"\n## tube wear: tube_life rule ({m} devices per row, judged daily; warn at "
          f"{TH.tube_warn_fraction:g}, alert at {TH.tube_alert_fraction:g} of the rated life)\n")
    print("| stable: ordinary use, one year | devices with any WARN | with any ALERT | highest used fraction |")
    print("|---|---|---|---|")
    print(f"| starts at U(0, 0.3) of the life, uses U(0.1, 0.4) a year | {w:.1%} | {a:.1%} | {top:.2f} |")
    print("\n| heavy use, life reached on day U(200, 300) | WARN lead: median | 90% at least | 90th pct | "
          "ALERT lead: median | 90% at least | date projected at the WARN: median error | median abs error | "
          "90th pct abs | at the ALERT: median abs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, day_sd, weekend, rise in (
        ("steady, day σ 0.3, weekends 20%", 0.3, 0.2, 0.0),
        ("steady, day σ 0.6, weekends 20%", 0.6, 0.2, 0.0),
        ("use rising +50% over the run", 0.3, 0.2, 0.5),
        ("use rising +100% over the run", 0.3, 0.2, 1.0),
    ):
        r = tube_lead(m, day_sd, weekend, rise)
        print(f"| {label} | {r['warn_median']:.1f} d | {r['warn_p10']:.1f} d | {r['warn_p90']:.1f} d | "
              f"{r['alert_median']:.1f} d | {r['alert_p10']:.1f} d | {r['err_median']:+.1f} d | "
              f"{r['err_abs_median']:.1f} d | {r['err_abs_p90']:.1f} d | {r['err_alert_abs_median']:.1f} d |")


# --- AI watch: the ai_shift rule -------------------------------------------------------------------------

AI_THRESHOLD = 0.4  # operating threshold of the score model below


def ai_score(rng: random.Random, positive: bool, shifted: bool = False) -> float:
    """The image-level score of tests/twin/test_twin_ai.py: positives U(0.45, 0.95); negatives 30% with
    no box (score 0), else U(0.02, 0.38). ``shifted``: the same positives, but negatives 10% with no
    box, else U(0.10, 0.38) (software that draws more faint boxes, the positive rate unchanged)."""
    if positive:
        return round(rng.uniform(0.45, 0.95), 3)
    if shifted:
        return 0.0 if rng.random() < 0.1 else round(rng.uniform(0.10, 0.38), 3)
    return 0.0 if rng.random() < 0.3 else round(rng.uniform(0.02, 0.38), 3)


def ai_stream(rng: random.Random, days: int, per_day: int, rate: float, change_day: int | None = None,
              rate_after: float | None = None, shift: bool = False) -> tuple[list[Outcome], datetime | None]:
    """``per_day`` analysed images a day at random times between 07:00 and 19:00; from a random time of
    ``change_day`` on the positive rate is ``rate_after`` and, with ``shift``, the scores shifted."""
    change_at = None if change_day is None else T0 + timedelta(days=change_day, hours=rng.uniform(7, 19))
    out = []
    for d in range(days):
        for at in sorted(T0 + timedelta(days=d, hours=rng.uniform(7, 19)) for _ in range(per_day)):
            after = change_at is not None and at >= change_at
            p = rate_after if after and rate_after is not None else rate
            positive = rng.random() < p
            out.append(Outcome(at, ai_score(rng, positive, after and shift), positive))
    return out, change_at


def ai_look(stream: list[Outcome], times: list[datetime], as_of: datetime, ref: Reference | None) -> Finding:
    """ai_rule at ``as_of`` (the end of a complete day), the groups sliced as twin.ai_watch.ai_history
    slices them from the database."""
    n = max(int(TH.ai_baseline_n), 1)
    m = max(int(TH.ai_change_n), n)
    end = bisect.bisect_left(times, as_of)  # at < as_of
    if ref is not None and ref.at < as_of:
        start = bisect.bisect_left(times, ref.at)  # at >= ref.at
        before = stream[max(0, start - m) : start]
    else:
        ref, start, before = None, 0, []
    after = stream[start : min(end, start + (m if ref is not None and ref.config_change else n))]
    baseline = after[:n]
    recent: list[Outcome] = []
    if len(baseline) >= n:
        window = max(baseline[-1].at, as_of - timedelta(days=TH.ai_window_days))
        recent = stream[bisect.bisect_right(times, window) : end]
    return ai_rule(DeviceHistory(ai=AiHistory(as_of, ref, before, baseline, recent, after)), TH)


def ai_false_alarms(devices: int, rate: float, per_day: int = 30, days: int = 365,
                    update_day: int | None = None) -> tuple[float, float]:
    """Stable devices, one look a day for a year after the ``ai_window_days`` + baseline start; with
    ``update_day``, a software update there that changes nothing. (share of devices with any false WARN,
    WARN episodes per device-year)."""
    warned = episodes = 0
    start = -(-TH.ai_baseline_n // per_day) + TH.ai_window_days  # days to fill the baseline and a window
    for s in range(devices):
        rng = random.Random(f"aifa:{rate}:{per_day}:{update_day}:{s}")
        stream, change_at = ai_stream(rng, start + days, per_day, rate, update_day, rate)
        times = [o.at for o in stream]
        ref = Reference(change_at, "software 4.3.0", True) if change_at else None
        levels = [ai_look(stream, times, T0 + timedelta(days=d), ref).status.rank
                  for d in range(start + 1, start + days + 1)]
        warned += any(levels)
        episodes += _episodes(levels)
    return warned / devices, episodes / (devices * days / 365)


def ai_delay(devices: int, rate: float, rate_after: float, shift: bool, update: bool,
             per_day: int = 30, after_days: int = 60) -> dict[str, float]:
    """A change on day 60 (a software update, or none: the same change without a configuration
    change): days from the change to the first WARN, judged once a day; share detected within 7 and
    30 days; share of WARNs that name the update."""
    change_day = 60
    delays: list[float] = []
    named = 0
    for s in range(devices):
        rng = random.Random(f"aidl:{rate}:{rate_after}:{shift}:{update}:{s}")
        stream, change_at = ai_stream(rng, change_day + after_days, per_day, rate, change_day, rate_after, shift)
        assert change_at is not None
        times = [o.at for o in stream]
        ref = Reference(change_at, "software 4.3.0", True) if update else None
        found = None
        for d in range(change_day + 1, change_day + after_days + 1):
            as_of = T0 + timedelta(days=d)
            f = ai_look(stream, times, as_of, ref)
            if f.status is Status.WARN:
                found = (as_of - change_at).total_seconds() / 86400
                named += "software 4.3.0" in f.reason and " images after, " in f.reason
                break
        delays.append(found if found is not None else 10**6)
    hit = [d for d in delays if d < 10**6]
    return {"median": statistics.median(delays), "p90": _pct(delays, 0.9),
            "within7": sum(d <= 7 for d in delays) / devices, "within30": sum(d <= 30 for d in delays) / devices,
            "named": named / len(hit) if hit else 0.0, "detected": len(hit) / devices}


def _days(x: float) -> str:
    return "never" if x >= 10**6 else f"{x:.1f}"


def ai_tables(m: int) -> None:
    global TH
    per_day = 30
    print(f"\n## AI watch: ai_shift rule ({per_day} analysed images a day, one look a day; ai_alpha "
          f"{TH.ai_alpha:g}, baseline {TH.ai_baseline_n}, change look {TH.ai_change_n} a side, "
          f"window {TH.ai_window_days} days)\n")
    print("| stable, one year | ai_alpha | devices | devices with any false WARN | WARN episodes per device-year "
          "| union bound 365 x ai_alpha |")
    print("|---|---|---|---|---|---|")
    default = TH
    for alpha, devices in ((default.ai_alpha, m), (10 * default.ai_alpha, max(20, m // 2)),
                           (100 * default.ai_alpha, max(20, m // 2))):
        TH = replace(default, ai_alpha=alpha)
        for rate, update in ((0.05, None), (0.05, 120), (0.2, None)):
            w, ep = ai_false_alarms(devices, rate, per_day, update_day=update)
            what = f"positive rate {rate:.0%}" + (", a software update on day 120 that changes nothing" if update
                                                  else "")
            print(f"| {what} | {alpha:g} | {devices} | {w:.1%} | {ep:.3f} | {min(1.0, 365 * alpha):.1%} |")
    TH = default
    print(f"\n| change on day 60 ({m} devices per row) | days to WARN: median | 90th pct | within 7 days | "
          "within 30 days | within 60 days | WARNs that name the update |")
    print("|---|---|---|---|---|---|---|")
    for label, rate, after, shift, update in (
        ("software update, positive rate 4% -> 19%", 0.04, 0.19, False, True),
        ("software update, positive rate 5% -> 10%", 0.05, 0.10, False, True),
        ("software update, scores shifted, positive rate 5% kept", 0.05, 0.05, True, True),
        ("no configuration change, positive rate 4% -> 19%", 0.04, 0.19, False, False),
        ("no configuration change, positive rate 5% -> 10%", 0.05, 0.10, False, False),
        ("no configuration change, scores shifted, 5% kept", 0.05, 0.05, True, False),
    ):
        r = ai_delay(m, rate, after, shift, update, per_day)
        named = f"{r['named']:.0%}" if update else "(none to name)"
        print(f"| {label} | {_days(r['median'])} | {_days(r['p90'])} | {r['within7']:.0%} | {r['within30']:.0%} | "
              f"{r['detected']:.0%} | {named} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--only", choices=("ei", "faults", "silence", "signals", "arcs", "tube", "ai"),
                    help="measure one group of rules")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="override a Thresholds field")
    args = ap.parse_args()
    global TH
    for item in args.set:
        name, value = item.split("=", 1)
        kind = type(getattr(TH, name))
        TH = replace(TH, **{name: kind(value)})
    n = args.seeds
    started = time.time()
    if args.only in (None, "ei"):
        ei_tables(n)
    if args.only in (None, "faults"):
        fault_tables(max(50, n // 5))
    if args.only in (None, "silence"):
        silence_table(n)
    if args.only in (None, "signals"):
        signal_tables(max(20, n // 20))
    if args.only in (None, "arcs"):
        arc_tables(max(20, n // 10))
    if args.only in (None, "tube"):
        tube_tables(max(20, n // 5))
    if args.only in (None, "ai"):
        ai_tables(max(20, n // 10))
    print(f"\n(measured in {time.time() - started:.0f} s)")


def ei_tables(n: int) -> None:
    print(f"## exposure index ({n} devices per row; 500 acquisitions each for false alarms)\n")
    print("| DI spread σ | devices with any WARN | devices with any ALERT |")
    print("|---|---|---|")
    for sigma in (0.5, 0.8, 1.0, 1.5):
        w, a = ei_false_alarms(n, sigma)
        print(f"| {sigma} | {w:.1%} | {a:.1%} |")
    print("\n| drift (from acquisition 101) | σ | median delay | 90th pct | detected within 30 |")
    print("|---|---|---|---|---|")
    for sigma in (0.8, 1.0):
        for label, step, ramp in (
            ("step +1 DI", 1.0, 0.0),
            ("step +2 DI", 2.0, 0.0),
            ("ramp +0.05 DI/acq.", 0.0, 0.05),
            ("ramp +0.1 DI/acq.", 0.0, 0.1),
        ):
            med, p90, share = ei_delay(n, sigma, step, ramp)
            print(f"| {label} | {sigma} | {med:g} | {p90} | {share:.1%} |")


def fault_tables(m: int) -> None:
    print(f"\n## fault rate ({m} devices per row; one year each, evaluated daily)\n")
    print("| baseline faults/day | device-years with any WARN | with any ALERT | burst for WARN / ALERT |")
    print("|---|---|---|---|")
    for lam in (0.1, 0.5, 2.0):
        w, a = fault_false_alarms(m, lam)
        bw, ba = burst_needed(lam)
        print(f"| {lam} | {w:.1%} | {a:.1%} | {bw} / {ba} faults |")
    print("\n| rate rise from day 61 | median days to signal | 90th pct |")
    print("|---|---|---|")
    for lam, factor in ((0.1, 10.0), (0.5, 3.0), (2.0, 2.0)):
        med, p90 = fault_delay(m, lam, factor)
        print(f"| {lam}/day -> {lam * factor:g}/day | {med:g} | {p90} |")


def silence_table(n: int) -> None:
    print(f"\n## silence ({n} devices per row; 28 days at random times)\n")
    print("| acquisitions/day | devices ever shown silent before their next image |")
    print("|---|---|")
    for per_day in (5, 20, 50):
        print(f"| {per_day} | {silence_false_alarms(n, per_day):.1%} |")


if __name__ == "__main__":
    main()
