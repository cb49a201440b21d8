"""Device-twin commands: ``devices``, ``device ID`` (``--remove``, ``--merge-into``) and ``maintenance add ID``.

They read (and, for maintenance, write) the twin's tables in the node's database, so they work
while the node serves. ``register(app)`` adds them to the root ``dicom-node`` command.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from dicom_node.cli.common import ConfigOpt, JsonOpt, fail, get_config, print_json
from twin.db import thread_local_connect
from twin.store import MAINTENANCE_KINDS, TwinStore

_STYLE = {"OK": "green", "WARN": "yellow", "ALERT": "bold red"}


def _store(config: Path | None) -> TwinStore:
    cfg = get_config(config)
    db_path = cfg.db_path
    if not db_path.exists():
        raise fail(
            f"no database at {db_path}: start the node first, or check storage.dir in the configuration", 1
        )
    return TwinStore(thread_local_connect(db_path), thresholds=cfg.twin.thresholds())


def _device_id(store: TwinStore, ref: str) -> int:
    found = store.find_device(ref)
    if found is None:
        raise fail(f"no device {ref!r} (give its id, serial number or station name; see `devices`)", 1)
    return found


def _status(status: str) -> str:
    return f"[{_STYLE.get(status, '')}]{status}[/]"


def devices(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List every device the node has seen, with counts and health."""
    rows = _store(config).devices()
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} device(s)")
    for col in ("id", "device", "serial", "station", "software", "acq.", "faults", "health"):
        table.add_column(col, justify="right" if col in ("id", "acq.", "faults") else "left")
    for d in rows:
        table.add_row(
            str(d["id"]),
            f"{d['manufacturer'] or '?'} {d['model'] or '?'}",
            d["serial"] or "",
            d["station"] or "",
            d["software_versions"] or "",
            str(d["acquisitions"]),
            str(d["faults"]),
            _status(d["health"]["status"]),
        )
    con = Console()
    con.print(table)
    for d in rows:
        for reason in d["health"]["reasons"]:
            con.print(f"device {d['id']}: {reason}", markup=False, highlight=False)


