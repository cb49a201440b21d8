"""The receiver: association policy, C-ECHO and C-STORE handlers (pynetdicom event handlers).

All of the policy an admin configures sits here: which SOP classes and transfer syntaxes are
negotiated, who may associate (called AE, calling AE and host: behind a load balancer the host its
PROXY header names, see :mod:`dicom_node.proxy_protocol`), how many associations at once and per
peer, the maximum PDU, TLS. What a connection may cost before its association is accepted (deadline,
pending caps, request size, pynetdicom's log lines) is :mod:`dicom_node.guard`; what happens to a
received instance is :mod:`dicom_node.ingest`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from pydicom.pixels.decoders.base import _PIXEL_DATA_DECODERS, get_decoder
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import guard
from dicom_node.arriving import Arrivals, install
from dicom_node.config import Config, PeersConfig
from dicom_node.ingest import Ingest
from dicom_node.store import Store

log = logging.getLogger("dicom_node.scp")

#: Storage SOP classes a chest radiograph arrives in (PS3.4 Annex B.5). Everything else is refused
#: at negotiation: the node is not an archive for CT, MR, RT or reports.
CHEST_STORAGE_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}

# A-ASSOCIATE-RJ (result, source, reason) of PS3.8 §9.3.4.
REJECT_CALLED_AE = (0x01, 0x01, 0x07)   # rejected-permanent, service-user, called AE not recognised
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)        # rejected-transient, service-provider (presentation), local limit
REJECT_RATE = (0x02, 0x01, 0x01)        # rejected-transient, service-user, no reason given
REJECT_ABSURD = (0x01, 0x01, 0x01)      # rejected-permanent, service-user, no reason given

#: Presentation context IDs are odd integers 1-255 (PS3.8 §9.3.2.2), so a request proposing more
#: than this many is malformed; it is refused before pynetdicom negotiates them.
MAX_PRESENTATION_CONTEXTS = 128
#: ARTIM after an A-ASSOCIATE-RJ (PS3.8 §9.1.5, Sta13): a peer that goes on sending is dropped then.
REJECT_LINGER_S = 2.0
#: Connections turned away before association are logged and audited once per this many seconds,
#: as counts per source address, however many a flood makes.
REPORT_EVERY_S = 10.0
#: Rejected associations logged and audited one by one per REPORT_EVERY_S; the rest are counted.
DETAILED_PER_PERIOD = 20
SOP_CLASS_NOT_SUPPORTED = 0x0122  # C-STORE status "Refused: SOP Class not supported" (PS3.7 C.5)

_PYNETDICOM_CEILING = 4096  # threads pynetdicom itself would let negotiate at once (see Receiver._build_ae)


def transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes plus every compressed one that an installed decoder can read."""
    return [str(uid) for uid in _PIXEL_DATA_DECODERS if get_decoder(uid).is_available]


@dataclass
class AssociationPolicy:
    """Who may associate: called AE must be ours; calling AE (and host, when given) must be allowed."""

    ae_title: str
    peers: PeersConfig
    _recent: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, called_ae: str, calling_ae: str, host: str, *, busy: bool = False,
               peer_full: bool = False, contexts: int = 1) -> tuple[int, int, int] | None:
        """None to accept, else the A-ASSOCIATE-RJ (result, source, reason) to send.

        ``contexts``: presentation contexts proposed; past :data:`MAX_PRESENTATION_CONTEXTS` the
        request is malformed and refused first. ``busy``: ``node.max_associations`` are in use;
        ``peer_full``: this calling AE and host hold ``peers.max_associations_per_peer`` of them.
        Both are checked after the AE titles and before the rate, so a sender turned away because
        the node is full is not also charged a try.
        """
        if contexts > MAX_PRESENTATION_CONTEXTS:
            return REJECT_ABSURD
        if called_ae.strip() != self.ae_title:
            return REJECT_CALLED_AE
        if not self.peers.allow_any and not any(
            (rule.ae_title == "*" or rule.ae_title == calling_ae.strip())
            and (rule.host is None or rule.host == host)
            for rule in self.peers.allowed
        ):
            return REJECT_CALLING_AE
        if busy or peer_full:
            return REJECT_BUSY
        if self.peers.rate_limit_per_min and not self._within_rate(calling_ae.strip(), host):
            return REJECT_RATE
        return None

    def _within_rate(self, calling_ae: str, host: str) -> bool:
        now = time.monotonic()
        with self._lock:
            q = self._recent.setdefault(f"{calling_ae}@{host}", deque())
            while q and now - q[0] > 60.0:
                q.popleft()
            if len(q) >= self.peers.rate_limit_per_min:
                return False
            q.append(now)
            return True


