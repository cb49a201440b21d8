"""STOW-RS out: results delivered to a DICOMweb destination (PS3.18 §10.5, Store Transaction).

One ``POST {url}/studies`` carries a batch of outbox files as ``multipart/related;
type="application/dicom"``, each part the file as it lies in the outbox (no re-encoding). The body is
streamed from disk with its length computed beforehand, so a large Secondary Capture is never held
in memory. The Store Instances Response (PS3.18 §10.5.3, Annex I) says per instance whether it was
stored: its ReferencedSOPSequence (0008,1199) lists the stored ones, its FailedSOPSequence
(0008,1198) the others with a FailureReason (0008,1197).

What is worth retrying (:func:`retryable_reason` and :func:`_http_failure`):

- Retried with back-off: no connection, a timeout or a failed TLS handshake (the peer may be down or
  restarting); HTTP 408, 429 and every 5xx (PS3.18 §10.5.3: the origin server is busy or failed, not
  the request); FailureReason 0xA7xx "out of resources" and 0x0110 "processing failure" (a refusal
  of the peer's own making that may pass); an instance the response neither stores nor fails (no
  reason given: Orthanc answers so when its storage is full).
- Parked at once, as a failed delivery with its reason: every other 4xx (400, 401, 403, 404, 409
  without a per-instance reason, 413 for a single instance, 415): the same request gets the same
  answer until an administrator changes the destination or the peer, and a wrong password retried
  eight times can lock an account. FailureReason 0xA9xx "data set does not match SOP class",
  0xC000-0xCFFF "cannot understand" (0xC122: transfer syntax not supported), 0x0122 "SOP class not
  supported", 0x0124 "not authorized": the peer refuses this object as it is, and our results are
  never rebuilt under the same UID. ``dicom-node deliveries --retry`` sends a parked delivery again.

A 413 (payload too large) for several instances splits the batch in halves and sends each again.
A FailureReason 0x0111 (duplicate SOP instance) counts as delivered: a result keeps its UID and its
bytes, so the peer holds it already (an earlier attempt whose answer was lost).
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from dicom_node.config import Destination
from dicom_node.scu import EchoResult, tls_client_context

log = logging.getLogger("dicom_node.dicomweb.stow_out")

_CHUNK = 1 << 20                 # read outbox files 1 MiB at a time
_MAX_RESPONSE = 8 << 20          # a Store Instances Response for a batch is a few kB
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_FAILURE_REASON = "00081197"
_RETRYABLE_HTTP = frozenset({408, 429})
_DUPLICATE = 0x0111


@dataclass(frozen=True)
class Item:
    """One outbox file to store: a label to report it by, its SOP Instance UID and where it lies."""

    label: str
    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class Failure:
    """Why an instance was not stored (one line), and whether trying again later may succeed."""

    reason: str
    retryable: bool


@dataclass
class StowReport:
    """What one :func:`store_instances` did, per item label."""

    delivered: list[str] = field(default_factory=list)
    failed: dict[str, Failure] = field(default_factory=dict)
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0


def reason_meaning(code: int) -> str:
    """The meaning of a FailureReason (0008,1197) as PS3.18 Annex I and PS3.4 Annex B name it."""
    if code == 0x0110:
        return "processing failure"
    if code == 0x0122:
        return "SOP class not supported"
    if code == 0x0124:
        return "not authorized"
    if code == _DUPLICATE:
        return "duplicate SOP instance"
    if code == 0xC122:
        return "transfer syntax not supported"
    if code & 0xFF00 == 0xA700:
        return "out of resources"
    if code & 0xFF00 == 0xA900:
        return "data set does not match SOP class"
    if code & 0xF000 == 0xC000:
        return "cannot understand"
    return "failure"


def retryable_reason(code: int) -> bool:
    """Whether a per-instance FailureReason may pass on a later attempt (see the module docstring)."""
    return code == 0x0110 or code & 0xFF00 == 0xA700


def batches(items: Sequence[Item], max_bytes: int) -> Iterator[list[Item]]:
    """Consecutive items whose files add up to at most ``max_bytes`` (a larger file goes alone)."""
    batch: list[Item] = []
    size = 0
    for item in items:
        n = item.path.stat().st_size
        if batch and size + n > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        yield batch


class _Body:
    """A multipart/related body (PS3.18 §8.6.1.2, RFC 2387) read from the files as it is sent."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.boundary = uuid.uuid4().hex
        self.paths = list(paths)
        self.head = f"--{self.boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        self.tail = f"--{self.boundary}--\r\n".encode()
        self.sizes = [p.stat().st_size for p in self.paths]
        self.length = sum(len(self.head) + n + 2 for n in self.sizes) + len(self.tail)

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __iter__(self) -> Iterator[bytes]:
        for path, size in zip(self.paths, self.sizes, strict=True):
            yield self.head
            sent = 0
            with path.open("rb") as f:
                while chunk := f.read(min(_CHUNK, size - sent)):
                    sent += len(chunk)
                    yield chunk
            if sent != size:  # outbox files never change; a short one must not shift the parts
                raise OSError(f"{path.name} changed while it was sent")
            yield b"\r\n"
        yield self.tail


