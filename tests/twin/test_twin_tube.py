"""Tube wear from the headers (issue 15, item 3): heat units since the last ``tube`` record, the
fraction of the rated life used and the projected replacement, through TwinStore on a real SQLite
file and through the commands."""

from __future__ import annotations

import json
import sqlite3
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from twin_support import NOW, both_engines, connect_for, make_ds, new_store, run_twin_cli

from dicom_node.config import ConfigError, parse_config
from twin.db import thread_local_connect
from twin.health import Status, Thresholds
from twin.store import TwinStore
from twin.tube import heat_units

KVP, MAS = 120.0, 2.5  # make_ds: KVP 120, ExposureInuAs 2500


def _send(store: TwinStore, days: int, per_day: int, *, prefix: str = "7", without: int = 0) -> None:
    """``per_day`` exposures a day over the ``days`` days before NOW; ``without`` of them a day lack
    kVp (half) or mAs (half)."""
    for d in range(days, 0, -1):
        for i in range(per_day):
            at = NOW - timedelta(days=d) + timedelta(minutes=30 * i)
            ds = make_ds(f"{prefix}.{d}.{i}", at)
            if i < without:
                del ds[("KVP" if i % 2 else "ExposureInuAs")]
            store.record_instance(ds, received_at=at)


def _tube(store: TwinStore) -> dict:
    dev = store.find_device("SN-1001")
    assert dev is not None
    return store.device(dev, NOW)["tube"]


