"""What keeps HTTP load off the DICOM receiver, and the headers every console response carries.

Before this, 1,100 clients that sent ``GET / HTTP/1.1`` and a Host line and never ended the headers
each held a descriptor for good (uvicorn has no header timeout and no connection cap); past 1,024
descriptors pynetdicom's ``select()`` aborts every new association while ``/healthz`` says 200.
Three bounds, all before authentication (which needs the headers):

- :class:`GuardedH11` answers a connection past ``admin.max_connections`` with 503 and closes it
  (after at most :data:`DRAIN_S`), and closes one whose request headers have not all come within
  ``admin.header_timeout_s`` (408). No thread per connection: uvicorn's asyncio protocol and a timer.
- :func:`descriptor_budget` raises the soft RLIMIT_NOFILE to the hard limit and refuses to start when
  the HTTP share and the DICOM share do not both fit under it and under select()'s 1,024.
- Handler threads are capped at :data:`ADMIN_THREADS` (each opens its own SQLite files).
"""

from __future__ import annotations

import asyncio
import http
import resource
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

from dicom_node.config import Config

#: Sent with every response, errors and the server's own 400/408/503 included.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)

#: pynetdicom polls each association's socket with select(), which fails for a descriptor >= 1024:
#: whatever the rlimit, DICOM needs its sockets numbered below this.
FD_SETSIZE = 1024
#: Threads that run the console's handlers (anyio's default would be 40).
ADMIN_THREADS = 8
#: A request the app has not answered within this is cut (a client that never reads its response).
REQUEST_TIMEOUT_S = 120.0
#: A refused connection is read from this long after its 503, so that the client gets the 503 rather
#: than a reset (closing with its request unread would send RST).
DRAIN_S = 1.0

# Descriptors, measured on a running node (docs/reliability.md, section 11): 17 idle, 39 after
# analyses (worker and scheduler SQLite files, model, logs); per association its socket, the file
# it arrives into and the SQLite files (db, WAL, shm) of its receiver-db thread; one socket per
# connection not yet associated (node.max_pending_connections).
_DICOM_BASE = 64
_PER_ASSOCIATION = 5
_PER_THREAD = 3  # SQLite db, WAL, shm
_HTTP_FIXED = 4  # listener, epoll, the loop's self-pipe pair


@dataclass(frozen=True)
class Budget:
    """Descriptors: what the process may use (``ceiling``) and what each side needs at its limits."""

    soft: int
    hard: int
    ceiling: int
    dicom: int
    http: int

    @property
    def http_fd_limit(self) -> int:
        """An HTTP connection whose descriptor number reaches this is refused: the rest is the DICOM share."""
        return self.ceiling - (self.dicom - _DICOM_BASE)