class _Tally:
    """What was turned away, counted per (source address, outcome) and reported every
    :data:`REPORT_EVERY_S` as one log line and one audit row per outcome, however many a flood made.

    Rejected associations are logged and audited one by one up to :data:`DETAILED_PER_PERIOD` a
    period (``detailed``), then only counted here: an unauthenticated peer must not be able to
    write the log (or the audit table) at the rate it can open connections.
    """

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str]] = Counter()
        self._detailed = 0
        self._lock = threading.Lock()

    def add(self, host: str, outcome: str) -> None:
        with self._lock:
            self._counts[(host, outcome)] += 1

    def detailed(self) -> bool:
        """True while this period's one-by-one budget lasts (and uses one)."""
        with self._lock:
            self._detailed += 1
            return self._detailed <= DETAILED_PER_PERIOD

    def take(self) -> Counter[tuple[str, str]]:
        with self._lock:
            counts, self._counts, self._detailed = self._counts, Counter(), 0
        return counts


@dataclass
class _AssocStats:
    started: float
    instances: int = 0
    duplicates: int = 0
    failures: int = 0
    bytes: int = 0
    cut_off: int = 0  # instances aborted while arriving for passing storage.max_instance_mb


def server_ssl_context(cfg: Config) -> ssl.SSLContext | None:
    """DICOM TLS (PS3.15 B.1): server certificate; with ``ca``, client certificates are required."""
    tls = cfg.node.tls
    if tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.certificate), str(tls.key))
    if tls.ca is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(tls.ca))
    return ctx


