"""``dicom-node db``: the database under the node (issue 13, docs/cluster.md).

- ``db migrate``: bring the configured database (SQLite or ``storage.database``) to this version's
  schema, as every start does, and say which version it is at;
- ``db copy --to postgresql://...``: copy the embedded SQLite database (instances, jobs, results,
  deliveries, audit, nodes, the DICOMweb index and the twin) into an empty PostgreSQL database, checked
  by counts, all or nothing. Stop the node first; then set ``storage.database`` to the URL.
"""

from __future__ import annotations

from typing import Annotated

import typer

from dicom_node.cli.common import ConfigOpt, JsonOpt, console, err, fail, get_config, print_json

app = typer.Typer(help="The node's database: migrate it, copy the embedded one into PostgreSQL.")


def _twin_schema(store: object) -> None:
    """The twin's tables in the destination too (they live in the node's database)."""
    from twin.store import TwinStore

    TwinStore(store.conn)  # type: ignore[attr-defined]  # creates its tables when missing


@app.command()
def migrate(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Create or upgrade the node's and the twin's tables in the configured database."""
    from dicom_node.store import SCHEMA_VERSION, Store

    cfg = get_config(config)
    try:
        store = Store(cfg.database)
        _twin_schema(store)
        version = store.meta("schema_version")
        engine = store.engine
        store.close()
    except Exception as exc:  # noqa: BLE001  (one line, never the URL: it carries a password)
        raise fail(f"the database could not be opened or migrated: {type(exc).__name__}: {exc}"[:300], 1) from None
    data = {"engine": engine, "schema_version": int(version or 0), "current": SCHEMA_VERSION}
    if as_json:
        print_json(data)
    else:
        console.print(f"{engine} database at schema version {data['schema_version']}"
                      f" (this version's: {SCHEMA_VERSION})")


@app.command()
def copy(
    to: Annotated[str, typer.Option("--to", help="postgresql://user:password@host:port/database (an empty one)")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy the embedded SQLite database into an empty PostgreSQL database, checked by counts."""
    from dicom_node.store.copy import CopyError, copy_database
    from dicom_node.store.postgres import is_postgres

    cfg = get_config(config)
    if not is_postgres(to):
        raise fail("--to must be a postgresql://user:password@host:port/database URL")

    def progress(table: str, done: int, total: int) -> None:
        if not as_json:
            err.print(f"{table}: {done}/{total}", highlight=False)

    try:
        report = copy_database(cfg.db_path, to, make_schema=_twin_schema, progress=progress)
    except CopyError as exc:
        raise fail(str(exc), 1) from None
    except Exception as exc:  # noqa: BLE001  (the server refused, or is not there: one line, no URL)
        raise fail(f"the copy did not happen: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                   [:300], 1) from None
    data = {"source": str(cfg.db_path), "tables": report.tables, "rows": report.rows}
    if as_json:
        print_json(data)
    else:
        console.print(f"copied {report.rows} rows in {len(report.tables)} tables; counts checked. "
                      "Now set storage.database to the URL and start the nodes.")
