#!/usr/bin/env python3
"""Simulate a fleet of X-ray modalities: phantom images over C-STORE plus each device's sidecar log.

Each device sends ``--images`` phantom radiographs (models.phantoms) acquired over the last
``--days`` days, with realistic headers (identity, software, detector, technique, exposure index),
and writes its own event log (power, telemetry, calibration, rare faults) under ``--sidecar-dir``.
Faults to inject, each naming a device by its 1-based number:

    --drift 2:40[:0.1]        exposure-index drift from acquisition 40, +0.1 DI per acquisition
    --calibration-lapse 3[:400]   detector last calibrated 400 days ago
    --fault-burst 1[:12]      12 faults in the last hours
    --software-update 2:25[:VERSION]  a new SoftwareVersions from acquisition 25
    --silent 4[:4]            nothing (images or log) for the last 4 days

Degradations (``--degrade DEV:KIND[:ARGS]``, repeatable; docs/twin.md, Modality simulator):

    --degrade 2:ramp:tube_housing_temperature[:60]   the signal ramps from its normal level at the
                              start of the window to its alert limit 60 days later (default --days + 10)
    --degrade 3:arcs[:7[:4]]  high-voltage arcs rise over the last 7 days from 0.2/day to 4/day
    --degrade 1:tube[:3]      heavy use: 3x the images, kV +25 (at most 150) and 4x the mAs
    --degrade 4:processing:25[:VERSION]  a software update at acquisition 25 that changes the image
                              processing (a harder tone curve) and so the AI's positive rate

``--all-signals`` makes every device log every default signal of twin.signals at its normal level
(the stable model that the degradations start from), not only the detector temperature.

Examples::

    python scripts/simulate_modality.py --to DICOM_NODE@127.0.0.1:11112 --devices 4 --images 60 \\
        --sidecar-dir var/sidecar --drift 2:40 --fault-burst 1 --silent 4 --json
    python scripts/simulate_modality.py --out-dir /tmp/sim --devices 2 --images 10

The plan (times, exposures, events) depends only on ``--seed`` and the time the run starts, so a
test can rebuild it. Nothing about patients is logged.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("simulate_modality")

DI_SIGMA = 0.8  # spread of the deviation index of a stable device, in DI units
FAULT_RATE = 0.1  # background faults per device per day
FAULT_CODES = ("E-GEN-201 generator overload", "E-DET-310 detector link lost", "E-COL-120 collimator timeout")
TELEMETRY_EVERY_H = 4  # one telemetry line every 4 hours

#: A healthy device's level of each default signal (twin.signals.DEFAULT_SIGNALS), the spread of one
#: reading, and the spread of the day-to-day wander of the level (AR(1), DAY_PHI): a room warms on a
#: busy day, cooling water follows the season. Levels sit in the middle of the normal ranges of
#: docs/twin.md; the spreads are of the size service logs show, not measured on a real fleet.
NORMAL: dict[str, tuple[float, float, float]] = {
    "detector_temperature": (31.0, 0.8, 0.0),
    "tube_housing_temperature": (45.0, 1.5, 1.5),
    "generator_tank_temperature": (40.0, 1.0, 1.0),
    "cooling_water_temperature": (18.0, 0.8, 1.0),
    "cooling_water_flow": (5.0, 0.2, 0.2),
    "anode_bearing_vibration": (0.8, 0.08, 0.05),
    "battery_charge": (80.0, 5.0, 3.0),
}
DAY_PHI = 0.7
ARC_BASE_RATE = 0.2  # high-voltage arcs per day of a healthy generator
AI_POSITIVE_RATE = 0.25  # share of chest films the detector calls positive, before a processing change
AI_POSITIVE_AFTER = 0.40  # ... and after it (a harder tone curve makes opacities stand out)


@dataclass(frozen=True)
class Degradation:
    """One degradation of a device (``--degrade DEV:KIND[:ARGS]``)."""

    kind: str  # ramp, arcs, tube, processing
    signal: str = ""  # ramp: the signal
    days: float = 0.0  # ramp: days from the normal level to the alert limit; arcs: days of the rise
    peak: float = 0.0  # arcs: arcs per day at the end of the rise; tube: the use factor
    from_acquisition: int = 0  # processing: the first acquisition after the update
    version: str = ""  # processing: the new SoftwareVersions


class SignalModel:
    """A signal of one device: its normal level, a day-to-day AR(1) wander and reading noise, plus an
    optional linear ramp of ``rate`` per day from ``ramp_from``. The measurement script
    (tests/twin/measure_health.py) draws its devices from this same model."""

    def __init__(self, name: str, rng: random.Random, origin: datetime, *, ramp_from: datetime | None = None,
                 rate: float = 0.0) -> None:
        self.level, self.sd, self.day_sd = NORMAL[name]
        self.rng, self.origin, self.ramp_from, self.rate = rng, origin, ramp_from, rate
        self._days: list[float] = []

    def _wander(self, day: int) -> float:
        while len(self._days) <= day:
            prev = self._days[-1] if self._days else self.rng.gauss(0, self.day_sd)
            self._days.append(DAY_PHI * prev + math.sqrt(1 - DAY_PHI**2) * self.rng.gauss(0, self.day_sd))
        return self._days[day]

    def value(self, t: datetime) -> float:
        """The reading at ``t`` (call in time order for the same draws)."""
        day = max(0, int((t - self.origin).total_seconds() // 86400))
        ramp = self.rate * max(0.0, (t - self.ramp_from).total_seconds() / 86400) if self.ramp_from else 0.0
        return round(self.level + ramp + self._wander(day) + self.rng.gauss(0, self.sd), 2)


def ramp_limits(name: str) -> tuple[str, float, float]:
    """(side, warn limit, alert limit) a ramp of ``name`` heads for: the high side when it has one."""
    from twin.signals import DEFAULT_SIGNALS

    sig = next((s for s in DEFAULT_SIGNALS if s.name == name), None)
    if sig is None or sig.counted or name not in NORMAL:
        names = ", ".join(s.name for s in DEFAULT_SIGNALS if not s.counted)
        raise argparse.ArgumentTypeError(f"--degrade ramp: signal {name!r} is not one of {names}")
    if sig.alert[1] is not None and sig.warn[1] is not None:
        return "high", sig.warn[1], sig.alert[1]
    assert sig.warn[0] is not None and sig.alert[0] is not None
    return "low", sig.warn[0], sig.alert[0]


def ramp_rate(name: str, days: float) -> float:
    """Per-day slope taking ``name`` from its normal level to its alert limit in ``days``."""
    _, _, alert = ramp_limits(name)
    return (alert - NORMAL[name][0]) / days


@dataclass
class Injections:
    """Faults to inject, by 1-based device number."""

    drift: dict[int, tuple[int, float]] = field(
        default_factory=dict
    )  # from acquisition K, DI per acquisition
    calibration_lapse: dict[int, int] = field(default_factory=dict)  # days since last calibration
    fault_burst: dict[int, int] = field(default_factory=dict)  # number of faults
    software_update: dict[int, tuple[int, str]] = field(default_factory=dict)  # from acquisition K, version
    silent: dict[int, float] = field(default_factory=dict)  # days of silence before now
    degrade: dict[int, list[Degradation]] = field(default_factory=dict)


@dataclass
class Shot:
    """One planned acquisition."""

    device: int
    index: int
    at: datetime
    deviation_index: float
    exposure_index: float
    target_exposure_index: float
    kvp: float
    mas: float
    detector_temperature: float
    calibration_date: date
    software_versions: str
    processing_changed: bool = False  # after a processing degradation's software update
    ai_score: float = 0.0  # the detector's image-level score the plan implies (processing)
    sop_instance_uid: str = ""  # set once its dataset is made (datasets)


@dataclass
class LogEvent:
    device: int
    time: datetime
    kind: str
    code: str | None = None
    message: str | None = None
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class Plan:
    devices: list[Any]  # models.phantoms.DeviceProfile
    shots: list[Shot]
    events: list[LogEvent]
    injections: Injections
    now: datetime | None = None  # the end of the window
    days: float = 7.0  # its length


def plan(
    n_devices: int,
    images: int,
    seed: int = 0,
    days: float = 7.0,
    now: datetime | None = None,
    injections: Injections | None = None,
    all_signals: bool = False,
) -> Plan:
    """Everything the fleet will send and log; deterministic for (seed, now)."""
    from models.phantoms import device_fleet

    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    inj = injections or Injections()
    fleet = device_fleet(n_devices, seed)
    shots: list[Shot] = []
    events: list[LogEvent] = []
    for number, dev in enumerate(fleet, start=1):
        rng = random.Random(f"{seed}:{number}")
        start = now - timedelta(days=days)
        end = now - timedelta(days=inj.silent.get(number, 0.0)) - timedelta(minutes=5)
        degr = {d.kind: d for d in inj.degrade.get(number, [])}
        use = degr["tube"].peak if "tube" in degr else 1.0
        times = sorted(start + (end - start) * rng.random() for _ in range(round(images * use)))
        mean_di = rng.uniform(-0.5, 0.5)
        tei = float(dev.target_exposure_index)
        lapse = inj.calibration_lapse.get(number)
        calibrated = (now - timedelta(days=lapse if lapse is not None else rng.randint(20, 90))).date()
        drift_from, drift_rate = inj.drift.get(number, (images + 1, 0.0))
        update_from, new_version = inj.software_update.get(number, (len(times) + 1, ""))
        processing = degr.get("processing")
        if processing is not None:
            update_from, new_version = processing.from_acquisition, processing.version
        kvp = min(dev.base_kvp + 25.0, 150.0) if "tube" in degr else dev.base_kvp
        ai_rng = random.Random(f"{seed}:{number}:ai")
        for i, at in enumerate(times, start=1):
            di = rng.gauss(mean_di, DI_SIGMA) + (
                drift_rate * (i - drift_from + 1) if i >= drift_from else 0.0
            )
            changed = processing is not None and i >= update_from
            positive = ai_rng.random() < (AI_POSITIVE_AFTER if changed else AI_POSITIVE_RATE)
            shots.append(
                Shot(
                    device=number,
                    index=i,
                    at=at,
                    deviation_index=round(di, 2),
                    exposure_index=round(tei * 10 ** (di / 10), 1),
                    target_exposure_index=tei,
                    kvp=kvp,
                    mas=round(2.5 * 10 ** (di / 10) * (4.0 if "tube" in degr else 1.0), 2),
                    detector_temperature=round(rng.gauss(31.0, 0.8), 1),
                    calibration_date=calibrated,
                    software_versions=new_version if i >= update_from else dev.software_versions,
                    processing_changed=changed,
                    ai_score=round(ai_rng.uniform(0.5, 0.99) if positive else ai_rng.uniform(0.01, 0.5), 3),
                )
            )
        values_at = _signal_values(f"{seed}:{number}", start, degr, now, all_signals)
        events += _device_log(number, rng, start, end, calibrated, inj.fault_burst.get(number, 0), now, values_at)
    shots.sort(key=lambda s: (s.at, s.device))
    events.sort(key=lambda e: (e.time, e.device))
    return Plan(fleet, shots, events, inj, now, days)


def _signal_values(
    key: str, start: datetime, degr: dict[str, Degradation], now: datetime, all_signals: bool
) -> Callable[[datetime], dict[str, float]]:
    """The extra telemetry values of one device at a time: every default signal at its normal level
    (with ``all_signals``), a ramping signal, high-voltage arcs since the last line."""
    rng = random.Random(f"{key}:signals")
    models: dict[str, SignalModel] = {}
    names = [n for n in NORMAL if n != "detector_temperature"] if all_signals else []
    ramp = degr.get("ramp")
    for name in names + ([ramp.signal] if ramp and ramp.signal not in names else []):
        if ramp is not None and name == ramp.signal:
            models[name] = SignalModel(name, rng, start, ramp_from=start, rate=ramp_rate(name, ramp.days))
        else:
            models[name] = SignalModel(name, rng, start)
    arcs = degr.get("arcs")

    def values(t: datetime) -> dict[str, float]:
        out = {name: m.value(t) for name, m in models.items()}
        if arcs is not None:
            rise_from = now - timedelta(days=arcs.days)
            share = min(max((t - rise_from).total_seconds() / (arcs.days * 86400), 0.0), 1.0)
            per_day = ARC_BASE_RATE + (arcs.peak - ARC_BASE_RATE) * share
            out["hv_arcs"] = float(poisson(rng, per_day * TELEMETRY_EVERY_H / 24))
        return out

    return values


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth's method; fine for the small rates here)."""
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _device_log(
    number: int,
    rng: random.Random,
    start: datetime,
    end: datetime,
    calibrated: date,
    burst: int,
    now: datetime,
    values_at: Callable[[datetime], dict[str, float]],
) -> list[LogEvent]:
    """A day-by-day log: power on, telemetry every few hours, rare faults, calibration, burst."""
    out: list[LogEvent] = []
    day = start
    while day < end:
        out.append(LogEvent(number, day, "power", "ON", "system start"))
        for hour in range(0, 24, TELEMETRY_EVERY_H):
            t = day + timedelta(hours=hour, minutes=rng.randint(0, 59))
            if t < end:
                temp = round(rng.gauss(31.0, 0.8), 1)
                values = {"detector_temperature": temp, **values_at(t)}
                out.append(LogEvent(number, t, "telemetry", None, None, values))
        if rng.random() < FAULT_RATE:
            code, message = rng.choice(FAULT_CODES).split(" ", 1)
            out.append(LogEvent(number, day + timedelta(hours=rng.uniform(0, 24)), "fault", code, message))
        day += timedelta(days=1)
    cal_at = datetime.combine(calibrated, datetime.min.time(), UTC) + timedelta(hours=7)
    if start <= cal_at < end:
        out.append(LogEvent(number, cal_at, "calibration", "GAIN", "detector gain calibration"))
    for _ in range(burst):
        code, message = rng.choice(FAULT_CODES[:2]).split(" ", 1)
        out.append(LogEvent(number, now - timedelta(hours=rng.uniform(0.1, 6)), "fault", code, message))
    return [e for e in out if e.time <= now]