def device(
    ref: Annotated[str, typer.Argument(metavar="ID", help="device id, serial number or station name")],
    remove: Annotated[
        bool, typer.Option("--remove", help="delete the device and all its rows (needs --yes)")
    ] = False,
    merge_into: Annotated[
        str | None,
        typer.Option(
            "--merge-into", metavar="OTHER", help="move all its rows to device OTHER and delete it (needs --yes)"
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="confirm --remove or --merge-into")] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one device's whole twin: identity, configuration history, usage, faults, maintenance, health.
    With --remove or --merge-into, an admin deletes a device (one made by a bad log line) or merges a
    device recorded twice."""
    store = _store(config)
    if remove or merge_into is not None:
        _remove_or_merge(store, ref, merge_into, yes, as_json, remove)
        return
    rec = store.device(_device_id(store, ref))
    if as_json:
        print_json(rec)
        return
    con = Console()
    health = rec["health"]
    con.print(
        f"[bold]device {rec['id']}[/] {rec['manufacturer'] or '?'} {rec['model'] or '?'}  "
        f"serial {rec['serial'] or '-'}  station {rec['station'] or '-'}  {_status(health['status'])}"
    )
    con.print(
        f"institution {rec['institution'] or '-'} / {rec['department'] or '-'}; first seen "
        f"{rec['first_seen']}, last seen {rec['last_seen']}; {rec['acquisitions']} acquisitions, "
        f"{rec['faults']} faults; last calibration {rec['last_calibration'] or 'unknown'}; next "
        f"maintenance due {rec['next_maintenance_due'] or 'unknown'}",
        markup=False,
    )
    findings = Table(title="health")
    for col in ("rule", "status", "reason"):
        findings.add_column(col)
    for f in health["findings"]:
        findings.add_row(f["rule"], _status(f["status"]), f["reason"])
    con.print(findings)
    history = Table(title="configuration history")
    for col in ("since", "software", "detector", "grid", "changes"):
        history.add_column(col)
    for c in rec["configuration_history"]:
        changes = "; ".join(f"{x['field']}: {x['from']} -> {x['to']}" for x in c["changes"]) or "first seen"
        detector = " ".join(v for v in (c["detector_model"], c["detector_id"]) if v)
        history.add_row(c["since"][:19], c["software_versions"] or "", detector, c["grid"] or "", changes)
    con.print(history)
    usage = Table(title="usage per day (last 14)")
    for col in ("day", "acquisitions", "mean DI", "faults", "warnings"):
        usage.add_column(col, justify="right")
    for u in rec["usage_per_day"][-14:]:
        mean_di = "" if u["mean_di"] is None else f"{u['mean_di']:+.2f}"
        usage.add_row(u["day"], str(u["acquisitions"]), mean_di, str(u["faults"]), str(u["warnings"]))
    con.print(usage)
    faults = Table(title="latest faults")
    for col in ("time", "code", "message"):
        faults.add_column(col)
    for f in rec["fault_events"][:10]:
        faults.add_row(f["at"][:19], f["code"] or "", f["message"] or "")
    con.print(faults)
    maint = Table(title="maintenance")
    for col in ("time", "kind", "note", "source"):
        maint.add_column(col)
    for m in rec["maintenance"]:
        maint.add_row(m["at"][:19], m["kind"], m["note"] or "", m["source"] or "")
    con.print(maint)


def _remove_or_merge(
    store: TwinStore, ref: str, merge_into: str | None, yes: bool, as_json: bool, remove: bool
) -> None:
    """``device ID --remove`` / ``--merge-into OTHER``: one transaction each, only with ``--yes``."""
    if remove and merge_into is not None:
        raise fail("--remove and --merge-into: give one of them", 2)
    device_id = _device_id(store, ref)
    target = None if merge_into is None else _device_id(store, merge_into)
    if target == device_id:
        raise fail(f"--merge-into: device {device_id} cannot be merged into itself", 2)
    rows = store.device_rows(device_id)
    what = ", ".join(f"{n} {t.removeprefix('twin_')}" for t, n in rows.items() if n) or "no rows"
    if not yes:
        act = "delete device" if target is None else f"move to device {target} the rows of device"
        raise fail(f"this would {act} {device_id} ({what}); add --yes to do it", 2)
    if target is None:
        done = store.remove_device(device_id)
        result = {"removed": device_id, "rows": done}
        line = f"removed device {device_id} and its rows ({what})"
    else:
        done = store.merge_device(device_id, target)
        result = {"merged": device_id, "into": target, "rows": done}
        line = f"merged device {device_id} into device {target} ({what} moved)"
    if as_json:
        print_json(result)
    else:
        typer.echo(line)


def maintenance_add(
    ref: Annotated[str, typer.Argument(metavar="ID", help="device id, serial number or station name")],
    kind: Annotated[str, typer.Option("--kind", help=f"one of {', '.join(MAINTENANCE_KINDS)}")],
    note: Annotated[str, typer.Option("--note", help="what was done")],
    at: Annotated[str | None, typer.Option("--at", help="when (ISO 8601; default now)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Record a maintenance action on a device (preventive, corrective and calibration restart its
    exposure-index baseline; preventive restarts its service interval)."""
    if kind not in MAINTENANCE_KINDS:
        raise fail(f"--kind: one of {', '.join(MAINTENANCE_KINDS)} (got {kind!r})", 2)
    when = None
    if at:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            raise fail(f"--at: an ISO 8601 time such as 2025-03-01T14:30 (got {at!r})", 2) from None
    store = _store(config)
    device_id = _device_id(store, ref)
    record_id = store.add_maintenance(device_id, kind, note, when)
    typer.echo(f"recorded maintenance {record_id} ({kind}) on device {device_id}")


def register(app: typer.Typer) -> None:
    """Add ``devices``, ``device`` and ``maintenance add`` to the root command."""
    app.command("devices")(devices)
    app.command("device")(device)
    maintenance = typer.Typer(help="Maintenance records of the device twin.", no_args_is_help=True)
    maintenance.command("add")(maintenance_add)
    app.add_typer(maintenance, name="maintenance")
