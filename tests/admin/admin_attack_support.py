"""Attacks on a running node's admin console, from outside: slow HTTP clients, descriptor counts.

Used by ``test_admin_attacks.py`` and ``measure_attacks.py``. Everything goes over loopback to a
real ``dicom-node serve`` process; its descriptors are read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from dicom_node.testing import NodeProcess, free_port, wait_for, wait_port

SLOW_REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\n"  # and never the blank line that ends the headers


@dataclass
class LimitedNode(NodeProcess):
    """A node started with its own RLIMIT_NOFILE (soft, hard), as a service manager would set it."""

    nofile: tuple[int, int] | None = None

    def start(self, wait_s: float = 120.0) -> LimitedNode:
        log = open(self.log_path, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        limits = self.nofile

        def limit() -> None:
            if limits is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, limits)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, preexec_fn=limit,
        )
        log.close()
        wait_port(self.port, wait_s, self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def raise_own_fd_limit(need: int) -> None:
    """Let this (test) process open ``need`` sockets: soft limit up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limits(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of a running process."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise LookupError("no 'Max open files' line")


def _inodes_on_port(pid: int, port: int, established: bool = False) -> set[str]:
    """Inodes of the process's TCP sockets whose local port is ``port``, the listener left out
    (with ``established``, only connections in that state: not one the server has half-closed)."""
    out: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if int(local.rsplit(":", 1)[1], 16) == port and state != "0A" and (state == "01" or not established):
                out.add(inode)
    return out


def port_fds(pid: int, port: int, established: bool = False) -> int:
    """Descriptors the process holds on connections to its local ``port`` (HTTP or DICOM)."""
    inodes = _inodes_on_port(pid, port, established)
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                n += 1
    return n


def slow_clients(port: int, n: int, host: str = "127.0.0.1", timeout_s: float = 1.0) -> list[socket.socket]:
    """``n`` connections that send a request line and a Host line and never finish the headers."""
    socks: list[socket.socket] = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(timeout_s)
        try:
            s.connect((host, port))
            s.sendall(SLOW_REQUEST)
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    return socks


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (nothing to read, no EOF)."""
    n = 0
    for s in socks:
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
        except BlockingIOError:
            n += 1
        except OSError:
            pass
    return n


@contextlib.contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def echoscu(port: int, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-to", "10", "-ta", "10", "-aet", "MODALITY1", "-aec", "DICOM_NODE",
                           "127.0.0.1", str(port)], capture_output=True, text=True, timeout=timeout_s)


def http_status(url: str, **kw: Any) -> int | None:
    """The status of a GET, or None when the console did not answer."""
    try:
        return httpx.get(url, timeout=5, **kw).status_code
    except httpx.HTTPError:
        return None


def start_console_node(root: Path, admin: dict[str, Any], *, nofile: tuple[int, int] | None = None,
                       nodes: list[LimitedNode] | None = None, **overrides: Any) -> tuple[LimitedNode, str]:
    """A node with its console on a port of its own (receive only unless ``worker`` says otherwise),
    started and answering /healthz; returns it and the console's URL."""
    port = free_port()
    overrides.setdefault("worker", {"threads": 0})
    node = LimitedNode(root, overrides={"admin": {"enabled": True, "port": port, **admin}, **overrides},
                       nofile=nofile)
    if nodes is not None:
        nodes.append(node)
    node.start()
    url = f"http://127.0.0.1:{port}"
    wait_for("admin console", lambda: http_status(url + "/healthz") == 200, 30, 0.2)
    return node, url
