"""Outbound associations: C-ECHO of peers and C-STORE of files (PS3.4 Annex A and B, SCU role).

Used by ``dicom-node echo`` and ``dicom-node send``, and by results delivery and the periodic echo
of each DIMSE destination (:mod:`dicom_node.delivery`). One association carries a whole batch; each
file is sent as it is stored (no re-encoding), so a JPEG file stays JPEG.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import AddressInformation, AssociationSocket

from dicom_node.config import Destination

log = logging.getLogger("dicom_node.scu")

_ADDR_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class Peer:
    """A remote application entity: AE title, host and port (and whether to use DICOM TLS)."""

    ae_title: str
    host: str
    port: int
    tls: bool = False
    tls_ca: Path | None = None           # CA file that signs the peer's certificate; None: the system's
    tls_certificate: Path | None = None  # our client certificate, for peers that require one
    tls_key: Path | None = None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def peer_for(dest: Destination) -> Peer:
    """The peer a configured DIMSE destination names, with its DICOM TLS settings."""
    if dest.ae_title is None or dest.host is None or dest.port is None:
        raise ValueError(f"destination {dest.name!r} is not a DIMSE destination")
    return Peer(dest.ae_title, dest.host, dest.port, dest.tls, dest.tls_ca, dest.tls_certificate, dest.tls_key)


def parse_address(text: str) -> Peer:
    """Parse ``AE@HOST:PORT``; raise ValueError with one line saying what is expected."""
    m = _ADDR_RE.match(text.strip())
    if not m or not (1 <= int(m["port"]) <= 65535):
        raise ValueError(f"{text!r} is not AE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
    return Peer(m["ae"], m["host"].strip("[]"), int(m["port"]))


@dataclass
class EchoResult:
    ok: bool
    status: int | None
    ms: float
    error: str | None = None


@dataclass
class SendReport:
    """What one ``send`` did: per-file failures keep the status the peer returned."""

    sent: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def tls_client_context(ca: Path | None, certificate: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS as a client, for DICOM TLS (PS3.15 B.1) and HTTPS alike: verify the peer against ``ca``
    (else the system's CAs) and its host name; present our certificate when one is configured."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        ctx.load_cert_chain(str(certificate), str(key) if key is not None else None)
    return ctx


def client_ssl_context(peer: Peer) -> ssl.SSLContext:
    """DICOM TLS as a client (PS3.15 B.1) with the peer's ``tls_ca``, ``tls_certificate`` and ``tls_key``."""
    return tls_client_context(peer.tls_ca, peer.tls_certificate, peer.tls_key)


def _client_ssl(peer: Peer, ssl_context: ssl.SSLContext | None) -> tuple[ssl.SSLContext, str] | None:
    if ssl_context is not None:
        return ssl_context, peer.host
    if peer.tls:
        return client_ssl_context(peer), peer.host
    return None


_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _PromptSocket(AssociationSocket):
    """An association socket that neither holds back what we send nor delays what we acknowledge.

    A DIMSE exchange is a string of small writes answered by small writes: pynetdicom sends a
    C-STORE's command and its data set as separate PDUs, and DCMTK peers (Orthanc, storescp) write a
    PDU's header and body separately with Nagle's algorithm on. Each time one side holds its second
    write until the first is acknowledged, the other side's delayed ACK (40 ms on Linux) stalls it:
    measured, about 90 ms per C-STORE of a small SR or GSPS to Orthanc on loopback, most of the
    time a batch of results takes to deliver. TCP_NODELAY stops us holding back our writes;
    TCP_QUICKACK, renewed before each read because Linux clears it, makes us acknowledge at once so
    the peer's Nagle never waits on us. Both only change when segments leave, never what is sent.
    """

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        sock = super()._create_socket(address)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def recv(self, nr_bytes: int) -> bytearray:
        if _TCP_QUICKACK is not None and self.socket is not None:
            try:
                self.socket.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
            except OSError:  # closed meanwhile: the read below reports it as pynetdicom expects
                pass
        return super().recv(nr_bytes)


class _PromptAE(AE):
    """An AE whose outbound associations use :class:`_PromptSocket` (``AE._create_socket`` is where
    pynetdicom 3.0, pinned in requirements/base.txt, makes a requestor's socket)."""

    def _create_socket(self, assoc: Association, address: AddressInformation,
                       tls_args: tuple[ssl.SSLContext, str] | None) -> AssociationSocket:
        sock = _PromptSocket(assoc, address=address)
        sock.tls_args = tls_args
        return sock


def _ae(calling_ae: str, timeout_s: float) -> AE:
    ae = _PromptAE(ae_title=calling_ae)
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    return ae


