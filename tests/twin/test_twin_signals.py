"""Signals (issue 15, items 1-2): any named telemetry value with its range, a Theil-Sen forecast of
when it crosses a limit, counted signals through the Poisson CUSUM; fed as real sidecar files."""

from __future__ import annotations

import json
import math
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from twin_support import NOW, event, new_store, ramp_log, run_twin_cli, write_jsonl

from dicom_node.config import ConfigError, parse_config
from dicom_node.testing import NodeProcess
from twin.db import thread_local_connect
from twin.health import Status
from twin.signals import DEFAULT_SIGNALS, KNEE_LR, daily_medians, forecast, knee, signals_from_config, theil_sen
from twin.store import TwinStore


def test_theil_sen_slope_band_and_robustness() -> None:
    xs = [float(i) for i in range(30)]
    ys = [2.0 + 0.5 * x for x in xs]
    ys[7], ys[19] = 100.0, -50.0  # two wild readings do not move a median of slopes
    trend = theil_sen(xs, ys)
    assert trend is not None and trend.slope == pytest.approx(0.5)
    assert trend.low <= 0.5 <= trend.high
    covered = 0
    for seed in range(200):  # no trend: the 95% band straddles zero in about 95% of series
        rng = random.Random(seed)
        noisy = theil_sen(xs, [5 + rng.gauss(0, 1) for _ in xs])
        assert noisy is not None
        covered += noisy.low < 0 < noisy.high
    assert 0.92 <= covered / 200 <= 0.99
    assert theil_sen([1.0, 1.0], [1.0, 2.0]) is None


def test_ramping_signal_is_warn_with_signal_limit_and_date_before_crossing(tmp_path: Path) -> None:
    # tube housing at 45 °C rising 0.3 °C/day: reaches 57 °C now, the 60 °C warn limit in 10 days
    ramp_log(tmp_path / "side", "tube_housing_temperature", 45.0, 0.3)
    store = new_store(tmp_path)
    store.ingest_sidecar(tmp_path / "side", settle_s=0)
    dev = store.find_device("SN-1001")
    assert dev is not None
    health = store.health(dev, NOW)
    assert health.status is Status.WARN, health.reasons
    rules = {f.rule: f for f in health.findings}
    assert rules["tube_housing_temperature"].status is Status.OK  # still inside its range
    finding = rules["tube_housing_temperature_forecast"]
    assert finding.status is Status.WARN
    truth = NOW + timedelta(days=10)
    warn = next(f for f in health.forecasts if f.kind == "warn")
    assert (warn.signal, warn.limit, warn.side) == ("tube_housing_temperature", 60.0, "high")
    assert abs((warn.crossing_at - truth).total_seconds()) < 3 * 86400
    assert warn.band[0] <= warn.crossing_at <= warn.band[1]
    reason = health.reasons[0]
    assert "tube housing temperature" in reason and "60" in reason and warn.crossing_at.date().isoformat() in reason
    # a forecast of the warn limit never goes beyond WARN, however near
    assert store.health(dev, NOW + timedelta(days=1)).status is Status.WARN


def test_ramp_to_the_alert_limit_is_alert_and_falling_signals_forecast_low(tmp_path: Path) -> None:
    side = tmp_path / "side"
    # cooling water flow falling 0.1 L/min a day from 5.5: 1.5 now, the 1.0 alert limit in 5 days...
    ramp_log(side, "cooling_water_flow", 5.5, -0.1, sigma=0.05, serial="SN-A")
    # ... and a battery 2 days from its 15% alert limit
    ramp_log(side, "battery_charge", 95.0, -1.9, sigma=1.0, serial="SN-B")
    store = new_store(tmp_path)
    store.ingest_sidecar(side, settle_s=0)
    flow = store.health(store.find_device("SN-A") or 0, NOW)
    assert flow.status is Status.WARN  # warn range (2 L/min) already left: the range rule says so
    assert {f.rule: f.status for f in flow.findings}["cooling_water_flow"] is Status.WARN
    low = [f for f in flow.forecasts if f.kind == "alert"]
    assert low and low[0].side == "low" and low[0].limit == 1.0
    battery = store.health(store.find_device("SN-B") or 0, NOW)
    assert battery.status is Status.ALERT, battery.reasons
    assert "battery charge forecast to fall below its alert limit 15" in battery.reasons[0]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_stable_signals_stay_ok(tmp_path: Path, seed: int) -> None:
    side = tmp_path / "side"
    for i, sig in enumerate(s for s in DEFAULT_SIGNALS if not s.counted):
        lo, hi = sig.warn
        mid = (lo + hi) / 2 if lo is not None and hi is not None else (hi - 10 if hi is not None else (lo or 0) + 20)
        if sig.name == "anode_bearing_vibration":
            mid = 0.8
        ramp_log(side, sig.name, mid, 0.0, sigma=abs(mid) * 0.02 + 0.05, seed=seed * 100 + i, days=60)
    store = new_store(tmp_path)
    store.ingest_sidecar(side, settle_s=0)
    dev = store.find_device("SN-1001") or 0
    for at in (NOW - timedelta(days=30), NOW - timedelta(days=10), NOW):
        health = store.health(dev, at)
        assert health.status is Status.OK, (at, health.reasons)
        assert [f for f in health.forecasts if (f.crossing_at - at) <= timedelta(days=14)] == []


