"""What a peer may cost the receiver before its association is accepted (issue 12).

pynetdicom gives every TCP connection two threads (association and DUL) and a descriptor, and its DUL
reads a PDU with a blocking ``recv``: the ARTIM timer (PS3.8 §9.1.5) is only looked at between
complete PDUs, so a peer that sent part of an A-ASSOCIATE-RQ and stopped held both threads for ever.
This module bounds that cost:

- **A deadline.** A connection must complete its A-ASSOCIATE-RQ within ``node.acse_timeout_s`` of
  being accepted, over all of its bytes (a peer trickling one byte at a time gains nothing), else it
  is closed. Afterwards a ``recv`` or ``send`` that stalls for ``node.network_timeout_s`` ends it.
- **Nothing absurd is read.** Before the request, a PDU longer than :data:`MAX_ASSOCIATE_RQ_BYTES`
  is not read: an A-ASSOCIATE-RQ gets an A-ASSOCIATE-RJ (permanent, service-user, no reason given),
  anything else a closed connection.
- **Caps on pending connections** (accepted, not yet established): per source address, a connection
  past ``node.max_pending_per_host`` is closed at once; past ``node.max_pending_connections`` in all,
  the oldest pending one is closed to make room (a real sender's request arrives in milliseconds,
  so the oldest are the ones stalling).
- **TLS handshakes** (PS3.15 B.1) run on the connection's own thread under the same deadline, not on
  the listener's, where one silent client stopped every other connection.
- **The PROXY protocol** (:mod:`dicom_node.proxy_protocol`): a connection from an address in
  ``node.proxy_protocol`` (a load balancer: HAProxy's ``send-proxy-v2``) must start with a PROXY
  header, read on its own thread within the same deadline, before the TLS handshake and the
  A-ASSOCIATE-RQ; the header's source is then the connection's address for everything after it
  (the per-host cap, the association's ``requestor.address``, the policy, logs and audit). Without a
  valid header the connection is closed and counted. From any other address nothing is parsed.
- **pynetdicom's own log lines** are capped per association: it logs one line per bogus transfer
  syntax while decoding a request, before any handler can refuse it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.ae import ApplicationEntity
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node import proxy_protocol

log = logging.getLogger("dicom_node.guard")

#: Largest A-ASSOCIATE-RQ read. 128 presentation contexts (PS3.8 §9.3.2.2) of 30 transfer syntaxes
#: of 64-character UIDs, with extended negotiation, stay under a quarter of this.
MAX_ASSOCIATE_RQ_BYTES = 1 << 20
#: pynetdicom log lines let through per association, and in all per LOG_PERIOD_S (see LogBudget).
LOG_LINES_PER_ASSOCIATION = 3
LOG_LINES_PER_PERIOD = 50
LOG_PERIOD_S = 10.0

_A_ASSOCIATE_RQ = 0x01
_P_DATA_TF = 0x04
_PDU_TYPES = range(0x01, 0x08)  # PS3.8 §9.3.1
_PDU_SLACK = 1024  # over node.max_pdu_size, for senders that count the PDU header in it
# A-ASSOCIATE-RJ PDU (PS3.8 §9.3.4): rejected-permanent, service-user, no-reason-given.
_RJ_NO_REASON = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 0x01, 0x01, 0x01)
_DRAIN_S = 2.0  # an oversized request is read and dropped for at most this long, and ...
_DRAIN_BYTES = 64 << 20  # ... this many bytes, after its A-ASSOCIATE-RJ
_EXPIRE_GRACE_S = 2.0  # past its deadline, a pending connection the DUL has not closed is shut here

# Outcomes reported to ``ConnectionGate.on_event`` (one per connection turned away).
REFUSED_PER_HOST = "refused_pending_per_host"
CLOSED_OLDEST = "closed_oldest_pending"
TIMED_OUT = "timed_out_before_association"
RQ_TOO_LARGE = "associate_rq_too_large"
PDU_TOO_LARGE = "pdu_too_large"
PROXY_MISSING = proxy_protocol.MissingHeader.outcome  # from a balancer, without a PROXY header
PROXY_INCOMPLETE = proxy_protocol.IncompleteHeader.outcome  # ended (or its deadline passed) inside it
PROXY_INVALID = proxy_protocol.InvalidHeader.outcome  # a header this node does not read


@dataclass
class _Pending:
    sock: socket.socket
    host: str
    accepted: float
    deadline: float
    shut: bool = False
    counted: bool = True  # in _per_host (a balancer's connection is not, until its PROXY header names its host)


def _shut(sock: socket.socket) -> None:
    """Shut a socket another thread may be blocked on (that thread closes it; closing here could
    hand its descriptor number to a new connection under that thread's feet)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class ConnectionGate:
    """Connections accepted and not yet established, capped in total and per source address."""

    def __init__(self, *, timeout_s: float, max_pending: int, max_per_host: int,
                 on_event: Callable[[str, str], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self.max_per_host = max_per_host
        self.on_event = on_event
        self._pending: dict[int, _Pending] = {}
        self._per_host: Counter[str] = Counter()
        self._lock = threading.Lock()

    def admit(self, sock: socket.socket, host: str, *, per_host: bool = True) -> bool:
        """On the listener's thread, for each accepted connection: False closes it at once.

        ``per_host=False``: a load balancer's connection, counted in the total only until
        :meth:`rehost` names the host it relays."""
        now = time.monotonic()
        events: list[tuple[str, str]] = []
        with self._lock:
            self._expire(now)
            if per_host and self._per_host[host] >= self.max_per_host:
                events.append((host, REFUSED_PER_HOST))
                admitted = False
            else:
                if len(self._pending) >= self.max_pending:
                    oldest = min(self._pending.values(), key=lambda p: p.accepted)
                    self._drop(oldest)
                    _shut(oldest.sock)
                    events.append((oldest.host, CLOSED_OLDEST))
                self._pending[id(sock)] = _Pending(sock, host, now, now + self.timeout_s, counted=per_host)
                if per_host:
                    self._per_host[host] += 1
                admitted = True
        self._report(events)
        return admitted

    def rehost(self, sock: socket.socket, host: str) -> bool:
        """A balancer's connection relays ``host`` (its PROXY header said so): it counts for that host
        from now on. False when that host is at ``max_per_host`` (reported; the caller closes it)."""
        with self._lock:
            entry = self._pending.get(id(sock))
            if entry is None or entry.sock is not sock:
                return False  # closed meanwhile (the oldest, to make room)
            if self._per_host[host] >= self.max_per_host:
                self._drop(entry)
                full = True
            else:
                if entry.counted:
                    self._per_host[entry.host] -= 1
                    if self._per_host[entry.host] <= 0:
                        del self._per_host[entry.host]
                entry.host, entry.counted = host, True
                self._per_host[host] += 1
                full = False
        if full:
            self._report([(host, REFUSED_PER_HOST)])
        return not full

    def release(self, sock: socket.socket | None, *, established: bool = False, outcome: str | None = None) -> None:
        """The connection is established or closed: it no longer counts (idempotent). ``outcome``:
        why it was closed, reported instead of the timeout it may also have reached."""
        if sock is None:
            return
        with self._lock:
            entry = self._pending.get(id(sock))
            if entry is None or entry.sock is not sock:
                return
            self._drop(entry)
        if outcome is not None:
            self._report([(entry.host, outcome)])
        elif not established and time.monotonic() >= entry.deadline - 0.05:
            self._report([(entry.host, TIMED_OUT)])

    def deadline(self, sock: socket.socket) -> float:
        """When ``sock`` must have completed its A-ASSOCIATE-RQ (monotonic clock)."""
        with self._lock:
            entry = self._pending.get(id(sock))
        return entry.deadline if entry is not None else time.monotonic() + self.timeout_s

    def expire(self) -> None:
        """Safety net, run now and then: shut pending connections well past their deadline."""
        with self._lock:
            self._expire(time.monotonic())

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def report(self, host: str, outcome: str) -> None:
        self._report([(host, outcome)])

    def _expire(self, now: float) -> None:
        for entry in self._pending.values():
            if not entry.shut and now > entry.deadline + _EXPIRE_GRACE_S:
                entry.shut = True
                _shut(entry.sock)

    def _drop(self, entry: _Pending) -> None:
        del self._pending[id(entry.sock)]
        if not entry.counted:
            return
        self._per_host[entry.host] -= 1
        if self._per_host[entry.host] <= 0:
            del self._per_host[entry.host]

    def _report(self, events: list[tuple[str, str]]) -> None:
        if self.on_event is not None:
            for host, outcome in events:
                self.on_event(host, outcome)


class GuardedSocket(AssociationSocket):
    """pynetdicom's socket wrapper with the A-ASSOCIATE-RQ deadline and size bound of this module."""

    def __init__(self, assoc: Association, client_socket: socket.socket, gate: ConnectionGate,
                 network_timeout: float | None) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.raw = client_socket
        self.gate = gate
        self._deadline = gate.deadline(client_socket)
        self._network_timeout = network_timeout
        self._awaiting_rq = True
        self._next: int | None = None  # type of the PDU whose body the DUL reads next

    def recv(self, nr_bytes: int) -> bytearray:
        # pynetdicom reads a PDU as recv(6) for its header, then recv(length) for the rest, the
        # rest only when the type is one of PS3.8's seven.
        read = self._recv_by_deadline if self._awaiting_rq else super().recv
        if self._next is None:
            data = read(nr_bytes)
            if len(data) == 6:
                pdu_type, length = struct.unpack(">BxI", data)
                if length > self._limit(pdu_type):
                    self._refuse_oversized(pdu_type, length)
                    return bytearray()  # read as a closed connection: the DUL closes it (AA-5, AA-4)
                if pdu_type in _PDU_TYPES:
                    self._next = pdu_type
            return data
        pdu_type, self._next = self._next, None
        data = read(nr_bytes)
        if self._awaiting_rq and pdu_type == _A_ASSOCIATE_RQ and len(data) == nr_bytes:
            self._awaiting_rq = False  # complete: from now on only stalls are bounded
            self._set_timeout(self._network_timeout)
        return data

    def _limit(self, pdu_type: int) -> int:
        """The longest PDU read: a P-DATA-TF once associated as long as we said we receive (PS3.8
        D.1: ``node.max_pdu_size``, 0 for no limit), anything else as long as a request."""
        if self._awaiting_rq or pdu_type != _P_DATA_TF:
            return MAX_ASSOCIATE_RQ_BYTES
        max_pdu = self.assoc.acceptor.maximum_length or 0
        return max_pdu + _PDU_SLACK if max_pdu else 0xFFFFFFFF

    def _recv_by_deadline(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        out = bytearray()
        while len(out) < nr_bytes:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                return bytearray()
            try:
                sock.settimeout(remaining)
                chunk = sock.recv(min(nr_bytes - len(out), 65536))
            except OSError:  # the deadline (TimeoutError), a reset
                return bytearray()
            if not chunk:
                return out
            out.extend(chunk)
        return out

    def _refuse_oversized(self, pdu_type: int, length: int) -> None:
        self.gate.report(str(self.assoc.requestor.address), RQ_TOO_LARGE if self._awaiting_rq else PDU_TOO_LARGE)
        if pdu_type != _A_ASSOCIATE_RQ or not self._awaiting_rq:
            return
        try:
            self.raw.settimeout(_DRAIN_S)
            self.raw.sendall(_RJ_NO_REASON)
            # Read (and drop) what the peer is still sending for a moment before the close: closing
            # on unread data resets the connection, and the reset can destroy the A-ASSOCIATE-RJ.
            self.raw.shutdown(socket.SHUT_WR)
            until, left = time.monotonic() + _DRAIN_S, min(length, _DRAIN_BYTES)
            while left > 0 and time.monotonic() < until:
                chunk = self.raw.recv(min(left, 65536))
                if not chunk:
                    break
                left -= len(chunk)
        except OSError:
            pass

    def _set_timeout(self, value: float | None) -> None:
        try:
            self.raw.settimeout(value)
        except OSError:
            pass

    def _shutdown_socket(self) -> None:
        super()._shutdown_socket()
        self.gate.release(self.raw)
        if self._awaiting_rq:
            # The association thread waits for the request until the ACSE timeout: no request
            # will come now, so wake it at once (it reads None as that timeout and ends).
            self._awaiting_rq = False
            self.assoc.dul.to_user_queue.put(None)  # type: ignore[arg-type]


class GuardedHandler(RequestHandler):
    """pynetdicom's request handler, giving the association a :class:`GuardedSocket`."""

    server: GuardedServer

    def _create_association(self) -> Association:
        # As pynetdicom 3.0.4's RequestHandler._create_association, but for the socket class.
        assoc = Association(self.ae, "acceptor")
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(GuardedSocket(assoc, cast(socket.socket, self.request), self.server.gate,
                                       self.ae.network_timeout))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *cast(tuple[Callable[..., Any], Any], handlers))
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Callable[..., Any], Any]], handlers):
                    assoc.bind(event, handler, args)
        return assoc


class GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with a :class:`ConnectionGate` at accept."""

    gate: ConnectionGate
    #: node.proxy_protocol: connections from these must start with a PROXY header
    proxy_sources: tuple[proxy_protocol.Network, ...] = ()
    # socketserver listens with a backlog of 5: a burst of connections (a flood, or a few senders at
    # once) overflowed it and every sixth SYN waited a second for its retransmit.
    request_queue_size = 128

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = cast(socket.socket, self.socket).accept()
        if self.ssl_context:  # the handshake runs in process_request_thread, not on this thread
            sock = self.ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        return self.gate.admit(request, host, per_host=not proxy_protocol.trusted(host, self.proxy_sources))

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if proxy_protocol.trusted(str(client_address[0]), self.proxy_sources):
            relayed = self._read_proxy_header(request, client_address)
            if relayed is None:
                self.shutdown_request(request)
                return
            client_address = relayed
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(max(0.01, self.gate.deadline(request) - time.monotonic()))
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError):  # ssl.SSLError and TimeoutError are OSErrors
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def _read_proxy_header(self, request: socket.socket, client_address: Any) -> tuple[str, int] | None:
        """The (host, port) a balancer's connection relays, from its PROXY header; its own address for
        a LOCAL (v2) or UNKNOWN (v1) header (the balancer's health check). None: the connection is to
        be closed (reported to the gate)."""
        deadline = self.gate.deadline(request)
        received = 0

        def recv(n: int) -> bytes:
            nonlocal received
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b""
            try:
                request.settimeout(remaining)
                # socket.socket's own recv, also under TLS: the header comes before the handshake, in the clear.
                chunk = socket.socket.recv(request, n)
            except OSError:  # the deadline (TimeoutError), a reset
                return b""
            received += len(chunk)
            return chunk

        try:
            header = proxy_protocol.read(recv)
            request.settimeout(None)
        except proxy_protocol.ProxyHeaderError as exc:
            # A connection that sent nothing at all (a port probe) is what it was without a balancer:
            # not reported, or timed out at its deadline.
            self.gate.release(request, outcome=exc.outcome if received else None)
            log.debug("PROXY header refused", extra={"peer_host": str(client_address[0]), "reason": str(exc)})
            return None
        relayed = header.source or (str(client_address[0]), int(client_address[1]))
        if not self.gate.rehost(request, relayed[0]):
            return None
        return relayed

    def close_request(self, request: Any) -> None:
        self.gate.release(request)
        super().close_request(request)


def start_server(ae: ApplicationEntity, address: tuple[str, int], gate: ConnectionGate, *,
                 ssl_context: ssl.SSLContext | None, evt_handlers: list[Any],
                 proxy_sources: tuple[str, ...] | list[str] = ()) -> GuardedServer:
    """Listen in the background, as ``ae.start_server(block=False)`` does, with the gate in front;
    ``proxy_sources``: ``node.proxy_protocol``, the balancers whose connections start with a PROXY header."""
    server = cast(GuardedServer, ae.make_server(
        address, ssl_context=ssl_context, evt_handlers=evt_handlers, server_class=GuardedServer,
        request_handler=GuardedHandler,
    ))
    server.gate = gate
    server.proxy_sources = proxy_protocol.networks(proxy_sources)
    # stop() waits for established associations itself; socketserver's join of every request
    # thread would also wait out rejected ones that linger until their ARTIM timer expires.
    server.block_on_close = False
    thread = threading.Thread(target=server.serve_forever, name=f"AcceptorServer@{address[1]}", daemon=True)
    thread.start()
    ae._servers.append(server)  # AssociationServer.shutdown() removes it from there
    return server


def raw_socket(assoc: Association) -> socket.socket | None:
    """The accepted socket under ``assoc`` (the gate's key), when it came through :class:`GuardedServer`."""
    sock = assoc.dul.socket
    return sock.raw if isinstance(sock, GuardedSocket) else None


def current_association() -> Association | None:
    """The association whose thread (its own, or its DUL's) is running."""
    thread = threading.current_thread()
    if isinstance(thread, Association):
        return thread
    if isinstance(thread, DULServiceProvider):
        return thread.assoc
    return None


class LogBudget(logging.Filter):
    """At most ``per_association`` pynetdicom records per association and ``per_period`` in all per
    ``period_s``; the rest are counted.

    pynetdicom logs while it decodes an A-ASSOCIATE-RQ, before EVT_REQUESTED: one line per transfer
    syntax it does not know, so a single request could write hundreds of thousands of lines and
    rotate the node's log away; and a line or two per connection it drops, so a flood of connections
    could too. The node logs one summary line per association instead, with the counts dropped here.
    """

    def __init__(self, per_association: int = LOG_LINES_PER_ASSOCIATION, per_period: int = LOG_LINES_PER_PERIOD,
                 period_s: float = LOG_PERIOD_S) -> None:
        super().__init__()
        self.per_association = per_association
        self.per_period = per_period
        self.period_s = period_s
        self._seen: weakref.WeakKeyDictionary[Association, list[int]] = weakref.WeakKeyDictionary()
        self._window = (0.0, 0)  # (start, records let through since)
        self._dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        assoc = current_association()
        if assoc is None:
            return True
        now = time.monotonic()
        with self._lock:
            counts = self._seen.setdefault(assoc, [0, 0])
            start, passed = self._window
            if now - start >= self.period_s:
                start, passed = now, 0
            if counts[0] < self.per_association and passed < self.per_period:
                counts[0] += 1
                self._window = (start, passed + 1)
                return True
            self._window = (start, passed)
            counts[1] += 1
            self._dropped += 1
            return False

    def take_dropped(self) -> int:
        """Records dropped since the last call (for the receiver's periodic summary)."""
        with self._lock:
            n, self._dropped = self._dropped, 0
        return n

    def dropped(self, assoc: Association) -> int:
        with self._lock:
            counts = self._seen.get(assoc)
        return counts[1] if counts else 0


LOG_BUDGET = LogBudget()


def install_log_budget(budget: LogBudget = LOG_BUDGET) -> None:
    """Put ``budget`` on every pynetdicom logger (a logger's filters see only its own records)."""
    names = [n for n in list(logging.root.manager.loggerDict) if n == "pynetdicom" or n.startswith("pynetdicom.")]
    for name in names:
        logger = logging.getLogger(name)
        if budget not in logger.filters:
            logger.addFilter(budget)
