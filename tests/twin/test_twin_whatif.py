"""What-if (issue 15, item 5): the health rules replayed over a device's stored history with changed
thresholds, through ``twin.whatif`` and ``dicom-node device ID --what-if``; nothing in the database
changes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from twin_support import NOW, both_engines, connect_for, new_store, ramp_log, run_twin_cli

from twin.db import TABLES, rows, thread_local_connect
from twin.health import Status, Thresholds
from twin.store import TwinStore
from twin.whatif import WhatIfError, apply_overrides, replay, what_if


def _dump_hash(db_file: Path) -> str:
    """Hash of every row of every table (the database's content, whatever the WAL holds)."""
    conn = sqlite3.connect(db_file)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


def _rows_hash(db: Any) -> str:
    """Hash of every row of every twin table, on either engine."""
    dump = "\n".join(repr(rows(db, f"SELECT * FROM {t} ORDER BY 1")) for t in TABLES)
    return hashlib.sha256(dump.encode()).hexdigest()


@both_engines
def test_replay_judges_each_day_from_the_rows_stored_up_to_it(tmp_path: Path) -> None:
    # tube housing 45 °C rising 0.3 °C/day over 40 days: 57 °C at NOW, its 60 °C warn limit 10 days on
    ramp_log(tmp_path / "side", "tube_housing_temperature", 45.0, 0.3)
    store = new_store(tmp_path)
    store.ingest_sidecar(tmp_path / "side", settle_s=0)
    dev = store.find_device("SN-1001") or 0
    db = connect_for(tmp_path)()
    start = (NOW - timedelta(days=30)).date()
    verdicts = replay(db, dev, Thresholds(), start, NOW)
    forecast_days = sorted({v.day for v in verdicts if v.rule == "tube_housing_temperature_forecast"})
    # WARN once the crossing is within 14 days: about 4 days before NOW, never 30 days before it
    assert forecast_days and forecast_days[-1] == NOW.date()
    assert NOW.date() - timedelta(days=8) <= forecast_days[0] <= NOW.date() - timedelta(days=2)
    # the last replayed day is what the node says now
    now_rules = {f.rule for f in store.health(dev, NOW).findings if f.status is not Status.OK}
    assert {v.rule for v in verdicts if v.day == NOW.date()} == now_rules
    # a day before any telemetry has no verdict at all
    assert replay(db, dev, Thresholds(), (NOW - timedelta(days=45)).date(), NOW - timedelta(days=41)) == []


@both_engines
def test_what_if_shows_earlier_and_new_alerts_and_changes_nothing(tmp_path: Path) -> None:
    ramp_log(tmp_path / "side", "tube_housing_temperature", 45.0, 0.3)
    store = new_store(tmp_path)
    store.ingest_sidecar(tmp_path / "side", settle_s=0)
    dev = store.find_device("SN-1001") or 0
    before = _rows_hash(store._connect())
    db = connect_for(tmp_path)()
    start = (NOW - timedelta(days=35)).date()
    result = what_if(db, dev, Thresholds(), {"forecast_warn_days": "30",
                                             "signals.tube_housing_temperature.warn": ",50"}, start, NOW)
    rules = {r["rule"]: r for r in result["rules"]}
    forecast = rules["tube_housing_temperature_forecast"]
    assert forecast["change"] == "earlier"
    assert forecast["what_if"]["first"] < forecast["current"]["first"]
    # the level passed 50 °C about 23 days before NOW: the range rule (2 readings out) would have said WARN
    rng = rules["tube_housing_temperature"]
    assert rng["change"] == "would fire" and rng["current"] is None and rng["what_if"]["worst"] == "WARN"
    first = date.fromisoformat(rng["what_if"]["first"])
    assert NOW.date() - timedelta(days=25) <= first <= NOW.date() - timedelta(days=21)
    assert "above 50 °C" in rng["what_if"]["first_reason"]
    assert any(t["rule"] == "tube_housing_temperature" and t["day"] == rng["what_if"]["first"]
               for t in result["timeline"])
    # with a looser warn limit and a shorter warning time the forecast would no longer fire
    looser = what_if(db, dev, Thresholds(), {"forecast_warn_days": "3", "forecast_alert_days": "1",
                                             "signals.tube_housing_temperature.warn": ",66"}, start, NOW)
    gone = {r["rule"]: r["change"] for r in looser["rules"]}
    assert gone["tube_housing_temperature_forecast"] == "would no longer fire"
    assert _rows_hash(store._connect()) == before


def test_bad_overrides_name_the_valid_names() -> None:
    th = Thresholds()
    with pytest.raises(WhatIfError, match="valid names: calibration_warn_days, .*forecast_warn_days"):
        apply_overrides(th, {"forcast_warn_days": "3"})
    with pytest.raises(WhatIfError, match="forecast_min_days=ten: a whole number expected"):
        apply_overrides(th, {"forecast_min_days": "ten"})
    with pytest.raises(WhatIfError, match="ewma_l=nan"):
        apply_overrides(th, {"ewma_l": "nan"})
    with pytest.raises(WhatIfError, match="LO above HI"):
        apply_overrides(th, {"signals.cooling_water_temperature.warn": "30,5"})
    with pytest.raises(WhatIfError, match="alert high bound inside the warn range"):
        apply_overrides(th, {"signals.tube_housing_temperature.warn": ",80"})
    with pytest.raises(WhatIfError, match="unknown name"):
        apply_overrides(th, {"signals.no_such_signal.warn": "1,2"})
    with pytest.raises(WhatIfError, match="unknown name"):
        apply_overrides(th, {"signals.hv_arcs.warn": "1,2"})  # counted: no range to change
    changed = apply_overrides(th, {"fault_baseline_upper": "false", "signals.battery_charge.alert": "20,null"})
    assert changed.fault_baseline_upper is False
    assert next(s for s in changed.signals if s.name == "battery_charge").alert == (20.0, None)
    assert th == Thresholds()  # the current thresholds are not touched
    fields = {f.name: f.default for f in dataclasses.fields(th)}
    unknown = [name for name, default in fields.items() if default is None]  # e.g. a rated life
    for name in unknown:
        assert getattr(apply_overrides(th, {name: "1e6"}), name) == 1e6
        assert getattr(apply_overrides(th, {name: "null"}), name) is None
        with pytest.raises(WhatIfError, match="a number expected"):
            apply_overrides(th, {name: "big"})


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    """A config whose node.db holds a ramping device (SN-RAMP) and a stable one (SN-FLAT), up to now."""
    now = datetime.now(UTC) - timedelta(minutes=5)
    (tmp_path / "var").mkdir()
    (tmp_path / "config.yaml").write_text("storage:\n  dir: ./var\n")
    ramp_log(tmp_path / "side", "generator_tank_temperature", 40.0, 0.3, end=now, serial="SN-RAMP")
    ramp_log(tmp_path / "side", "generator_tank_temperature", 40.0, 0.0, end=now, serial="SN-FLAT")
    TwinStore(thread_local_connect(tmp_path / "var" / "node.db")).ingest_sidecar(tmp_path / "side", settle_s=0)
    return tmp_path




def test_what_if_command(site: Path) -> None:
    cfg = str(site / "config.yaml")
    before = _dump_hash(site / "var" / "node.db")
    code, out, err = run_twin_cli("device", "SN-RAMP", "--what-if", "signals.generator_tank_temperature.warn=,48",
                          "--what-if", "forecast_warn_days=21", "--since",
                          (datetime.now(UTC) - timedelta(days=30)).date().isoformat(), "--json", "--config", cfg)
    assert code == 0, err
    result = json.loads(out)
    rules = {r["rule"]: r for r in result["rules"]}
    assert result["days"] == 31 and result["overrides"]["forecast_warn_days"] == "21"
    assert rules["generator_tank_temperature"]["change"] == "would fire"
    assert rules["generator_tank_temperature_forecast"]["change"] in ("earlier", "same")
    code, out, _ = run_twin_cli("device", "SN-RAMP", "--what-if", "signals.generator_tank_temperature.warn=,48",
                        "--config", cfg)
    assert code == 0 and "would fire" in out and "nothing was changed" in out
    assert "generator tank temperature" in out and "above 48 °C" in out
    code, out, _ = run_twin_cli("device", "SN-FLAT", "--what-if", "forecast_warn_days=30", "--json", "--config", cfg)
    assert code == 0 and json.loads(out)["rules"] == []  # a stable device stays OK under both
    assert _dump_hash(site / "var" / "node.db") == before


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--what-if", "forecast_warn_dayz=3"], 2, "valid names: calibration_warn_days"),
        (["--what-if", "forecast_warn_days"], 2, "NAME=VALUE expected"),
        (["--what-if", "temp_consecutive=two"], 2, "a whole number expected"),
        (["--what-if", "signals.generator_tank_temperature.warn=60,50"], 2, "LO above HI"),
        (["--what-if", "temp_consecutive=3", "--since", "last week"], 2, "--since: a date"),
        (["--since", "2025-01-01"], 2, "only with --what-if"),
        (["--what-if", "temp_consecutive=3", "--remove"], 2, "not with --remove"),
    ],
)
def test_what_if_command_errors_are_one_line(site: Path, args: list[str], code: int, words: str) -> None:
    got, out, err = run_twin_cli("device", "SN-RAMP", *args, "--config", str(site / "config.yaml"))
    assert got == code and words in err and len(err.strip().splitlines()) == 1, err
    got, _, err = run_twin_cli("device", "SN-NONE", "--what-if", "temp_consecutive=3",
                               "--config", str(site / "config.yaml"))
    assert got == 1 and "no device" in err
