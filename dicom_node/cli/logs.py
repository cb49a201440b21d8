"""``dicom-node logs``: the node's JSON log and its audit trail, rendered for people.

The node writes one JSON object a line to ``storage.dir/logs/node.jsonl`` (rotated to ``.1``, ``.2``
…) and keeps an audit trail of associations and result deliveries in its database. This command
reads both while the node serves: rotated files oldest first, ``--since`` for a window, ``--device``
for one modality, ``--follow`` to keep printing as lines arrive (a rotation is followed), ``--json``
for scripts. What it prints is what the node logged: UIDs, AE titles, addresses, codes and counts,
never patient data.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from dicom_node.cli import ConfigOpt, fail, get_config
from dicom_node.config import Config
from dicom_node.logs import LOG_FILE
from dicom_node.store import Store
from dicom_node.store.dialect import json_text

DEFAULT_LINES = 100
POLL_S = 0.5
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}
_LEVEL_STYLE = {"DEBUG": "dim", "INFO": "cyan", "WARNING": "yellow", "ERROR": "bold red", "CRITICAL": "bold red"}
_OUTCOME_STYLE = {"released": "green", "delivered": "green", "aborted": "yellow", "queued": "dim",
                  "rejected": "red", "failed": "red", "retrying": "yellow"}
_CORE = ("time", "level", "logger", "message", "exception")
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")

out = Console(highlight=False, soft_wrap=True)


# --- time ---------------------------------------------------------------------------------------


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An age (``30s``, ``15m``, ``2h``, ``7d``, ``1w``) or an ISO 8601 date or time (local time
    unless it carries an offset) as an aware UTC datetime; ValueError otherwise."""
    now = now or datetime.now(UTC)
    age = _AGE.match(text)
    if age:
        return now - timedelta(seconds=float(age.group(1)) * _UNITS[age.group(2).lower()])
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--since: an age such as 30m, 2h or 7d, or an ISO 8601 time such as "
                         f"2025-03-01T14:30 (got {text!r})") from None
    return (t if t.tzinfo else t.astimezone()).astimezone(UTC)


def _record_time(record: dict[str, Any]) -> datetime | None:
    try:
        return datetime.fromisoformat(str(record.get("time", "")).replace("Z", "+00:00"))
    except ValueError:
        return None


def _local(t: datetime | None) -> str:
    return t.astimezone().strftime("%Y-%m-%d %H:%M:%S") if t else "????-??-?? ??:??:??"


# --- which lines ---------------------------------------------------------------------------------


@dataclass
class DeviceFilter:
    """What ties a log line or an audit row to one device of the twin: its id in twin messages, its
    station name, the AE titles that sent its images, and those images' SOP Instance UIDs."""

    device_id: int
    station: str | None = None
    ae_titles: set[str] = field(default_factory=set)
    instances: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        words = [rf"device {self.device_id}\b"] + ([re.escape(self.station)] if self.station else [])
        self._text = re.compile(r"\b(?:" + "|".join(words) + r")", re.IGNORECASE)

    def matches(self, record: dict[str, Any]) -> bool:
        """A line about one image is kept when the image is the device's; an association-level line
        when its AE title sent the device's images; any line that names the device or its station."""
        if record.get("device_id") == self.device_id:
            return True
        if record.get("sop_instance_uid"):
            return record["sop_instance_uid"] in self.instances
        if any(record.get(k) in self.ae_titles for k in ("calling_ae", "peer_ae") if record.get(k)):
            return True
        return bool(self._text.search(str(record.get("message", ""))))


def device_filter(cfg: Config, ref: str) -> DeviceFilter:
    """Resolve ``--device`` (id, serial number or station name) against the twin; exits when unknown."""
    from twin.db import thread_local_connect
    from twin.store import TwinStore

    twin = TwinStore(thread_local_connect(_database(cfg)))
    device_id = twin.find_device(ref)
    if device_id is None:
        raise fail(f"--device: no device {ref!r} (give its id, serial number or station name; see `devices`)", 1)
    station = twin.device(device_id).get("station")
    store = Store(cfg.database)
    try:
        conn = store.conn()
        instances = {r[0] for r in conn.execute(
            "SELECT sop_instance_uid FROM twin_acquisitions WHERE device_id = ?", (device_id,))}
        aes = {r[0] for r in conn.execute(
            "SELECT DISTINCT i.calling_ae FROM instances i JOIN twin_acquisitions a USING (sop_instance_uid)"
            " WHERE a.device_id = ? AND i.calling_ae IS NOT NULL", (device_id,))}
    finally:
        store.close()
    return DeviceFilter(device_id, station, aes, instances)


def _database(cfg: Config) -> Path | str:
    """The node's database: the ``storage.database`` URL, else the SQLite file (which must exist)."""
    if cfg.storage.database is not None:
        return cfg.database
    if not cfg.db_path.exists():
        raise fail(f"no database at {cfg.db_path}: has the node run with this config (storage.dir)?", 1)
    return cfg.db_path


