"""The AI, watched per device (issue 15, item 4): each device's positive rate and score distribution
against its own baseline, through TwinStore on a real SQLite file, the tests' false-alarm rate on
simulated stable streams, and a running node that analyses radiographs with the committed model."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid
from twin_support import NOW, both_engines, make_ds, new_store

from dicom_node.config import ConfigError, parse_config
from dicom_node.testing import NodeProcess, storescu, synthetic_cr
from twin.ai_watch import AiHistory, Outcome, Reference, fisher_exact, ks_2samp
from twin.health import DeviceHistory, Finding, Status, Thresholds, ai_rule
from twin.store import TwinStore

TODAY = datetime.combine(NOW.date(), time(), UTC)
UPDATE_DAY = TODAY - timedelta(days=4)


def _score(rng: random.Random, positive: bool) -> float:
    """An image-level score: positives above the operating threshold (0.4), most negatives have a box
    below it, some none at all (score 0)."""
    if positive:
        return round(rng.uniform(0.45, 0.95), 3)
    return 0.0 if rng.random() < 0.3 else round(rng.uniform(0.02, 0.38), 3)


def _stream(
    store: TwinStore, serial: int, days: int, per_day: int, rate_before: float, rate_after: float, seed: int,
    *, change_at: datetime = UPDATE_DAY, update: bool = True,
) -> int:
    """``per_day`` analysed chest images on each of the ``days`` days before today (from 00:05, evenly
    over the day), software 4.2.0 and, with ``update``, 4.3.0 from ``change_at``, where the positive rate
    changes; each outcome recorded as the node does after detection. Positives are exact per 100
    images (rate x 100 of each 100), so rates read exactly. Returns the device id."""
    rng = random.Random(seed)
    k = 0
    for d in range(days, 0, -1):
        for i in range(per_day):
            at = TODAY - timedelta(days=d) + timedelta(minutes=1400 / per_day * i + 5)
            after = at >= change_at
            uid = f"1.2.9.{serial}.{d}.{i}"
            store.record_instance(make_ds(uid, at, serial=f"SN-{serial}", station=None,
                                          software="4.3.0" if after and update else "4.2.0"), received_at=at)
            positive = (k % 100) < round(100 * (rate_after if after else rate_before))
            store.record_ai_outcome(uid, score=_score(rng, positive), findings=int(positive) * rng.randint(1, 3),
                                    skipped=False, at=at + timedelta(seconds=30))
            k += 1
    return store.find_device(f"SN-{serial}") or 0


def _ai(store: TwinStore, dev: int, now: datetime = NOW) -> Finding:
    return next(f for f in store.health(dev, now).findings if f.rule == "ai_shift")


@both_engines
def test_positive_rate_jump_after_a_software_update_is_named(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    jump = _stream(store, 1, days=14, per_day=50, rate_before=0.04, rate_after=0.19, seed=1)
    same = _stream(store, 2, days=14, per_day=50, rate_before=0.04, rate_after=0.04, seed=2)
    rec = store.device(jump, NOW)
    finding = next(f for f in rec["health"]["findings"] if f["rule"] == "ai_shift")
    assert finding["status"] == "WARN"
    assert finding["reason"].startswith(
        f"AI positive rate 4% -> 19% since software 4.3.0 ({UPDATE_DAY.date().isoformat()})"
    ), finding["reason"]
    assert "Fisher exact" in finding["reason"] and finding["reason"] in rec["health"]["reasons"]
    # the same update with the same behaviour: nothing beyond chance
    assert _ai(store, same).status is Status.OK, _ai(store, same).reason
    # on the day of the update the jumping device was still OK: looks use complete days only
    assert _ai(store, jump, UPDATE_DAY + timedelta(hours=20)).status is Status.OK
    # a person checks the images and records it: the baseline restarts from the qc record
    store.add_maintenance(jump, "qc", "images checked after 4.3.0", at=TODAY - timedelta(hours=1))
    after_qc = _ai(store, jump)
    assert after_qc.status is Status.OK and "learning the AI baseline (0/200" in after_qc.reason


@both_engines
def test_a_jump_too_small_for_the_first_days_after_an_update_is_caught_as_images_gather(tmp_path: Path) -> None:
    """4% -> 11% at an update: 4 days after it (100 images against the 600 before, Fisher p 0.01)
    within chance; 24 days after (600 against 600, p 5e-6) named. The change look's group after the
    update grows to ai_change_n; before, it stopped at ai_baseline_n and the jump went unseen for good
    in about 1 device of 5 at 4% -> 19% (tests/twin/measure_health.py --only ai, 2026-12-02)."""
    store = new_store(tmp_path)
    update = TODAY - timedelta(days=24)
    dev = _stream(store, 1, days=48, per_day=25, rate_before=0.04, rate_after=0.11, seed=3, change_at=update)
    early = _ai(store, dev, update + timedelta(days=4, hours=1))
    assert early.status is Status.OK and "since software 4.3.0" in early.reason, early.reason
    late = _ai(store, dev)
    assert late.status is Status.WARN, late.reason
    assert late.reason.startswith(
        f"AI positive rate 4% -> 11% since software 4.3.0 ({update.date().isoformat()}): 600 images after, 600 before"
    ), late.reason


@both_engines
def test_device_json_ai_contract_and_daily_counts(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    dev = _stream(store, 3, days=14, per_day=50, rate_before=0.04, rate_after=0.19, seed=3)
    ai = store.device(dev, NOW)["ai"]
    change = ai["config_changes"]
    assert [c["what"] for c in change] == ["software 4.3.0"]
    assert change[0]["at"].startswith(UPDATE_DAY.date().isoformat())
    base = ai["baseline"]
    assert base["config_change"] == "software 4.3.0" and base["since"] == change[0]["at"]
    # the four complete days after the update: 200 images, the whole baseline, none after it yet
    assert base["n"] == 200 and base["positive_rate"] == pytest.approx(0.19)
    assert ai["recent"] == {"n": 0, "positive_rate": None}
    assert len(ai["daily"]) == 14 and all(d["analysed"] == 50 and d["skipped"] == 0 for d in ai["daily"])
    assert sum(d["positive"] for d in ai["daily"]) == round(0.04 * 500) + round(0.19 * 200)
    assert all(0 < d["mean_score"] < 1 for d in ai["daily"])


@both_engines
def test_drift_within_one_configuration_is_flagged_against_the_baseline(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    # no configuration change: 4% for two days (the baseline is their 200), then 19% for 7 days
    dev = _stream(store, 4, days=9, per_day=100, rate_before=0.04, rate_after=0.19, seed=4,
                  change_at=TODAY - timedelta(days=7), update=False)
    assert _ai(store, dev, TODAY - timedelta(days=7, hours=-6)).status is Status.OK
    drift = _ai(store, dev)
    assert drift.status is Status.WARN
    assert drift.reason.startswith("AI positive rate 4% -> 19% over the last 7 days: 700 images"), drift.reason
    assert "baseline of 200 since the first images" in drift.reason


@both_engines
def test_outcomes_are_idempotent_skips_counted_and_bad_values_refused(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.record_instance(make_ds("1.2.11.1", NOW - timedelta(hours=2)), received_at=NOW)
    store.record_instance(make_ds("1.2.11.2", NOW - timedelta(hours=1)), received_at=NOW)
    store.record_ai_outcome("1.2.11.1", score=0.8, findings=2, skipped=False)
    store.record_ai_outcome("1.2.11.1", score=0.1, findings=0, skipped=False)  # redone after a crash
    store.record_ai_outcome("1.2.11.2", score=None, findings=0, skipped=True)
    store.record_ai_outcome("no-such-instance", score=0.5, findings=1, skipped=False)  # ignored
    dev = store.find_device("SN-1001") or 0
    daily = store.device(dev, NOW)["ai"]["daily"]
    assert daily == [{"day": NOW.date().isoformat(), "analysed": 1, "positive": 1, "skipped": 1,
                      "mean_score": 0.8}]
    for bad in ({"score": 1.5}, {"score": float("nan")}, {"findings": -1}, {"findings": True}):
        args = {"score": 0.5, "findings": 1, **bad}
        with pytest.raises(ValueError):
            store.record_ai_outcome("1.2.11.1", skipped=False, **args)  # type: ignore[arg-type]
    for bad_cfg, key in (({"ai_alpha": 0}, "twin.ai_alpha"), ({"ai_min_images": 500}, "twin.ai_min_images"),
                         ({"ai_window_days": 0}, "twin.ai_window_days")):
        with pytest.raises(ConfigError) as err:
            parse_config({"twin": bad_cfg})
        assert key in str(err.value)


@both_engines
def test_retention_keeps_the_ai_baseline_and_the_images_before_the_change(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    # 40 days of 30 images: 1080 before the update, of which the last ai_change_n (800) are kept
    dev = _stream(store, 6, days=40, per_day=30, rate_before=0.04, rate_after=0.19, seed=6)
    before = store.health(dev, NOW)
    deleted = store.apply_retention(2, now=NOW)
    assert deleted["ai_outcomes"] == 1080 - Thresholds().ai_change_n
    after = store.health(dev, NOW)
    assert [f for f in after.findings if f.rule == "ai_shift"] == [f for f in before.findings if f.rule == "ai_shift"]
    assert len(store.device(dev, NOW)["ai"]["daily"]) == 40  # the rollups stay


# --- the tests' false-alarm rate ----------------------------------------------------------------------


def test_fisher_and_ks_match_textbook_values() -> None:
    # Fisher's tea-tasting table [[3, 1], [1, 3]]: two-sided p = 34/70 (Agresti, Categorical Data Analysis 3.5.1)
    assert fisher_exact(3, 4, 1, 4) == pytest.approx(34 / 70)
    assert fisher_exact(0, 10, 0, 12) == 1.0
    d, p = ks_2samp([0.1, 0.2, 0.3], [0.1, 0.2, 0.3])
    assert (d, p) == (0.0, 1.0)
    rng = np.random.default_rng(1)
    d, p = ks_2samp(list(rng.normal(0, 1, 300)), list(rng.normal(0.5, 1, 300)))
    assert 0.1 < d < 0.4 and p < 1e-4


def _outcomes(rng: random.Random, n: int, rate: float, start: datetime) -> list[Outcome]:
    out = []
    for i in range(n):
        positive = rng.random() < rate
        out.append(Outcome(start + timedelta(minutes=15 * i), _score(rng, positive), positive))
    return out


def _look(rng: random.Random, th: Thresholds, change: bool, rate: float = 0.06) -> Status:
    """One independent look at a stable device: before / baseline / recent groups of the same rate."""
    t0 = NOW - timedelta(days=30)
    ref = Reference(t0, "software 2.0", True) if change else None
    hist = AiHistory(
        as_of=NOW,
        reference=ref,
        before=_outcomes(rng, th.ai_baseline_n, rate, t0 - timedelta(days=5)) if change else (),
        baseline=_outcomes(rng, th.ai_baseline_n, rate, t0),
        recent=_outcomes(rng, 120, rate, NOW - timedelta(days=5)),
    )
    return ai_rule(DeviceHistory(ai=hist), th).status


def test_false_warn_rate_per_look_is_at_most_ai_alpha() -> None:
    """2000 independent looks at stable devices (half just after a configuration change, so four
    tests a look) at ai_alpha 0.05: the false WARN share stays under ai_alpha plus three standard
    errors, i.e. the Bonferroni split and both p-values hold their level."""
    th = Thresholds(ai_alpha=0.05)
    rng = random.Random(11)
    looks = 2000
    warns = sum(_look(rng, th, change=i % 2 == 0) is Status.WARN for i in range(looks))
    bound = th.ai_alpha + 3 * (th.ai_alpha * (1 - th.ai_alpha) / looks) ** 0.5
    assert warns / looks <= bound, warns


def _daily_looks(rng: random.Random, th: Thresholds, days: int, per_day: int, rate: float) -> bool:
    """A stable device's stream looked at once a day the way twin.ai_watch.ai_history slices it (the
    baseline is the first ai_baseline_n images, the recent window the last ai_window_days days after
    it); True when any look WARNs."""
    t0 = NOW - timedelta(days=days)
    stream = _outcomes(rng, days * per_day, rate, t0)
    for d in range(1, days + 1):
        as_of = t0 + timedelta(days=d)
        seen = [o for o in stream if o.at < as_of]
        baseline = seen[: th.ai_baseline_n]
        start = max(baseline[-1].at, as_of - timedelta(days=th.ai_window_days)) if baseline else as_of
        recent = [o for o in seen[len(baseline):] if o.at > start] if len(baseline) >= th.ai_baseline_n else []
        hist = AiHistory(as_of=as_of, baseline=baseline, recent=recent)
        if ai_rule(DeviceHistory(ai=hist), th).status is Status.WARN:
            return True
    return False


@pytest.mark.parametrize("rate", [0.04, 0.2])
def test_stable_streams_stay_under_the_stated_yearly_bound(rate: float) -> None:
    """100 seeded stable devices, 60 days of daily looks each (96 images a day, every 15 min): the share
    with any false WARN is at most 60 x ai_alpha, the union bound docs/twin.md states (at the default
    ai_alpha, and at 100 times it, where the bound is not trivially met by zero alarms)."""
    for alpha in (Thresholds().ai_alpha, 100 * Thresholds().ai_alpha):
        th = Thresholds(ai_alpha=alpha)
        runs, days = 100, 60
        alarms = sum(_daily_looks(random.Random(1000 * seed + int(rate * 100)), th, days, 96, rate)
                     for seed in range(runs))
        assert alarms / runs <= days * th.ai_alpha, (alpha, alarms)


def test_a_jump_is_caught_by_the_look_after_the_update(tmp_path: Path) -> None:
    """Power at the defaults: 4% -> 19% is named within three complete days of 50 images."""
    rng = random.Random(7)
    th = Thresholds()
    t0 = NOW - timedelta(days=3)
    hist = AiHistory(
        as_of=NOW, reference=Reference(t0, "software 4.3.0", True),
        before=_outcomes(rng, th.ai_baseline_n, 0.04, t0 - timedelta(days=4)),
        baseline=_outcomes(rng, 150, 0.19, t0),
    )
    finding = ai_rule(DeviceHistory(ai=hist), th)
    assert finding.status is Status.WARN and "since software 4.3.0" in finding.reason


# --- through a running node -------------------------------------------------------------------------


def _radiograph(serial: str, at: datetime, seed: int, **attrs: object) -> object:
    """A 256 x 256 synthetic chest CR from one device, with technique and software in its header."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256]
    lungs = 1800 + 900 * np.exp(-(((xx - 80) / 40.0) ** 2 + ((yy - 128) / 70.0) ** 2))
    lungs += 900 * np.exp(-(((xx - 176) / 40.0) ** 2 + ((yy - 128) / 70.0) ** 2))
    pixels = np.clip(lungs + rng.normal(0, 60, lungs.shape), 0, 4095).astype("<u2").tobytes()
    stamp = at.strftime("%Y%m%d%H%M%S") + "+0000"
    return synthetic_cr(
        256, 256, pixels, Manufacturer="Acme Medical", ManufacturerModelName="DR-9000", DeviceSerialNumber=serial,
        StationName="XR77", SoftwareVersions="4.2.0", KVP="110", ExposureInuAs=3200, AcquisitionDateTime=stamp,
        **attrs,
    )


