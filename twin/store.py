"""The device twin's public API over the node's shared SQLite database.

``TwinStore(connect)`` takes a callable returning the calling thread's ``Any``
(one WAL file shared by the node's threads) and asks for it in every call, so one store serves
the worker, the scheduler's jobs and the commands. Every write is idempotent: recording the same
SOP Instance UID twice, or ingesting a sidecar line already read, changes nothing, so the node may
redo a step after a crash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset

from twin import ai_watch, registry, report, sidecar
from twin.clock import DEFAULT_MAX_SKEW_S, TimeBound
from twin.db import (
    COUNTERS,
    DB_ERRORS,
    Connect,
    aware,
    bump,
    conn_of,
    ensure_schema,
    execute,
    insert,
    iso,
    one,
    rows,
    update,
    upsert,
    utcnow,
    writing,
)
from twin.headers import DeviceIdentity, InstanceHeaders, read_headers
from twin.health import Health, Thresholds, assess

log = logging.getLogger(__name__)

MAINTENANCE_KINDS = report.MAINTENANCE_KINDS
#: Every table with rows of one device (``twin_devices`` itself aside).
DEVICE_TABLES = (
    "twin_acquisitions",
    "twin_config",
    "twin_events",
    "twin_maintenance",
    "twin_daily",
    "twin_health",
    "twin_health_log",
    "twin_ai_outcomes",
)


@dataclass(slots=True)
class IngestStats:
    """What one sidecar pass did; counts only, never line contents."""

    files: int = 0
    lines: int = 0
    events: int = 0
    quarantined: int = 0
    devices_created: int = 0
    rotated: int = 0
    truncated: int = 0
    moved: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class TwinStore:
    """Identity, configuration, usage, events, maintenance and health of every device."""

    def __init__(
        self,
        connect: Connect,
        thresholds: Thresholds | None = None,
        max_clock_skew_s: float = DEFAULT_MAX_SKEW_S,
    ) -> None:
        self._connect: Connect = lambda: conn_of(connect())  # a sqlite_utils.Database: its connection
        self.thresholds = thresholds or Thresholds()
        #: how far ahead of the node's clock a sidecar or header time may be (twin.max_clock_skew_s)
        self.max_clock_skew_s = max_clock_skew_s
        # sidecar files skipped, with the reason last logged: each is logged once, not every poll
        self._skipped: dict[tuple[str, tuple[int, int]], str] = {}
        ensure_schema(connect())

    # --- headers -------------------------------------------------------------------------------------

    def record_instance(self, ds: Dataset, received_at: datetime | None = None) -> int:
        """Record one received instance (any body part); returns the device id.

        Idempotent on SOP Instance UID: a second call for the same instance changes nothing.
        """
        headers = read_headers(ds)
        received = aware(received_at) if received_at else utcnow()
        uid = headers.usage.sop_instance_uid or _fallback_uid(headers)
        db = self._connect()
        with writing(db):
            seen = one(db, "SELECT device_id FROM twin_acquisitions WHERE sop_instance_uid = ?", [uid])
            if seen:
                return int(seen["device_id"])
            at = _plausible(headers.usage.acquired_at, received, self.max_clock_skew_s)
            device_id, created = registry.resolve(db, headers.identity, at, "headers")
            config_id = registry.record_configuration(db, device_id, headers.configuration, at, uid)
            self._insert_acquisition(db, uid, device_id, config_id, headers, at, received)
            execute(  # the later of the two (CASE: SQLite's max(a, b) is PostgreSQL's greatest)
                db,
                "UPDATE twin_devices SET last_acquisition = CASE WHEN last_acquisition IS NULL "
                "OR last_acquisition < ? THEN ? ELSE last_acquisition END WHERE id = ?",
                [iso(at), iso(at), device_id],
            )
        if created:
            log.info("twin: new device %s (key %s)", device_id, headers.identity.key)
        return device_id

    @staticmethod
    def _insert_acquisition(
        db: Any,
        uid: str,
        device_id: int,
        config_id: int,
        headers: InstanceHeaders,
        at: datetime,
        received: datetime,
    ) -> None:
        u = headers.usage
        row: dict[str, Any] = asdict(u)
        row.update(
            sop_instance_uid=uid,
            device_id=device_id,
            config_id=config_id,
            at=iso(at),
            acquired_at=iso(u.acquired_at) if u.acquired_at else None,
            received_at=iso(received),
            deviation_index_computed=int(u.deviation_index_computed),
            detector_calibrated_on=_day(u.detector_calibrated_on),
            device_calibrated_on=_day(u.device_calibrated_on),
        )
        insert(db, "twin_acquisitions", row, returning=None)
        di = u.deviation_index
        bump(
            db,
            device_id,
            iso(at)[:10],
            acquisitions=1,
            di_n=int(di is not None),
            di_sum=di or 0.0,
            di_sumsq=(di or 0.0) ** 2,
            dap_sum=u.dap or 0.0,
            mas_sum=u.mas or 0.0,
            load_n=int(u.kvp is not None and u.mas is not None),
            kvp_mas_sum=(u.kvp or 0.0) * (u.mas or 0.0),
        )

    # --- the AI's outcomes ---------------------------------------------------------------------------

    def record_ai_outcome(
        self,
        sop_instance_uid: str,
        *,
        score: float | None,
        findings: int,
        skipped: bool,
        at: datetime | None = None,
    ) -> None:
        """Record what the detector made of one instance, for the AI watch (:mod:`twin.ai_watch`).

        ``score`` is the image-level score (opacity probability: the best box's score), ``findings``
        the number of findings at the node's operating threshold (positive: at least one),
        ``skipped`` whether it was not analysed; ``at`` is when (default now). The outcome is placed
        on the instance's acquisition time, recorded by :meth:`record_instance` first, so it lines up
        with the configuration history; an instance the twin has not recorded is ignored, with one
        log line (the twin never holds back an image). One outcome per SOP Instance UID: a second call
        changes nothing (a step redone after a crash), except that an analysis replaces a skip. A score
        outside 0-1 or not finite, or a negative count, is a ValueError naming the argument.
        """
        if score is not None and (not math.isfinite(score) or not 0.0 <= score <= 1.0):
            raise ValueError(f"score: a number from 0 to 1, or None (got {score!r})")
        if isinstance(findings, bool) or not isinstance(findings, int) or findings < 0:
            raise ValueError(f"findings: a count of 0 or more (got {findings!r})")
        positive = findings > 0 and not skipped
        db = self._connect()
        with writing(db):
            acq = one(db, "SELECT device_id, at FROM twin_acquisitions WHERE sop_instance_uid = ?",
                      [sop_instance_uid])
            if acq is None:
                log.info("twin: AI outcome of an instance the twin has not recorded",
                         extra={"sop_instance_uid": sop_instance_uid})
                return
            row = {
                "sop_instance_uid": sop_instance_uid,
                "device_id": acq["device_id"],
                "at": acq["at"],
                "score": None if skipped else score,
                "findings": findings,
                "positive": int(positive),
                "skipped": int(skipped),
            }
            old = one(db, "SELECT * FROM twin_ai_outcomes WHERE sop_instance_uid = ?", [sop_instance_uid])
            if old is not None:
                if not (old["skipped"] and not skipped):
                    return  # a step redone after a crash: the first outcome stays
                # an image skipped before and analysed now (routing changed, or its planned outcome
                # handed over by the simulator): the analysis replaces the skip, in the counts too
                bump(db, old["device_id"], old["at"][:10], **{k: -v for k, v in _ai_counts(old).items()})
            upsert(db, "twin_ai_outcomes", {**row, "recorded_at": iso(at or utcnow())}, ["sop_instance_uid"])
            bump(db, acq["device_id"], acq["at"][:10], **_ai_counts(row))

    # --- sidecar -------------------------------------------------------------------------------------

    def ingest_sidecar(self, directory: Path, settle_s: float = 30.0, batch: int = 500) -> IngestStats:
        """Read new lines of every sidecar log under ``directory``; bad lines go to quarantine.

        Events and the file offset are committed together, batch by batch, so each line is read
        once even across crashes. Offsets belong to the file (device, inode), not to its name: a
        renamed file resumes where it was, a rotated, truncated or rewritten one is read from its
        start. Only regular files with one name, owned by the node's user or the folder's owner,
        are opened; anything else is skipped with one log line. One file's trouble never stops the
        others.
        """
        stats = IngestStats()
        directory = Path(directory)
        found = sidecar.discover(directory)
        if not found and not directory.is_dir():
            return stats  # a folder that is gone (unmounted) forgets no offsets
        db = self._connect()
        try:
            allowed = sidecar.owners(directory)
        except OSError:  # the folder went away since it was walked
            return stats
        # names read before this pass: a new inode under one of them is a rotation
        names = {r["path"] for r in rows(db, "SELECT path FROM twin_sidecar_files")}
        read: set[tuple[int, int]] = set()
        for f in found:
            try:
                if f.skip is not None:
                    raise sidecar.Refused(f.skip)
                self._ingest_file(db, f, allowed, f.name in names, read, stats, settle_s, batch)
            except sidecar.Refused as exc:
                self._skip(f, str(exc), stats)
            except OSError as exc:
                log.warning("twin: sidecar file %s unreadable: %s", f.name, exc.strerror or exc)
            except DB_ERRORS:
                raise  # the database, not the file: the job logs it and runs again
            except Exception as exc:  # the type only: a message may quote the line
                log.warning("twin: sidecar file %s not read: %s", f.name, type(exc).__name__)
        self._skipped = {k: v for k, v in self._skipped.items() if k in {(f.name, f.key) for f in found}}
        self._forget_gone(db, {f.key for f in found})
        if stats.lines:
            log.info("twin: sidecar %s", stats.as_dict())
        return stats

    def _skip(self, f: sidecar.Found, reason: str, stats: IngestStats) -> None:
        """Count a file that is not read, and say so once per file and reason (not every poll)."""
        stats.skipped += 1
        if self._skipped.get((f.name, f.key)) != reason:
            self._skipped[(f.name, f.key)] = reason
            log.warning("twin: sidecar file %s skipped: %s", f.name, reason)

    @staticmethod
    def _forget_gone(db: Any, present: set[tuple[int, int]]) -> None:
        """Drop the offsets of files no longer under the folder (their inodes may be reused)."""
        gone = [
            (r["dev"], r["inode"])
            for r in rows(db, "SELECT dev, inode FROM twin_sidecar_files")
            if (r["dev"], r["inode"]) not in present
        ]
        if gone:
            with writing(db):
                conn_of(db).executemany("DELETE FROM twin_sidecar_files WHERE dev = ? AND inode = ?", gone)

    def _ingest_file(
        self,
        db: Any,
        f: sidecar.Found,
        allowed: frozenset[int],
        known: bool,
        read: set[tuple[int, int]],
        stats: IngestStats,
        settle_s: float,
        batch: int,
    ) -> None:
        fh, st = sidecar.open_log(f.path, allowed)
        with fh:
            key = (st.st_dev, st.st_ino)
            if key in read:
                return  # a second name of a file read in this pass (renamed while we walked)
            read.add(key)
            row = one(db, "SELECT * FROM twin_sidecar_files WHERE dev = ? AND inode = ?", list(key))
            saved = sidecar.Saved(**{k: row[k] for k in sidecar.Saved.__slots__}) if row else None
            offset, line_no, what = sidecar.resume_point(fh, st, saved, f.name, known)
            stats.files += 1
            if what in ("rotated", "truncated", "moved"):
                setattr(stats, what, getattr(stats, what) + 1)
                log.info("twin: sidecar file %s %s", f.name, what)
                if saved is not None:  # say it once: the saved state now names this file as it is
                    with writing(db):
                        self._save_offset(db, fh, f.name, key, offset, line_no)
            self._read_file(db, fh, f.name, key, offset, line_no, stats, settle_s, batch)

    def _read_file(
        self,
        db: Any,
        fh: BinaryIO,
        name: str,
        key: tuple[int, int],
        offset: int,
        line_no: int,
        stats: IngestStats,
        settle_s: float,
        batch: int,
    ) -> None:
        """Read the opened file from ``offset`` to its last complete line, batch by batch; a rename
        meanwhile changes nothing, the descriptor still reads the same file."""
        is_csv = name.lower().endswith(".csv")
        header: list[str] | None = None
        header_error: str | None = None
        if is_csv and offset > 0:
            try:
                header = sidecar.csv_header(sidecar.first_line(fh))
            except sidecar.BadLine as exc:
                header_error = str(exc)
        while True:
            lines = sidecar.read_lines(fh, offset, line_no, max_lines=batch, settle_s=settle_s)
            if not lines:
                break
            bound = TimeBound(utcnow(), self.max_clock_skew_s)
            with writing(db):
                for line in lines:
                    if is_csv and line.number == 1:
                        try:
                            header = sidecar.csv_header(line.text)
                        except sidecar.BadLine as exc:
                            header_error = str(exc)
                            self._quarantine(db, name, line, str(exc), stats)
                        continue
                    if not (line.text or "").strip() and line.error is None:
                        continue
                    stats.lines += 1
                    self._ingest_line(db, name, line, header, header_error, bound, stats)
                offset, line_no = lines[-1].end, lines[-1].number
                self._save_offset(db, fh, name, key, offset, line_no)
            if len(lines) < batch:
                break

    @staticmethod
    def _save_offset(
        db: Any, fh: BinaryIO, name: str, key: tuple[int, int], offset: int, line_no: int
    ) -> None:
        head_len = min(offset, sidecar.HEAD_BYTES)
        upsert(
            db,
            "twin_sidecar_files",
            {
                "path": name,
                "dev": key[0],
                "inode": key[1],
                "offset": offset,
                "line_no": line_no,
                "head": sidecar.head_hash(fh, head_len),
                "head_len": head_len,
                "updated_at": iso(utcnow()),
            },
            ["dev", "inode"],
        )

    def _ingest_line(
        self,
        db: Any,
        name: str,
        line: sidecar.Line,
        header: list[str] | None,
        header_error: str | None,
        bound: TimeBound,
        stats: IngestStats,
    ) -> None:
        if line.error or line.text is None:
            self._quarantine(db, name, line, line.error or "unreadable", stats)
            return
        try:
            if header is not None:
                event = sidecar.parse_csv(header, line.text, bound)
            elif name.lower().endswith(".csv"):
                raise sidecar.BadLine(header_error or "CSV: no valid header line")
            else:
                event = sidecar.parse_jsonl(line.text, bound)
            ident = DeviceIdentity(**{k: event.device.get(k) for k in sidecar.DEVICE_FIELDS})
            if not (ident.serial or ident.station) and not registry.match(db, ident):
                raise sidecar.BadLine("device: no serial or station, and no known device with that model")
            device_id, created = registry.resolve(db, ident, event.time, "sidecar", strict=True)
        except (sidecar.BadLine, registry.AmbiguousDevice) as exc:
            self._quarantine(db, name, line, str(exc), stats)
            return
        except (ValueError, TypeError, ArithmeticError, RecursionError) as exc:  # a case no rule names
            self._quarantine(db, name, line, f"line could not be read ({type(exc).__name__})", stats)
            return
        stats.devices_created += int(created)
        self._insert_event(db, device_id, event, name, line.number)
        stats.events += 1

    @staticmethod
    def _insert_event(
        db: Any, device_id: int, event: sidecar.Event, name: str, no: int
    ) -> None:
        at = iso(event.time)
        insert(db, "twin_events", returning=None, row=
            {
                "device_id": device_id,
                "at": at,
                "kind": event.kind,
                "code": event.code,
                "message": event.message,
                "values_json": json.dumps(event.values),
                "file": name,
                "line_no": no,
            }
        )
        if event.kind == "maintenance":
            kind = event.code if event.code in MAINTENANCE_KINDS else "other"
            insert(db, "twin_maintenance", returning=None, row=
                {
                    "device_id": device_id,
                    "at": at,
                    "kind": kind,
                    "note": event.message,
                    "source": f"sidecar {name}:{no}",
                    "recorded_at": iso(utcnow()),
                }
            )
        bump(
            db,
            device_id,
            at[:10],
            events=1,
            faults=int(event.kind == "fault"),
            warnings=int(event.kind == "warning"),
        )

    @staticmethod
    def _quarantine(
        db: Any, name: str, line: sidecar.Line, reason: str, stats: IngestStats
    ) -> None:
        stats.quarantined += 1
        insert(db, "twin_quarantine", returning=None, row=
            {
                "file": name,
                "line_no": line.number,
                "reason": reason[:300],
                "excerpt": (line.text or "")[:200],
                "recorded_at": iso(utcnow()),
            }
        )

    def quarantine(self, limit: int = 100) -> list[dict[str, Any]]:
        """Latest quarantined sidecar lines with file, line number and reason."""
        return rows(self._connect(), "SELECT * FROM twin_quarantine ORDER BY id DESC LIMIT ?", [limit])

    def quarantine_count(self) -> int:
        row = one(self._connect(), "SELECT count(*) AS n FROM twin_quarantine")
        return int(row["n"]) if row else 0

    # --- maintenance ---------------------------------------------------------------------------------

    def add_maintenance(self, device_id: int, kind: str, note: str, at: datetime | None = None) -> int:
        """Record a maintenance action; ``preventive``, ``corrective`` and ``calibration`` restart the
        exposure-index baseline, ``preventive`` the service interval, ``tube`` the tube's load and
        ``qc`` the AI baseline. Returns the record id."""
        if kind not in MAINTENANCE_KINDS:
            raise ValueError(f"kind: one of {', '.join(MAINTENANCE_KINDS)} (got {kind!r})")
        db = self._connect()
        with writing(db):
            if not one(db, "SELECT id FROM twin_devices WHERE id = ?", [device_id]):
                raise KeyError(f"no device {device_id}")
            row = {
                "device_id": device_id,
                "at": iso(at or utcnow()),
                "kind": kind,
                "note": note,
                "source": "admin",
                "recorded_at": iso(utcnow()),
            }
            return insert(db, "twin_maintenance", row)

    # --- admin: remove and merge devices --------------------------------------------------------------

    def device_rows(self, device_id: int) -> dict[str, int]:
        """How many rows of each table belong to the device (what remove or merge would touch)."""
        db = self._connect()
        if not one(db, "SELECT id FROM twin_devices WHERE id = ?", [device_id]):
            raise KeyError(f"no device {device_id}")
        return {t: _count(db, t, device_id) for t in DEVICE_TABLES}

    def remove_device(self, device_id: int) -> dict[str, int]:
        """Delete a device and every row of it in one transaction (a device made by a bad line, or one
        that left the site); returns the rows deleted per table. KeyError when unknown."""
        db = self._connect()
        with writing(db):
            if not one(db, "SELECT id FROM twin_devices WHERE id = ?", [device_id]):
                raise KeyError(f"no device {device_id}")
            deleted = {
                t: execute(db, f"DELETE FROM {t} WHERE device_id = ?", [device_id]).rowcount
                for t in DEVICE_TABLES
            }
            execute(db, "DELETE FROM twin_devices WHERE id = ?", [device_id])
        log.info("twin: device %s removed %s", device_id, deleted)
        return deleted

    def merge_device(self, source: int, target: int) -> dict[str, int]:
        """Move every row of ``source`` to ``target`` and delete ``source``, in one transaction (one
        device recorded twice); returns the rows moved per table. The target keeps its identity,
        gains the earlier first-seen and later last-seen, and its daily rollups add up."""
        if source == target:
            raise ValueError("a device cannot be merged into itself")
        db = self._connect()
        with writing(db):
            src = one(db, "SELECT * FROM twin_devices WHERE id = ?", [source])
            dst = one(db, "SELECT * FROM twin_devices WHERE id = ?", [target])
            if src is None or dst is None:
                raise KeyError(f"no device {source if src is None else target}")
            moved = {t: _count(db, t, source) for t in DEVICE_TABLES}
            for t in ("twin_acquisitions", "twin_config", "twin_events", "twin_maintenance", "twin_health_log",
                      "twin_ai_outcomes"):
                execute(db, f"UPDATE {t} SET device_id = ? WHERE device_id = ?", [target, source])
            sums = ", ".join(f"{c} = twin_daily.{c} + excluded.{c}" for c in COUNTERS)
            execute(db,
                f"INSERT INTO twin_daily (device_id, day, {', '.join(COUNTERS)}) "
                f"SELECT ?, day, {', '.join(COUNTERS)} FROM twin_daily WHERE device_id = ? AND true "
                f"ON CONFLICT(device_id, day) DO UPDATE SET {sums}",
                [target, source],
            )
            execute(db, "DELETE FROM twin_daily WHERE device_id = ?", [source])
            execute(db, "DELETE FROM twin_health WHERE device_id IN (?, ?)", [source, target])  # judged anew
            updates = {
                "first_seen": min(filter(None, (src["first_seen"], dst["first_seen"])), default=None),
                "last_seen": max(filter(None, (src["last_seen"], dst["last_seen"])), default=None),
                "last_acquisition": max(
                    filter(None, (src["last_acquisition"], dst["last_acquisition"])), default=None
                ),
            }
            updates |= {k: src[k] for k in ("device_uid", "institution", "department") if not dst[k] and src[k]}
            update(db, "twin_devices", target, updates)
            execute(db, "DELETE FROM twin_devices WHERE id = ?", [source])
        log.info("twin: device %s merged into %s %s", source, target, moved)
        return moved

    # --- reading -------------------------------------------------------------------------------------

    def find_device(self, ref: str | int) -> int | None:
        """A device id from its id, key, serial number or station name (when unique)."""
        db = self._connect()
        text = str(ref).strip()
        if text.isdigit() and one(db, "SELECT id FROM twin_devices WHERE id = ?", [int(text)]):
            return int(text)
        for column in ("key", "serial", "station"):
            found = rows(db, f"SELECT id FROM twin_devices WHERE lower({column}) = lower(?)", [text])
            if len(found) == 1:
                return int(found[0]["id"])
        return None

    def devices(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Every device with counts and health as of ``now`` (see docs/twin.md for the fields)."""
        db = self._connect()
        now = aware(now) if now else utcnow()
        return [
            report.summary(db, dev, now, self.thresholds)
            for dev in rows(db, "SELECT * FROM twin_devices ORDER BY id")
        ]

    def device(self, device_id: int, now: datetime | None = None) -> dict[str, Any]:
        """The whole twin record of one device; KeyError when unknown."""
        db = self._connect()
        dev = one(db, "SELECT * FROM twin_devices WHERE id = ?", [device_id])
        if dev is None:
            raise KeyError(f"no device {device_id}")
        return report.record(db, dev, aware(now) if now else utcnow(), self.thresholds)

    def health(self, device_id: int, now: datetime | None = None) -> Health:
        now = aware(now) if now else utcnow()
        return assess(report.history(self._connect(), device_id, now, self.thresholds), now, self.thresholds)

    # --- periodic ------------------------------------------------------------------------------------

    def evaluate(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Assess every device, keep the current health and log each change of status or reasons."""
        now = aware(now) if now else utcnow()
        db = self._connect()
        results = []
        for dev in rows(db, "SELECT id FROM twin_devices ORDER BY id"):
            health = self.health(dev["id"], now)
            results.append({"device_id": dev["id"], **health.as_dict()})
            self._store_health(db, dev["id"], health, now)
        return results

    @staticmethod
    def _store_health(db: Any, device_id: int, health: Health, now: datetime) -> None:
        rules = sorted(f"{f.rule}:{f.status.value}" for f in health.findings if f.status.rank)
        with writing(db):
            previous = one(db, "SELECT status, findings FROM twin_health WHERE device_id = ?", [device_id])
            before = (
                sorted(
                    f"{f['rule']}:{f['status']}"
                    for f in json.loads(previous["findings"])
                    if f["status"] != "OK"
                )
                if previous
                else None
            )
            upsert(
                db,
                "twin_health",
                {
                    "device_id": device_id,
                    "status": health.status.value,
                    "since": iso(health.since) if health.since else None,
                    "reasons": json.dumps(health.reasons),
                    "findings": json.dumps([f.as_dict() for f in health.findings]),
                    "evaluated_at": iso(now),
                },
                ["device_id"],
            )
            if before != rules:
                insert(db, "twin_health_log", returning=None, row=
                    {
                        "device_id": device_id,
                        "at": iso(now),
                        "status": health.status.value,
                        "reasons": json.dumps(health.reasons),
                    }
                )
                log.info("twin: device %s health %s", device_id, health.status.value)

    def apply_retention(self, days: int, now: datetime | None = None) -> dict[str, int]:
        """Delete raw acquisitions, AI outcomes and telemetry older than ``days`` (daily rollups,
        faults, maintenance and configuration history are kept, and so are the acquisitions that form
        each device's exposure-index baseline and the AI outcomes of its baseline and just before)."""
        now = aware(now) if now else utcnow()
        cutoff = iso(now - timedelta(days=days))
        db = self._connect()
        deleted = {"acquisitions": 0, "telemetry": 0, "quarantine": 0, "ai_outcomes": 0}
        for dev in rows(db, "SELECT id FROM twin_devices"):
            after = report.rebaseline_point(db, dev["id"], now) or ""
            keep = report.baseline_instances_sql(self.thresholds.baseline_n)
            ref = ai_watch.reference_point(db, dev["id"], ai_watch.config_changes(db, dev["id"], now), now)
            keep_ai = ai_watch.kept_outcomes_sql(max(self.thresholds.ai_baseline_n, self.thresholds.ai_change_n))
            with writing(db):
                cur = execute(db,
                    f"DELETE FROM twin_acquisitions WHERE device_id = :device AND at < :cutoff "
                    f"AND sop_instance_uid NOT IN ({keep})",
                    {"device": dev["id"], "cutoff": cutoff, "after": after},
                )
                deleted["acquisitions"] += cur.rowcount
                cur = execute(db,
                    f"DELETE FROM twin_ai_outcomes WHERE device_id = :device AND at < :cutoff "
                    f"AND sop_instance_uid NOT IN ({keep_ai})",
                    {"device": dev["id"], "cutoff": cutoff, "after": iso(ref.at) if ref else ""},
                )
                deleted["ai_outcomes"] += cur.rowcount
        with writing(db):
            deleted["telemetry"] = execute(db,
                "DELETE FROM twin_events WHERE kind = 'telemetry' AND at < ?", [cutoff]
            ).rowcount
            deleted["quarantine"] = execute(db,
                "DELETE FROM twin_quarantine WHERE recorded_at < ?", [cutoff]
            ).rowcount
        if any(deleted.values()):
            log.info("twin: retention %s", deleted)
        return deleted


#: Header times further from the receipt than this are not trusted for the twin's timelines:
#: de-identified data sets shift dates (the RSNA sample says 1901), and clocks drift.
def _ai_counts(row: dict[str, Any]) -> dict[str, float]:
    """What one AI outcome row adds to ``twin_daily``."""
    scored = row["score"] is not None and not row["skipped"]
    return {"ai_analysed": int(not row["skipped"]), "ai_positive": int(row["positive"]),
            "ai_skipped": int(row["skipped"]), "ai_score_n": int(scored),
            "ai_score_sum": float(row["score"]) if scored else 0.0}


PLAUSIBLE_AGE = timedelta(days=365)


def _plausible(acquired: datetime | None, received: datetime, max_skew_s: float) -> datetime:
    """The acquisition time when it is plausible for an image received at ``received`` (at most a
    year before it, at most the clock skew after it), else receipt."""
    if acquired is None:
        return received
    acquired = aware(acquired)
    bound = TimeBound(received, max_skew_s, earliest=received - PLAUSIBLE_AGE)
    return acquired if bound.problem(acquired) is None else received


def _count(db: Any, table: str, device_id: int) -> int:
    row = one(db, f"SELECT count(*) AS n FROM {table} WHERE device_id = ?", [device_id])
    return int(row["n"]) if row else 0


def _day(d: date | None) -> str | None:
    return d.isoformat() if d else None


def _fallback_uid(headers: InstanceHeaders) -> str:
    """A stable stand-in for a missing SOP Instance UID, from the device and usage record."""
    digest = hashlib.sha1(repr((headers.identity, headers.usage)).encode()).hexdigest()
    return f"nouid:{digest}"