def datasets(p: Plan, size: int = 256) -> Any:
    """(shot, Dataset) for every planned acquisition, in acquisition order."""
    from models.phantoms import Exposure, generate, to_dataset

    for shot in p.shots:
        device = p.devices[shot.device - 1]
        if shot.software_versions != device.software_versions:
            device = _with_software(device, shot.software_versions)
        phantom = generate(seed=shot.device * 100_003 + shot.index, index=shot.index, size=size)
        if shot.processing_changed:
            phantom = _harder_tone_curve(phantom)
        exposure = Exposure(
            kvp=shot.kvp,
            mas=shot.mas,
            exposure_index=shot.exposure_index,
            target_exposure_index=shot.target_exposure_index,
            deviation_index=shot.deviation_index,
            detector_temperature=shot.detector_temperature,
            calibration_date=shot.calibration_date,
        )
        # to_dataset writes local wall-clock times (no offset), as most modalities do
        local = shot.at.astimezone().replace(tzinfo=None)
        ds = to_dataset(phantom, device, acquired_at=local, exposure=exposure)
        shot.sop_instance_uid = str(ds.SOPInstanceUID)
        yield shot, ds


def ai_outcome(shot: Shot) -> dict[str, Any]:
    """The detector's outcome the plan implies for one image, as ``TwinStore.record_ai_outcome`` takes
    it: its score, one finding when the score reaches 0.5 (the operating point), not skipped. The
    positive rate is AI_POSITIVE_RATE, AI_POSITIVE_AFTER after a processing change."""
    return {"score": shot.ai_score, "findings": int(shot.ai_score >= 0.5), "skipped": False}


