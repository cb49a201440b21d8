"""What the cluster tests share besides their fixtures: the backend's name and a receiver's check state."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from dicom_node.testing import REPO, HaproxyProcess, cluster_haproxy_config, free_port, wait_for

BACKEND = "dicom_receivers"  # the backend of docs/cluster.md's haproxy.cfg
#: The node settings docs/cluster.md gives a receiver behind its HAProxy (send-proxy-v2): HAProxy runs
#: on 127.0.0.1 in the tests, so its connections start with a PROXY header (node.proxy_protocol).
BEHIND_HAPROXY = {"proxy_protocol": ["127.0.0.1/32"]}

#: haproxy_factory's type: receivers (name, port) in, a started HAProxy out.
HaproxyFactory = Callable[[list[tuple[str, int]]], HaproxyProcess]


def check_status(ha: HaproxyProcess, server: str) -> str:
    """The outcome of the server's last health check in ``show stat``: INI (none yet), L7OK (the DICOM
    check passed), L4CON (connection refused), L7RSP (a wrong answer), L7TOUT (no answer in time)..."""
    for row in ha.show_stat():
        if row["pxname"] == BACKEND and row["svname"] == server:
            return row["check_status"].lstrip("* ")
    raise KeyError(server)


def start_haproxy(root: Path, servers: list[tuple[str, int]], admin_socket: Path) -> HaproxyProcess:
    """HAProxy on docs/cluster.md's configuration in front of ``servers`` (name, port) on 127.0.0.1, on
    a free frontend port; returns once each server's first health check has run (whatever its outcome:
    :func:`check_status`). ``admin_socket``: a Unix socket path, under 108 bytes."""
    port = free_port()
    ha = HaproxyProcess(cluster_haproxy_config(f"127.0.0.1:{port}", servers, admin_socket), root, port=port).start()
    for name, _ in servers:
        wait_for(f"{name} checked by HAProxy", lambda n=name: check_status(ha, n) not in ("", "INI"),
                 timeout_s=60, every_s=0.2)
    return ha


def health_check_rq(calling_ae: str = "HAPROXY_CHECK") -> bytes:
    """The bytes docs/cluster.md's health check sends before its first expect: its A-ASSOCIATE-RQ;
    with ``calling_ae``, the same request from another calling AE title (16 bytes, padded)."""
    block = re.search(r"^```haproxy\n(.*?)^```", (REPO / "docs" / "cluster.md").read_text(), re.M | re.S)
    assert block is not None
    rules = re.findall(r"^\s*tcp-check (send-binary|expect)\s+(\S+)", block.group(1), re.M)
    first_expect = [kind for kind, _ in rules].index("expect")
    raw = bytes.fromhex("".join(arg for _, arg in rules[:first_expect]))
    return raw.replace(b"HAPROXY_CHECK".ljust(16), calling_ae.encode().ljust(16), 1)
