"""What-if: the health rules re-run over a device's stored history with changed thresholds.

``replay`` judges the device day by day as it stood on that day (only rows up to the end of that
day, through the same :func:`twin.report.history` and :func:`twin.health.assess` the node uses),
and ``what_if`` compares a replay under changed :class:`twin.health.Thresholds` with one under the
current ones: which alerts would fire, from which day, and which would no longer fire. Everything
here only reads, so it is safe on a serving node's database (the seed's "safe environment for
testing changes").
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, NamedTuple

from twin import report
from twin.db import execute
from twin.health import Status, Thresholds, assess
from twin.signals import Signal, signal_from_config

#: The fields of a declared signal a what-if may change (``signals.NAME.FIELD=VALUE``).
SIGNAL_FIELDS = ("warn", "alert", "forecast")


class WhatIfError(ValueError):
    """A bad ``NAME=VALUE``: the message is one line naming it and the valid names."""


class Verdict(NamedTuple):
    """One rule not OK on one replayed day."""

    day: date
    rule: str
    status: Status
    reason: str


def valid_names(th: Thresholds) -> list[str]:
    """Every name a what-if may set: the scalar Thresholds fields, then ``signals.NAME.FIELD``."""
    names = [f.name for f in dataclasses.fields(th) if f.name != "signals"]
    return names + [f"signals.{s.name}.{k}" for s in th.signals if not s.counted for k in SIGNAL_FIELDS]


def _names_line(th: Thresholds) -> str:
    scalars = ", ".join(f.name for f in dataclasses.fields(th) if f.name != "signals")
    signals = ", ".join(s.name for s in th.signals if not s.counted)
    return f"valid names: {scalars}; signals.NAME.warn|alert=LO,HI or signals.NAME.forecast=true|false ({signals})"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise ValueError("true or false expected")


def _scalar(kind: type, text: str) -> Any:
    """``text`` as the type of the field's default (bool, int or float; finite); a field whose default
    is None (unknown, e.g. a rated life) takes a number or ``null``."""
    if kind is bool:
        return _bool(text)
    if kind is type(None):
        return None if text.strip().lower() in ("null", "none", "") else _scalar(float, text)
    value = kind(text.strip())
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a finite number expected")
    return value


def _bounds(text: str) -> list[float | None]:
    """``LO,HI`` with an empty side or ``null`` for an open one."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 2:
        raise ValueError("LO,HI expected (empty or null for an open side)")
    return [None if p.lower() in ("", "null", "none") else float(p) for p in parts]


def _signal_override(th: Thresholds, name: str, value: str, signals: dict[str, Signal]) -> None:
    _, sig_name, key = name.split(".", 2)
    sig = signals.get(sig_name)
    if sig is None or sig.counted or key not in SIGNAL_FIELDS:
        raise WhatIfError(f"--what-if {name}: unknown name; {_names_line(th)}")
    spec: dict[str, Any] = {"unit": sig.unit, "warn": list(sig.warn), "alert": list(sig.alert),
                            "forecast": sig.forecast}
    try:
        spec[key] = _bool(value) if key == "forecast" else _bounds(value)
        # the config's own checks: LO above HI, an alert bound inside the warn range
        signals[sig_name] = signal_from_config(sig_name, spec)
    except ValueError as exc:
        raise WhatIfError(f"--what-if {name}={value}: {exc}") from None


def apply_overrides(th: Thresholds, overrides: Mapping[str, str]) -> Thresholds:
    """``th`` with each ``NAME`` set to ``VALUE`` (``dataclasses.replace``); WhatIfError on an
    unknown name or a value of the wrong kind."""
    kinds = {f.name: type(getattr(th, f.name)) for f in dataclasses.fields(th) if f.name != "signals"}
    changes: dict[str, Any] = {}
    signals = {s.name: s for s in th.signals}
    for name, value in overrides.items():
        if name.startswith("signals.") and name.count(".") == 2:
            _signal_override(th, name, value, signals)
            continue
        if name not in kinds:
            raise WhatIfError(f"--what-if {name}: unknown name; {_names_line(th)}")
        try:
            changes[name] = _scalar(kinds[name], value)
        except ValueError:
            kind = {bool: "true or false", int: "a whole number"}.get(kinds[name], "a number")
            raise WhatIfError(f"--what-if {name}={value}: {kind} expected") from None
    changes["signals"] = tuple(signals.values())
    return dataclasses.replace(th, **changes)


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings as a mapping (a later one wins); WhatIfError when one lacks ``=``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise WhatIfError(f"--what-if {item!r}: NAME=VALUE expected")
        out[name.strip()] = value
    return out


