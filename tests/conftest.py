"""Shared fixtures: real peers (DCMTK, dicom3tools, Orthanc, PostgreSQL) and real node processes.

In CI (CI=true) a missing peer or the missing RSNA sample fails the run; on a developer machine the
tests that need it are skipped with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.testing import (
    RSNA_DIR,
    NodeProcess,
    OrthancProcess,
    PostgresProcess,
    missing_postgres,
    require,
    rsna_files,
    tool,
)


@pytest.fixture(scope="session")
def dcmtk() -> None:
    require(all(tool(t) for t in ("storescu", "echoscu", "storescp")), "DCMTK (storescu, echoscu, storescp)")


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    path = tool("dciodvfy")
    require(path is not None, "dicom3tools dciodvfy")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresProcess]:
    """One PostgreSQL server for the whole session; each test makes its own database in it."""
    why = missing_postgres()
    require(why is None, f"PostgreSQL ({why})")
    with PostgresProcess(tmp_path_factory.mktemp("postgres")) as pg:
        yield pg


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test's store lives, once on each engine (issue 13): a SQLite file, or a database of its
    own on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "node.db")
    pg: PostgresProcess = request.getfixturevalue("postgres")
    return pg.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="session")
def rsna() -> list[Path]:
    files = rsna_files()
    require(len(files) == 9, f"the RSNA sample in {RSNA_DIR}")
    return files


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[type[NodeProcess]]:
    """Make nodes under this test's tmp dir; every one still running at the end is stopped."""
    made: list[NodeProcess] = []

    class _Factory(NodeProcess):
        def __init__(self, name: str = "node", **overrides: object) -> None:
            super().__init__(root=tmp_path / name, overrides=dict(overrides))
            made.append(self)

    yield _Factory
    for n in made:
        n.stop()


@pytest.fixture
def node(node_factory: type[NodeProcess], dcmtk: None) -> NodeProcess:
    """A running node with the default policy, on its own port."""
    return node_factory().start()


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancProcess]:
    require(tool("Orthanc") is not None, "Orthanc")
    pacs = OrthancProcess(tmp_path / "orthanc").start()
    yield pacs
    pacs.stop()