def echo(peer: Peer, *, calling_ae: str = "DICOM_NODE", timeout_s: float = 10.0,
         ssl_context: ssl.SSLContext | None = None) -> EchoResult:
    """C-ECHO ``peer`` (Verification SOP Class, PS3.4 Annex A)."""
    ae = _ae(calling_ae, timeout_s)
    ae.add_requested_context(Verification)
    t0 = time.perf_counter()
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=_client_ssl(peer, ssl_context))
    if not assoc.is_established:
        return EchoResult(False, None, (time.perf_counter() - t0) * 1000, _why_not(assoc))
    try:
        rsp = assoc.send_c_echo()
        status = int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()
    ms = (time.perf_counter() - t0) * 1000
    if status is None:
        return EchoResult(False, None, ms, "no response (timeout or abort)")
    return EchoResult(status == 0, status, ms, None if status == 0 else f"status 0x{status:04X}")


def _why_not(assoc: object) -> str:
    if getattr(assoc, "is_rejected", False):
        return "association rejected by the peer"
    if getattr(assoc, "is_aborted", False):
        return "association aborted (peer unreachable or refused)"
    return "association could not be established (peer unreachable or timed out)"


def iter_dicom_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files given, and every file under folders given (sorted, hidden files skipped)."""
    for p in paths:
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    yield f
        else:
            yield p


def contexts_for(datasets: Iterable[Dataset]) -> list[PresentationContext]:
    """One presentation context per (SOP class, transfer syntax) pair found, at most 128 (PS3.8 §9.3.2.2)."""
    pairs: dict[tuple[str, str], None] = {}
    for ds in datasets:
        pairs[(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))] = None
    if len(pairs) > 128:
        raise ValueError(f"{len(pairs)} SOP class / transfer syntax pairs: at most 128 fit one association")
    return [build_context(cls, [ts]) for cls, ts in pairs]


def send_datasets(peer: Peer, datasets: Sequence[tuple[str, Dataset | Path]], *, calling_ae: str = "DICOM_NODE",
                  timeout_s: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                  progress: Callable[[str, int | None], None] | None = None) -> SendReport:
    """C-STORE each ``(label, dataset or file)`` over one association, in order (PS3.4 Annex B).

    A file is read only when its turn comes, so a large folder is never all in memory. Statuses
    other than Success or a warning (0xB000, 0xB007, 0xB006) count as failures.
    """
    report = SendReport()
    if not datasets:
        return report
    ae = _ae(calling_ae, timeout_s)
    ae.requested_contexts = contexts_for(
        dcmread(item, stop_before_pixels=True) if isinstance(item, Path) else item for _, item in datasets
    )
    t0 = time.perf_counter()
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=_client_ssl(peer, ssl_context),
                         max_pdu=0)
    if not assoc.is_established:
        reason = _why_not(assoc)
        report.failed.extend((label, reason) for label, _ in datasets)
        report.seconds = time.perf_counter() - t0
        return report
    try:
        for label, item in datasets:
            ds = dcmread(item) if isinstance(item, Path) else item
            if not assoc.is_established:
                report.failed.append((label, "association lost"))
                continue
            try:
                rsp = assoc.send_c_store(ds)
            except ValueError as exc:  # no accepted context for this SOP class / transfer syntax
                report.failed.append((label, str(exc).splitlines()[0][:200]))
                if progress:
                    progress(label, None)
                continue
            status = int(rsp.Status) if "Status" in rsp else None
            if status is not None and (status == 0 or status in (0xB000, 0xB006, 0xB007)):
                report.sent += 1
                report.bytes += len(ds.PixelData) if "PixelData" in ds else 0
            else:
                report.failed.append((label, "no response" if status is None else f"status 0x{status:04X}"))
            if progress:
                progress(label, status)
    finally:
        if assoc.is_established:
            assoc.release()
    report.seconds = time.perf_counter() - t0
    return report


def send_files(peer: Peer, paths: Sequence[Path], *, calling_ae: str = "DICOM_NODE", timeout_s: float = 30.0,
               ssl_context: ssl.SSLContext | None = None,
               progress: Callable[[str, int | None], None] | None = None) -> SendReport:
    """Read DICOM files (folders recursively) and C-STORE them as they are, over one association."""
    datasets: list[tuple[str, Dataset | Path]] = []
    skipped: list[tuple[str, str]] = []
    for f in iter_dicom_files(paths):
        try:
            ds = dcmread(f, stop_before_pixels=True)
            _ = ds.SOPClassUID, ds.SOPInstanceUID, ds.file_meta.TransferSyntaxUID
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            skipped.append((str(f), f"not a DICOM instance: {type(exc).__name__}"))
            if progress:
                progress(str(f), None)
            continue
        datasets.append((str(f), f))
    report = send_datasets(peer, datasets, calling_ae=calling_ae, timeout_s=timeout_s,
                           ssl_context=ssl_context, progress=progress)
    report.skipped.extend(skipped)
    return report

