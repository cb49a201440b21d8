"""The twin's records in the shared database: idempotency, device keying, history, retention, threads."""

from __future__ import annotations

import threading
from datetime import date, timedelta
from pathlib import Path

from twin_support import NOW, PATIENT_ID, PATIENT_NAME, both_engines, event, make_ds, new_store, times, write_jsonl

from twin.db import TABLES, iso, rows
from twin.store import TwinStore


def _table_counts(store: TwinStore) -> dict[str, int]:
    db = store._connect()
    return {n: int(rows(db, f"SELECT count(*) AS n FROM {n}")[0]["n"]) for n in TABLES}


@both_engines
def test_recording_the_same_instance_twice_changes_nothing(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ds = make_ds("1.2.3.1", NOW)
    first = store.record_instance(ds, received_at=NOW)
    before = _table_counts(store)
    daily_before = store.device(first, NOW)["usage_per_day"]
    again = store.record_instance(ds, received_at=NOW + timedelta(hours=1))
    assert again == first
    assert _table_counts(store) == before
    assert store.device(first, NOW)["usage_per_day"] == daily_before
    assert store.devices(NOW)[0]["acquisitions"] == 1


@both_engines
def test_no_patient_data_is_stored(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.record_instance(make_ds("1.2.3.2", NOW), received_at=NOW)
    db = store._connect()
    dump = "\n".join(repr(rows(db, f"SELECT * FROM {table}")) for table in TABLES)  # every twin row
    assert PATIENT_NAME.split("^")[0] not in dump and PATIENT_ID not in dump


@both_engines
def test_software_update_is_history_not_a_new_device(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ts = times(6, NOW)
    ids = {
        store.record_instance(make_ds(f"1.2.9.{i}", t, software="VA10"), received_at=t) for i, t in enumerate(ts[:3])
    }
    ids |= {
        store.record_instance(make_ds(f"1.2.9.{i + 3}", t, software="VB20"), received_at=t)
        for i, t in enumerate(ts[3:])
    }
    # an instance without SoftwareVersions is not a change
    ids.add(store.record_instance(make_ds("1.2.9.99", NOW, software=None), received_at=NOW))
    assert len(ids) == 1 and len(store.devices(NOW)) == 1
    rec = store.device(ids.pop(), NOW)
    history = rec["configuration_history"]
    assert [c["software_versions"] for c in history] == ["VA10", "VB20"]
    assert history[1]["changes"] == [{"field": "software_versions", "from": "VA10", "to": "VB20"}]
    assert history[1]["since"].startswith(ts[3].isoformat()[:19])
    assert rec["configuration"]["software_versions"] == "VB20" and rec["acquisitions"] == 7


@both_engines
def test_out_of_order_old_instance_does_not_fake_a_change(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ts = times(4, NOW)
    store.record_instance(make_ds("1.5.1", ts[0], software="VA10"), received_at=NOW)
    store.record_instance(make_ds("1.5.2", ts[2], software="VB20"), received_at=NOW)
    store.record_instance(make_ds("1.5.3", ts[1], software="VA10"), received_at=NOW)  # re-sent old image
    dev = store.devices(NOW)[0]["id"]
    assert [c["software_versions"] for c in store.device(dev, NOW)["configuration_history"]] == [
        "VA10",
        "VB20",
    ]


@both_engines
def test_devices_are_keyed_by_serial_or_station(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    a = store.record_instance(make_ds("2.1", NOW, serial="SN-A"), received_at=NOW)
    b = store.record_instance(make_ds("2.2", NOW, serial="SN-B"), received_at=NOW)
    same = store.record_instance(make_ds("2.3", NOW, serial="SN-A", station="NEWNAME"), received_at=NOW)
    other_make = store.record_instance(make_ds("2.4", NOW, serial="SN-A", manufacturer="Other"), received_at=NOW)
    assert len({a, b, other_make}) == 3 and same == a
    assert store.device(a, NOW)["station"] == "NEWNAME"
    # no serial: the station name keys the device, and a later serial fills it in
    s1 = store.record_instance(make_ds("2.5", NOW, serial=None, station="PORTABLE3"), received_at=NOW)
    s2 = store.record_instance(make_ds("2.6", NOW, serial="SN-P3", station="PORTABLE3"), received_at=NOW)
    assert s1 == s2 and store.device(s1, NOW)["key"] == "acme medical|dr-9000|sn:sn-p3"


@both_engines
def test_sidecar_first_then_headers_is_one_device(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    write_jsonl(tmp_path / "side" / "log.jsonl", [event(NOW - timedelta(hours=2), "power", code="ON", serial="SN-7")])
    stats = store.ingest_sidecar(tmp_path / "side", settle_s=0)
    assert stats.devices_created == 1
    dev = store.record_instance(make_ds("3.1", NOW, serial="SN-7"), received_at=NOW)
    devices = store.devices(NOW)
    assert len(devices) == 1 and devices[0]["id"] == dev and devices[0]["manufacturer"] == "Acme Medical"


@both_engines
def test_maintenance_records(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    dev = store.record_instance(make_ds("4.1", NOW), received_at=NOW)
    rid = store.add_maintenance(dev, "preventive", "annual PM", NOW)
    rec = store.device(dev, NOW)
    assert rec["maintenance"][0]["id"] == rid and rec["maintenance"][0]["note"] == "annual PM"
    for bad in (
        lambda: store.add_maintenance(dev, "nonsense", "x"),
        lambda: store.add_maintenance(999, "qc", "x"),
    ):
        try:
            bad()
        except (ValueError, KeyError):
            pass
        else:
            raise AssertionError("expected an error")


@both_engines
def test_retention_drops_raw_rows_but_keeps_rollups_and_baseline(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    ts = times(120, NOW, every=timedelta(days=1))
    for i, t in enumerate(ts):
        store.record_instance(make_ds(f"5.{i}", t), received_at=t)
    deleted = store.apply_retention(30, now=NOW)
    # one image a day for 120 days: the 50 baseline images stay, and the 31 of the last 30 days + today
    assert deleted["acquisitions"] == 120 - 31 - store.thresholds.baseline_n
    dev = store.devices(NOW)[0]
    assert dev["acquisitions"] == 120  # counted from the daily rollups
    assert "learning" not in store.health(dev["id"], NOW).findings[1].reason


@both_engines
def test_threads_share_one_database_file(tmp_path: Path) -> None:
    """Each thread uses its own connection (the node's contract); WAL lets them all write."""
    store = new_store(tmp_path)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(40):
                store.record_instance(make_ds(f"6.{k}.{i}", NOW, serial=f"SN-T{k % 2}"), received_at=NOW)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(d["acquisitions"] for d in store.devices(NOW)) == [80, 80]


def test_lives_in_the_node_database_on_either_engine(database: str) -> None:
    """On ``Store.conn`` (what the node hands on PostgreSQL too): threads write one device each without
    a duplicate, and a twin write inside a node transaction is a savepoint of it (all or nothing)."""
    from dicom_node.store import Store

    node_store = Store(database)
    try:
        store = TwinStore(node_store.conn)
        errors: list[BaseException] = []

        def work(k: int) -> None:
            try:
                for i in range(10):
                    store.record_instance(make_ds(f"8.{k}.{i}", NOW, serial=f"SN-N{k % 2}"), received_at=NOW)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert sorted(d["acquisitions"] for d in store.devices(NOW)) == [20, 20]
        device = store.devices(NOW)[0]["id"]
        try:
            with node_store.transaction():
                store.add_maintenance(device, "qc", "in the node's transaction", at=NOW)
                raise RuntimeError("the node's step fails")
        except RuntimeError:
            pass
        assert store.device(device, NOW)["maintenance"] == []  # rolled back with the node's
        with node_store.transaction():
            store.add_maintenance(device, "qc", "kept", at=NOW)
        assert [m["note"] for m in store.device(device, NOW)["maintenance"]] == ["kept"]
    finally:
        node_store.close()


def test_implausible_acquisition_dates_fall_back_to_receipt(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """De-identified sets shift dates (the RSNA sample says 1901): the twin must not date the device so."""
    from datetime import UTC, datetime

    from pydicom import dcmread

    from dicom_node.testing import require, rsna_files
    from twin.db import thread_local_connect
    from twin.store import TwinStore

    files = rsna_files()
    require(bool(files), "the RSNA sample")
    store = TwinStore(thread_local_connect(tmp_path / "t.db"))
    received = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
    for f in files:
        store.record_instance(dcmread(f, stop_before_pixels=True), received_at=received)
    [dev] = store.devices(now=received)
    assert dev["acquisitions"] == len(files)
    assert dev["last_seen"].startswith("2026-11-01")
    assert dev["health"]["status"] == "OK", dev["health"]


@both_engines
def test_header_times_ahead_of_the_clock_fall_back_to_receipt(tmp_path: Path) -> None:
    """Issue 12 item 3, headers: the same bound as sidecar lines (twin.max_clock_skew_s)."""
    store = new_store(tmp_path)
    received = NOW
    store.record_instance(make_ds("9.1", NOW + timedelta(minutes=4)), received_at=received)
    store.record_instance(make_ds("9.2", NOW + timedelta(hours=5)), received_at=received)
    store.record_instance(
        make_ds("9.3", NOW - timedelta(hours=1), calibrated=date(9999, 12, 31)), received_at=received
    )
    at = {r["sop_instance_uid"]: r["at"] for r in rows(store._connect(), "SELECT * FROM twin_acquisitions")}
    assert at["9.1"].startswith("2025-03-01T12:04") and at["9.2"] == iso(received)
    [dev] = store.devices(NOW)
    assert dev["last_seen"] <= iso(NOW + timedelta(minutes=5))
    assert store.device(dev["id"], NOW)["last_calibration"] is None  # a calibration "in 9999" is no date
