"""Reading device identity, configuration and usage from headers: what is there, never failing."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from twin_support import NOW, make_ds

from twin.headers import deviation_index, device_key, read_headers


def _raw(ds: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Put a value pydicom would refuse to set, as it arrives off the wire."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)


def test_full_header_is_read() -> None:
    ds = make_ds("1.2.3", NOW, di=1.0, calibrated=date(2025, 1, 10))
    ds.XRayTubeCurrent = 250
    ds.ExposureTime = 10
    ds.ImageAndFluoroscopyAreaDoseProduct = "0.85"
    ds.ExposuresOnDetectorSinceLastCalibration = 1234
    ds.GridID = "GRID-A"
    ds.PlateID = "PLATE-9"
    h = read_headers(ds)
    assert h.identity.serial == "SN-1001" and h.identity.institution == "Test Hospital"
    assert h.configuration.software_versions == "VA10" and h.configuration.grid_id == "GRID-A"
    u = h.usage
    assert u.acquired_at == NOW
    assert u.kvp == 120 and u.mas == 2.5  # ExposureInuAs wins over tube current x time
    assert u.exposure_time_ms == 10 and u.dap == 0.85 and u.sid_mm == 1800
    assert u.deviation_index == 1.0 and not u.deviation_index_computed
    assert u.exposures_since_calibration == 1234 and u.detector_calibrated_on == date(2025, 1, 10)
    assert u.plate_id == "PLATE-9" and u.body_part == "CHEST" and u.view == "PA"


def test_deviation_index_is_computed_when_absent() -> None:
    """IEC 62494-1: DI = 10 log10(EI / EI_T)."""
    ds = make_ds("1.2.4", NOW, di=None)
    ds.ExposureIndex = "800"
    ds.TargetExposureIndex = "400"
    u = read_headers(ds).usage
    assert u.deviation_index_computed and u.deviation_index is not None
    assert math.isclose(u.deviation_index, 10 * math.log10(2), abs_tol=1e-3)
    assert deviation_index(0, 400) is None and deviation_index(400, None) is None


def test_mas_falls_back_to_current_times_time() -> None:
    ds = make_ds("1.2.5", NOW)
    del ds.ExposureInuAs
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 16
    assert read_headers(ds).usage.mas == 3.2
    del ds.XRayTubeCurrent
    ds.Exposure = 5
    assert read_headers(ds).usage.mas == 5


def test_empty_dataset_gives_empty_records() -> None:
    h = read_headers(Dataset())
    assert h.identity.key == "||unidentified"
    assert h.usage.acquired_at is None and h.usage.deviation_index is None


def test_malformed_values_are_skipped_not_fatal() -> None:
    ds = make_ds("1.2.6", NOW)
    _raw(ds, 0x00180060, "DS", b"12O ")  # KVP with a letter O
    _raw(ds, 0x00187001, "DS", b"hot ")  # DetectorTemperature
    _raw(ds, 0x0018700C, "DA", b"2024XX01")  # DateOfLastDetectorCalibration
    _raw(ds, 0x0008002A, "DT", b"garbage ")  # AcquisitionDateTime
    ds.AcquisitionDate = "20250301"
    ds.AcquisitionTime = "101500"
    ds.TimezoneOffsetFromUTC = "+0100"
    u = read_headers(ds).usage
    assert u.kvp is None and u.detector_temperature is None and u.detector_calibrated_on is None
    assert u.acquired_at == datetime(2025, 3, 1, 9, 15, tzinfo=UTC)  # date + time, offset applied
    assert u.mas == 2.5  # the rest is still read


def test_device_key_uses_serial_then_station() -> None:
    assert device_key("Acme ", "DR-9000", "SN-1", "XR01") == "acme|dr-9000|sn:sn-1"
    assert device_key("ACME", "dr-9000", None, "XR01") == "acme|dr-9000|station:xr01"
    assert device_key("Acme", "DR", "", "", "1.2.3") == "acme|dr|uid:1.2.3"
