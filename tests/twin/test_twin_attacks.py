"""Issue 12, items 3, 7, 10 and 12: hostile sidecar files dropped beside a running ``dicom-node
serve``, read by its own intake job, and the twin read back over loopback (admin console, commands).

The node receives no images (``worker.threads: 0``: no model is loaded); the sidecar logs alone make
its devices. docs/reliability.md section 9 gives the figures before and after the fixes.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicom_node.store.dialect import json_text
from dicom_node.testing import NodeProcess, free_port, wait_for


class Twin:
    """A running node with its admin console, its sidecar folder and read-only views of its twin."""

    def __init__(self, node_factory: type[NodeProcess], **twin: Any) -> None:
        port = free_port()
        self.node = node_factory(
            admin={"enabled": True, "port": port},
            worker={"threads": 0},
            twin={"sidecar_poll_s": 0.5, "evaluate_every_s": 1, **twin},
        )
        self.sidecar = self.node.root / "sidecar"
        self.sidecar.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> Twin:
        self.node.start()
        wait_for("admin console", lambda: self._answers("/healthz"), 30, 0.2)
        return self

    def _answers(self, path: str) -> bool:
        try:
            return httpx.get(self.url + path, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.node.rows(sql, params)

    def serials(self) -> set[str]:
        return {r[0] for r in self.query("SELECT serial FROM twin_devices")}

    def quarantine(self) -> list[tuple[str, int, str]]:
        return [(r[0], r[1], r[2]) for r in self.query("SELECT file, line_no, reason FROM twin_quarantine")]

    def log(self) -> str:
        path = self.node.log_dir / "node.jsonl"
        return path.read_text(errors="replace") if path.exists() else ""

    def pages_ok(self) -> list[dict[str, Any]]:
        """Every twin page and command answers: /, /api/devices, /devices/<id>, ``devices``, ``device ID``."""
        rsp = httpx.get(self.url + "/api/devices", timeout=30)
        assert rsp.status_code == 200, rsp.text[:300]
        devices: list[dict[str, Any]] = rsp.json()
        for path in ["/", *[f"/devices/{d['id']}" for d in devices], *[f"/api/devices/{d['id']}" for d in devices]]:
            page = httpx.get(self.url + path, timeout=30)
            assert page.status_code == 200, f"{path}: {page.status_code} {page.text[:300]}"
        listed = self.node.cli("devices", check=False)
        assert listed.returncode == 0, listed.stderr[-1000:]
        as_json = self.node.cli("devices", "--json", check=False)
        assert as_json.returncode == 0 and len(json.loads(as_json.stdout)) == len(devices)
        for d in devices:
            one = self.node.cli("device", str(d["id"]), check=False)
            assert one.returncode == 0, one.stderr[-1000:]
        return devices


def line(at: str, serial: str, kind: str = "telemetry", **values: float) -> str:
    device = {"serial": serial, "manufacturer": "Acme Medical", "model": "DR-9000"}
    return json.dumps({"time": at, "device": device, "kind": kind, "values": values or {"detector_temperature": 30.0}})


def write(path: Path, lines: list[str], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode, encoding="utf-8") as fh:
        fh.write("".join(f"{x}\n" for x in lines))


def _next_utc_day(now: datetime) -> datetime:
    """00:30 UTC tomorrow: the UTC day a device first seen this far ahead broke the fault rule on."""
    return (now + timedelta(days=1)).replace(hour=0, minute=30, second=0, microsecond=0)


# --- item 3: a time in the future ------------------------------------------------------------------------


def test_future_sidecar_times_are_quarantined_and_the_twin_stays_up(node_factory: type[NodeProcess]) -> None:
    twin = Twin(node_factory).start()
    now = datetime.now(UTC)
    write(
        twin.sidecar / "a.jsonl",
        [
            line((now - timedelta(hours=1)).isoformat(), "SN-OK"),
            line((now + timedelta(hours=5)).isoformat(), "SN-5H"),
            line(_next_utc_day(now).isoformat(), "SN-TOMORROW"),
            line("9999-12-31T23:00:00+00:00", "SN-9999"),
            line((now + timedelta(minutes=4)).isoformat(), "SN-SKEW"),  # within twin.max_clock_skew_s 300
        ],
    )
    wait_for("five lines read", lambda: len(twin.quarantine()) == 3 and len(twin.serials()) == 2, 30, 0.3)
    assert twin.serials() == {"SN-OK", "SN-SKEW"}
    reasons = {n: r for _, n, r in twin.quarantine()}
    assert sorted(reasons) == [2, 3, 4]
    assert all(r.startswith("time: ") and "ahead of the node's clock" in r for r in reasons.values()), reasons
    assert "5.0 h ahead" in reasons[2] and "days ahead" in reasons[4]
    time.sleep(3)  # several health evaluations
    twin.pages_ok()
    assert "health evaluation job failed" not in twin.log()
    latest = max(r[0] for r in twin.query("SELECT last_seen FROM twin_devices"))
    assert datetime.fromisoformat(latest) <= datetime.now(UTC) + timedelta(seconds=300)


def test_rules_survive_a_future_history_and_admins_remove_or_merge(node_factory: type[NodeProcess]) -> None:
    """With the bound opened wide, the history holds what lines dated ahead made before the fix: every
    page still answers, and an admin removes the bad device and merges a device recorded twice."""
    twin = Twin(node_factory, max_clock_skew_s=1e12).start()
    now = datetime.now(UTC)
    write(
        twin.sidecar / "a.jsonl",
        [
            line("9999-12-31T23:00:00+00:00", "SN-9999"),
            line(_next_utc_day(now).isoformat(), "SN-TOMORROW", kind="fault"),
            *[line((now - timedelta(hours=h)).isoformat(), "SN-MAIN", kind="fault") for h in (1, 2)],
            line((now - timedelta(hours=3)).isoformat(), "SN-MAIN-TYPO", kind="fault"),
        ],
    )
    wait_for("four devices", lambda: len(twin.serials()) == 4, 30, 0.3)
    time.sleep(3)
    devices = {d["serial"]: d for d in twin.pages_ok()}
    assert "health evaluation job failed" not in twin.log()
    assert devices["SN-9999"]["first_seen"].startswith("9999-12-31")

    bad = str(devices["SN-9999"]["id"])
    refused = twin.node.cli("device", bad, "--remove", check=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert "SN-9999" in twin.serials()
    removed = twin.node.cli("device", bad, "--remove", "--yes", "--json", check=False)
    assert removed.returncode == 0, removed.stderr
    out = json.loads(removed.stdout)
    assert out["removed"] == int(bad) and out["rows"]["twin_events"] == 1
    assert "SN-9999" not in twin.serials()
    assert twin.query("SELECT count(*) FROM twin_events WHERE device_id = ?", (int(bad),)) == [(0,)]
    assert httpx.get(f"{twin.url}/devices/{bad}", timeout=30).status_code == 404

    unknown = twin.node.cli("device", "424242", "--remove", "--yes", check=False)
    assert unknown.returncode == 1 and "no device '424242'" in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1
    both = twin.node.cli("device", "SN-MAIN", "--remove", "--merge-into", "SN-MAIN", "--yes", check=False)
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1

    typo, main = devices["SN-MAIN-TYPO"]["id"], devices["SN-MAIN"]["id"]
    not_yet = twin.node.cli("device", "SN-MAIN-TYPO", "--merge-into", "SN-MAIN", check=False)
    assert not_yet.returncode == 2 and "--yes" in not_yet.stderr
    merged = twin.node.cli("device", "SN-MAIN-TYPO", "--merge-into", "SN-MAIN", "--yes", "--json", check=False)
    assert merged.returncode == 0, merged.stderr
    out = json.loads(merged.stdout)
    assert (out["merged"], out["into"], out["rows"]["twin_events"]) == (typo, main, 1)
    after = {d["serial"]: d for d in twin.pages_ok()}
    assert set(after) == {"SN-TOMORROW", "SN-MAIN"} and after["SN-MAIN"]["faults"] == 3
    days = twin.query("SELECT sum(faults) FROM twin_daily WHERE device_id = ?", (main,))
    assert days == [(3,)]


# --- item 7: a year-0001 line and a named pipe -------------------------------------------------------------


def test_a_bad_year_and_a_fifo_stop_neither_the_intake_nor_sigterm(node_factory: type[NodeProcess]) -> None:
    twin = Twin(node_factory)
    now = datetime.now(UTC)
    recent = (now - timedelta(hours=1)).isoformat()
    write(twin.sidecar / "a.jsonl", [line("0001-01-01T00:00:00", "SN-YEAR1"), line(recent, "SN-A")])
    write(twin.sidecar / "b.jsonl", [line("0001-01-01T00:00:00+00:00", "SN-YEAR1-UTC"), line(recent, "SN-B")])
    os.mkfifo(twin.sidecar / "c.jsonl")  # nobody ever writes it: opening it for reading would wait for good
    (twin.sidecar / "room").mkdir()
    os.mkfifo(twin.sidecar / "room" / "pipe.csv")
    write(twin.sidecar / "d.csv", ["time,serial,kind", f"{recent},SN-D,power"])
    twin.start()
    wait_for("good lines after the bad ones read", lambda: twin.serials() == {"SN-A", "SN-B", "SN-D"}, 30, 0.3)
    reasons = sorted(twin.quarantine())
    assert [(f, n) for f, n, _ in reasons] == [("a.jsonl", 1), ("b.jsonl", 1)]
    assert reasons[0][2].startswith("time: out of range") and "before 1990-01-01" in reasons[1][2]
    write(twin.sidecar / "d.csv", [f"{recent},SN-E,power"], mode="a")  # the intake still runs
    wait_for("a line appended later", lambda: "SN-E" in twin.serials(), 30, 0.3)
    time.sleep(2)
    log = twin.log()
    assert "sidecar intake job failed" not in log and "year 0 is out of range" not in log
    assert log.count("sidecar file c.jsonl skipped: not a regular file") == 1  # once, not every poll
    assert log.count("sidecar file room/pipe.csv skipped: not a regular file") == 1
    twin.pages_ok()
    started = time.monotonic()
    assert twin.node.stop(timeout_s=30) == 0
    assert time.monotonic() - started < 15


# --- item 10: renamed while read ---------------------------------------------------------------------------


def test_a_file_renamed_while_read_is_read_once(node_factory: type[NodeProcess]) -> None:
    twin = Twin(node_factory).start()
    start = datetime.now(UTC) - timedelta(hours=2)
    lines = [line((start + timedelta(milliseconds=i)).isoformat(), "SN-ROT", x=i) for i in range(60000)]
    staging = twin.node.root / "big.jsonl"
    write(staging, lines)
    staging.rename(twin.sidecar / "big.jsonl")  # appears whole

    def events() -> int:
        return int(twin.query("SELECT count(*) FROM twin_events")[0][0])

    wait_for("reading under way", events, 60, 0.05)
    (twin.sidecar / "big.jsonl").rename(twin.sidecar / "big.1.jsonl")  # rotated while read...
    write(twin.sidecar / "big.jsonl", [line(datetime.now(UTC).isoformat(), "SN-ROT", x=60000 + i) for i in range(10)])
    at_rename = events()
    assert at_rename < 60000, "the file was read before it could be renamed: make it longer"

    def distinct() -> int:
        x = json_text(twin.node.engine, "values_json", "x")
        return int(twin.query(f"SELECT count(DISTINCT {x}) FROM twin_events")[0][0])

    wait_for("every line read", lambda: distinct() == 60010, 240, 1.0)
    time.sleep(2)  # a few more polls: nothing may be read again
    assert (events(), distinct()) == (60010, 60010)
    assert twin.query("SELECT path FROM twin_sidecar_files ORDER BY path") == [("big.1.jsonl",), ("big.jsonl",)]


# --- item 12: links and other people's files ---------------------------------------------------------------


def test_links_and_foreign_files_are_not_read(node_factory: type[NodeProcess], tmp_path: Path) -> None:
    twin = Twin(node_factory)
    secret = tmp_path / "system" / "shadow"
    write(secret, ["root:$6$secret-hash:19000:0:99999:7:::", line(datetime.now(UTC).isoformat(), "SN-SECRET")])
    os.link(secret, twin.sidecar / "linked.jsonl")
    skipped = {"linked.jsonl": "hard link (2 names)", "symlink.jsonl": "symbolic link"}
    try:  # a real system file, where it shares the file system
        os.link("/etc/passwd", twin.sidecar / "passwd.jsonl")
        skipped["passwd.jsonl"] = "hard link ("
    except OSError:
        pass
    os.symlink(secret, twin.sidecar / "symlink.jsonl")
    if os.geteuid() == 0:
        write(twin.sidecar / "foreign.jsonl", [line(datetime.now(UTC).isoformat(), "SN-FOREIGN")])
        os.chown(twin.sidecar / "foreign.jsonl", 65534, 65534)
        skipped["foreign.jsonl"] = "owned by uid 65534"
    write(twin.sidecar / "good.jsonl", [line(datetime.now(UTC).isoformat(), "SN-GOOD")])
    twin.start()
    wait_for("the good file read", lambda: twin.serials() == {"SN-GOOD"}, 30, 0.3)
    time.sleep(2)
    assert twin.quarantine() == [] and twin.serials() == {"SN-GOOD"}
    assert twin.query("SELECT DISTINCT file FROM twin_events") == [("good.jsonl",)]
    log = twin.log()
    for name, reason in skipped.items():
        said = [x for x in log.splitlines() if f"sidecar file {name} skipped" in x]
        assert len(said) == 1 and reason in said[0], (name, said)
    assert "secret-hash" not in log and "root:" not in log
    twin.pages_ok()


@pytest.fixture(autouse=True)
def _no_links_left(tmp_path: Path) -> Any:
    """Remove the hard link to /etc/passwd with the test's folder (tmp folders are kept a while)."""
    yield
    for p in tmp_path.rglob("passwd.jsonl"):
        p.unlink()
