"""Measure the health rules' false-alarm rates and detection delays over many seeds.

Run: ``.venv/bin/python tests/twin/measure_health.py [--seeds N]``; it prints the Markdown tables
that docs/twin.md quotes. It drives the rule functions of twin.health directly with synthetic
devices (the same models as scripts/simulate_modality.py: DI normal around a device mean drawn
from U(-0.5, 0.5); faults Poisson per day; acquisitions at random times), so a run takes minutes,
not hours. Not collected by pytest (no ``test_`` prefix).
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
from twin.health import (  # noqa: E402
    DeviceHistory,
    Status,
    Thresholds,
    count_rule,
    di_levels,
    ewma_chart,
    fault_rule,
    forecast_rule,
    range_rule,
    silence_rule,
)
from twin.signals import Signal, daily_medians  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--only", choices=("ei", "faults", "silence", "signals", "arcs"), help="measure one group of rules")
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