def client(dest: Destination) -> httpx.Client:
    """An HTTP client for ``dest``: its credentials, its timeout, and for https its CA and our
    client certificate (the system's CAs when ``tls_ca`` is not given)."""
    assert dest.url is not None
    headers = {"Accept": "application/dicom+json"}
    if dest.token is not None:
        headers["Authorization"] = f"Bearer {dest.token.get_secret_value()}"
    auth = None
    if dest.username is not None and dest.password is not None:
        auth = httpx.BasicAuth(dest.username, dest.password.get_secret_value())
    verify: ssl.SSLContext | bool = True
    if dest.url.startswith("https:"):
        verify = tls_client_context(dest.tls_ca, dest.tls_certificate, dest.tls_key)
    return httpx.Client(headers=headers, auth=auth, verify=verify, timeout=dest.timeout_s,
                        follow_redirects=False, trust_env=False)


def store_instances(dest: Destination, items: Sequence[Item]) -> StowReport:
    """Store ``items`` at ``dest`` by STOW-RS, one POST per ``dest.max_request_mb`` of files
    (PS3.18 §10.5); every item ends delivered or failed with its reason."""
    report = StowReport()
    t0 = time.perf_counter()
    with client(dest) as http:
        for batch in batches(items, dest.max_request_mb * 2**20):
            _post(http, dest, batch, report)
    report.seconds = time.perf_counter() - t0
    return report


def _post(http: httpx.Client, dest: Destination, batch: list[Item], report: StowReport) -> None:
    body = _Body([i.path for i in batch])
    report.requests += 1
    try:
        with http.stream("POST", f"{dest.url}/studies", content=iter(body),
                         headers={"Content-Type": body.content_type, "Content-Length": str(body.length)}) as rsp:
            answer = _read_capped(rsp)
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        failure = Failure(transport_error(exc), retryable=True)
        report.failed.update((i.label, failure) for i in batch)
        return
    if rsp.status_code == 413 and len(batch) > 1:  # too large for the peer: halve it and send again
        half = len(batch) // 2
        _post(http, dest, batch[:half], report)
        _post(http, dest, batch[half:], report)
        return
    report.bytes += body.length
    referenced, failed = _store_response(answer, rsp.headers.get("content-type", ""))
    ok = rsp.is_success
    for item in batch:
        code = failed.get(item.sop_instance_uid)
        if code is not None and code != _DUPLICATE:
            report.failed[item.label] = Failure(
                f"HTTP {rsp.status_code}: FailureReason 0x{code:04X} ({reason_meaning(code)})", retryable_reason(code))
        elif code == _DUPLICATE or (ok and item.sop_instance_uid in referenced):
            report.delivered.append(item.label)
        elif ok:
            report.failed[item.label] = Failure(
                f"HTTP {rsp.status_code}: not stored (absent from the Store Instances Response)", retryable=True)
        else:
            report.failed[item.label] = _http_failure(rsp, answer)


def _read_capped(rsp: httpx.Response) -> bytes:
    out = bytearray()
    for chunk in rsp.iter_bytes():
        out += chunk
        if len(out) > _MAX_RESPONSE:
            break
    return bytes(out[:_MAX_RESPONSE])