def listen_backlog(max_connections: int) -> int:
    """asyncio accepts up to the backlog in one loop turn, and a connection past the cap is refused
    a turn or two later: half the cap keeps those waiting to be refused under the cap."""
    return max(1, max_connections // 2)


def http_share(max_connections: int) -> int:
    """Descriptors HTTP can hold: the open connections, as many refused ones draining, as many
    accepted and not yet refused (:func:`listen_backlog`), the handler threads' SQLite files, and
    the fixed ones."""
    return 3 * max_connections + ADMIN_THREADS * _PER_THREAD + _HTTP_FIXED


def dicom_share(cfg: Config) -> int:
    """Descriptors the node needs with ``node.max_associations`` associations receiving at once and
    ``node.max_pending_connections`` waiting to associate."""
    node = cfg.node
    pending = int(getattr(node, "max_pending_connections", 0))  # the receiver's pre-association cap (issue 12)
    return _DICOM_BASE + _PER_ASSOCIATION * node.max_associations + pending + _PER_THREAD


def descriptor_budget(cfg: Config) -> Budget:
    """Raise the soft RLIMIT_NOFILE to the hard one; ValueError (one line) when the shares do not fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError):
            pass  # keep the soft limit we have; the check below says whether it is enough
    ceiling = FD_SETSIZE if soft == resource.RLIM_INFINITY else min(soft, FD_SETSIZE)
    budget = Budget(soft=soft, hard=hard, ceiling=ceiling, dicom=dicom_share(cfg),
                    http=http_share(cfg.admin.max_connections))
    if budget.dicom + budget.http > ceiling:
        raise ValueError(
            f"admin.max_connections {cfg.admin.max_connections}, node.max_associations {cfg.node.max_associations}"
            f" and node.max_pending_connections {getattr(cfg.node, 'max_pending_connections', 0)} need"
            f" {budget.dicom + budget.http} file descriptors, the process may "
            f"use {ceiling} (RLIMIT_NOFILE {soft}, hard {hard}; DICOM needs descriptors under {FD_SETSIZE}): "
            f"lower them or raise the limit (LimitNOFILE=, ulimit -n)")
    return budget


def raw_response(status: int, body: str) -> bytes:
    """A whole ``Connection: close`` response, for the protocol to write without h11."""
    data = body.encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(data)}", "Connection: close", *(f"{k}: {v}" for k, v in SECURITY_HEADERS)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data


_BUSY = raw_response(503, "503 Service Unavailable: too many admin connections; try again\n")
_SLOW = raw_response(408, "408 Request Timeout: the request headers took too long\n")


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, a header deadline and a request deadline.

    Subclassed per server by :func:`guarded_protocol`, which sets the class attributes.
    """

    max_connections: ClassVar[int] = 64
    header_timeout_s: ClassVar[float] = 10.0
    request_timeout_s: ClassVar[float] = REQUEST_TIMEOUT_S
    fd_limit: ClassVar[int] = FD_SETSIZE
    counters: ClassVar[dict[str, int]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._draining = False
        self._deadline: asyncio.TimerHandle | None = None
        self._seen: object | None = None  # the request cycle the deadline was last set for

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        if len(self.connections) >= self.max_connections or fd >= self.fd_limit:
            self._refused = True
            self.transport = transport
            self.counters["refused"] = self.counters.get("refused", 0) + 1
            transport.write(_BUSY)
            if self.counters.get("draining", 0) < self.max_connections and transport.can_write_eof():
                self.counters["draining"] = self.counters.get("draining", 0) + 1
                self._draining = True
                transport.write_eof()  # the 503, then FIN; the client's request is read and dropped
                self._deadline = self.loop.call_later(DRAIN_S, transport.abort)
            else:  # as many draining already: no more descriptors for this one
                transport.close()
            return
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._draining:
            self._draining = False
            self.counters["draining"] -= 1
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._started()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request at once
        if self.transport.is_closing():
            return
        if not self._started():
            self._arm(self.header_timeout_s)  # the next request's headers must come in time too

    def send_400_response(self, msg: str) -> None:
        self.transport.write(raw_response(400, msg + "\n"))
        self.transport.close()

    def _started(self) -> bool:
        """When a new request has begun, give the app ``request_timeout_s`` instead; True if so."""
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen and not cycle.response_complete:
            self._seen = cycle
            self._arm(self.request_timeout_s)
            return True
        return False

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.counters["timed_out"] = self.counters.get("timed_out", 0) + 1
        if self.cycle is None or self.cycle.response_complete:  # waiting for headers
            self.transport.write(_SLOW)
            self.transport.close()
        else:  # the response is stuck (a client that does not read)
            self.transport.abort()


def guarded_protocol(cfg: Config, budget: Budget) -> type[GuardedH11]:
    """A :class:`GuardedH11` subclass with this node's limits and its own counters."""
    attrs = {"max_connections": cfg.admin.max_connections, "header_timeout_s": cfg.admin.header_timeout_s,
             "fd_limit": budget.http_fd_limit, "counters": {"refused": 0, "timed_out": 0, "draining": 0}}
    return type("NodeH11", (GuardedH11,), attrs)