def _exposures_until(db: Any, device_id: int, start: datetime | None, now: datetime) -> int:
    """Exposures from the service start up to ``now``'s day: report.history counts the rollups after
    ``now`` too (right for the present, not for a day of the past)."""
    row = execute(
        db,
        "SELECT coalesce(sum(acquisitions), 0) FROM twin_daily WHERE device_id = ? AND day >= ? AND day <= ?",
        [device_id, start.date().isoformat() if start else "", now.date().isoformat()],
    ).fetchone()
    return int(row[0]) if row else 0


def replay(
    db: Any,
    device_id: int,
    th: Thresholds,
    start: date,
    end: datetime,
    step: timedelta = timedelta(days=1),
) -> list[Verdict]:
    """Every rule that is not OK on each day from ``start`` to ``end``'s day, judged at the end of
    that day (at ``end`` on the last one) from the rows stored up to then."""
    out: list[Verdict] = []
    at = datetime.combine(start, time(23, 59, 59), UTC)
    while True:
        now = min(at, end)
        hist = report.history(db, device_id, now, th)
        hist = dataclasses.replace(
            hist, exposures_since_service=_exposures_until(db, device_id, hist.service_start, now)
        )
        health = assess(hist, now, th)
        out += [Verdict(now.date(), f.rule, f.status, f.reason) for f in health.findings if f.status is not Status.OK]
        if now >= end:
            return out
        at += step


def _summary(verdicts: Sequence[Verdict]) -> dict[str, dict[str, Any]]:
    """Per rule: first and last day not OK, worst status, days not OK, the reason of its first day."""
    out: dict[str, dict[str, Any]] = {}
    for v in verdicts:
        s = out.setdefault(v.rule, {"first": v.day.isoformat(), "last": v.day.isoformat(), "worst": v.status.value,
                                    "days": 0, "first_reason": v.reason})
        s["last"] = v.day.isoformat()
        s["days"] += 1
        if v.status.rank > Status(s["worst"]).rank:
            s["worst"] = v.status.value
    return out


def _change(current: dict[str, Any] | None, changed: dict[str, Any] | None) -> str:
    if current is None:
        return "would fire"
    if changed is None:
        return "would no longer fire"
    if changed["first"] != current["first"]:
        return "earlier" if changed["first"] < current["first"] else "later"
    return "worse" if Status(changed["worst"]).rank > Status(current["worst"]).rank else (
        "milder" if Status(changed["worst"]).rank < Status(current["worst"]).rank else "same")


def what_if(
    db: Any,
    device_id: int,
    current: Thresholds,
    overrides: Mapping[str, str],
    start: date,
    end: datetime,
) -> dict[str, Any]:
    """Replay under ``current`` and under ``current`` with ``overrides``; per rule what changes.

    Returns ``{"device", "overrides", "from", "to", "days", "rules": [{"rule", "change", "current",
    "what_if"}], "timeline": [{"day", "rule", "status", "reason"}]}`` (the timeline under the
    changed thresholds). WhatIfError on a bad override (before anything is read)."""
    changed_th = apply_overrides(current, overrides)
    base = _summary(replay(db, device_id, current, start, end))
    verdicts = replay(db, device_id, changed_th, start, end)
    changed = _summary(verdicts)
    def first(rule: str) -> tuple[str, str]:
        return min(s[rule]["first"] for s in (base, changed) if rule in s), rule

    rules = [
        {"rule": r, "change": _change(base.get(r), changed.get(r)), "current": base.get(r), "what_if": changed.get(r)}
        for r in sorted(base.keys() | changed.keys(), key=first)
    ]
    return {
        "device": device_id,
        "overrides": dict(overrides),
        "from": start.isoformat(),
        "to": end.date().isoformat(),
        "days": (end.date() - start).days + 1,
        "rules": rules,
        "timeline": [{"day": v.day.isoformat(), "rule": v.rule, "status": v.status.value, "reason": v.reason}
                     for v in verdicts],
    }