def _store_response(answer: bytes, content_type: str) -> tuple[set[str], dict[str, int]]:
    """The SOP Instance UIDs a Store Instances Response (PS3.18 Annex I, DICOM JSON, PS3.18 F.2)
    lists as stored, and those it lists as failed with their FailureReason."""
    if "json" not in content_type.lower() or not answer.strip():
        return set(), {}
    try:
        data: Any = json.loads(answer)
    except (ValueError, UnicodeDecodeError):
        return set(), {}
    if isinstance(data, list) and data:  # some servers answer an array holding the one data set
        data = data[0]
    if not isinstance(data, dict):
        return set(), {}
    referenced = {uid for item in _items(data, _REFERENCED_SOP_SEQUENCE)
                  if (uid := _first(item, _REFERENCED_SOP_INSTANCE_UID)) is not None}
    failed: dict[str, int] = {}
    for item in _items(data, _FAILED_SOP_SEQUENCE):
        uid, code = _first(item, _REFERENCED_SOP_INSTANCE_UID), _first(item, _FAILURE_REASON)
        if uid is not None:
            failed[str(uid)] = int(code) if isinstance(code, int) else 0xC000
    return {str(u) for u in referenced}, failed


def _items(data: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    elem = data.get(tag)
    values = elem.get("Value") if isinstance(elem, dict) else None
    return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []


def _first(item: dict[str, Any], tag: str) -> Any:
    elem = item.get(tag)
    values = elem.get("Value") if isinstance(elem, dict) else None
    return values[0] if isinstance(values, list) and values else None


def _http_failure(rsp: httpx.Response, answer: bytes) -> Failure:
    """``HTTP <code>: <the peer's reason, else its status line>``; retryable per the module docstring."""
    code = rsp.status_code
    return Failure(f"HTTP {code}: {_peer_reason(answer) or rsp.reason_phrase or 'error'}",
                   retryable=code >= 500 or code in _RETRYABLE_HTTP)


def _peer_reason(answer: bytes) -> str | None:
    """A short reason from an error body: a JSON ``Message``/``message``/``error``/``detail`` (as
    Orthanc, dcm4chee and FastAPI word it), else its first line of text; printable ASCII only."""
    text = answer[:4096].decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        found = next((data[k] for k in ("Message", "message", "error", "detail", "errorMessage")
                      if isinstance(data.get(k), str) and data[k].strip()), None)
        text = found or ""
    elif data is not None or text.startswith("<"):  # DICOM JSON or an HTML page: nothing to quote
        text = ""
    line = "".join(c for c in (text.splitlines() or [""])[0] if " " <= c <= "~").strip()
    return line[:200] or None


_VERIFY_FAILED_RE = re.compile(r"certificate verify failed: ([^(]+)")  # OpenSSL's reason, before "(_ssl.c:N)"


def transport_error(exc: BaseException) -> str:
    """A one-line name for a failure before any HTTP answer: refused, timed out, TLS (a peer
    certificate that does not verify against ``tls_ca`` said so), reset."""
    text = " ".join(str(exc).split())[:200]
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out ({type(exc).__name__})"
    untrusted = _VERIFY_FAILED_RE.search(text)
    if untrusted:
        return f"TLS failed: the peer's certificate is not trusted ({untrusted.group(1).strip()}; check tls_ca)"
    if isinstance(exc, ssl.SSLError) or "SSL" in text or "CERTIFICATE" in text.upper():
        return f"TLS failed: {text}"
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect: {text}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def probe(dest: Destination) -> EchoResult:
    """The DICOMweb counterpart of a C-ECHO: an authenticated ``GET {url}/studies?limit=1`` (QIDO-RS,
    PS3.18 §10.6), cheap for the peer; any 2xx means reachable and accepting our credentials."""
    t0 = time.perf_counter()
    try:
        with client(dest) as http:
            rsp = http.get(f"{dest.url}/studies", params={"limit": "1"})
            answer = rsp.read()[:4096]
    except (httpx.HTTPError, OSError, ssl.SSLError) as exc:
        return EchoResult(False, None, (time.perf_counter() - t0) * 1000, transport_error(exc))
    ms = (time.perf_counter() - t0) * 1000
    if rsp.is_success:
        return EchoResult(True, rsp.status_code, ms)
    return EchoResult(False, rsp.status_code, ms, _http_failure(rsp, answer).reason)

