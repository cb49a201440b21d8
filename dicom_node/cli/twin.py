"""Device-twin commands: ``devices``, ``device ID`` (``--remove``, ``--merge-into``) and ``maintenance add ID``.

They read (and, for maintenance, write) the twin's tables in the node's database, so they work
while the node serves. ``register(app)`` adds them to the root ``dicom-node`` command.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dicom_node.cli.common import ConfigOpt, JsonOpt, fail, get_config, print_json
from twin import whatif
from twin.db import thread_local_connect
from twin.store import MAINTENANCE_KINDS, TwinStore

_STYLE = {"OK": "green", "WARN": "yellow", "ALERT": "bold red"}


def _store(config: Path | None) -> TwinStore:
    cfg = get_config(config)
    if cfg.storage.database is None and not cfg.db_path.exists():
        raise fail(
            f"no database at {cfg.db_path}: start the node first, or check storage.dir in the configuration", 1
        )
    return TwinStore(thread_local_connect(cfg.database), thresholds=cfg.twin.thresholds())


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
    what_if: Annotated[
        list[str] | None,
        typer.Option(
            "--what-if", metavar="NAME=VALUE",
            help="re-run the health rules over the stored history with this threshold changed (repeatable; "
            "e.g. forecast_warn_days=21 or signals.NAME.warn=LO,HI); changes nothing",
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", metavar="DATE", help="first day of the --what-if replay (default: 90 days back)"),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one device's whole twin: identity, configuration history, usage, faults, maintenance, health.
    With --remove or --merge-into, an admin deletes a device (one made by a bad log line) or merges a
    device recorded twice; with --what-if, the health rules are replayed day by day with changed thresholds."""
    store = _store(config)
    if remove or merge_into is not None:
        if what_if:
            raise fail("--what-if: not with --remove or --merge-into", 2)
        _remove_or_merge(store, ref, merge_into, yes, as_json, remove)
        return
    if what_if or since is not None:
        _what_if(store, thread_local_connect(get_config(config).database)(), ref, what_if or [], since, as_json)
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
    for line in _tube_and_ai_lines(rec):
        con.print(line, markup=False, highlight=False, soft_wrap=True)  # one line each, for grep
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


def _tube_and_ai_lines(rec: dict[str, Any]) -> list[str]:
    """One line for the tube's load and one for the AI watch, for the plain ``device ID``."""
    lines = []
    if tube := rec.get("tube"):
        used = "" if tube["used_fraction"] is None else f", {tube['used_fraction']:.0%} of its rated life"
        lines.append(
            f"tube: {tube['heat_units']:.0f} HU, {tube['mas']:.0f} mAs in {tube['exposures']} exposures since "
            f"{(tube['since'] or 'first seen')[:10]} ({tube['exposures_without_load']} without kVp or mAs){used}; "
            f"replacement projected {tube['projected_replacement'] or 'unknown'} ({tube['formula']})"
        )
    if ai := rec.get("ai"):
        base, recent = ai["baseline"], ai["recent"]

        def pct(rate: float | None) -> str:
            return "-" if rate is None else f"{rate:.0%}"

        lines.append(
            f"AI: baseline positive rate {pct(base['positive_rate'])} of {base['n']} images since "
            f"{(base['since'] or '-')[:10]}{' (' + base['config_change'] + ')' if base['config_change'] else ''}; "
            f"recent {pct(recent['positive_rate'])} of {recent['n']}; "
            f"{sum(d['analysed'] for d in ai['daily'])} analysed, {sum(d['skipped'] for d in ai['daily'])} skipped"
        )
    return lines


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


def _what_if(
    store: TwinStore, db: Any, ref: str, items: list[str], since: str | None, as_json: bool
) -> None:
    """``device ID --what-if NAME=VALUE``: the replay of twin.whatif, read-only (docs/twin.md, What-if)."""
    if not items:
        raise fail("--since: only with --what-if NAME=VALUE", 2)
    try:
        overrides = whatif.parse_overrides(items)
        whatif.apply_overrides(store.thresholds, overrides)  # a bad name fails before anything is read
    except whatif.WhatIfError as exc:
        raise fail(str(exc), 2) from None
    device_id = _device_id(store, ref)
    end = datetime.now(UTC)
    try:
        start = date.fromisoformat(since) if since else (end - timedelta(days=90)).date()
    except ValueError:
        raise fail(f"--since: a date such as 2025-03-01 (got {since!r})", 2) from None
    if start > end.date():
        raise fail(f"--since: {start} is after today", 2)
    result = whatif.what_if(db, device_id, store.thresholds, overrides, start, end)
    if as_json:
        print_json(result)
        return
    con = Console()
    changes = ", ".join(f"{k}={v}" for k, v in overrides.items())
    con.print(f"device {device_id}: what if {changes}, replayed {result['from']} to {result['to']} "
              f"({result['days']} days); nothing was changed", markup=False, highlight=False, soft_wrap=True)
    table = Table(title="rules not OK on some day")
    for col in ("rule", "now", "from", "what if", "from ", "change"):
        table.add_column(col)
    for r in result["rules"]:
        cur, new = r["current"], r["what_if"]
        table.add_row(r["rule"], _status(cur["worst"]) if cur else "OK", cur["first"] if cur else "",
                      _status(new["worst"]) if new else "OK", new["first"] if new else "", r["change"])
    con.print(table)
    for r in result["rules"]:
        if r["what_if"] and r["change"] != "same":
            con.print(f"{r['what_if']['first']} {r['rule']}: {r['what_if']['first_reason']}", markup=False,
                      highlight=False, soft_wrap=True)
    if not result["rules"]:
        con.print("every rule stays OK on every day, under both", markup=False)


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
