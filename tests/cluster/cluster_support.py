"""What the cluster tests share besides their fixtures: the backend's name and a receiver's check state."""

from __future__ import annotations

from collections.abc import Callable

from dicom_node.testing import HaproxyProcess

BACKEND = "dicom_receivers"  # the backend of docs/cluster.md's haproxy.cfg

#: haproxy_factory's type: receivers (name, port) in, a started HAProxy out.
HaproxyFactory = Callable[[list[tuple[str, int]]], HaproxyProcess]


def check_status(ha: HaproxyProcess, server: str) -> str:
    """The outcome of the server's last health check in ``show stat``: INI (none yet), L7OK (the DICOM
    check passed), L4CON (connection refused), L7RSP (a wrong answer), L7TOUT (no answer in time)..."""
    for row in ha.show_stat():
        if row["pxname"] == BACKEND and row["svname"] == server:
            return row["check_status"].lstrip("* ")
    raise KeyError(server)
