"""The receiver: association policy, C-ECHO and C-STORE handlers (pynetdicom event handlers).

All of the policy an admin configures sits here: which SOP classes and transfer syntaxes are
negotiated, who may associate (called AE, calling AE and host), how many associations at once, the
maximum PDU, TLS. What happens to a received instance is :mod:`dicom_node.ingest`.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import deque
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

    def decide(self, called_ae: str, calling_ae: str, host: str, *, busy: bool = False) -> tuple[int, int, int] | None:
        """None to accept, else the A-ASSOCIATE-RJ (result, source, reason) to send.

        ``busy``: ``node.max_associations`` are already in use. It is checked after the AE titles and
        before the rate, so a sender turned away because the node is full is not also charged a try.
        """
        if called_ae.strip() != self.ae_title:
            return REJECT_CALLED_AE
        if not self.peers.allow_any and not any(
            (rule.ae_title == "*" or rule.ae_title == calling_ae.strip())
            and (rule.host is None or rule.host == host)
            for rule in self.peers.allowed
        ):
            return REJECT_CALLING_AE
        if busy:
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
            server = self.ae.start_server(
                (self.cfg.node.host, self.cfg.node.port), block=False, evt_handlers=handlers,
                ssl_context=server_ssl_context(self.cfg),
            )
        except OSError as exc:
            raise OSError(exc.errno, f"DICOM {self.cfg.node.host}:{self.cfg.node.port}: {exc.strerror}") from None
        assert isinstance(server, ThreadedAssociationServer)
        # stop() waits for established associations itself; socketserver's join of every request
        # thread would also wait out rejected ones that linger until their ARTIM timer expires.
        server.block_on_close = False
        self.server = server
        host, port = server.server_address[:2]
        return str(host), int(port)

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
        self._db.shutdown(wait=True)
        self.server = None
        return len(left)

    # -- handlers ------------------------------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        self.arrivals.reap()
        assoc = event.assoc
        rq = cast(A_ASSOCIATE, assoc.requestor.primitive)
        called = str(rq.called_ae_title)
        calling = str(rq.calling_ae_title)
        host = str(assoc.requestor.address)
        with self._admit_lock:
            busy = self._in_use(assoc) >= self.cfg.node.max_associations
            decision = self.policy.decide(called, calling, host, busy=busy)
            if decision is None:
                return
        result, source, reason = decision
        log.warning("association rejected", extra={"calling_ae": calling.strip(), "called_ae": called.strip(),
                                                    "peer_host": host, "reason": reason})
        self.counters["rejected"] += 1
        self._audit("association", calling, host, "rejected", {"called_ae": called.strip(), "reason": reason})
        assoc.acse.send_reject(result, source, reason)
        assoc.kill()  # as pynetdicom does after its own rejections: lets the DUL flush the A-ASSOCIATE-RJ

    def _in_use(self, current: Association) -> int:
        """Inbound associations other than ``current`` that sent an A-ASSOCIATE-RQ and have not ended.

        A connection that never sent a request has no primitive yet and does not count; nor does
        one that was rejected, aborted or released (its thread may linger a moment).
        """
        server = self.server
        if server is None:
            return 0
        return sum(
            1 for a in server.active_associations
            if a is not current and a.is_acceptor and a.requestor.primitive is not None
            and not (a.is_rejected or a.is_aborted or a.is_released)
        )

    def _on_established(self, event: evt.Event) -> None:
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
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # cut off for its size while arriving; the association is aborted
            return 0xA700
        outcome = self._db.submit(
            self.ingest.receive, path, sop_class=str(request.AffectedSOPClassUID),
            sop_instance=str(request.AffectedSOPInstanceUID), transfer_syntax=str(event.context.transfer_syntax),
            calling_ae=calling, peer_host=str(assoc.requestor.address),
        ).result()
        with self._stats_lock:
            st = self._stats.get(id(assoc))
            if st is not None:
                if outcome.stored:
                    st.instances += 1
                    st.bytes += size
                elif outcome.duplicate:
                    st.duplicates += 1
                elif outcome.status:
                    st.failures += 1
        if outcome.stored:
            self.counters["instances"] += 1
            self.counters["bytes"] += size
        return outcome.status

    def _on_cut_off(self, assoc: Association, size: int) -> None:
        with self._stats_lock:
            st = self._stats.get(id(assoc))
            if st is not None:
                st.cut_off += 1
                st.failures += 1

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
        self._audit(
            "association", str(requestor.ae_title), str(requestor.address), outcome,
            {"instances": st.instances, "duplicates": st.duplicates, "failures": st.failures,
             "bytes": st.bytes, "seconds": round(time.time() - st.started, 3)}
            | ({"cut_off_over_max_instance_mb": st.cut_off} if st.cut_off else {}),
        )

    def _audit(self, event: str, ae: str, host: str, outcome: str, detail: dict[str, Any]) -> None:
        try:
            self._db.submit(self.store.audit, event, peer_ae=ae.strip(), peer_host=host, outcome=outcome,
                            detail=detail).result()
        except Exception:  # the audit trail must never break an association
            log.exception("audit write failed")