def test_counted_signal_uses_the_poisson_cusum(tmp_path: Path) -> None:
    rng = random.Random(5)
    events = []
    for day in range(60, 0, -1):
        t = NOW - timedelta(days=day)
        n = 6 if day <= 3 else int(rng.random() < 0.2)  # a rare arc, then six a day for three days
        events.append(event(t, "telemetry", values={"hv_arcs": n}))
    write_jsonl(tmp_path / "side" / "arcs.jsonl", events)
    store = new_store(tmp_path)
    store.ingest_sidecar(tmp_path / "side", settle_s=0)
    dev = store.find_device("SN-1001") or 0
    quiet = store.health(dev, NOW - timedelta(days=4))
    assert {f.rule: f.status for f in quiet.findings}["hv_arcs"] is Status.OK
    health = store.health(dev, NOW)
    finding = {f.rule: f for f in health.findings}["hv_arcs"]
    assert finding.status is Status.ALERT and "hv arcs up" in finding.reason and "Poisson CUSUM" in finding.reason


def test_signal_config_contract_and_errors() -> None:
    cfg = parse_config(
        {"twin": {"signals": {"tank_pressure": {"unit": "bar", "warn": [None, 5], "alert": [None, 6],
                                                "forecast": True}, "battery_charge": None}}}
    )
    names = [s.name for s in cfg.twin.thresholds().signals]
    assert "tank_pressure" in names and "battery_charge" not in names and "detector_temperature" in names
    for bad in ({"x": {"warn": [1]}}, {"x": {"warn": [5, 1]}}, {"x": {"warn": [0, 10], "alert": [2, 12]}},
                {"x": {"limit": 3}}, {"a b": {"unit": "x"}}):
        with pytest.raises(ConfigError):
            parse_config({"twin": {"signals": bad}})
    assert signals_from_config(None) == DEFAULT_SIGNALS


def test_device_json_lists_forecasts_of_a_configured_signal(tmp_path: Path) -> None:
    now = datetime.now(UTC) - timedelta(minutes=5)
    storage = tmp_path / "var"
    storage.mkdir()
    (tmp_path / "config.yaml").write_text(
        "storage:\n  dir: ./var\ntwin:\n  signals:\n    tank_pressure:\n      unit: bar\n"
        "      warn: [null, 5.0]\n      alert: [null, 6.0]\n      forecast: true\n"
    )
    ramp_log(tmp_path / "side", "tank_pressure", 2.0, 0.1, end=now, days=25, sigma=0.05, serial="SN-P")
    store = TwinStore(thread_local_connect(storage / "node.db"))
    store.ingest_sidecar(tmp_path / "side", settle_s=0)
    code, out, err = run_twin_cli("device", "SN-P", "--json", "--config", str(tmp_path / "config.yaml"))
    assert code == 0, err
    rec = json.loads(out)
    # 4.5 bar now, rising 0.1 bar/day: warn limit 5 in about 5 days, alert limit 6 in about 15
    forecasts = rec["forecasts"]
    assert [(f["signal"], f["limit"]) for f in forecasts] == [("tank_pressure", 5.0), ("tank_pressure", 6.0)]
    for f in forecasts:
        assert {"signal", "limit", "crossing_at", "band"} <= set(f) and len(f["band"]) == 2
    crossing = datetime.fromisoformat(forecasts[0]["crossing_at"])
    assert abs((crossing - (now + timedelta(days=5))).total_seconds()) < 2 * 86400
    assert rec["health"]["status"] == "WARN"
    assert any("tank pressure" in r and "5 bar" in r for r in rec["health"]["reasons"])