def record_ai_outcomes(p: Plan, store: Any) -> int:
    """Hand the planned AI outcome of every image made so far to ``store.record_ai_outcome`` (a
    twin.store.TwinStore on the node's database), so the AI watch can be measured without running the
    detector; returns how many were handed over."""
    n = 0
    for shot in p.shots:
        if shot.sop_instance_uid:
            store.record_ai_outcome(shot.sop_instance_uid, **ai_outcome(shot))
            n += 1
    return n


def _harder_tone_curve(phantom: Any) -> Any:
    """The image processing of the new software: a gamma of 1.4 on the 16-bit pixels (darker
    mid-tones, more contrast in the lungs), as a vendor's new default look would."""
    from dataclasses import replace

    import numpy as np

    scaled = (phantom.pixels.astype(np.float64) / 65535.0) ** 1.4
    return replace(phantom, pixels=np.round(scaled * 65535.0).astype(phantom.pixels.dtype))


def _with_software(device: Any, version: str) -> Any:
    from dataclasses import replace

    return replace(device, software_versions=version)


def write_sidecar(p: Plan, directory: Path, fmt: str = "mixed") -> dict[int, Path]:
    """Each device's log under ``directory/<station>/``; ``mixed`` writes even devices as CSV."""
    paths: dict[int, Path] = {}
    for number, dev in enumerate(p.devices, start=1):
        use_csv = fmt == "csv" or (fmt == "mixed" and number % 2 == 0)
        folder = directory / dev.station
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ("events.csv" if use_csv else "events.jsonl")
        mine = [e for e in p.events if e.device == number]
        ident = {
            "serial": dev.serial,
            "station": dev.station,
            "manufacturer": dev.manufacturer,
            "model": dev.model,
        }
        with path.open("w", encoding="utf-8", newline="") as fh:
            if use_csv:
                writer = csv.writer(fh, lineterminator="\n")
                writer.writerow(
                    [
                        "time",
                        "serial",
                        "station",
                        "manufacturer",
                        "model",
                        "kind",
                        "code",
                        "message",
                        "values",
                    ]
                )
                for e in mine:
                    writer.writerow(
                        [
                            e.time.isoformat(),
                            *ident.values(),
                            e.kind,
                            e.code or "",
                            e.message or "",
                            json.dumps(e.values) if e.values else "",
                        ]
                    )
            else:
                for e in mine:
                    obj = {
                        "time": e.time.isoformat(),
                        "device": ident,
                        "kind": e.kind,
                        "code": e.code,
                        "message": e.message,
                        "values": e.values,
                    }
                    fh.write(json.dumps(obj) + "\n")
        paths[number] = path
    return paths


def send(p: Plan, target: str, calling_ae: str = "SIMULATOR", size: int = 256) -> dict[int, dict[str, int]]:
    """C-STORE every image to ``AE@HOST:PORT``, one association per device; counts per device."""
    from pynetdicom import AE

    called, host, port = parse_target(target)
    counts = {n: {"sent": 0, "failed": 0} for n in range(1, len(p.devices) + 1)}
    ae = AE(ae_title=calling_ae)
    for dev in p.devices:
        ae.add_requested_context(dev.sop_class_uid, "1.2.840.10008.1.2.1")
    assoc = None
    try:
        for shot, ds in datasets(p, size):
            if assoc is None or not assoc.is_established:
                assoc = ae.associate(host, port, ae_title=called)
                if not assoc.is_established:
                    raise ConnectionError(f"association to {target} rejected or failed")
            status = assoc.send_c_store(ds)
            ok = (
                status is not None
                and "Status" in status
                and status.Status in (0x0000, 0xB000, 0xB006, 0xB007)
            )
            counts[shot.device]["sent" if ok else "failed"] += 1
            if not ok:
                log.warning(
                    "C-STORE of %s failed: %s", ds.SOPInstanceUID, getattr(status, "Status", "no status")
                )
    finally:
        if assoc is not None and assoc.is_established:
            assoc.release()
    return counts


