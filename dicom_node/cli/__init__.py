"""The ``dicom-node`` command: a thin layer over the library (serve, echo, send, status, …).

Every command takes ``--config PATH`` (else ``$DICOM_NODE_CONFIG``, else ./config.yaml), and the ones
that print results take ``--json``. A bad config or argument prints one line and exits with 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table

from dicom_node import __version__
from dicom_node.cli.common import ConfigOpt, JsonOpt, console, err, fail, get_config, print_json
from dicom_node.config import Config

app = typer.Typer(
    name="dicom-node",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dicom-node {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """A DICOM node that receives chest radiographs, detects lung opacities and returns results to PACS."""


@app.command()
def serve(
    config: ConfigOpt = None,
    port: Annotated[int | None, typer.Option(help="override node.port")] = None,
    storage: Annotated[Path | None, typer.Option(help="override storage.dir")] = None,
) -> None:
    """Run the node: DICOM receiver, workers and schedules, until SIGTERM or Ctrl-C."""
    from dicom_node.logs import setup_logging
    from dicom_node.node import Node

    cfg = get_config(config)
    if port is not None:
        cfg.node.port = port
    if storage is not None:
        cfg.storage.dir = storage
    setup_logging(cfg.logging.level, cfg.log_dir, max_mb=cfg.logging.max_mb, backups=cfg.logging.backups)
    try:
        node = Node(cfg)
    except (OSError, ValueError) as exc:
        raise fail(f"cannot start: {exc}") from None
    try:
        node.serve()
    except OSError as exc:
        raise fail(f"cannot listen on {exc.strerror}") from None


AddressArg = Annotated[str, typer.Argument(help="the peer, as AE@HOST:PORT")]
CallingAeOpt = Annotated[str | None, typer.Option("--aet", help="our AE title (default node.ae_title)")]


def _config_and_peer(config: Path | None, address: str) -> tuple[Config, Any]:
    from dicom_node.scu import parse_address

    cfg = get_config(config)
    try:
        return cfg, parse_address(address)
    except ValueError as exc:
        raise fail(str(exc)) from None


@app.command()
def echo(
    address: AddressArg,
    config: ConfigOpt = None,
    calling_ae: CallingAeOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """C-ECHO a peer: is it there, and does it accept us?"""
    from dicom_node.scu import echo as do_echo

    cfg, peer = _config_and_peer(config, address)
    res = do_echo(peer, calling_ae=calling_ae or cfg.node.ae_title, timeout_s=timeout)
    if as_json:
        print_json({"peer": str(peer), "ok": res.ok, "status": res.status, "ms": round(res.ms, 1),
                    "error": res.error})
    elif res.ok:
        console.print(f"[green]✓[/] {peer} answered C-ECHO in {res.ms:.0f} ms")
    else:
        err.print(f"[red]✗[/] {peer}: {res.error}")
    raise typer.Exit(0 if res.ok else 1)


@app.command()
def send(
    address: AddressArg,
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively)")],
    config: ConfigOpt = None,
    calling_ae: CallingAeOpt = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for each response")] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """C-STORE files to a peer over one association, as they are (no re-encoding)."""
    from dicom_node.scu import iter_dicom_files, send_files

    cfg, peer = _config_and_peer(config, address)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise fail(f"no such file or folder: {missing[0]}")
    total = sum(1 for _ in iter_dicom_files(paths))
    with Progress(TextColumn("[bold]sending[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=err, disable=as_json or not err.is_terminal) as bar:
        task = bar.add_task("send", total=total)
        report = send_files(peer, paths, calling_ae=calling_ae or cfg.node.ae_title, timeout_s=timeout,
                            progress=lambda _label, _status: bar.advance(task))
    if as_json:
        print_json({"peer": str(peer), "sent": report.sent, "failed": [dict(file=f, error=e) for f, e in report.failed],
                    "skipped": [dict(file=f, reason=r) for f, r in report.skipped],
                    "seconds": round(report.seconds, 3)})
    else:
        for f, e in report.failed:
            err.print(f"[red]✗[/] {f}: {e}")
        for f, r in report.skipped:
            err.print(f"[yellow]-[/] {f}: {r}")
        console.print(f"sent {report.sent} of {total} to {peer} in {report.seconds:.1f} s"
                      + (f", {len(report.failed)} failed" if report.failed else ""))
    raise typer.Exit(0 if not report.failed else 1)


@app.command()
def status(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Instances stored and jobs by state (works while the node serves)."""
    from dicom_node.status import node_status

    cfg = get_config(config)
    data = node_status(cfg)
    if as_json:
        print_json(data)
        return
    console.print(f"[bold]{cfg.node.ae_title}[/] on port {cfg.node.port} · storage {cfg.storage.dir}")
    console.print(f"instances stored: [bold]{data['instances']}[/] ({data['bytes'] / 2**20:.1f} MiB)")
    model = data["model"]
    console.print(f"model: {model['state']}" + (f" ({model['name']} {model['version']})" if "name" in model else "")
                  + (f" — {model['error']}" if "error" in model else ""), highlight=False, markup=False)
    table = Table("jobs", *data["jobs"].keys())
    for kind, counts in sorted(data["jobs_by_kind"].items()):
        table.add_row(kind, *(str(counts[s]) for s in data["jobs"]))
    table.add_row("[bold]all[/]", *(f"[bold]{n}[/]" for n in data["jobs"].values()))
    console.print(table)
    if data["nodes"]:
        nt = Table(Column("node", overflow="fold"), Column("roles", no_wrap=True), "state", "model", "started",
                   "last seen")
        for n in data["nodes"]:
            state = {"alive": "[green]alive[/]", "gone": "[red]gone[/]"}.get(n["state"], n["state"])
            nt.add_row(escape(n["id"]), ", ".join(n["roles"]), state, escape(n["model"]["state"]),
                       _stamp(n["started_at"]), _stamp(n["last_seen_at"]))
        console.print(nt)
    if data.get("destinations"):
        dt = Table("destination", "address", "last echo", "last delivery")
        for d in data["destinations"]:
            dt.add_row(escape(d["name"]), escape(d["address"]), _when(d["last_echo_at"], d["last_echo_ok"]),
                       _when(d["last_delivery_at"], d["last_delivery_ok"]))
        console.print(dt)


