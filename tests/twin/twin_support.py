"""Builders for the twin tests: device headers, DI series, sidecar files, a store on a temp database.

Every dataset carries a patient name and ID on purpose, so tests can check the twin never stores
them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from dicom_node.cli.twin import register
from twin.db import thread_local_connect
from twin.store import TwinStore

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
PATIENT_NAME = "DOE^JANE^SECRET"
PATIENT_ID = "PID-SECRET-42"


#: run a store-level test once on each engine (the ``twin_engine`` fixture, tests/twin/conftest.py)
both_engines = pytest.mark.usefixtures("twin_engine")


class Engine:
    """The engine of this test's twin stores, set by the ``twin_engine`` fixture (tests/twin/conftest.py):
    SQLite files under the test's folders by default, else one PostgreSQL database per folder."""

    make: Callable[[], str] | None = None  # a fresh PostgreSQL database URL, when on PostgreSQL
    targets: dict[Path, str] = {}
    connects: list[thread_local_connect] = []

    @classmethod
    def reset(cls, make: Callable[[], str] | None) -> None:
        for connect in cls.connects:
            connect.close()
        cls.make, cls.targets, cls.connects = make, {}, []


def database_for(tmp_path: Path) -> str | Path:
    """Where a twin store on ``tmp_path`` lives: ``tmp_path/node.db``, or on PostgreSQL a database of
    its own (the same one for the same folder, so a test may open it again)."""
    if Engine.make is None:
        tmp_path.mkdir(parents=True, exist_ok=True)
        return tmp_path / "node.db"
    if tmp_path not in Engine.targets:
        Engine.targets[tmp_path] = Engine.make()
    return Engine.targets[tmp_path]


def connect_for(tmp_path: Path) -> thread_local_connect:
    connect = thread_local_connect(database_for(tmp_path))
    Engine.connects.append(connect)
    return connect


def new_store(tmp_path: Path, **options: Any) -> TwinStore:
    return TwinStore(connect_for(tmp_path), **options)


def dicom_dt(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y%m%d%H%M%S.%f") + "+0000"


def make_ds(
    uid: str,
    at: datetime,
    *,
    serial: str | None = "SN-1001",
    station: str | None = "XR01",
    manufacturer: str | None = "Acme Medical",
    model: str | None = "DR-9000",
    software: str | None = "VA10",
    di: float | None = 0.0,
    tei: float = 400.0,
    temperature: float | None = 31.0,
    calibrated: date | None = None,
    kvp: float = 120.0,
    modality: str = "DX",
) -> Dataset:
    """A DX instance header with device identity, configuration and one exposure (no pixels)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = uid
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    for keyword, value in (
        ("Manufacturer", manufacturer),
        ("ManufacturerModelName", model),
        ("DeviceSerialNumber", serial),
        ("StationName", station),
        ("SoftwareVersions", software),
    ):
        if value is not None:
            setattr(ds, keyword, value)
    ds.InstitutionName = "Test Hospital"
    ds.DetectorID = "DET-77"
    ds.DetectorType = "SCINTILLATOR"
    ds.AcquisitionDateTime = dicom_dt(at)
    ds.KVP = f"{kvp:g}"
    ds.ExposureInuAs = 2500
    ds.DistanceSourceToDetector = "1800"
    if di is not None:
        ds.ExposureIndex = f"{tei * 10 ** (di / 10):.2f}"
        ds.TargetExposureIndex = f"{tei:g}"
        ds.DeviationIndex = f"{di:.2f}"
    if temperature is not None:
        ds.DetectorTemperature = f"{temperature:.1f}"
    if calibrated is not None:
        ds.DateOfLastDetectorCalibration = calibrated.strftime("%Y%m%d")
    return ds


def di_series(
    n: int,
    seed: int,
    *,
    mean: float = 0.2,
    sigma: float = 0.8,
    drift_from: int | None = None,
    rate: float = 0.0,
    step: float = 0.0,
) -> list[float]:
    """DI values of a device: normal around ``mean``; from acquisition ``drift_from`` (1-based) a
    ramp of ``rate`` DI per acquisition plus a ``step``."""
    rng = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        x = rng.gauss(mean, sigma)
        if drift_from is not None and i >= drift_from:
            x += step + rate * (i - drift_from + 1)
        out.append(round(x, 2))
    return out


def times(n: int, end: datetime = NOW, every: timedelta = timedelta(minutes=29)) -> list[datetime]:
    """``n`` acquisition times ``every`` apart, the last one at ``end``."""
    return [end - every * (n - 1 - i) for i in range(n)]


def event(
    at: datetime,
    kind: str,
    *,
    serial: str | None = "SN-1001",
    code: str | None = None,
    message: str | None = None,
    values: dict[str, float] | None = None,
    **device: str,
) -> dict[str, Any]:
    ident = {"serial": serial, **device} if serial else dict(device)
    return {
        "time": at.isoformat(),
        "device": ident,
        "kind": kind,
        "code": code,
        "message": message,
        "values": values or {},
    }


def write_jsonl(path: Path, events: Iterable[dict[str, Any] | str], mode: str = "w") -> None:
    """Events (dicts) or raw lines (str) as JSON Lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode, encoding="utf-8") as fh:
        for e in events:
            fh.write((e if isinstance(e, str) else json.dumps(e)) + "\n")

def ramp_log(
    side: Path,
    name: str,
    start: float,
    per_day: float,
    end: datetime = NOW,
    days: int = 40,
    sigma: float = 0.5,
    seed: int = 1,
    serial: str = "SN-1001",
) -> None:
    """Telemetry of ``name`` every 4 h for ``days`` days up to ``end``: start + per_day·day + noise."""
    rng = random.Random(seed)
    t0 = end - timedelta(days=days)
    events = []
    t = t0
    while t <= end:
        day = (t - t0).total_seconds() / 86400
        value = round(start + per_day * day + rng.gauss(0, sigma), 2)
        events.append(event(t, "telemetry", serial=serial, values={name: value}))
        t += timedelta(hours=4)
    write_jsonl(side / f"{serial}-{name}.jsonl", events)


def run_twin_cli(*args: str) -> tuple[int, str, str]:
    """The twin's ``dicom-node`` commands (devices, device, maintenance) in-process: exit code, stdout, stderr."""
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr
