"""What one instance's header says about the device that made it.

Three records come out of one pydicom ``Dataset``: the device's identity (PS3.3 C.7.5.1 General
Equipment), its configuration (General Equipment, C.8.11.4 DX Detector, C.8.11.6 X-Ray Grid,
C.8.1.2 CR Image), and one usage record (C.8.11.5 DX Positioning, C.8.11.7 X-Ray Acquisition Dose,
C.7.6.16 Exposure Index Macro of IEC 62494-1). Real headers miss attributes or carry malformed
values, so every attribute is optional: each reader returns ``None`` for what is missing or
unreadable and never raises. Nothing about the patient is read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

MAX_TEXT = 256


@dataclass(frozen=True, slots=True)
class DeviceIdentity:
    """Who the device is (PS3.3 C.7.5.1 General Equipment)."""

    manufacturer: str | None = None
    model: str | None = None
    serial: str | None = None
    station: str | None = None
    device_uid: str | None = None
    institution: str | None = None
    department: str | None = None

    @property
    def key(self) -> str:
        """The device key: manufacturer + model + serial, see :func:`device_key`."""
        return device_key(self.manufacturer, self.model, self.serial, self.station, self.device_uid)


@dataclass(frozen=True, slots=True)
class DeviceConfiguration:
    """How the device is set up; a change of any field is a configuration change, not a new device."""

    software_versions: str | None = None
    detector_id: str | None = None
    detector_type: str | None = None
    detector_manufacturer: str | None = None
    detector_model: str | None = None
    grid_id: str | None = None
    grid: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Usage:
    """One acquisition: when, what, and with what technique and exposure indicator."""

    sop_instance_uid: str | None = None
    acquired_at: datetime | None = None
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    kvp: float | None = None
    mas: float | None = None
    exposure_time_ms: float | None = None
    exposure_index: float | None = None
    target_exposure_index: float | None = None
    deviation_index: float | None = None
    deviation_index_computed: bool = False
    dap: float | None = None
    detector_temperature: float | None = None
    exposures_since_calibration: int | None = None
    sid_mm: float | None = None
    detector_calibrated_on: date | None = None
    device_calibrated_on: date | None = None
    plate_id: str | None = None
    cassette_id: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceHeaders:
    identity: DeviceIdentity
    configuration: DeviceConfiguration
    usage: Usage


def normalise(value: str | None) -> str:
    """Case- and blank-insensitive form used for matching device attributes."""
    return " ".join((value or "").split()).casefold()


def device_key(
    manufacturer: str | None,
    model: str | None,
    serial: str | None,
    station: str | None = None,
    device_uid: str | None = None,
) -> str:
    """Key of a device: manufacturer + model + serial number.

    When DeviceSerialNumber (0018,1000) is missing the Station Name (0008,1010) stands in for it,
    then the Device UID (0018,1002); a device with none of these is keyed ``unidentified``.
    """
    prefix = f"{normalise(manufacturer)}|{normalise(model)}|"
    for tag, value in (("sn", serial), ("station", station), ("uid", device_uid)):
        if normalise(value):
            return f"{prefix}{tag}:{normalise(value)}"
    return prefix + "unidentified"


def read_headers(ds: Dataset) -> InstanceHeaders:
    """Read identity, configuration and usage from one instance; never raises on bad values."""
    return InstanceHeaders(read_identity(ds), read_configuration(ds), read_usage(ds))


def read_identity(ds: Dataset) -> DeviceIdentity:
    # General Equipment (PS3.3 C.7.5.1)
    return DeviceIdentity(
        manufacturer=text(ds, "Manufacturer"),
        model=text(ds, "ManufacturerModelName"),
        serial=text(ds, "DeviceSerialNumber"),
        station=text(ds, "StationName"),
        device_uid=text(ds, "DeviceUID"),
        institution=text(ds, "InstitutionName"),
        department=text(ds, "InstitutionalDepartmentName"),
    )


def read_configuration(ds: Dataset) -> DeviceConfiguration:
    return DeviceConfiguration(
        # General Equipment (C.7.5.1)
        software_versions=text(ds, "SoftwareVersions"),
        # DX Detector (C.8.11.4)
        detector_id=text(ds, "DetectorID"),
        detector_type=text(ds, "DetectorType"),
        detector_manufacturer=text(ds, "DetectorManufacturerName"),
        detector_model=text(ds, "DetectorManufacturerModelName"),
        # X-Ray Grid (C.8.11.6)
        grid_id=text(ds, "GridID"),
        grid=text(ds, "Grid"),
    )


def read_usage(ds: Dataset) -> Usage:
    ei = number(ds, "ExposureIndex")
    tei = number(ds, "TargetExposureIndex")
    di = number(ds, "DeviationIndex")
    computed = False
    if di is None:
        di = deviation_index(ei, tei)
        computed = di is not None
    since_cal = number(ds, "ExposuresOnDetectorSinceLastCalibration")
    return Usage(
        sop_instance_uid=text(ds, "SOPInstanceUID"),
        acquired_at=acquisition_datetime(ds),
        # General Series, DX Positioning (C.7.3.1, C.8.11.5)
        modality=text(ds, "Modality"),
        body_part=text(ds, "BodyPartExamined"),
        view=text(ds, "ViewPosition"),
        # X-Ray Acquisition Dose (C.8.11.7)
        kvp=number(ds, "KVP"),
        mas=mas(ds),
        exposure_time_ms=_first(number(ds, "ExposureTime"), _scaled(number(ds, "ExposureTimeInuS"), 1e-3)),
        # Exposure Index Macro (C.7.6.16.2.7, IEC 62494-1)
        exposure_index=ei,
        target_exposure_index=tei,
        deviation_index=di,
        deviation_index_computed=computed,
        dap=number(ds, "ImageAndFluoroscopyAreaDoseProduct"),
        # DX Detector (C.8.11.4)
        detector_temperature=number(ds, "DetectorTemperature"),
        exposures_since_calibration=int(since_cal) if since_cal is not None and since_cal >= 0 else None,
        sid_mm=number(ds, "DistanceSourceToDetector"),
        detector_calibrated_on=da(ds, "DateOfLastDetectorCalibration"),
        device_calibrated_on=da(ds, "DateOfLastCalibration"),
        # CR Image (C.8.1.2)
        plate_id=text(ds, "PlateID"),
        cassette_id=text(ds, "CassetteID"),
    )


def deviation_index(ei: float | None, tei: float | None) -> float | None:
    """DI = 10·log10(EI / EI_T) (IEC 62494-1; AAPM TG-116); None when undefined."""
    if ei is None or tei is None or ei <= 0 or tei <= 0:
        return None
    return round(10.0 * math.log10(ei / tei), 3)


def mas(ds: Dataset) -> float | None:
    """Tube current-time product in mAs.

    Exposure in µAs (0018,1153) is the precise one, then Exposure in mAs (0018,1152), then tube current
    x exposure time, in mA x ms or µA x µs (PS3.3 C.8.11.7).
    """
    return _first(
        _scaled(number(ds, "ExposureInuAs"), 1e-3),
        number(ds, "Exposure"),
        _product(number(ds, "XRayTubeCurrent"), number(ds, "ExposureTime"), 1e-3),
        _product(number(ds, "XRayTubeCurrentInuA"), number(ds, "ExposureTimeInuS"), 1e-9),
    )


def acquisition_datetime(ds: Dataset) -> datetime | None:
    """Acquisition time as an aware UTC datetime.

    Acquisition DateTime, then Acquisition, Content, Series and Study date + time. A time without an
    offset is read with Timezone Offset From UTC (0008,0201), else as the node's local time.
    """
    offset = _tz_offset(_raw_text(ds, "TimezoneOffsetFromUTC"))
    parsed = parse_dt(_raw_text(ds, "AcquisitionDateTime"), offset)
    if parsed is not None:
        return parsed
    for prefix in ("Acquisition", "Content", "Series", "Study"):
        day = da(ds, f"{prefix}Date")
        if day is not None:
            clock = parse_tm(_raw_text(ds, f"{prefix}Time")) or time()
            return _to_utc(datetime.combine(day, clock), offset)
    return None


# --- value readers: each returns None rather than raising -----------------------------------------


def _value(ds: Dataset, keyword: str) -> Any:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return None
    try:
        raw = ds.get_item(tag)
    except Exception:
        return None
    if raw is None:
        return None
    try:
        return ds[tag].value
    except Exception:
        return getattr(raw, "value", None)


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace").split("\\")
    if isinstance(value, str) or not isinstance(value, Iterable):
        value = [value]
    out = []
    for item in value:
        if isinstance(item, bytes):
            item = item.decode("latin-1", "replace")
        s = str(item).replace("\x00", "").strip()
        if s:
            out.append(s)
    return out


def text(ds: Dataset, keyword: str) -> str | None:
    """A text attribute, multiple values joined with a backslash as in PS3.5; None when empty."""
    parts = _strings(_value(ds, keyword))
    joined = "\\".join(parts)[:MAX_TEXT]
    return joined or None


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    value = _value(ds, keyword)
    original = getattr(value, "original_string", None)
    if original:
        value = original
    parts = _strings(value)
    return parts[0] if parts else None


def number(ds: Dataset, keyword: str) -> float | None:
    """First value of a numeric attribute (DS, IS, US, FL ...) as a finite float, or None."""
    value = _value(ds, keyword)
    candidates: list[int | float | str]
    if isinstance(value, int | float) and not isinstance(value, bool):
        candidates = [value]
    else:
        candidates = list(_strings(value)[:1])
    for item in candidates:
        try:
            result = float(item)
        except (TypeError, ValueError):
            return None
        return result if math.isfinite(result) else None
    return None


def da(ds: Dataset, keyword: str) -> date | None:
    """A DA value (first of several) as a date; accepts the ACR-NEMA ``YYYY.MM.DD`` form too."""
    value = _value(ds, keyword)
    if isinstance(value, date) and not isinstance(value, datetime):
        return value
    return parse_da(_raw_text(ds, keyword))


def parse_da(s: str | None) -> date | None:
    if not s:
        return None
    digits = s.strip().replace(".", "").replace("-", "")
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def parse_tm(s: str | None) -> time | None:
    """A TM value ``HHMMSS.FFFFFF`` (trailing parts optional; colons tolerated) as a time."""
    if not s:
        return None
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,6}))?", s.strip().replace(":", ""))
    if not m:
        return None
    hh, mm, ss, frac = m.groups()
    try:
        return time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


def parse_dt(s: str | None, default_offset: timedelta | None = None) -> datetime | None:
    """A DT value ``YYYYMMDDHHMMSS.FFFFFF&ZZXX`` (PS3.5 6.2) as an aware UTC datetime."""
    if not s:
        return None
    m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d{1,6})?)?([+-]\d{4})?", s.strip())
    if not m:
        return None
    day = parse_da(m.group(1))
    clock = parse_tm(m.group(2)) if m.group(2) else time()
    if day is None or clock is None:
        return None
    offset = _tz_offset(m.group(3)) if m.group(3) else default_offset
    return _to_utc(datetime.combine(day, clock), offset)


def _tz_offset(s: str | None) -> timedelta | None:
    if not s:
        return None
    m = re.fullmatch(r"([+-])(\d{2})(\d{2})", s.strip())
    if not m:
        return None
    sign = -1 if m.group(1) == "-" else 1
    hours, minutes = int(m.group(2)), int(m.group(3))
    if hours > 14 or minutes > 59:
        return None
    return sign * timedelta(hours=hours, minutes=minutes)


def _to_utc(naive: datetime, offset: timedelta | None) -> datetime | None:
    try:
        if offset is not None:
            return naive.replace(tzinfo=timezone(offset)).astimezone(UTC)
        return naive.astimezone().astimezone(UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _product(a: float | None, b: float | None, factor: float) -> float | None:
    return None if a is None or b is None else a * b * factor