def test_running_node_reads_ramping_telemetry_and_forecasts(node_factory: type[NodeProcess], tmp_path: Path) -> None:
    """Through a running ``dicom-node serve``: its sidecar job reads the logs, ``device --json`` shows
    the ramping device WARN with its forecast and the stable one OK."""
    weights = tmp_path / "unused.pth"
    weights.write_bytes(b"")
    node = node_factory(
        routing={"modalities": ["OT"]}, twin={"sidecar_poll_s": 0.5, "evaluate_every_s": 1.0},
        model={"weights": str(weights)},
    ).start()
    now = datetime.now(UTC) - timedelta(minutes=5)
    side = node.root / "sidecar"
    ramp_log(side, "generator_tank_temperature", 40.0, 0.3, end=now, days=40, serial="SN-RAMP")
    ramp_log(side, "generator_tank_temperature", 40.0, 0.0, end=now, days=40, serial="SN-FLAT")
    def record(serial: str) -> dict:
        code, out, _ = run_twin_cli("device", serial, "--json", "--config", str(node.config_path))
        return json.loads(out) if code == 0 else {}

    deadline = time.monotonic() + 60
    while not (record("SN-RAMP") and record("SN-FLAT")) and time.monotonic() < deadline:
        time.sleep(0.5)
    ramp, flat = record("SN-RAMP"), record("SN-FLAT")
    # 52 °C now, rising 0.3 °C/day: the 55 °C warn limit in about 10 days, the 65 °C alert one in 43
    assert ramp["health"]["status"] == "WARN", ramp["health"]["reasons"]
    first = ramp["forecasts"][0]
    assert (first["signal"], first["limit"]) == ("generator_tank_temperature", 55.0)
    crossing = datetime.fromisoformat(first["crossing_at"])
    assert timedelta(days=7) < crossing - now < timedelta(days=13)
    assert any("generator tank temperature" in r and "55" in r and crossing.date().isoformat() in r
               for r in ramp["health"]["reasons"])
    assert flat["health"]["status"] == "OK" and flat["forecasts"] == []
    assert node.stop() == 0


def _series(level: float, per_day: float, onset: float, days: int, seed: int, sigma: float = 0.5,
            wander: float = 0.0) -> list[tuple[datetime, float]]:
    """Readings every 4 h for ``days`` days up to NOW: ``level``, rising ``per_day`` from day ``onset``,
    with reading noise ``sigma`` and a day-to-day AR(1) wander (φ 0.7) of spread ``wander``."""
    rng = random.Random(seed)
    t0 = NOW - timedelta(days=days)
    walk = [rng.gauss(0, wander)]
    for _ in range(days):
        walk.append(0.7 * walk[-1] + 0.714 * rng.gauss(0, wander))
    out = []
    for step in range(days * 6 + 1):
        day = step / 6
        out.append((t0 + timedelta(hours=4 * step),
                     level + per_day * max(0.0, day - onset) + walk[int(day)] + rng.gauss(0, sigma)))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_knee_after_flat_weeks_is_forecast_days_ahead(seed: int) -> None:
    # 45 flat days, then +0.8 °C/day for 12 days: 54.6 °C now, the 60 °C warn limit in about 6.75 days.
    # One line through the 57 days is held down by the flat weeks (no forecast); the knee is found
    # and the days after it forecast the crossing.
    sig = next(s for s in DEFAULT_SIGNALS if s.name == "tube_housing_temperature")
    readings = _series(45.0, 0.8, 45.0, 57, seed)
    t0 = NOW - timedelta(days=57)
    truth = t0 + timedelta(days=45 + 15 / 0.8)
    found = forecast(sig, readings, NOW, 60, 10, 90)
    assert forecast(sig, readings, NOW, 60, 10, 90, knee_lr=math.inf) == []  # one line: no forecast
    warn = next(f for f in found if f.kind == "warn")
    assert abs((warn.crossing_at - truth).total_seconds()) < 1.5 * 86400
    assert timedelta(days=4) < warn.crossing_at - NOW < timedelta(days=14)  # days ahead: WARN
    assert warn.band[0] <= warn.crossing_at <= warn.band[1]
    assert 10 <= warn.days <= 14 and warn.slope_per_day == pytest.approx(0.8, rel=0.15)
    points = daily_medians(readings)
    split = knee(list(range(len(points))), [v for _, v in points], 10)
    assert split is not None and split.lr > KNEE_LR
    assert abs(points[split.index][0] - (t0 + timedelta(days=45)).date()) <= timedelta(days=2)


def test_stable_noisy_series_has_no_knee() -> None:
    # flat with reading noise and the simulator's day-to-day wander: no knee, one line as before, no forecast
    sig = next(s for s in DEFAULT_SIGNALS if s.name == "tube_housing_temperature")
    for seed in range(20):
        readings = _series(45.0, 0.0, 0.0, 60, seed, sigma=1.5, wander=1.5)
        points = daily_medians(readings)
        split = knee(list(range(len(points))), [v for _, v in points], 10)
        assert split is not None and split.lr <= KNEE_LR, seed
        assert forecast(sig, readings, NOW, 60, 10, 90) == []
    assert knee([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], 10) is None  # too few points for two segments