def write_files(p: Plan, directory: Path, size: int = 256) -> dict[int, dict[str, int]]:
    """Write the images as DICOM files instead of sending them (no network)."""
    directory.mkdir(parents=True, exist_ok=True)
    counts = {n: {"sent": 0, "failed": 0} for n in range(1, len(p.devices) + 1)}
    for shot, ds in datasets(p, size):
        ds.save_as(directory / f"dev{shot.device:02d}_{shot.index:05d}.dcm", enforce_file_format=True)
        counts[shot.device]["sent"] += 1
    return counts


def parse_target(target: str) -> tuple[str, str, int]:
    """``AE@HOST:PORT`` as (AE title, host, port)."""
    try:
        ae, rest = target.split("@", 1)
        host, port = rest.rsplit(":", 1)
        return ae, host, int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--to: AE@HOST:PORT expected (got {target!r})") from None


def summary(p: Plan, counts: dict[int, dict[str, int]], sidecar: dict[int, Path]) -> dict[str, Any]:
    """What was sent and logged, per device, with the injected faults."""
    inj = p.injections
    devices = []
    for number, dev in enumerate(p.devices, start=1):
        shots = [s for s in p.shots if s.device == number]
        injected = []
        if number in inj.drift:
            injected.append(
                {
                    "kind": "drift",
                    "from_acquisition": inj.drift[number][0],
                    "di_per_acquisition": inj.drift[number][1],
                }
            )
        if number in inj.calibration_lapse:
            injected.append({"kind": "calibration_lapse", "days": inj.calibration_lapse[number]})
        if number in inj.fault_burst:
            injected.append({"kind": "fault_burst", "faults": inj.fault_burst[number]})
        if number in inj.software_update:
            injected.append(
                {
                    "kind": "software_update",
                    "from_acquisition": inj.software_update[number][0],
                    "version": inj.software_update[number][1],
                }
            )
        if number in inj.silent:
            injected.append({"kind": "silent", "days": inj.silent[number]})
        injected += [_degradation_summary(p, d) for d in inj.degrade.get(number, [])]
        kinds: dict[str, int] = {}
        for e in p.events:
            if e.device == number:
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
        devices.append(
            {
                "number": number,
                "manufacturer": dev.manufacturer,
                "model": dev.model,
                "serial": dev.serial,
                "station": dev.station,
                "modality": dev.modality,
                "software_versions": sorted({s.software_versions for s in shots}),
                "planned": len(shots),
                **counts.get(number, {"sent": 0, "failed": 0}),
                "first_acquisition": shots[0].at.isoformat() if shots else None,
                "last_acquisition": shots[-1].at.isoformat() if shots else None,
                "events": kinds,
                "sidecar_file": str(sidecar[number]) if number in sidecar else None,
                "injected": injected,
            }
        )
    return {
        "devices": devices,
        "sent": sum(d["sent"] for d in devices),
        "failed": sum(d["failed"] for d in devices),
        "events": len(p.events),
    }


def _degradation_summary(p: Plan, d: Degradation) -> dict[str, Any]:
    """What a degradation does, with the truth a test or a measurement checks against (for a ramp,
    when it crosses its warn and alert limits)."""
    now = p.now or datetime.now(UTC)
    start = now - timedelta(days=p.days)
    if d.kind == "ramp":
        side, warn, alert = ramp_limits(d.signal)
        rate = ramp_rate(d.signal, d.days)
        level = NORMAL[d.signal][0]
        return {"kind": "ramp", "signal": d.signal, "side": side, "from_level": level, "per_day": round(rate, 4),
                "warn_limit": warn, "alert_limit": alert,
                "crosses_warn_at": (start + timedelta(days=(warn - level) / rate)).isoformat(),
                "crosses_alert_at": (start + timedelta(days=d.days)).isoformat()}
    if d.kind == "arcs":
        return {"kind": "arcs", "base_per_day": ARC_BASE_RATE, "peak_per_day": d.peak,
                "rise_from": (now - timedelta(days=d.days)).isoformat()}
    if d.kind == "tube":
        return {"kind": "tube", "use_factor": d.peak, "kvp_added": 25.0, "mas_factor": 4.0}
    return {"kind": "processing", "from_acquisition": d.from_acquisition, "version": d.version,
            "ai_positive_rate_before": AI_POSITIVE_RATE, "ai_positive_rate_after": AI_POSITIVE_AFTER}


