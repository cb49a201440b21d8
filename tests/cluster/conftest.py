"""Real peers of the cluster tests (docs/cluster.md): HAProxy made from the document's own
configuration, and tests/conftest.py's PostgreSQL server (``postgres``) and nodes (``node_factory``).

In CI (CI=true) a missing PostgreSQL or HAProxy fails the run; elsewhere the tests that need it skip.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_support import HaproxyFactory, check_status

from dicom_node.testing import (
    HaproxyProcess,
    cluster_haproxy_config,
    free_port,
    missing_haproxy,
    require,
    wait_for,
)


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
        port = free_port()
        cfg = cluster_haproxy_config(f"127.0.0.1:{port}", servers, Path(sockets[-1].name) / "admin.sock")
        ha = HaproxyProcess(cfg, tmp_path / f"haproxy{len(made)}", port=port)
        made.append(ha)
        ha.start()
        for name, _ in servers:
            wait_for(f"{name} checked by HAProxy", lambda n=name: check_status(ha, n) not in ("", "INI"),
                     timeout_s=60, every_s=0.2)
        return ha

    yield make
    for ha in made:
        ha.stop()
    for s in sockets:
        s.cleanup()
