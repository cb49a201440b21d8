"""Measure the health rules' false-alarm rates and detection delays over many seeds.

Run: ``.venv/bin/python tests/twin/measure_health.py [--seeds N]``; it prints the Markdown tables
that docs/twin.md quotes. It drives the rule functions of twin.health directly with synthetic
devices (the same models as scripts/simulate_modality.py: DI normal around a device mean drawn
from U(-0.5, 0.5); faults Poisson per day; acquisitions at random times), so a run takes minutes,
not hours. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from twin.health import (  # noqa: E402
    DeviceHistory,
    Status,
    Thresholds,
    di_levels,
    ewma_chart,
    fault_rule,
    silence_rule,
)

TH = Thresholds()
T0 = datetime(2025, 1, 1, tzinfo=UTC)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=1000)
    ap.add_argument("--only", choices=("ei", "faults", "silence"), help="measure one group of rules")
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
