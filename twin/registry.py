"""Which device a header or a sidecar event belongs to, and the device's configuration history.

A device is keyed by manufacturer + model + serial (station name when the serial is missing, see
:func:`twin.headers.device_key`). Identities that arrive incomplete (a sidecar event naming only a
serial, an image without a serial) are matched to the one known device they are compatible with
rather than creating a second record; compatible means no attribute that both carry differs and
they share the serial (or, when one lacks a serial, the station name). Callers run these functions
inside a write transaction.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import datetime
from typing import Any

from twin.db import insert, iso, one, rows, update
from twin.headers import DeviceConfiguration, DeviceIdentity, normalise

IDENTITY_FIELDS = ("manufacturer", "model", "serial", "station", "device_uid", "institution", "department")
MATCH_FIELDS = ("manufacturer", "model", "serial")
CONFIG_FIELDS = tuple(f.name for f in fields(DeviceConfiguration))


class AmbiguousDevice(LookupError):
    """More than one known device fits an incomplete identity."""


def _compatible(row: dict[str, Any], ident: DeviceIdentity) -> bool:
    for name in MATCH_FIELDS:
        theirs, ours = row[f"{name}_n"], normalise(getattr(ident, name))
        if theirs and ours and theirs != ours:
            return False
    return True


def match(db: Any, ident: DeviceIdentity) -> dict[str, Any] | None:
    """The known device this identity belongs to, None when new; AmbiguousDevice when several fit."""
    exact = one(db, "SELECT * FROM twin_devices WHERE key = ?", [ident.key])
    if exact:
        return exact
    serial, station = normalise(ident.serial), normalise(ident.station)
    tries: list[tuple[str, list[Any]]] = []
    if serial:
        tries.append(("serial_n = ?", [serial]))
    if station:
        tries.append(("station_n = ? AND (serial_n = '' OR ? = '')", [station, serial]))
    if not serial and not station:
        man, model = normalise(ident.manufacturer), normalise(ident.model)
        tries.append(("manufacturer_n = ? AND model_n = ? AND ? != ''", [man, model, man + model]))
    for where, params in tries:
        found = [
            r for r in rows(db, f"SELECT * FROM twin_devices WHERE {where}", params) if _compatible(r, ident)
        ]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise AmbiguousDevice(f"device matches {len(found)} known devices; give the serial number")
    return None


def _identity_row(ident: DeviceIdentity) -> dict[str, Any]:
    row: dict[str, Any] = {name: getattr(ident, name) for name in IDENTITY_FIELDS}
    row.update({f"{name}_n": normalise(getattr(ident, name)) for name in (*MATCH_FIELDS, "station")})
    return row


def resolve(
    db: Any, ident: DeviceIdentity, at: datetime, created_by: str, strict: bool = False
) -> tuple[int, bool]:
    """(device id, created) for an identity seen at ``at``; fills in what the record lacked.

    With ``strict`` an ambiguous identity raises; otherwise (headers, which carry a full key) a new
    device is created under the full key.
    """
    try:
        found = match(db, ident)
    except AmbiguousDevice:
        if strict:
            raise
        found = None
    stamp = iso(at)
    if found is None:
        row = _identity_row(ident) | {
            "key": ident.key,
            "first_seen": stamp,
            "last_seen": stamp,
            "created_by": created_by,
        }
        return insert(db, "twin_devices", row), True
    updates = {k: v for k, v in _identity_row(ident).items() if v and v != found.get(k)}
    # identity attributes that identify must not be overwritten by a different value
    for name in MATCH_FIELDS:
        if found[f"{name}_n"]:
            updates.pop(name, None)
            updates.pop(f"{name}_n", None)
    merged = {**found, **updates}
    new_key = DeviceIdentity(**{n: merged[n] for n in IDENTITY_FIELDS}).key
    if new_key != found["key"] and not one(db, "SELECT id FROM twin_devices WHERE key = ?", [new_key]):
        updates["key"] = new_key
    updates["first_seen"] = min(found["first_seen"] or stamp, stamp)
    updates["last_seen"] = max(found["last_seen"] or stamp, stamp)
    update(db, "twin_devices", found["id"], updates)
    return int(found["id"]), False


def record_configuration(
    db: Any, device_id: int, config: DeviceConfiguration, at: datetime, instance: str
) -> int:
    """Id of the configuration in effect for an instance acquired at ``at``, adding one on change.

    Compared with the configuration in effect at that time (instances can arrive out of order); an
    attribute the instance lacks is not a change, a first value for an attribute fills the current
    row, and a different value (e.g. a new SoftwareVersions) starts a new row of the history.
    """
    history = rows(db, "SELECT * FROM twin_config WHERE device_id = ? ORDER BY since, id", [device_id])
    values = config.as_dict()
    stamp = iso(at)
    if not history:
        row = {"device_id": device_id, "since": stamp, "changes": "[]", "first_instance": instance, **values}
        return insert(db, "twin_config", row)
    current = [r for r in history if r["since"] <= stamp] or history[:1]
    in_effect = current[-1]
    changes = [
        {"field": f, "from": in_effect[f], "to": values[f]}
        for f in CONFIG_FIELDS
        if values[f] is not None and in_effect[f] is not None and values[f] != in_effect[f]
    ]
    filled = {f: values[f] for f in CONFIG_FIELDS if values[f] is not None and in_effect[f] is None}
    if not changes:
        if filled:
            update(db, "twin_config", in_effect["id"], filled)
        return int(in_effect["id"])
    merged = {f: values[f] if values[f] is not None else in_effect[f] for f in CONFIG_FIELDS}
    row = {
        "device_id": device_id,
        "since": stamp,
        "changes": json.dumps(changes),
        "first_instance": instance,
        **merged,
    }
    return insert(db, "twin_config", row)