# --- the JSON log ----------------------------------------------------------------------------------


def log_files(log_dir: Path) -> list[Path]:
    """``node.jsonl`` and its rotations, oldest first (``node.jsonl.5`` … ``node.jsonl.1``, ``node.jsonl``)."""
    rotated = []
    for p in log_dir.glob(f"{LOG_FILE}.*"):
        suffix = p.name.rsplit(".", 1)[-1]
        if suffix.isdigit():
            rotated.append((int(suffix), p))
    current = log_dir / LOG_FILE
    return [p for _, p in sorted(rotated, reverse=True)] + ([current] if current.exists() else [])


def parse_line(line: str) -> dict[str, Any] | None:
    """One JSON log record, or None for a line that is not one (cut off, or not JSON)."""
    line = line.strip()
    if not line:
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_records(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        try:
            with path.open(encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    record = parse_line(line)
                    if record is not None:
                        yield record
        except FileNotFoundError:  # rotated away while we read
            continue


def keep(record: dict[str, Any], since: datetime | None, device: DeviceFilter | None) -> bool:
    if since is not None:
        t = _record_time(record)
        if t is None or t < since:
            return False
    return device is None or device.matches(record)


def render_record(record: dict[str, Any]) -> str:
    """``2025-03-01 14:30:05 INFO    scp: association rejected  calling_ae=X reason=…`` (rich markup)."""
    level = str(record.get("level", "?"))
    logger = str(record.get("logger", "")).removeprefix("dicom_node.")
    extras = " ".join(f"{k}={_plain(v)}" for k, v in record.items() if k not in _CORE)
    text = (f"[dim]{_local(_record_time(record))}[/] [{_LEVEL_STYLE.get(level, '')}]{level:<7}[/] "
            f"[bold]{escape(clean(logger))}[/]: {escape(clean(str(record.get('message', ''))))}")
    if extras:
        text += f"  [dim]{escape(extras)}[/]"
    if record.get("exception"):
        text += f"\n    [red]{escape(clean(str(record['exception'])))}[/]"
    return text


def _plain(v: Any) -> str:
    return clean(json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else str(v))


def clean(text: str) -> str:
    """Text without terminal escape sequences or control characters (newlines and tabs kept)."""
    return _CONTROL.sub("", _ESCAPE.sub("", text))


def follow_file(path: Path, offset: int) -> Iterator[dict[str, Any] | None]:
    """New records of ``path`` from ``offset`` on, forever; yields None when idle. When the file is
    rotated (a new inode) or truncated, the new one is read from its start."""
    fh = None
    inode = None
    pending = ""
    while True:
        if fh is None:
            try:
                fh = path.open(encoding="utf-8", errors="replace")
                inode = path.stat().st_ino
                fh.seek(offset)
            except FileNotFoundError:
                yield None
                continue
        chunk = fh.readline()
        if chunk:
            pending += chunk
            if pending.endswith("\n"):
                record = parse_line(pending)
                pending = ""
                if record is not None:
                    yield record
            continue
        try:
            st = path.stat()
            rotated = st.st_ino != inode or st.st_size < fh.tell()
        except FileNotFoundError:
            rotated = True
        if rotated:
            fh.close()
            fh, offset, pending = None, 0, ""
        yield None


# --- the audit trail ---------------------------------------------------------------------------------


def audit_rows(store: Store, since: datetime | None, *, after_id: int = 0) -> list[dict[str, Any]]:
    """Associations and result delivery attempts (audit table), oldest first, as flat rows; a delivery
    carries its result's kind and source instance (to filter by device)."""
    t0 = max(since.timestamp() if since else 0.0, 0.0)
    rows: list[dict[str, Any]] = []
    for r in store.conn().execute(
            "SELECT a.id, a.at, a.event, a.peer_ae, a.peer_host, a.outcome, a.detail, r.kind,"
            " r.source_sop_instance_uid FROM audit a LEFT JOIN results r ON a.event = 'delivery'"
            f" AND r.sop_instance_uid = {json_text(store, 'a.detail', 'result_uid')}"
            " WHERE a.at >= ? AND a.id > ? ORDER BY a.id", (t0, after_id)):
        row = {"id": r["id"], "time": _iso(r["at"]), "at": r["at"], "event": r["event"], "peer_ae": r["peer_ae"],
               "peer_host": r["peer_host"], "outcome": r["outcome"]}
        row.update(json.loads(r["detail"]) if r["detail"] else {})
        if r["event"] == "delivery":
            row.update(kind=r["kind"], sop_instance_uid=r["source_sop_instance_uid"])
        rows.append(row)
    return rows


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def audit_matches(row: dict[str, Any], device: DeviceFilter | None) -> bool:
    if device is None:
        return True
    if row["event"] == "delivery":
        return row.get("sop_instance_uid") in device.instances
    return row.get("peer_ae") in device.ae_titles


def render_audit(row: dict[str, Any]) -> str:
    """One association or delivery as a line of rich markup."""
    when = _local(datetime.fromtimestamp(row["at"], UTC))
    outcome = str(row.get("outcome") or "")
    style = _OUTCOME_STYLE.get(outcome, "default")
    if row["event"] == "delivery":
        what = f"→ {escape(clean(str(row['destination'])))}"
        notes = [f"{(row.get('kind') or '?').upper()} {row['result_uid']}", f"attempt {row.get('attempts', 0)}"]
        if row.get("error"):
            notes.append(str(row["error"]))
    else:
        what = escape(clean(f"{row.get('peer_ae') or '?'}@{row.get('peer_host') or '?'}"))
        notes = []
        if "instances" in row:
            notes.append(f"{row['instances']} image{'s' if row['instances'] != 1 else ''}")
        if row.get("bytes"):
            notes.append(f"{row['bytes'] / 2**20:.1f} MiB")
        if "seconds" in row:
            notes.append(f"{row['seconds']:.1f} s")
        for key in ("duplicates", "failures"):
            if row.get(key):
                notes.append(f"{row[key]} {key}")
        if row.get("reason"):
            notes.append(f"{row['reason']} (called {row.get('called_ae', '?')})")
    return (f"[dim]{when}[/] {row['event']:<11} {what}  [{style}]{escape(clean(outcome))}[/]"
            + (f"  [dim]{escape(clean(', '.join(notes)))}[/]" if notes else ""))


def _audit_json(row: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in row.items() if k not in ("at", "id")}, default=str)


# --- the command -----------------------------------------------------------------------------------


def logs(
    config: ConfigOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines (Ctrl-C stops)")] = False,
    device: Annotated[str | None, typer.Option(
        "--device", help="only lines about this device (id, serial number or station name)")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help="from this time: an age (30m, 2h, 7d) or ISO 8601 (local time unless offset given)")] = None,
    lines: Annotated[int | None, typer.Option(
        "--lines", "-n", help=f"only the last N lines (default {DEFAULT_LINES}, all with --since; 0: all)")] = None,
    audit: Annotated[bool, typer.Option(
        "--audit", help="the audit trail (associations and result deliveries) instead of the log")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object a line, for scripts")] = False,
) -> None:
    """The node's log (rotated files too) or its audit trail, for people; --follow tails it."""
    cfg = get_config(config)
    try:
        start = parse_since(since) if since else None
    except ValueError as exc:
        raise fail(str(exc)) from None
    limit = lines if lines is not None else (0 if since else DEFAULT_LINES)
    if limit < 0:
        raise fail(f"--lines: 0 or more (got {limit})")
    dev = device_filter(cfg, device) if device else None
    try:
        if audit:
            _show_audit(cfg, start, dev, limit, follow, as_json)
        else:
            _show_log(cfg, start, dev, limit, follow, as_json)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None


def _emit_record(record: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(record, ensure_ascii=False))
    else:
        out.print(render_record(record))


def _show_log(cfg: Config, since: datetime | None, device: DeviceFilter | None, limit: int, follow: bool,
              as_json: bool) -> None:
    files = log_files(cfg.log_dir)
    if not files and not follow:
        raise fail(f"no log file in {cfg.log_dir}: has the node run with this config (storage.dir)?", 1)
    current = cfg.log_dir / LOG_FILE
    offset = current.stat().st_size if current.exists() else 0  # what is read now; --follow goes on from here
    shown: Iterable[dict[str, Any]] = (r for r in read_records(files) if keep(r, since, device))
    if limit:
        shown = deque(shown, maxlen=limit)
    for record in shown:
        _emit_record(record, as_json)
    if not follow:
        return
    for new in follow_file(current, offset):
        if new is None:
            time.sleep(POLL_S)
        elif keep(new, since, device):
            _emit_record(new, as_json)


def _show_audit(cfg: Config, since: datetime | None, device: DeviceFilter | None, limit: int, follow: bool,
                as_json: bool) -> None:
    store = Store(_database(cfg))
    try:
        fresh = audit_rows(store, since)
        last_id = 0
        rows = [r for r in fresh if audit_matches(r, device)]
        rows = rows[-limit:] if limit else rows
        while True:
            last_id = max([last_id] + [r["id"] for r in fresh])
            for row in rows:
                if as_json:
                    typer.echo(_audit_json(row))
                else:
                    out.print(render_audit(row))
            if not follow:
                return
            time.sleep(POLL_S)
            fresh = audit_rows(store, since, after_id=last_id)
            rows = [r for r in fresh if audit_matches(r, device)]
    finally:
        store.close()


def register(app: typer.Typer) -> None:
    """Add ``logs`` to the root command."""
    app.command("logs")(logs)
