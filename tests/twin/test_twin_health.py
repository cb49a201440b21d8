"""Health rules through the store: quiet when stable, firing on drift, fault bursts, lapses, silence."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from twin_support import NOW, both_engines, di_series, event, make_ds, new_store, times, write_jsonl

from twin.health import DeviceHistory, Status, Thresholds, assess, cusum_arl, decision_interval, fault_rule
from twin.store import TwinStore

CALIBRATED = (NOW - timedelta(days=30)).date()


def _feed(store: TwinStore, dis: list[float], ts: list[datetime], prefix: str, **kw: object) -> int:
    dev = 0
    rng = random.Random(prefix)
    for i, (di, t) in enumerate(zip(dis, ts, strict=True)):
        temp = round(rng.gauss(31, 0.8), 1)
        ds = make_ds(f"{prefix}.{i}", t, di=di, temperature=temp, calibrated=CALIBRATED, **kw)  # type: ignore[arg-type]
        dev = store.record_instance(ds, received_at=t)
    return dev


def _background_log(side: Path, start: datetime, end: datetime, seed: int, rate: float = 0.1) -> None:
    """Telemetry every 4 h and background faults at ``rate`` per day, as a sidecar log."""
    rng = random.Random(seed)
    events = []
    t = start
    while t < end:
        events.append(event(t, "telemetry", values={"detector_temperature": round(rng.gauss(31, 0.8), 1)}))
        if rng.random() < rate / 6:
            events.append(event(t + timedelta(minutes=7), "fault", code="E-GEN-201", message="generator overload"))
        t += timedelta(hours=4)
    write_jsonl(side / "XR01" / "events.jsonl", events)


@both_engines
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_stable_device_stays_ok_over_500_acquisitions(tmp_path: Path, seed: int) -> None:
    store = new_store(tmp_path)
    n = 500
    ts = times(n, NOW, every=timedelta(minutes=29))  # about ten days
    dis = di_series(n, seed, mean=0.2, sigma=0.8)
    _background_log(tmp_path / "side", ts[0], NOW, seed)
    store.ingest_sidecar(tmp_path / "side", settle_s=0)
    for start in range(0, n, 25):
        dev = _feed(store, dis[start : start + 25], ts[start : start + 25], f"9.{seed}.{start}")
        at = ts[min(start + 24, n - 1)] + timedelta(minutes=1)
        health = store.health(dev, at)
        assert health.status is Status.OK, (start, health.reasons)
    evaluated = store.evaluate(NOW + timedelta(minutes=1))
    assert [e["status"] for e in evaluated] == ["OK"]


@both_engines
@pytest.mark.parametrize(("seed", "rate", "step"), [(11, 0.1, 0.0), (12, 0.05, 0.0), (13, 0.0, 2.0)])
def test_drifting_device_turns_warn_within_30_acquisitions(tmp_path: Path, seed: int, rate: float, step: float) -> None:
    store = new_store(tmp_path)
    k = 81  # drift starts at acquisition 81, after the 50-image baseline
    n = k + 40
    ts = times(n, NOW)
    dis = di_series(n, seed, drift_from=k, rate=rate, step=step)
    dev = _feed(store, dis[: k - 1], ts[: k - 1], f"7.{seed}")
    assert store.health(dev, ts[k - 2]).status is Status.OK
    detected = None
    for i in range(k - 1, n):
        _feed(store, [dis[i]], [ts[i]], f"7.{seed}.{i}")
        health = store.health(dev, ts[i])
        if health.status is not Status.OK:
            detected = i - (k - 1) + 1
            break
    assert detected is not None and detected <= 30, detected
    assert any("exposure index drifting" in r or "deviation index beyond" in r for r in health.reasons)


@both_engines
def test_fault_burst_raises_an_alert_naming_the_faults(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    side = tmp_path / "side"
    ts = times(300, NOW - timedelta(hours=8), every=timedelta(hours=2))  # 25 days of use
    dev = _feed(store, di_series(300, 5), ts, "8")
    _background_log(side, ts[0], NOW - timedelta(hours=8), 5)
    store.ingest_sidecar(side, settle_s=0)
    assert store.health(dev, NOW - timedelta(hours=7)).status is Status.OK
    burst = [
        event(NOW - timedelta(minutes=30 * i), "fault", code=c, message="x")
        for i, c in enumerate(["E-DET-310"] * 7 + ["E-GEN-201"] * 3)
    ]
    write_jsonl(side / "XR01" / "events.jsonl", burst, mode="a")
    store.ingest_sidecar(side, settle_s=0)
    health = store.health(dev, NOW)
    assert health.status is Status.ALERT
    reason = next(r for r in health.reasons if r.startswith("fault rate up"))
    assert "E-DET-310 x7" in reason and "E-GEN-201" in reason
    record = store.device(dev, NOW)
    assert record["faults"] >= 10 and record["fault_events"][0]["code"] in ("E-DET-310", "E-GEN-201")


@both_engines
def test_calibration_lapse_warns_then_alerts(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    old = NOW.date() - timedelta(days=200)
    dev = store.record_instance(make_ds("1.1", NOW, calibrated=old), received_at=NOW)
    health = store.health(dev, NOW)
    assert health.status is Status.WARN and "calibration overdue" in health.reasons[0]
    assert health.since is not None and health.since.date() == old + timedelta(days=180)
    assert store.health(dev, NOW + timedelta(days=200)).status is Status.ALERT
    store.add_maintenance(dev, "calibration", "gain and offset calibration", NOW + timedelta(days=1))
    assert store.health(dev, NOW + timedelta(days=2)).status is Status.OK


@both_engines
def test_detector_temperature_out_of_range(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ts = times(3, NOW)
    dev = 0
    for i, (t, temp) in enumerate(zip(ts, (31.0, 47.5, 48.0), strict=True)):
        dev = store.record_instance(make_ds(f"2.{i}", t, temperature=temp, calibrated=CALIBRATED), received_at=t)
    health = store.health(dev, NOW)
    assert health.status is Status.ALERT and "detector temperature 48.0" in health.reasons[0]
    # one hot reading alone is not enough
    (tmp_path / "b").mkdir()
    store2 = new_store(tmp_path / "b")
    for i, (t, temp) in enumerate(zip(ts, (31.0, 31.5, 48.0), strict=True)):
        dev = store2.record_instance(make_ds(f"3.{i}", t, temperature=temp, calibrated=CALIBRATED), received_at=t)
    assert store2.health(dev, NOW).status is Status.OK


@both_engines
def test_silent_device(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ts = times(200, NOW - timedelta(days=5), every=timedelta(hours=1))
    dev = _feed(store, di_series(200, 9), ts, "4")
    assert store.health(dev, ts[-1] + timedelta(hours=2)).status is Status.OK
    warn = store.health(dev, NOW - timedelta(days=3))
    assert warn.status is Status.WARN and warn.reasons[0].startswith("silent")
    alert = store.health(dev, NOW)
    assert alert.status is Status.ALERT and alert.since == ts[-1]


@both_engines
def test_service_interval_projects_next_due_date(tmp_path: Path) -> None:
    th = Thresholds(service_interval_days=182, service_interval_exposures=1000)
    start = NOW - timedelta(days=10)
    busy = DeviceHistory(first_seen=start, service_start=start, exposures_since_service=800, daily_exposure_rate=80)
    health = assess(busy, NOW, th)
    service = next(f for f in health.findings if f.rule == "service")
    assert service.status is Status.WARN and "maintenance due" in service.reason  # 200 left at 80/day
    overdue = DeviceHistory(first_seen=start, service_start=NOW - timedelta(days=200))
    assert next(f for f in assess(overdue, NOW, th).findings if f.rule == "service").status is Status.ALERT
    quiet = DeviceHistory(first_seen=start, service_start=start, exposures_since_service=10, daily_exposure_rate=1)
    found = next(f for f in assess(quiet, NOW, th).findings if f.rule == "service")
    assert found.status is Status.OK and "next maintenance due" in found.reason
    store = new_store(tmp_path)
    dev = store.record_instance(make_ds("5.1", NOW), received_at=NOW)
    assert store.device(dev, NOW)["next_maintenance_due"].startswith((NOW + timedelta(days=182)).date().isoformat())


def test_poisson_cusum_decision_interval_meets_its_arl() -> None:
    """Brook & Evans Markov-chain ARL: in control >= target, out of control short."""
    k = round(1 / 1.0986 * 20)  # lambda0 0.5, lambda1 1.5
    h = decision_interval(0.5, k, 1000.0)
    assert cusum_arl(0.5, k, h) >= 1000 > cusum_arl(0.5, k, h - 1)
    assert cusum_arl(1.5, k, h) < 15


def test_fault_rule_uses_the_device_baseline() -> None:
    """A device that always has 3 faults a day is not alarming at 3 a day; a quiet one is."""
    days = [NOW.date() - timedelta(days=d) for d in range(60)]
    noisy = DeviceHistory(first_seen=NOW - timedelta(days=60), faults={d: {"E1": 3} for d in days})
    assert fault_rule(noisy, NOW, Thresholds()).status is Status.OK
    recent: dict[date, dict[str, int]] = {d: {"E1": 3} for d in days[:3]}
    quiet = DeviceHistory(first_seen=NOW - timedelta(days=60), faults=recent)
    assert fault_rule(quiet, NOW, Thresholds()).status is Status.ALERT


@pytest.mark.parametrize(
    "first_seen",
    [
        NOW + timedelta(hours=23),
        datetime(9999, 12, 31, 23, tzinfo=NOW.tzinfo),
        datetime(1, 1, 1, tzinfo=NOW.tzinfo),
        None,
    ],
)
def test_rules_are_safe_on_any_history(first_seen: datetime | None) -> None:
    """Issue 12 item 3: a device first seen tomorrow (a clock ahead) left the fault rule no day and
    raised IndexError on every page; no history may make a rule raise."""
    far = datetime(9999, 12, 31, tzinfo=NOW.tzinfo)
    histories = [
        DeviceHistory(first_seen=first_seen),
        DeviceHistory(
            first_seen=first_seen,
            last_acquisition=first_seen,
            deviation_indices=[(NOW, 4.0)],
            acquisition_times=[NOW],
            faults={(NOW + timedelta(days=3)).date(): {"E1": 2}, far.date(): {"": 1}},
            last_calibration=far,
            signals={
                "detector_temperature": [(NOW, 60.0)],
                "tube_housing_temperature": [(NOW - timedelta(days=i), 59.0 - i) for i in range(20, 0, -1)]
                + [(far, 1e308)],
                "hv_arcs": [(NOW, 1e9), (far, 5.0)],
            },
            service_start=first_seen,
            exposures_since_service=10**9,
            daily_exposure_rate=1e-300,
        ),
    ]
    for th in (Thresholds(), Thresholds(baseline_n=0, temp_consecutive=0, drift_persist=0, di_window=1)):
        for h in histories:
            health = assess(h, NOW, th)
            # eight rules, plus each signal's range (or count) and forecast rule where it has readings
            assert health.status in set(Status) and len(health.findings) == (8 + 2 if h.signals == {} else 8 + 5)
            assert health.as_dict()["status"] == health.status.value
