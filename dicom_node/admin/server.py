"""The admin HTTP server: uvicorn on a background thread of the node process.

The node owns SIGTERM and SIGINT, so uvicorn never installs signal handlers here; ``stop()`` asks it
to finish its requests and waits for the thread. The listening socket is bound in ``start()``, so a
port already in use stops the node's start with an error naming the admin address, and port 0 gets
a free port, which is logged and kept in ``address``. HTTP is bounded (connections, header time,
threads, descriptors) so that no load on it can starve the DICOM receiver: see ``limits``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio.to_thread
import uvicorn

from dicom_node.admin.app import AdminNode, create_app
from dicom_node.admin.limits import (
    ADMIN_THREADS,
    SECURITY_HEADERS,
    Budget,
    descriptor_budget,
    guarded_protocol,
    listen_backlog,
)

log = logging.getLogger("dicom_node.admin")

START_TIMEOUT_S = 15.0


class _ThreadServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # anyio's limiter is per event loop: set here, inside it. Each handler thread opens its own
        # SQLite files, so the thread count is part of the HTTP descriptor share.
        anyio.to_thread.current_default_thread_limiter().total_tokens = ADMIN_THREADS
        await super().startup(sockets=sockets)


class AdminServer:
    """``start()`` serves the API, /metrics and the dashboard on ``admin.host:admin.port``; ``stop()`` ends it."""

    def __init__(self, node: AdminNode) -> None:
        self.node = node
        #: Checked when the node is built, so a limit too low stops it with one line before it listens.
        self.budget: Budget = descriptor_budget(node.cfg)
        self.protocol = guarded_protocol(node.cfg, self.budget)
        self.app = create_app(node, http_counters=self.protocol.counters)
        self.address: tuple[str, int] | None = None
        self._server: _ThreadServer | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str | None:
        """``http://host:port`` once started."""
        if self.address is None:
            return None
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> tuple[str, int]:
        """Bind, serve in the background, return the bound (host, port); OSError names the address."""
        cfg = self.node.cfg.admin
        logging.getLogger("uvicorn").setLevel(logging.WARNING)  # its INFO lines say nothing the node does not
        sock = _bind(cfg.host, cfg.port)
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, server_header=False, http=self.protocol, ws="none",
                                backlog=listen_backlog(cfg.max_connections),
                                timeout_keep_alive=cfg.keepalive_timeout_s,
                                headers=[(k, v) for k, v in SECURITY_HEADERS])
        address = self._launch(config, sock, "admin", f"{cfg.host}:{cfg.port}")
        log.info("admin console serving", extra={
            "url": self.url, "token": bool(cfg.token), "max_connections": cfg.max_connections,
            "nofile": self.budget.soft, "fd_budget": f"http {self.budget.http} + dicom {self.budget.dicom}"
                                                     f" of {self.budget.ceiling}"})
        return address

    def _launch(self, config: uvicorn.Config, sock: socket.socket, what: str, where: str) -> tuple[str, int]:
        """Serve ``config`` on the bound ``sock`` from a thread; return once it listens (the DICOMweb
        listener, dicom_node.dicomweb.server, starts the same way)."""
        self._socket = sock
        self._server = _ThreadServer(config)
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"{what}-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise OSError(f"{what} server on {where} did not start")
            time.sleep(0.02)
        host, port = sock.getsockname()[:2]
        self.address = (str(host), int(port))
        return self.address

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        try:
            self._server.run(sockets=[sock])
        except Exception:
            log.exception("HTTP server stopped with an error", extra={"thread": threading.current_thread().name})

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish in-flight requests and stop; safe to call twice or before ``start()``."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None


def _bind(host: str, port: int, what: str = "admin") -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6); an OSError names ``what`` listens there."""
    try:
        info: Any = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        family, kind, proto, _, addr = info
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
            sock.listen(128)
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise OSError(exc.errno, f"{what} {host}:{port}: {exc.strerror or exc}") from None
    return sock