class Receiver:
    """The node's Storage SCP and Verification SCP on ``node.host:node.port``."""

    def __init__(self, cfg: Config, store: Store, ingest: Ingest) -> None:
        self.cfg = cfg
        self.store = store
        self.ingest = ingest
        self.policy = AssociationPolicy(cfg.node.ae_title, cfg.peers)
        self._stats: dict[int, _AssocStats] = {}
        self._stats_lock = threading.Lock()
        self._admit_lock = threading.Lock()
        # Store work (ingest, audit) runs on this fixed set of threads, never on an association's own
        # thread: the store opens one SQLite connection per thread and keeps it until it is closed, so
        # each short-lived association thread left two file descriptors behind, and past ~1000 of
        # them select() fails and the listener drops every connection (found by the fuzz tests).
        self._db = ThreadPoolExecutor(max_workers=cfg.node.max_associations + 1, thread_name_prefix="receiver-db")
        self.server: ThreadedAssociationServer | None = None
        self.ae = self._build_ae()
        self.arrivals = Arrivals(ingest.spool.tmp, ingest.max_instance_bytes, on_refused=self._on_cut_off)
        install(self.ae, self.arrivals)
        self.turned_away = _Tally()
        self.gate = guard.ConnectionGate(
            timeout_s=cfg.node.acse_timeout_s, max_pending=cfg.node.max_pending_connections,
            max_per_host=cfg.node.max_pending_per_host, on_event=self.turned_away.add,
        )
        self._watching = threading.Event()
        self._watch: threading.Thread | None = None
        self.counters = {"accepted": 0, "rejected": 0, "instances": 0, "bytes": 0}

    def _build_ae(self) -> AE:
        node = self.cfg.node
        ae = AE(ae_title=node.ae_title)
        # node.max_associations is enforced in _on_requested. pynetdicom's own count also takes in
        # connections that never sent an A-ASSOCIATE-RQ (a port probe, a health check), each held
        # until the ACSE timeout, so a few probes would turn real senders away; keep it out of the way.
        ae.maximum_associations = _PYNETDICOM_CEILING
        ae.maximum_pdu_size = node.max_pdu_size
        ae.network_timeout = node.network_timeout_s
        ae.acse_timeout = node.acse_timeout_s
        ae.dimse_timeout = node.dimse_timeout_s
        ae.require_called_aet = True
        syntaxes = transfer_syntaxes()
        ae.add_supported_context(Verification)
        for uid in CHEST_STORAGE_CLASSES:
            ae.add_supported_context(uid, syntaxes)
        return ae

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Start listening in the background; returns the bound (host, port). An OSError names the
        DICOM address, as the admin server's names its own."""
        self.sweep_orphans()
        guard.install_log_budget()
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
        ]
        try:
            server = guard.start_server(
                self.ae, (self.cfg.node.host, self.cfg.node.port), self.gate, evt_handlers=handlers,
                ssl_context=server_ssl_context(self.cfg), proxy_sources=self.cfg.node.proxy_protocol,
            )
        except OSError as exc:
            raise OSError(exc.errno, f"DICOM {self.cfg.node.host}:{self.cfg.node.port}: {exc.strerror}") from None
        self.server = server
        if self.cfg.node.proxy_protocol:
            log.info("PROXY protocol header required from", extra={"proxy_protocol": self.cfg.node.proxy_protocol})
        self._watching.set()
        self._watch = threading.Thread(target=self._watch_loop, name="receiver-watch", daemon=True)
        self._watch.start()
        host, port = server.server_address[:2]
        return str(host), int(port)

    def sweep_orphans(self) -> int:
        """Remove spool files that have no instance row (:meth:`Spool.sweep_orphans`); returns how many.

        Run before listening, so no C-STORE of this node is between a link and its commit; on a spool
        shared with other nodes only the files :meth:`Spool.abandoned` allows.
        """
        removed = self.ingest.spool.sweep_orphans(self.store.has_instance)
        if removed:
            log.warning("removed spool files with no instance row (a commit that never happened)",
                        extra={"files": removed})
        return removed

    def stop(self, grace_s: float = 30.0) -> int:
        """Stop accepting, let in-flight associations finish (up to ``grace_s``), abort the rest.

        Returns the number of associations aborted.
        """
        server = self.server
        if server is None:
            return 0
        server.shutdown()  # closes the listening socket; running associations keep their threads
        deadline = time.monotonic() + grace_s
        while any(a.is_established for a in server.active_associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [a for a in server.active_associations if a.is_established]
        for assoc in server.active_associations:
            assoc.abort()
        deadline = time.monotonic() + 2.0  # let the aborted ones write their audit rows
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        self._watching.clear()
        if self._watch is not None:
            self._watch.join(5.0)
        self._report_turned_away()
        self._db.shutdown(wait=True)
        self.server = None
        return len(left)

    def _watch_loop(self) -> None:
        """Once a second, the gate's safety net; every REPORT_EVERY_S, what it turned away."""
        last = time.monotonic()
        while self._watching.is_set():
            time.sleep(1.0)
            self.gate.expire()
            if time.monotonic() - last >= REPORT_EVERY_S:
                last = time.monotonic()
                self._report_turned_away()

    def _report_turned_away(self) -> None:
        dropped = guard.LOG_BUDGET.take_dropped()
        if dropped:
            log.warning("pynetdicom log lines dropped (guard.LogBudget)", extra={"lines": dropped})
        counts = self.turned_away.take()
        for outcome in sorted({o for (_h, o) in counts}):
            by_host = Counter({h: n for (h, o), n in counts.items() if o == outcome})
            top = dict(by_host.most_common(16))
            detail = {"connections": sum(by_host.values()), "hosts": len(by_host), "by_host": top,
                      "seconds": REPORT_EVERY_S}
            log.warning("connections turned away", extra={"outcome": outcome, "connections": detail["connections"],
                                                          "hosts": len(by_host), "peer_host": next(iter(top))})
            self._audit("connection", "", next(iter(top)), outcome, detail)

    # -- handlers ------------------------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        self.arrivals.reap()
        assoc = event.assoc
        rq = cast(A_ASSOCIATE, assoc.requestor.primitive)
        called = str(rq.called_ae_title)
        calling = str(rq.calling_ae_title)
        host = str(assoc.requestor.address)
        contexts = len(rq.presentation_context_definition_list)
        with self._admit_lock:
            in_use = self._in_use(assoc)
            busy = len(in_use) >= self.cfg.node.max_associations
            per_peer = self.cfg.peers.max_associations_per_peer
            peer_full = per_peer > 0 and sum(
                1 for a in in_use if _calling(a) == calling.strip() and str(a.requestor.address) == host
            ) >= per_peer
            decision = self.policy.decide(called, calling, host, busy=busy, peer_full=peer_full, contexts=contexts)
            if decision is None:
                return
        result, source, reason = decision
        why = ("too many presentation contexts" if contexts > MAX_PRESENTATION_CONTEXTS
               else "peers.max_associations_per_peer" if decision == REJECT_BUSY and not busy
               else "node.max_associations" if decision == REJECT_BUSY else None)
        detail: dict[str, Any] = {"called_ae": called.strip()[:16], "result": result, "source": source,
                                  "reason": reason, "presentation_contexts": contexts}
        if why:
            detail["limit"] = why
        self.counters["rejected"] += 1
        if self.turned_away.detailed():
            log.warning("association rejected", extra={"calling_ae": calling.strip()[:16], "peer_host": host,
                                                        **detail, "log_lines_dropped": guard.LOG_BUDGET.dropped(assoc)})
            self._audit("association", calling[:16], host, "rejected", detail)
        else:  # past this period's budget: counted, reported with the next summary
            self.turned_away.add(host, f"association_rejected:{why or _REASONS.get(decision, str(reason))}")
        # A peer that goes on sending after the A-ASSOCIATE-RJ is dropped after REJECT_LINGER_S.
        assoc.dul.artim_timer.timeout = min(REJECT_LINGER_S, self.cfg.node.acse_timeout_s)
        assoc.acse.send_reject(result, source, reason)
        assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL flush the A-ASSOCIATE-RJ

    def _in_use(self, current: Association) -> list[Association]:
        """Inbound associations other than ``current`` that sent an A-ASSOCIATE-RQ and have not ended.

        A connection that never sent a request has no primitive yet and does not count; nor does
        one that was rejected, aborted or released (its thread may linger a moment).
        """
        server = self.server
        if server is None:
            return []
        return [
            a for a in server.active_associations
            if a is not current and a.is_acceptor and a.requestor.primitive is not None
            and not (a.is_rejected or a.is_aborted or a.is_released)
        ]

    def _on_established(self, event: evt.Event) -> None:
        self.gate.release(guard.raw_socket(event.assoc), established=True)
        self.counters["accepted"] += 1
        with self._stats_lock:
            self._stats[id(event.assoc)] = _AssocStats(started=time.time())

    def _on_echo(self, event: evt.Event) -> int:
        return 0x0000

    def _on_store(self, event: evt.Event) -> int:
        assoc: Association = event.assoc
        calling = str(assoc.requestor.ae_title).strip()
        request = cast(C_STORE, event.request)
        path = Path(event.dataset_path)  # written by arriving.Arrivals as the data set came in
        self.arrivals.taken(assoc, path)
        sop_class = str(request.AffectedSOPClassUID)
        abstract = str(event.context.abstract_syntax)
        if sop_class != abstract or sop_class not in CHEST_STORAGE_CLASSES:
            # pynetdicom picks the service by the command's SOP class, not by the context it came
            # on: a CT image on the Verification context, or a CR context's command naming CT,
            # reached this handler. PS3.7 §9.1.1.1: the SOP class must be the context's (PS3.4 B.2.3).
            path.unlink(missing_ok=True)
            log.warning("C-STORE refused", extra={"sop_instance_uid": str(request.AffectedSOPInstanceUID),
                                                  "status": f"0x{SOP_CLASS_NOT_SUPPORTED:04X}",
                                                  "reason": "SOP class is not the presentation context's"
                                                  if sop_class != abstract else "SOP class is not accepted",
                                                  "sop_class_uid": sop_class[:64], "context_uid": abstract,
                                                  "calling_ae": calling})
            self._count(assoc, failures=1)
            return SOP_CLASS_NOT_SUPPORTED
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # cut off for its size while arriving; the association is aborted
            return 0xA700
        outcome = self._db.submit(
            self.ingest.receive, path, sop_class=sop_class,
            sop_instance=str(request.AffectedSOPInstanceUID), transfer_syntax=str(event.context.transfer_syntax),
            calling_ae=calling, peer_host=str(assoc.requestor.address),
        ).result()
        if outcome.stored:
            self._count(assoc, instances=1, bytes=size)
        elif outcome.duplicate:
            self._count(assoc, duplicates=1)
        elif outcome.status:
            self._count(assoc, failures=1)
        if outcome.stored:
            self.counters["instances"] += 1
            self.counters["bytes"] += size
        return outcome.status

    def _count(self, assoc: Association, **add: int) -> None:
        with self._stats_lock:
            st = self._stats.get(id(assoc))
            if st is not None:
                for key, n in add.items():
                    setattr(st, key, getattr(st, key) + n)

    def _on_cut_off(self, assoc: Association, size: int) -> None:
        self._count(assoc, cut_off=1, failures=1)

    def _on_conn_close(self, event: evt.Event) -> None:
        self.arrivals.ended(event.assoc)  # a connection lost mid-instance: remove the partial file

    def _on_closed(self, event: evt.Event) -> None:
        self.arrivals.ended(event.assoc)
        with self._stats_lock:
            st = self._stats.pop(id(event.assoc), None)
        if st is None:
            return
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        requestor = event.assoc.requestor
        detail = {"instances": st.instances, "duplicates": st.duplicates, "failures": st.failures,
                  "bytes": st.bytes, "seconds": round(time.time() - st.started, 3)} \
            | ({"cut_off_over_max_instance_mb": st.cut_off} if st.cut_off else {})
        # The one log line of an association (pynetdicom's own are capped by guard.LogBudget).
        log.info(f"association {outcome}", extra={"calling_ae": str(requestor.ae_title).strip(),
                                                   "peer_host": str(requestor.address), **detail,
                                                   "log_lines_dropped": guard.LOG_BUDGET.dropped(event.assoc)})
        self._audit("association", str(requestor.ae_title), str(requestor.address), outcome, detail)

    def _audit(self, event: str, ae: str, host: str, outcome: str, detail: dict[str, Any]) -> None:
        try:
            self._db.submit(self.store.audit, event, peer_ae=ae.strip(), peer_host=host, outcome=outcome,
                            detail=detail).result()
        except Exception:  # the audit trail must never break an association
            log.exception("audit write failed")


_REASONS = {REJECT_CALLED_AE: "called_ae_not_recognised", REJECT_CALLING_AE: "calling_ae_not_recognised",
            REJECT_RATE: "peers.rate_limit_per_min"}


def _calling(assoc: Association) -> str:
    rq = assoc.requestor.primitive
    return str(rq.calling_ae_title).strip() if rq is not None else ""
