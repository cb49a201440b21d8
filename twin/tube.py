"""X-ray tube wear from the headers: cumulative load since the tube was last replaced.

Every acquisition's KVP (0018,0060) and mAs (PS3.3 C.8.11.7 X-Ray Acquisition Dose: ExposureInuAs,
else Exposure, else tube current x exposure time; see :mod:`twin.headers`) is summed per UTC day in
``twin_daily`` (``load_n``, ``kvp_mas_sum``), so the load survives the retention of raw rows.

Heat units by the classic rule of radiographic tube rating (Bushberg et al., *The Essential Physics
of Medical Imaging*, 3rd ed., 6.4 "X-ray tube and generator ratings"; Curry, Dowdey & Murry,
*Christensen's Physics of Diagnostic Radiology*, ch. 2):

    HU = k x kVp x mAs,  k = 1.0 single-phase, 1.35 three-phase / high-frequency (constant potential)

The headers do not say what generator made the exposure, so k is a setting
(``twin.tube_heat_unit_factor``, default 1.35: nearly every digital radiography room today has a
high-frequency generator). One HU is about 0.71 J for a constant-potential waveform.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from twin.db import iso, one

#: The formula as ``device ID --json`` states it.
FORMULA = "HU = {k:g} x kVp x mAs (k = 1.0 single-phase, 1.35 high-frequency / constant potential)"


def heat_units(kvp: float, mas: float, factor: float) -> float:
    """Heat units of one exposure: ``factor`` x kVp x mAs (see the module docstring for k)."""
    return factor * kvp * mas


@dataclass(frozen=True, slots=True)
class Load:
    """Exposures over a span: all of them, those with both kVp and mAs, and their sums."""

    exposures: int = 0
    with_load: int = 0
    mas: float = 0.0
    kvp_mas: float = 0.0

    def __add__(self, other: Load) -> Load:
        return Load(
            self.exposures + other.exposures,
            self.with_load + other.with_load,
            self.mas + other.mas,
            self.kvp_mas + other.kvp_mas,
        )


@dataclass(frozen=True, slots=True)
class TubeWear:
    """The tube's load since ``since`` (the last ``tube`` maintenance record; None: since the device
    was first seen) and over the recent window of ``window_days`` days."""

    since: datetime | None
    total: Load
    recent: Load
    window_days: float
    factor: float
    rated_life_hu: float | None

    @property
    def heat_units(self) -> float:
        return heat_units(1.0, self.total.kvp_mas, self.factor)

    @property
    def unknown_load(self) -> int:
        """Exposures counted without a load: kVp or mAs missing from the header."""
        return self.total.exposures - self.total.with_load

    @property
    def rate_hu_per_day(self) -> float | None:
        if self.window_days <= 0 or self.recent.exposures == 0:
            return None
        return heat_units(1.0, self.recent.kvp_mas, self.factor) / self.window_days

    @property
    def used_fraction(self) -> float | None:
        return self.heat_units / self.rated_life_hu if self.rated_life_hu else None

    def projected_replacement(self, now: datetime) -> datetime | None:
        """now + remaining life / recent rate; now when the life is used up; None when unknown."""
        rate = self.rate_hu_per_day
        if not self.rated_life_hu:
            return None
        remaining = self.rated_life_hu - self.heat_units
        if remaining <= 0:
            return now
        if not rate:
            return None
        try:
            return now + timedelta(days=remaining / rate)
        except OverflowError:
            return None

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """The ``tube`` object of ``device ID --json`` (docs/twin.md, Tube wear)."""
        fraction = self.used_fraction
        rate = self.rate_hu_per_day
        projected = self.projected_replacement(now)
        return {
            "since": iso(self.since) if self.since else None,
            "exposures": self.total.exposures,
            "exposures_without_load": self.unknown_load,
            "mas": round(self.total.mas, 1),
            "heat_units": round(self.heat_units, 1),
            "rated_life_hu": self.rated_life_hu,
            "used_fraction": round(fraction, 6) if fraction is not None else None,
            "rate_hu_per_day": round(rate, 1) if rate is not None else None,
            "projected_replacement": projected.date().isoformat() if projected else None,
            "formula": FORMULA.format(k=self.factor),
        }


def _load(db: Any, device_id: int, start: datetime | None, now: datetime) -> Load:
    """Exposures acquired from ``start`` (None: the beginning) to ``now``: whole days from the daily
    rollups, the start's own day from the raw acquisitions at or after it."""
    today = iso(now)[:10]
    first_day = iso(start)[:10] if start else ""
    daily = one(
        db,
        "SELECT coalesce(sum(acquisitions), 0) AS n, coalesce(sum(load_n), 0) AS k, "
        "coalesce(sum(mas_sum), 0) AS mas, coalesce(sum(kvp_mas_sum), 0) AS kvp_mas FROM twin_daily "
        "WHERE device_id = ? AND day > ? AND day <= ?",
        [device_id, first_day, today],
    ) or {}
    total = Load(int(daily.get("n", 0)), int(daily.get("k", 0)), float(daily.get("mas", 0)),
                 float(daily.get("kvp_mas", 0)))
    if start is None:
        return total
    raw = one(
        db,
        "SELECT count(*) AS n, count(kvp * mas) AS k, coalesce(sum(mas), 0) AS mas, "
        "coalesce(sum(kvp * mas), 0) AS kvp_mas FROM twin_acquisitions "
        "WHERE device_id = ? AND at >= ? AND at <= ? AND substr(at, 1, 10) = ?",
        [device_id, iso(start), iso(now), first_day],
    ) or {}
    return total + Load(int(raw.get("n", 0)), int(raw.get("k", 0)), float(raw.get("mas", 0)),
                        float(raw.get("kvp_mas", 0)))


def tube_wear(
    db: Any,
    device_id: int,
    now: datetime,
    *,
    since: datetime | None,
    first_seen: datetime | None,
    factor: float,
    rate_days: float,
    rated_life_hu: float | None,
) -> TubeWear:
    """The tube's load since ``since`` (the last ``tube`` maintenance) and its rate over the last
    ``rate_days`` days (or since the replacement or first sight, when shorter; at least one day)."""
    window_start = now - timedelta(days=rate_days)
    for bound in (since, first_seen):
        if bound is not None and bound > window_start:
            window_start = bound
    window_days = max(1.0, (now - window_start).total_seconds() / 86400)
    return TubeWear(
        since=since,
        total=_load(db, device_id, since, now),
        recent=_load(db, device_id, window_start, now),
        window_days=window_days,
        factor=factor,
        rated_life_hu=rated_life_hu,
    )
