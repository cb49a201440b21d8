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
import random
import sys
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger("simulate_modality")

DI_SIGMA = 0.8  # spread of the deviation index of a stable device, in DI units
FAULT_RATE = 0.1  # background faults per device per day
FAULT_CODES = ("E-GEN-201 generator overload", "E-DET-310 detector link lost", "E-COL-120 collimator timeout")


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


def plan(
    n_devices: int,
    images: int,
    seed: int = 0,
    days: float = 7.0,
    now: datetime | None = None,
    injections: Injections | None = None,
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
        times = sorted(start + (end - start) * rng.random() for _ in range(images))
        mean_di = rng.uniform(-0.5, 0.5)
        tei = float(dev.target_exposure_index)
        lapse = inj.calibration_lapse.get(number)
        calibrated = (now - timedelta(days=lapse if lapse is not None else rng.randint(20, 90))).date()
        drift_from, drift_rate = inj.drift.get(number, (images + 1, 0.0))
        update_from, new_version = inj.software_update.get(number, (images + 1, ""))
        for i, at in enumerate(times, start=1):
            di = rng.gauss(mean_di, DI_SIGMA) + (
                drift_rate * (i - drift_from + 1) if i >= drift_from else 0.0
            )
            shots.append(
                Shot(
                    device=number,
                    index=i,
                    at=at,
                    deviation_index=round(di, 2),
                    exposure_index=round(tei * 10 ** (di / 10), 1),
                    target_exposure_index=tei,
                    kvp=dev.base_kvp,
                    mas=round(2.5 * 10 ** (di / 10), 2),
                    detector_temperature=round(rng.gauss(31.0, 0.8), 1),
                    calibration_date=calibrated,
                    software_versions=new_version if i >= update_from else dev.software_versions,
                )
            )
        events += _device_log(number, rng, start, end, calibrated, inj.fault_burst.get(number, 0), now)
    shots.sort(key=lambda s: (s.at, s.device))
    events.sort(key=lambda e: (e.time, e.device))
    return Plan(fleet, shots, events, inj)


def _device_log(
    number: int,
    rng: random.Random,
    start: datetime,
    end: datetime,
    calibrated: date,
    burst: int,
    now: datetime,
) -> list[LogEvent]:
    """A day-by-day log: power on, telemetry every few hours, rare faults, calibration, burst."""
    out: list[LogEvent] = []
    day = start
    while day < end:
        out.append(LogEvent(number, day, "power", "ON", "system start"))
        for hour in range(0, 24, 4):
            t = day + timedelta(hours=hour, minutes=rng.randint(0, 59))
            if t < end:
                temp = round(rng.gauss(31.0, 0.8), 1)
                out.append(LogEvent(number, t, "telemetry", None, None, {"detector_temperature": temp}))
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
        yield shot, to_dataset(phantom, device, acquired_at=local, exposure=exposure)


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
    for table in (inj.drift, inj.calibration_lapse, inj.fault_burst, inj.software_update, inj.silent):
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
    p = plan(args.devices, args.images, args.seed, args.days, injections=inj)
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