def parse_degradation(text: str, days: float) -> tuple[int, Degradation]:
    """``DEV:KIND[:ARGS]`` of ``--degrade`` (the forms in the module docstring)."""
    dev_text, _, rest = text.partition(":")
    kind, _, args = rest.partition(":")
    forms = {"ramp": "DEV:ramp:SIGNAL[:DAYS]", "arcs": "DEV:arcs[:DAYS[:PEAK]]", "tube": "DEV:tube[:FACTOR]",
             "processing": "DEV:processing:K[:VERSION]"}
    if kind not in forms:
        raise argparse.ArgumentTypeError(f"--degrade {text!r}: KIND one of {', '.join(forms)}")
    try:
        dev = int(dev_text)
        parts = args.split(":") if args else []
        if kind == "ramp":
            if not 1 <= len(parts) <= 2:
                raise ValueError
            ramp_limits(parts[0])
            d = Degradation("ramp", signal=parts[0], days=float(parts[1]) if len(parts) > 1 else days + 10)
        elif kind == "arcs":
            if len(parts) > 2:
                raise ValueError
            d = Degradation("arcs", days=float(parts[0]) if parts else 7.0, peak=float(parts[1]) if len(parts) > 1
                            else 4.0)
        elif kind == "tube":
            if len(parts) > 1:
                raise ValueError
            d = Degradation("tube", peak=float(parts[0]) if parts else 3.0)
        else:
            if not 1 <= len(parts) <= 2:
                raise ValueError
            d = Degradation("processing", from_acquisition=int(parts[0]),
                            version=parts[1] if len(parts) > 1 else "PROC-2.0")
    except ValueError:
        raise argparse.ArgumentTypeError(f"--degrade {text!r}: expected {forms[kind]}") from None
    if d.days < 0 or (kind == "ramp" and d.days <= 0) or (kind == "tube" and d.peak < 1) or d.peak < 0:
        raise argparse.ArgumentTypeError(f"--degrade {text!r}: DAYS > 0, PEAK >= 0, FACTOR >= 1")
    return dev, d


def _spec(text: str, n_required: int, defaults: tuple[Any, ...], types: tuple[type, ...], flag: str) -> tuple:
    parts = text.split(":")
    if not n_required <= len(parts) <= len(types):
        raise argparse.ArgumentTypeError(f"{flag}: {text!r} does not match the documented form")
    values = list(defaults)
    try:
        for i, part in enumerate(parts):
            values[i] = types[i](part)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{flag}: {text!r} does not match the documented form") from None
    return tuple(values)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--to", help="send over C-STORE to AE@HOST:PORT")
    where.add_argument("--out-dir", type=Path, help="write DICOM files here instead of sending")
    where.add_argument(
        "--plan-only", action="store_true", help="build the plan and sidecar logs, send nothing"
    )
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--images", type=int, default=40, help="images per device")
    ap.add_argument("--days", type=float, default=7.0, help="acquisitions spread over the last DAYS days")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256, help="image rows and columns")
    ap.add_argument("--calling-ae", default="SIMULATOR")
    ap.add_argument("--sidecar-dir", type=Path, help="write each device's event log under this folder")
    ap.add_argument("--sidecar-format", choices=("jsonl", "csv", "mixed"), default="mixed")
    ap.add_argument("--drift", action="append", default=[], metavar="DEV:K[:RATE]")
    ap.add_argument("--calibration-lapse", action="append", default=[], metavar="DEV[:DAYS]")
    ap.add_argument("--fault-burst", action="append", default=[], metavar="DEV[:COUNT]")
    ap.add_argument("--software-update", action="append", default=[], metavar="DEV:K[:VERSION]")
    ap.add_argument("--silent", action="append", default=[], metavar="DEV[:DAYS]")
    ap.add_argument("--degrade", action="append", default=[], metavar="DEV:KIND[:ARGS]",
                    help="ramp:SIGNAL[:DAYS], arcs[:DAYS[:PEAK]], tube[:FACTOR], processing:K[:VERSION]")
    ap.add_argument("--all-signals", action="store_true",
                    help="every device logs every default signal at its normal level")
    ap.add_argument("--json", action="store_true", help="print a JSON summary of what was sent")
    return ap


