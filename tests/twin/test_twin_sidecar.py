"""Sidecar log intake: schema checks, quarantine, resuming, rotation, truncation, CSV, subfolders."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
from twin_support import NOW, event, new_store, write_jsonl

from twin.store import TwinStore


def _events(store: TwinStore) -> list[tuple[str, int]]:
    rows = store._connect().query("SELECT file, line_no FROM twin_events ORDER BY file, line_no")
    return [(r["file"], r["line_no"]) for r in rows]


def _ok(i: int) -> dict:
    return event(NOW - timedelta(minutes=100 - i), "telemetry", values={"detector_temperature": 30 + i / 10})


@pytest.fixture()
def side(tmp_path: Path) -> Path:
    return tmp_path / "sidecar"


def test_bad_lines_are_quarantined_and_good_lines_around_them_kept(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    lines: list[dict | str] = [
        _ok(1),
        "{not json",
        _ok(2),
        json.dumps({**_ok(3), "kind": "explosion"}),
        json.dumps({**_ok(4), "time": "yesterday"}),
        json.dumps({**_ok(5), "device": {}}),
        json.dumps({**_ok(6), "values": {"detector_temperature": "warm"}}),
        "",
        "[1, 2, 3]",
        _ok(7),
    ]
    write_jsonl(side / "room1" / "events.jsonl", lines)
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.events, stats.quarantined) == (3, 6)
    assert _events(store) == [
        ("room1/events.jsonl", 1),
        ("room1/events.jsonl", 3),
        ("room1/events.jsonl", 10),
    ]
    reasons = {q["line_no"]: q["reason"] for q in store.quarantine()}
    assert reasons[2] == "not valid JSON" and reasons[4].startswith("kind: must be one of")
    assert reasons[5].startswith("time: not ISO 8601") and reasons[6].startswith("device:")
    assert reasons[7] == "values.detector_temperature: not a number" and reasons[9] == "not a JSON object"
    assert store.quarantine_count() == 6


def test_each_line_is_read_once_and_appends_resume(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    path = side / "a.jsonl"
    write_jsonl(path, [_ok(1), _ok(2)])
    assert store.ingest_sidecar(side, settle_s=0).events == 2
    assert store.ingest_sidecar(side, settle_s=0).events == 0
    write_jsonl(path, [_ok(3)], mode="a")
    with path.open("a") as fh:
        fh.write(json.dumps(_ok(4))[:20])  # the writer is mid-line
    assert store.ingest_sidecar(side, settle_s=60).events == 1
    with path.open("a") as fh:
        fh.write(json.dumps(_ok(4))[20:] + "\n")
    assert store.ingest_sidecar(side, settle_s=60).events == 1
    assert [n for _, n in _events(store)] == [1, 2, 3, 4]
    # a new store on the same database (a restart) resumes from the persisted offset
    assert new_store(tmp_path).ingest_sidecar(side, settle_s=0).events == 0


def test_rotation_reads_the_new_file_and_the_rest_of_the_renamed_one(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    path = side / "events.jsonl"
    write_jsonl(path, [_ok(1), _ok(2)])
    store.ingest_sidecar(side, settle_s=0)
    write_jsonl(path, [_ok(3)], mode="a")  # written after our last read, before rotation
    path.rename(side / "events-old.jsonl")  # rotated to a name we also read: same inode
    write_jsonl(path, [_ok(4), _ok(5)])  # the new file under the old name: new inode
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.rotated, stats.moved, stats.events) == (1, 1, 3)
    assert sorted(_events(store)) == [
        ("events-old.jsonl", 3),
        ("events.jsonl", 1),
        ("events.jsonl", 1),
        ("events.jsonl", 2),
        ("events.jsonl", 2),
    ]


def test_truncation_and_rewrite_start_over(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    path = side / "events.jsonl"
    write_jsonl(path, [_ok(1), _ok(2), _ok(3)])
    store.ingest_sidecar(side, settle_s=0)
    with path.open("r+") as fh:  # copytruncate: same inode, emptied, then written again
        fh.truncate(0)
    write_jsonl(path, [_ok(4)], mode="a")
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.truncated, stats.events) == (1, 1)
    # rewritten in place and grown past the old offset: the first bytes differ, so it starts over
    inode = path.stat().st_ino
    with path.open("r+") as fh:
        fh.seek(0)
        fh.write("\n".join(json.dumps(_ok(i)) for i in range(10, 14)) + "\n")
    assert path.stat().st_ino == inode
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.truncated, stats.events) == (1, 4)


def test_csv_logs_and_bad_csv_header(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    side.mkdir(parents=True)
    (side / "good.csv").write_text(
        "time,serial,kind,code,message,values.detector_temperature\n"
        f"{NOW.isoformat()},SN-9,fault,E12,door open,\n"
        f"{NOW.isoformat()},SN-9,telemetry,,,33.5\n"
        f"{NOW.isoformat()},SN-9,telemetry,,,warm\n"
        "only,three,cells\n"
    )
    (side / "bad.csv").write_text("when,what\n1,2\n")
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.events, stats.quarantined) == (2, 4)
    reasons = sorted((q["file"], q["line_no"], q["reason"]) for q in store.quarantine())
    assert reasons[0][:2] == ("bad.csv", 1) and reasons[0][2].startswith("CSV header")
    assert reasons[1][:2] == ("bad.csv", 2)
    assert reasons[2] == ("good.csv", 4, "values.detector_temperature: not a number")
    assert reasons[3][:2] == ("good.csv", 5)
    # appended CSV lines are read with the header of line 1
    with (side / "good.csv").open("a") as fh:
        fh.write(f"{NOW.isoformat()},SN-9,power,ON,,\n")
    assert store.ingest_sidecar(side, settle_s=0).events == 1
    assert store.devices(NOW)[0]["faults"] == 1


def test_unreadable_bytes_and_long_lines_are_quarantined(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    side.mkdir(parents=True)
    good = json.dumps(_ok(1)).encode()
    (side / "x.jsonl").write_bytes(good + b"\n\xff\xfe\n" + b"x" * 70000 + b"\n" + good + b"\n")
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.events, stats.quarantined) == (2, 2)


def test_missing_folder_and_hidden_files_are_ignored(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    assert store.ingest_sidecar(side, settle_s=0).files == 0
    write_jsonl(side / ".partial.jsonl", [_ok(1)])
    write_jsonl(side / "notes.txt", [_ok(1)])
    os.symlink(side / ".partial.jsonl", side / "link.jsonl")
    assert store.ingest_sidecar(side, settle_s=0).files == 0


def test_ambiguous_device_is_quarantined(tmp_path: Path, side: Path) -> None:
    """A station name shared by two known devices cannot say which one logged the event."""
    store = new_store(tmp_path)
    write_jsonl(
        side / "a.jsonl",
        [
            event(NOW, "power", serial="SN-1", station="XR1", manufacturer="A"),
            event(NOW, "power", serial="SN-2", station="XR1", manufacturer="B"),
            event(NOW, "fault", serial=None, station="XR1"),
            event(NOW, "fault", serial=None, model="only a model"),
        ],
    )
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.events, stats.quarantined, stats.devices_created) == (2, 2, 2)
    reasons = sorted(q["reason"] for q in store.quarantine())
    assert reasons[0].startswith("device matches 2 known devices") and reasons[1].startswith("device: no serial")


def test_a_crash_mid_batch_reads_nothing_twice(tmp_path: Path, side: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events and the offset commit together: a failure rolls both back, the retry reads each line once."""
    store = new_store(tmp_path)
    write_jsonl(side / "a.jsonl", [_ok(i) for i in range(5)])
    real = TwinStore._insert_event
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("power cut")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TwinStore, "_insert_event", staticmethod(flaky))
    with pytest.raises(RuntimeError):
        store.ingest_sidecar(side, settle_s=0)
    assert _events(store) == []
    monkeypatch.setattr(TwinStore, "_insert_event", staticmethod(real))
    assert store.ingest_sidecar(side, settle_s=0).events == 5
    assert [n for _, n in _events(store)] == [1, 2, 3, 4, 5]
