"""Real peers of the cluster tests (docs/cluster.md): HAProxy made from the document's own
configuration, and tests/conftest.py's PostgreSQL server (``postgres``) and nodes (``node_factory``).

In CI (CI=true) a missing PostgreSQL or HAProxy fails the run; elsewhere the tests that need it skip.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import HaproxyFactory, start_haproxy

from dicom_node.testing import HaproxyProcess, missing_haproxy, require


@pytest.fixture
def haproxy_factory(tmp_path: Path) -> Iterator[HaproxyFactory]:
    """Start HAProxy on docs/cluster.md's configuration in front of receivers (name, port) on 127.0.0.1,
    on a free frontend port; waits until each receiver passed its first health check. All are stopped
    at the end."""
    why = missing_haproxy()
    require(why is None, f"HAProxy ({why})")
    made: list[HaproxyProcess] = []
    sockets: list[tempfile.TemporaryDirectory[str]] = []

    def make(servers: list[tuple[str, int]]) -> HaproxyProcess:
        # A Unix socket path must stay under 108 bytes: pytest's tmp_path can be longer.
        sockets.append(tempfile.TemporaryDirectory(prefix="haproxy-"))
        ha = start_haproxy(tmp_path / f"haproxy{len(made)}", servers, Path(sockets[-1].name) / "admin.sock")
        made.append(ha)
        return ha

    yield make
    for ha in made:
        ha.stop()
    for s in sockets:
        s.cleanup()