def injections_from(args: argparse.Namespace) -> Injections:
    inj = Injections()
    for t in args.drift:
        dev, k, rate = _spec(t, 2, (0, 0, 0.1), (int, int, float), "--drift")
        inj.drift[dev] = (k, rate)
    for t in args.calibration_lapse:
        dev, days = _spec(t, 1, (0, 400), (int, int), "--calibration-lapse")
        inj.calibration_lapse[dev] = days
    for t in args.fault_burst:
        dev, count = _spec(t, 1, (0, 12), (int, int), "--fault-burst")
        inj.fault_burst[dev] = count
    for t in args.software_update:
        dev, k, version = _spec(t, 2, (0, 0, "UPDATED-2.0"), (int, int, str), "--software-update")
        inj.software_update[dev] = (k, version)
    for t in args.silent:
        dev, days = _spec(t, 1, (0, 4.0), (int, float), "--silent")
        inj.silent[dev] = days
    for t in args.degrade:
        dev, d = parse_degradation(t, args.days)
        if any(x.kind == d.kind for x in inj.degrade.get(dev, [])):
            raise argparse.ArgumentTypeError(f"--degrade {t!r}: device {dev} already has a {d.kind} degradation")
        inj.degrade.setdefault(dev, []).append(d)
    for table in (inj.drift, inj.calibration_lapse, inj.fault_burst, inj.software_update, inj.silent, inj.degrade):
        for dev in table:
            if not 1 <= dev <= args.devices:
                raise argparse.ArgumentTypeError(f"device number {dev}: 1 to {args.devices}")
    return inj


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        inj = injections_from(args)
        target = parse_target(args.to) if args.to else None
    except argparse.ArgumentTypeError as exc:
        ap.error(str(exc))
    if args.devices < 1 or args.images < 0 or args.size < 64:
        ap.error("--devices >= 1, --images >= 0, --size >= 64")
    p = plan(args.devices, args.images, args.seed, args.days, injections=inj, all_signals=args.all_signals)
    sidecar = write_sidecar(p, args.sidecar_dir, args.sidecar_format) if args.sidecar_dir else {}
    if target:
        try:
            counts = send(p, args.to, args.calling_ae, args.size)
        except ConnectionError as exc:
            print(f"simulate_modality: {exc}", file=sys.stderr)
            return 2
    elif args.out_dir:
        counts = write_files(p, args.out_dir, args.size)
    else:
        counts = {}
    result = summary(p, counts, sidecar)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for d in result["devices"]:
            print(
                f"device {d['number']} {d['manufacturer']} {d['model']} {d['serial']}: "
                f"{d['sent']} sent, {d['failed']} failed, "
                f"injected {[i['kind'] for i in d['injected']] or 'none'}"
            )
    return 1 if result["failed"] else 0


if __name__ == "__main__":
    if str(Path(__file__).resolve().parents[1]) not in sys.path:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