@both_engines
def test_load_without_a_rated_life_shows_sums_and_counts_exposures_without_load(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    _send(store, days=10, per_day=6, without=2)
    tube = _tube(store)
    loaded = 10 * 4
    assert (tube["exposures"], tube["exposures_without_load"]) == (60, 20)
    assert tube["heat_units"] == pytest.approx(loaded * heat_units(KVP, MAS, 1.35))
    assert tube["mas"] == pytest.approx((60 - 10) * MAS)  # the exposures without kVp still have mAs
    assert tube["since"] is None and tube["rated_life_hu"] is None
    assert tube["used_fraction"] is None and tube["projected_replacement"] is None
    assert tube["rate_hu_per_day"] == pytest.approx(tube["heat_units"] / 10, rel=0.01)
    assert "1.35 x kVp x mAs" in tube["formula"]
    finding = {f.rule: f for f in store.health(store.find_device("SN-1001") or 0, NOW).findings}["tube_life"]
    assert finding.status is Status.OK
    assert "rated life unknown" in finding.reason and "20 without kVp or mAs" in finding.reason


@both_engines
def test_rated_life_gives_fraction_projection_warn_and_alert(tmp_path: Path) -> None:
    per_exposure = heat_units(KVP, MAS, 1.0)
    store = TwinStore(connect_for(tmp_path),
                      thresholds=Thresholds(tube_heat_unit_factor=1.0, tube_rate_days=20))
    _send(store, days=40, per_day=10)
    used = 400 * per_exposure
    dev = store.find_device("SN-1001") or 0
    for fraction, status in ((0.5, Status.OK), (0.85, Status.WARN), (0.97, Status.ALERT)):
        rated = used / fraction
        store.thresholds = Thresholds(tube_heat_unit_factor=1.0, tube_rate_days=20, tube_rated_life=rated)
        rec = store.device(dev, NOW)
        tube = rec["tube"]
        assert tube["used_fraction"] == pytest.approx(fraction, rel=1e-3)
        # 10 exposures a day over the last 20 days: the remaining life at that rate
        assert tube["rate_hu_per_day"] == pytest.approx(10 * per_exposure, rel=0.01)
        expected = (NOW + timedelta(days=(rated - used) / (10 * per_exposure))).date()
        assert abs((expected - date.fromisoformat(tube["projected_replacement"])).days) <= 1
        finding = next(f for f in rec["health"]["findings"] if f["rule"] == "tube_life")
        assert finding["status"] == status.value
        assert f"{fraction:.0%} of its rated life" in finding["reason"]
        assert f"replacement projected {tube['projected_replacement']}" in finding["reason"]
        if status is not Status.OK:
            assert finding["reason"] in rec["health"]["reasons"] and finding["since"] is not None


@both_engines
def test_tube_record_restarts_the_load_from_that_moment(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    _send(store, days=5, per_day=8)  # 8 a day, from midnight every 30 min
    dev = store.find_device("SN-1001") or 0
    swapped = NOW - timedelta(days=3) + timedelta(hours=2, minutes=15)  # after 5 of that day's 8
    store.add_maintenance(dev, "tube", "tube replaced", at=swapped)
    tube = _tube(store)
    assert tube["since"].startswith(swapped.isoformat()[:19])
    assert tube["exposures"] == 3 + 2 * 8  # the rest of that day, then two whole days
    assert tube["heat_units"] == pytest.approx(19 * heat_units(KVP, MAS, 1.35))
    # retention drops raw rows; whole days come from the rollups, so the count stays
    store.apply_retention(1, now=NOW)
    assert _tube(store)["exposures"] == 19


def test_maintenance_add_accepts_tube_and_device_json_shows_the_load(tmp_path: Path) -> None:
    storage = tmp_path / "var"
    storage.mkdir()
    (tmp_path / "config.yaml").write_text("storage:\n  dir: ./var\ntwin:\n  tube_rated_life: 1000000\n")
    store = TwinStore(thread_local_connect(storage / "node.db"))
    now = datetime.now(NOW.tzinfo)
    for i in range(12):
        at = now - timedelta(hours=12 - i)
        store.record_instance(make_ds(f"8.{i}", at), received_at=at)
    cfg = ["--config", str(tmp_path / "config.yaml")]
    code, out, err = run_twin_cli("maintenance", "add", "SN-1001", "--kind", "tube", "--note", "new tube",
                                  "--at", (now - timedelta(hours=6, minutes=30)).isoformat(), *cfg)
    assert code == 0, err
    assert "(tube)" in out
    code, out, err = run_twin_cli("maintenance", "add", "SN-1001", "--kind", "tubes", "--note", "x", *cfg)
    assert code == 2 and "tube" in out + err
    code, out, err = run_twin_cli("device", "SN-1001", "--json", *cfg)
    assert code == 0, err
    tube = json.loads(out)["tube"]
    assert tube["exposures"] == 6 and tube["rated_life_hu"] == 1000000
    assert tube["used_fraction"] == pytest.approx(6 * heat_units(KVP, MAS, 1.35) / 1e6, rel=1e-3)
    assert set(tube) >= {"since", "exposures", "mas", "heat_units", "rated_life_hu", "used_fraction",
                         "rate_hu_per_day", "projected_replacement", "formula"}
    code, plain, _ = run_twin_cli("device", "SN-1001", *cfg)
    assert code == 0
    assert f"tube: {tube['heat_units']:.0f} HU" in plain and "replacement projected" in plain


def test_an_older_database_gains_the_load_columns_filled_from_its_raw_rows(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    _send(store, days=3, per_day=4)
    db = sqlite3.connect(tmp_path / "node.db")
    old = "device_id, day, acquisitions, di_n, di_sum, di_sumsq, dap_sum, mas_sum, faults, warnings, events"
    db.executescript(
        "CREATE TABLE old_daily (device_id INTEGER, day TEXT, acquisitions INTEGER NOT NULL DEFAULT 0, "
        "di_n INTEGER NOT NULL DEFAULT 0, di_sum FLOAT NOT NULL DEFAULT 0, di_sumsq FLOAT NOT NULL DEFAULT 0, "
        "dap_sum FLOAT NOT NULL DEFAULT 0, mas_sum FLOAT NOT NULL DEFAULT 0, faults INTEGER NOT NULL DEFAULT 0, "
        "warnings INTEGER NOT NULL DEFAULT 0, events INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (device_id, day));"
        f"INSERT INTO old_daily SELECT {old} FROM twin_daily; DROP TABLE twin_daily;"
        "ALTER TABLE old_daily RENAME TO twin_daily; DROP TABLE twin_ai_outcomes;"
    )
    db.close()
    again = new_store(tmp_path)
    assert _tube(again)["heat_units"] == pytest.approx(12 * heat_units(KVP, MAS, 1.35))
    assert _tube(again)["exposures"] == 12
    again.record_ai_outcome("7.1.0", score=0.5, findings=1, skipped=False)  # the new table is there


def test_bad_tube_settings_are_one_line_naming_the_key() -> None:
    for bad, key in (({"tube_rated_life": -5}, "twin.tube_rated_life"),
                     ({"tube_heat_unit_factor": 0}, "twin.tube_heat_unit_factor"),
                     ({"tube_warn_fraction": 0.99}, "twin.tube_warn_fraction"),
                     ({"tube_rate_days": "often"}, "twin.tube_rate_days")):
        with pytest.raises(ConfigError) as err:
            parse_config({"twin": bad})
        assert key in str(err.value) and "\n" not in str(err.value)
    th = parse_config({"twin": {"tube_rated_life": 5e8, "tube_heat_unit_factor": 1.0}}).twin.thresholds()
    assert (th.tube_rated_life, th.tube_heat_unit_factor) == (5e8, 1.0)
