"""Growing up without losing history (issue 13, item 6): ``dicom-node db copy --to postgresql://...``
copies an embedded node's database into PostgreSQL, checked by counts, and a node started on the copy
serves the same history; ``dicom-node db migrate`` makes or upgrades the schema by hand."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from dicom_node.testing import NodeProcess, PostgresProcess, storescu

pytestmark = pytest.mark.engines("sqlite")  # the embedded node grows up: from its SQLite file to PostgreSQL


def _counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in tables}
    finally:
        conn.close()


def test_an_embedded_node_is_copied_into_postgresql_and_serves_its_history_there(
    node_factory: type[NodeProcess], postgres: PostgresProcess, dcmtk: None, rsna: list[Path]
) -> None:
    node = node_factory().start()
    assert storescu(node.port, rsna[:3]).returncode == 0
    node.wait_jobs_settled(3, timeout_s=300)
    before = node.status()
    assert node.stop() == 0
    counts = _counts(node.storage / "node.db")
    url = postgres.create_database("grown_up")

    res = node.cli("db", "copy", "--to", url, "--json", check=False)
    assert res.returncode == 0, res.stderr
    copied = json.loads(res.stdout)
    assert copied["tables"] == counts and copied["rows"] == sum(counts.values())
    assert copied["tables"]["instances"] == 3 and copied["tables"]["twin_acquisitions"] == 3

    again = node.cli("db", "copy", "--to", url, check=False)  # into a database that is not empty
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "is not empty" in again.stderr
    assert url not in again.stderr and postgres.password not in again.stderr  # the URL carries it
    bad = node.cli("db", "copy", "--to", "mysql://x@y/z", check=False)
    assert bad.returncode == 2 and "--to must be a postgresql://" in bad.stderr

    # The same node, now on PostgreSQL: the same history, and it goes on from there
    on_pg = node_factory("node", storage={"database": url}).start()
    after = on_pg.status()
    assert (after["instances"], after["jobs_by_kind"]) == (before["instances"], before["jobs_by_kind"])
    assert storescu(on_pg.port, rsna[3:4]).returncode == 0
    on_pg.wait_jobs_settled(4, timeout_s=300)
    migrated = json.loads(on_pg.cli("db", "migrate", "--json").stdout)
    assert migrated["engine"] == "postgresql" and migrated["schema_version"] == migrated["current"]
    devices = json.loads(on_pg.cli("devices", "--json").stdout)
    assert sum(d["acquisitions"] for d in devices) == 4
    assert on_pg.stop() == 0
