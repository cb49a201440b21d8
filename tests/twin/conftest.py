"""The engine of the store-level twin tests: a test that takes ``twin_engine`` runs once on SQLite and
once on PostgreSQL (the ``database`` fixture of tests/conftest.py); its ``new_store(tmp_path)`` (and
``connect_for``) then open a database of that engine. The tests that start a node stay on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from twin_support import Engine

from dicom_node.testing import PostgresProcess


@pytest.fixture
def twin_engine(database: str, request: pytest.FixtureRequest) -> Iterator[str]:
    if not database.startswith("postgresql"):
        Engine.reset(None)
        try:
            yield "sqlite"
        finally:
            Engine.reset(None)
        return
    pg: PostgresProcess = request.getfixturevalue("postgres")
    first = [database]

    def make() -> str:
        return first.pop() if first else pg.create_database(f"t_{uuid.uuid4().hex[:16]}")

    Engine.reset(make)
    try:
        yield "postgresql"
    finally:
        Engine.reset(None)