def test_running_node_shows_tube_load_and_ai_daily_counts(
    node_factory: type[NodeProcess], dcmtk: None, tmp_path: Path
) -> None:
    """Radiographs from one device go through a running ``dicom-node serve`` with the committed model:
    ``device ID --json`` shows their tube load and the AI's daily counts (analysed, positive, skipped)."""
    node = node_factory(twin={"evaluate_every_s": 1.0, "tube_rated_life": 5e6}).start()
    now = datetime.now(UTC) - timedelta(minutes=10)
    study = generate_uid()
    files = []
    for i in range(4):
        ds = _radiograph("SN-NODE", now + timedelta(minutes=i), seed=i, StudyInstanceUID=study)
        if i == 3:
            ds.BodyPartExamined = "HAND"  # stored and fed to the twin, not analysed: skipped
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
        files.append(path)
    res = storescu(node.port, files)
    assert res.returncode == 0, res.stderr
    node.wait_jobs_settled(4, timeout_s=300)
    rec = json.loads(node.cli("device", "SN-NODE", "--json").stdout)
    tube = rec["tube"]
    assert tube["exposures"] == 4 and tube["exposures_without_load"] == 0
    assert tube["heat_units"] == pytest.approx(4 * 1.35 * 110 * 3.2, rel=1e-3)
    assert tube["used_fraction"] == pytest.approx(tube["heat_units"] / 5e6, rel=1e-3)
    assert tube["rate_hu_per_day"] is not None and tube["projected_replacement"] is not None
    ai_days = rec["ai"]["daily"]
    assert sum(d["analysed"] for d in ai_days) == 3 and sum(d["skipped"] for d in ai_days) == 1
    # what the node itself recorded for the study: positive = at least one finding at the threshold
    instances = json.loads(node.cli("results", study, "--json").stdout)["instances"]
    analysed = [i for i in instances if i["outcome"] == "analysed"]
    assert len(analysed) == 3
    assert sum(d["positive"] for d in ai_days) == sum(1 for i in analysed if i["findings"])
    scores = sum(d["mean_score"] * d["analysed"] for d in ai_days if d["mean_score"] is not None)
    assert scores == pytest.approx(sum(i["opacity_probability"] for i in analysed), abs=1e-3)
    plain = node.cli("device", "SN-NODE").stdout
    assert "tube: " in plain and "AI: " in plain and "3 analysed, 1 skipped" in plain
    assert node.stop() == 0
