"""Sidecar log intake: schema checks, quarantine, resuming, rotation, truncation, CSV, subfolders."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from twin_support import NOW, both_engines, event, new_store, write_jsonl

from twin import sidecar
from twin.db import primary_key, utcnow
from twin.db import rows as twin_rows
from twin.store import TwinStore


def _events(store: TwinStore) -> list[tuple[str, int]]:
    rows = twin_rows(store._connect(), "SELECT file, line_no FROM twin_events ORDER BY file, line_no")
    return [(r["file"], r["line_no"]) for r in rows]


def _ok(i: int) -> dict:
    return event(NOW - timedelta(minutes=100 - i), "telemetry", values={"detector_temperature": 30 + i / 10})


@pytest.fixture()
def side(tmp_path: Path) -> Path:
    return tmp_path / "sidecar"


@both_engines
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


@both_engines
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


@both_engines
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


@both_engines
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


@both_engines
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


@both_engines
def test_unreadable_bytes_and_long_lines_are_quarantined(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    side.mkdir(parents=True)
    good = json.dumps(_ok(1)).encode()
    (side / "x.jsonl").write_bytes(good + b"\n\xff\xfe\n" + b"x" * 70000 + b"\n" + good + b"\n")
    stats = store.ingest_sidecar(side, settle_s=0)
    assert (stats.events, stats.quarantined) == (2, 2)


@both_engines
def test_missing_folder_and_hidden_files_are_ignored(tmp_path: Path, side: Path) -> None:
    store = new_store(tmp_path)
    assert store.ingest_sidecar(side, settle_s=0).files == 0
    write_jsonl(side / ".partial.jsonl", [_ok(1)])
    write_jsonl(side / "notes.txt", [_ok(1)])
    os.symlink(side / ".partial.jsonl", side / "link.jsonl")
    assert store.ingest_sidecar(side, settle_s=0).files == 0


@both_engines
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


@both_engines
def test_a_crash_mid_batch_reads_nothing_twice(tmp_path: Path, side: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Events and the offset commit together: a failure rolls both back, the retry reads each line once.

    A database error (here: the disk) stops the pass, as a crash would; any other error stops only
    its file (see test_twin_attacks.py)."""
    store = new_store(tmp_path)
    write_jsonl(side / "a.jsonl", [_ok(i) for i in range(5)])
    real = TwinStore._insert_event
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise sqlite3.OperationalError("disk I/O error")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(TwinStore, "_insert_event", staticmethod(flaky))
    with pytest.raises(sqlite3.OperationalError):
        store.ingest_sidecar(side, settle_s=0)
    assert _events(store) == []
    monkeypatch.setattr(TwinStore, "_insert_event", staticmethod(real))
    assert store.ingest_sidecar(side, settle_s=0).events == 5
    assert [n for _, n in _events(store)] == [1, 2, 3, 4, 5]


@both_engines
def test_times_too_far_ahead_or_reset_are_quarantined(tmp_path: Path, side: Path) -> None:
    """Issue 12 items 3 and 7: one bound on every sidecar time (twin.max_clock_skew_s), and a time
    that cannot even be placed in the local zone (year 1) is a bad line, not a stopped intake."""
    now = utcnow()
    lines = [
        event(now + timedelta(minutes=4), "power"),  # within the default 300 s: kept
        event(now + timedelta(hours=5), "power"),
        {**event(now, "power"), "time": "9999-12-31T23:59:59+00:00"},
        {**event(now, "power"), "time": "0001-01-01T00:00:00"},
        {**event(now, "power"), "time": "1970-01-01T00:00:00+00:00"},
        event(now - timedelta(days=400), "power"),  # old but real: kept
    ]
    write_jsonl(side / "a.jsonl", lines)
    write_jsonl(side / "b.jsonl", [event(now, "power", serial="SN-AFTER")])
    stats = new_store(tmp_path).ingest_sidecar(side, settle_s=0)
    assert (stats.events, stats.quarantined) == (3, 4)
    reasons = {q["line_no"]: q["reason"] for q in new_store(tmp_path).quarantine()}
    assert "5.0 h ahead of the node's clock" in reasons[2] and "max_clock_skew_s 300" in reasons[2]
    assert "days ahead" in reasons[3] and reasons[4].startswith("time: out of range")
    assert "before 1990-01-01" in reasons[5]
    # a wider tolerance is the admin's choice
    wide = new_store(tmp_path / "wide", max_clock_skew_s=6 * 3600)
    assert wide.ingest_sidecar(side, settle_s=0).events == 4


def test_a_fifo_swapped_in_after_discovery_is_refused_without_blocking(side: Path) -> None:
    """The checks run again on the opened descriptor: O_NONBLOCK, O_NOFOLLOW, fstat."""
    side.mkdir(parents=True)
    os.mkfifo(side / "pipe.jsonl")
    write_jsonl(side / "real.jsonl", [_ok(1)])
    allowed = sidecar.owners(side)
    with pytest.raises(sidecar.Refused, match="not a regular file"):
        sidecar.open_log(side / "pipe.jsonl", allowed)
    os.symlink(side / "real.jsonl", side / "link.jsonl")
    with pytest.raises(sidecar.Refused, match="symbolic link"):
        sidecar.open_log(side / "link.jsonl", allowed)
    os.link(side / "real.jsonl", side / "hard.jsonl")
    with pytest.raises(sidecar.Refused, match="hard link"):
        sidecar.open_log(side / "real.jsonl", allowed)
    assert {f.name: f.skip for f in sidecar.discover(side)} == {
        "hard.jsonl": "hard link (2 names)",
        "link.jsonl": "symbolic link",
        "pipe.jsonl": "not a regular file",
        "real.jsonl": "hard link (2 names)",
    }


def test_offsets_kept_by_path_before_are_rekeyed_by_inode(tmp_path: Path, side: Path) -> None:
    """A database from before issue 12 (twin_sidecar_files keyed by path) keeps its offsets."""
    write_jsonl(side / "a.jsonl", [_ok(1), _ok(2)])
    store = new_store(tmp_path)
    assert store.ingest_sidecar(side, settle_s=0).events == 2
    db = sqlite3.connect(tmp_path / "node.db")
    columns = "path, dev, inode, offset, line_no, head, head_len, updated_at"
    row = db.execute(f"SELECT {columns} FROM twin_sidecar_files").fetchone()
    db.executescript(
        "DROP TABLE twin_sidecar_files; DROP INDEX IF EXISTS twin_sidecar_files_path;"
        "CREATE TABLE twin_sidecar_files (path TEXT PRIMARY KEY, dev INTEGER, inode INTEGER, offset INTEGER,"
        " line_no INTEGER, head TEXT, head_len INTEGER, updated_at TEXT);"
        "CREATE INDEX idx_twin_sidecar_files_dev_inode ON twin_sidecar_files (dev, inode);"
    )
    db.execute("INSERT INTO twin_sidecar_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
    db.execute("INSERT INTO twin_sidecar_files VALUES ('old-name.jsonl', ?, ?, 0, 0, '', 0, '2000')", row[1:3])
    db.commit()
    db.close()
    write_jsonl(side / "a.jsonl", [_ok(3)], mode="a")
    again = new_store(tmp_path)
    assert primary_key(again._connect(), "twin_sidecar_files") == ["dev", "inode"]
    assert again.ingest_sidecar(side, settle_s=0).events == 1
    assert [n for _, n in _events(again)] == [1, 2, 3]