@app.command()
def results(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Each image of a study: its analysis, findings, what was assumed, and which result went where;
    with DICOMweb on, the study's URL (WADO-RS, PS3.18 §10.4)."""
    from dicom_node.dicomweb import study_url
    from dicom_node.store import Store

    cfg = get_config(config)
    store = Store(cfg.database)
    try:
        study = store.study(study_uid)
    finally:
        store.close()
    if not study:
        raise fail(f"no instance of study {study_uid} is stored", code=1)
    url = study_url(cfg.dicomweb, study_uid)
    if as_json:
        print_json({"study_instance_uid": study_uid, "dicomweb_url": url, "instances": study})
        return
    if url is not None:
        console.print(f"DICOMweb {url}", highlight=False, markup=False, soft_wrap=True)
    for inst in study:
        outcome = inst["outcome"] or "queued"
        console.print(f"[bold]{inst['sop_instance_uid']}[/] {inst['modality'] or ''} — {outcome}"
                      + (f" ({inst['reason']})" if inst["reason"] else ""))
        if inst["outcome"] == "analysed":
            if inst.get("opacity_probability") is not None:
                console.print(f"  opacity probability (image) {inst['opacity_probability']:.2f}")
            for assumption in inst.get("assumptions") or []:
                console.print(f"  [yellow]{assumption}[/]", highlight=False)
            if inst["findings"]:
                ft = Table("box x0,y0,x1,y1 (source pixels)", "score", "label")
                for f in inst["findings"]:
                    ft.add_row(f"{f['x0']:.0f},{f['y0']:.0f},{f['x1']:.0f},{f['y1']:.0f}", f"{f['score']:.2f}",
                               f["label"])
                console.print(ft)
            else:
                console.print("  no opacity detected")
        for r in inst["results"]:
            where = ", ".join(f"{d['destination']}: {d['state']}" for d in r["deliveries"]) or "no destination"
            console.print(f"  {r['kind']:<4} {r['sop_instance_uid']} → {where}")


@app.command()
def deliveries(
    config: ConfigOpt = None,
    retry: Annotated[bool, typer.Option("--retry", help="send parked (failed) deliveries again")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Result deliveries by state; --retry sends the parked ones again (the running node picks them up)."""
    from dicom_node.store import Store

    cfg = get_config(config)
    store = Store(cfg.database)
    try:
        requeued = store.requeue("deliver") if retry else 0
        if retry:
            store.conn().execute("UPDATE deliveries SET state='queued', error=NULL WHERE state='failed'")
        rows = [dict(r) for r in store.conn().execute(
            "SELECT destination, state, COUNT(*) AS n FROM deliveries GROUP BY destination, state"
            " ORDER BY destination, state")]
        parked = [dict(r) for r in store.conn().execute(
            "SELECT result_uid, destination, attempts, error FROM deliveries WHERE state='failed'"
            " ORDER BY updated_at, result_uid, destination LIMIT 50")]
    finally:
        store.close()
    if as_json:
        print_json({"requeued": requeued, "by_state": rows, "parked": parked})
        return
    table = Table("destination", "state", "results")
    for r in rows:
        table.add_row(r["destination"], r["state"], str(r["n"]))
    console.print(table)
    for p in parked:
        # the error may quote the peer ("TLS failed: [SSL: …]"): printed as text, not as markup
        console.print(f"[red]parked[/] {p['result_uid']} → {escape(p['destination'])} after {p['attempts']}:"
                      f" {escape(str(p['error']))}", highlight=False)
    if retry:
        console.print(f"{requeued} parked deliveries queued again")


def _stamp(at: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS`` (``-`` when none)."""
    if at is None:
        return "-"
    import datetime as dt

    return dt.datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def _when(at: float | None, ok: int | None) -> str:
    if at is None:
        return "-"
    return f"[green]ok[/] {_stamp(at)}" if ok else f"[red]failed[/] {_stamp(at)}"


def _mount() -> None:
    from dicom_node.cli import db, logs, model, twin

    app.add_typer(model.app, name="model", help="The detector: train, evaluate, inspect.")
    app.add_typer(db.app, name="db", help="The node's database: migrate, copy into PostgreSQL.")
    twin.register(app)
    logs.register(app)


_mount()


def main() -> None:
    """Console entry point."""
    app()


if __name__ == "__main__":
    main()
