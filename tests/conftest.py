"""Shared fixtures: real peers (DCMTK, dicom3tools, Orthanc, PostgreSQL) and real node processes.

In CI (CI=true) a missing peer or the missing RSNA sample fails the run; on a developer machine the
tests that need it are skipped with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
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


#: The engines a node's store can be on; a test that starts a node runs once on each (issue 13).
ENGINES = ("sqlite", "postgresql")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "engines(*names): the engines a node test runs on, when not all "
                                       "(say why: a test of the SQLite file itself)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that needs ``engine`` (through ``node_factory``, ``node`` or a module's node) runs on
    each engine of :data:`ENGINES`, or on those its ``engines`` mark names."""
    if "engine" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("engines")
        metafunc.parametrize("engine", mark.args if mark else ENGINES, indirect=True, scope="session")


@pytest.fixture(scope="session")
def engine(request: pytest.FixtureRequest) -> str:
    """``sqlite`` or ``postgresql``: the engine this run of the test puts its nodes' stores on."""
    name: str = request.param
    if name == "postgresql":
        request.getfixturevalue("postgres")  # the session's server, started once
    return name


@pytest.fixture(scope="session")
def new_database(engine: str, request: pytest.FixtureRequest) -> Callable[[], str | None]:
    """Makes the store of one more node (or of nodes that share a storage folder): None on SQLite (the
    file under storage.dir), else the URL of a fresh database on the session's PostgreSQL server."""
    def make() -> str | None:
        if engine == "sqlite":
            return None
        pg: PostgresProcess = request.getfixturevalue("postgres")
        return pg.create_database(f"n_{uuid.uuid4().hex[:16]}")
    return make


@pytest.fixture(scope="session")
def rsna() -> list[Path]:
    files = rsna_files()
    require(len(files) == 9, f"the RSNA sample in {RSNA_DIR}")
    return files


@pytest.fixture
def node_factory(tmp_path: Path, new_database: Callable[[], str | None]) -> Iterator[type[NodeProcess]]:
    """Make nodes under this test's tmp dir, on the test's engine (one database per storage folder, so
    two nodes on one folder share it, as a cluster's do); every one still running at the end is stopped."""
    made: list[NodeProcess] = []
    databases: dict[str, str | None] = {}

    class _Factory(NodeProcess):
        def __init__(self, name: str = "node", **overrides: object) -> None:
            storage = overrides.get("storage")
            folder = str(storage.get("dir") if isinstance(storage, dict) and storage.get("dir") else tmp_path / name)
            if folder not in databases:
                databases[folder] = new_database()
            super().__init__(root=tmp_path / name, overrides=dict(overrides), database=databases[folder])
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
