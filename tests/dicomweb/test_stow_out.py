"""STOW-RS out (PS3.18 §10.5), for real: DCMTK storescu → dicom-node → a DICOMweb destination.

The destination is Orthanc with its DICOMweb plugin (Debian ``orthanc-dicomweb``), checked through
Orthanc's REST API: every radiograph's SR, GSPS and SC arrive once, byte for byte as the outbox holds
them. Orthanc also plays the peer that is down (stopped, then started on the same ports), the peer
whose storage is full (it answers 200 and stores nothing) and the peer that wants a password (401).
The HTTPS peer is a second dicom-node whose DICOMweb listener wants a client certificate (Debian's
Orthanc 1.10 never answers over TLS). Failures that Orthanc never answers (a FailedSOPSequence with a
reason, a 409, a 413 that splits a batch) come from a small HTTP server in this file that reads each
multipart part with pydicom and answers a real Store Instances Response over a real socket.
"""

from __future__ import annotations

import base64
import io
import json
import re
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
import yaml
from dicomweb_support import (
    assert_results_in_orthanc,
    delivered_once,
    deliveries_json,
    delivery_states,
    held,
    multipart_parts,
    orthanc_instances,
    orthanc_rest,
    outbox_files,
    query,
    wait_deliveries,
)
from test_tls import PKI, pki  # noqa: F401  (the fixture: a CA, server, client and stranger certificates)

from dicom_node.testing import (
    NodeProcess,
    OrthancProcess,
    free_port,
    missing_orthanc_dicomweb,
    require,
    storescu,
    wait_for,
)

KINDS = {"1.2.840.10008.5.1.4.1.1.88.34": "sr", "1.2.840.10008.5.1.4.1.1.11.1": "gsps",
         "1.2.840.10008.5.1.4.1.1.7": "sc"}
FAST_RETRY = {"backoff_s": 0.3, "backoff_max_s": 1.0}


def test_rsna_results_arrive_in_orthanc_by_stow_rs(node_factory: type[NodeProcess], orthanc_web: OrthancProcess,
                                                    dcmtk: None, rsna: list[Path]) -> None:
    url = orthanc_web.dicomweb_url
    node = node_factory(destinations=[{"name": "pacs-web", "url": url, "kinds": ["sr", "gsps", "sc"]}]).start()
    t0 = time.monotonic()
    assert storescu(node.port, rsna).returncode == 0
    wait_deliveries(node, {("pacs-web", "delivered"): 27})
    print(f"\nSTOW-RS: 27 results of 9 radiographs delivered {time.monotonic() - t0:.1f} s after the C-STORE")
    assert_results_in_orthanc(node, orthanc_instances(orthanc_web), rsna)
    delivered_once(node, "pacs-web")
    # What the commands show: deliveries by state, the destination by its URL, its QIDO probe.
    assert deliveries_json(node)["by_state"] == [{"destination": "pacs-web", "state": "delivered", "n": 27}]
    status = json.loads(node.cli("status", "--json").stdout)
    [dest] = status["destinations"]
    assert (dest["name"], dest["address"], dest["protocol"], dest["last_delivery_ok"]) == \
        ("pacs-web", url, "stow-rs", 1)
    assert dest["last_echo_ok"] == 1 and dest["last_echo_error"] is None
    # The audit trail names the URL where a DIMSE peer's host stands.
    assert {h for (h,) in query(node, "SELECT DISTINCT peer_host FROM audit WHERE event='delivery'")} == {url}


def test_results_wait_for_a_stopped_peer_and_arrive_once_it_is_back(
        node_factory: type[NodeProcess], orthanc_web: OrthancProcess, dcmtk: None, rsna: list[Path]) -> None:
    orthanc_web.stop()  # its ports stay assigned: started again below on the same ones
    node = node_factory(destinations=[{"name": "pacs-web", "url": orthanc_web.dicomweb_url}],
                        delivery={**FAST_RETRY, "max_attempts": 50}).start()
    assert storescu(node.port, rsna[:1]).returncode == 0
    wait_for("deliveries retrying", lambda: delivery_states(node).get(("pacs-web", "retrying")) == 3, 600)
    [(error,)] = query(node, "SELECT DISTINCT error FROM deliveries")
    assert error.startswith("cannot connect:") and "refused" in error.lower(), error
    assert query(node, "SELECT last_echo_ok FROM peer_status WHERE name='pacs-web'") == [(0,)]
    orthanc_web.start()
    wait_deliveries(node, {("pacs-web", "delivered"): 3}, 120)
    assert_results_in_orthanc(node, orthanc_instances(orthanc_web), rsna[:1])
    delivered_once(node, "pacs-web")
    [(tries,)] = query(node, "SELECT MIN(attempts) FROM deliveries")
    assert tries >= 2


def _other_patient(src: Path, dest: Path) -> Path:
    ds = pydicom.dcmread(src)
    ds.PatientID, ds.PatientName = "OTHER", "Other^Patient"
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        setattr(ds, key, pydicom.uid.generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dest, enforce_file_format=True)
    return dest


def test_a_full_peer_stores_nothing_the_deliveries_park_and_retry_sends_them(
        node_factory: type[NodeProcess], tmp_path: Path, dcmtk: None, rsna: list[Path]) -> None:
    """Orthanc with room for one patient, held by a protected one, answers 200 with no instance
    referenced: each result is 'not stored', retried, parked after max_attempts, and sent by
    ``dicom-node deliveries --retry`` once Orthanc has room."""
    why = missing_orthanc_dicomweb()
    require(why is None, why or "")
    pacs = OrthancProcess(tmp_path / "full", dicomweb=True, options={"MaximumPatientCount": 1}).start()
    try:
        other = _other_patient(rsna[1], tmp_path / "other.dcm")
        stored = orthanc_rest(pacs, "/instances", "POST", other.read_bytes())
        orthanc_rest(pacs, f"/patients/{stored['ParentPatient']}/protected", "PUT", b"1")
        node = node_factory(destinations=[{"name": "pacs-web", "url": pacs.dicomweb_url}],
                            delivery={**FAST_RETRY, "max_attempts": 2}).start()
        assert storescu(node.port, rsna[:1]).returncode == 0
        wait_deliveries(node, {("pacs-web", "failed"): 3})
        shown = deliveries_json(node)
        assert {(p["destination"], p["attempts"], p["error"]) for p in shown["parked"]} == \
            {("pacs-web", 2, "HTTP 200: not stored (absent from the Store Instances Response)")}
        assert "not stored (absent from" in " ".join(node.cli("deliveries").stdout.split())  # as read
        assert len(pacs.get("/instances")) == 1
        # Room again: the other patient goes, and the parked deliveries are sent again.
        orthanc_rest(pacs, f"/patients/{stored['ParentPatient']}", "DELETE")
        assert deliveries_json(node, "--retry")["requeued"] == 3
        wait_deliveries(node, {("pacs-web", "delivered"): 3}, 120)
        assert_results_in_orthanc(node, orthanc_instances(pacs), rsna[:1])
        delivered_once(node, "pacs-web")
    finally:
        pacs.stop()


# --- a STOW-RS origin server that refuses (PS3.18 §10.5.3), over a real socket ----------------------


@dataclass
class _Request:
    path: str
    content_length: int | None
    chunked: bool
    parts: list[bytes]


@dataclass
class _RefusingPeer:
    """Answers ``POST /<mode>/studies`` with a real Store Instances Response, per ``mode``."""

    port: int = 0
    requests: list[_Request] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    def start(self) -> _RefusingPeer:
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                length = self.headers.get("Content-Length")
                body = self.rfile.read(int(length)) if length is not None else b""
                m = re.search(r'boundary="?([^";]+)"?', self.headers.get("Content-Type", ""))
                assert m is not None and 'type="application/dicom"' in self.headers["Content-Type"]
                parts = _split_multipart(body, m.group(1).encode())
                peer.requests.append(_Request(self.path, None if length is None else int(length),
                                              "chunked" in self.headers.get("Transfer-Encoding", ""), parts))
                status, answer = _answer(self.path.split("/")[1], parts, f"http://127.0.0.1:{peer.port}")
                data = json.dumps(answer).encode() if answer is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def url(self, mode: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mode}"


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The payloads of a multipart/related body (RFC 2046 §5.1), strictly: every part's headers
    name application/dicom, and the closing delimiter ends the body."""
    chunks = body.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n", "malformed multipart framing"
    parts = []
    for chunk in chunks[1:-1]:
        head, _, payload = chunk.partition(b"\r\n\r\n")
        assert head.strip().lower() == b"content-type: application/dicom", head
        assert payload.endswith(b"\r\n")
        parts.append(payload[:-2])
    return parts


def _sop(uid: str, cls: str, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081150": {"vr": "UI", "Value": [cls]}, "00081155": {"vr": "UI", "Value": [uid]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def _answer(mode: str, parts: list[bytes], base: str) -> tuple[int, dict[str, Any] | None]:
    """``refuse-sr``: 202, the SR failed 0x0122 and the others stored; ``conflict``: 409, all failed
    0xA900; ``busy``: 202, all failed 0xA700 (out of resources); ``small``: 413 for more than one
    part, else stored; ``unavailable``: 503 with no body."""
    if mode == "unavailable" or (mode == "small" and len(parts) > 1):
        return (503 if mode == "unavailable" else 413), None
    stored, failed = [], []
    for raw in parts:
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
        uid, cls = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
        reason = {"refuse-sr": 0x0122 if KINDS.get(cls) == "sr" else None, "conflict": 0xA900,
                  "busy": 0xA700}.get(mode)
        (failed if reason is not None else stored).append(_sop(uid, cls, reason))
    response: dict[str, Any] = {"00081190": {"vr": "UR", "Value": [f"{base}/{mode}/studies"]}}
    if stored:
        response["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        response["00081198"] = {"vr": "SQ", "Value": failed}
    return (409 if mode == "conflict" else 202 if failed else 200), response


@pytest.fixture
def refusing_peer() -> Iterator[_RefusingPeer]:
    peer = _RefusingPeer().start()
    yield peer
    peer.stop()


def test_refusals_in_the_store_instances_response_are_failed_deliveries_with_their_reason(
        node_factory: type[NodeProcess], refusing_peer: _RefusingPeer, orthanc_web: OrthancProcess,
        dcmtk: None, rsna: list[Path]) -> None:
    modes = ("refuse-sr", "conflict", "busy", "small", "unavailable")
    dests = [{"name": m, "url": refusing_peer.url(m)} for m in modes]
    dests[modes.index("small")]["max_request_mb"] = 1
    dests.append({"name": "wrong-path", "url": f"{orthanc_web.http_url}/no-dicom-web-here"})
    node = node_factory(destinations=dests, delivery={**FAST_RETRY, "max_attempts": 3}).start()
    assert storescu(node.port, rsna[:1]).returncode == 0
    wait_deliveries(node, {("refuse-sr", "delivered"): 2, ("refuse-sr", "failed"): 1, ("conflict", "failed"): 3,
                        ("busy", "failed"): 3, ("small", "delivered"): 3, ("unavailable", "failed"): 3,
                        ("wrong-path", "failed"): 3})
    outbox = outbox_files(node)
    parked = {(p["destination"], outbox[p["result_uid"]][0]): (p["attempts"], p["error"])
              for p in deliveries_json(node)["parked"]}
    assert parked == {
        # refused for good: parked at the first attempt
        ("refuse-sr", "sr"): (1, "HTTP 202: FailureReason 0x0122 (SOP class not supported)"),
        **{("conflict", k): (1, "HTTP 409: FailureReason 0xA900 (data set does not match SOP class)")
           for k in ("sr", "gsps", "sc")},
        **{("wrong-path", k): (1, "HTTP 404: Unknown resource") for k in ("sr", "gsps", "sc")},
        # worth retrying: parked after delivery.max_attempts
        **{("busy", k): (3, "HTTP 202: FailureReason 0xA700 (out of resources)") for k in ("sr", "gsps", "sc")},
        **{("unavailable", k): (3, "HTTP 503: Service Unavailable") for k in ("sr", "gsps", "sc")},
    }
    by_path: dict[str, list[_Request]] = {}
    for r in refusing_peer.requests:
        by_path.setdefault(r.path, []).append(r)
    # Each request has its length (streamed, not chunked), and its parts are the outbox files as they are.
    files = {p.read_bytes() for _kind, p in outbox.values()}
    for r in refusing_peer.requests:
        assert r.content_length is not None and not r.chunked
        assert all(part in files for part in r.parts)
    # One POST per destination per batch: the three results of a radiograph go together ...
    assert [len(r.parts) for r in by_path["/refuse-sr/studies"]] == [3]
    assert [len(r.parts) for r in by_path["/busy/studies"]] == [3, 3, 3]
    # ... unless the batch is larger than max_request_mb (then split by size), or the peer says 413.
    small = [len(r.parts) for r in by_path["/small/studies"]]
    assert sum(n for n in small if n == 1) == 3 and len(small) >= 3, small
    # The refusing peer kept the SR out, the other two arrived in it byte for byte.
    sent_ok = [p for r in by_path["/refuse-sr/studies"] for p in r.parts]
    assert {KINDS[str(pydicom.dcmread(io.BytesIO(p), stop_before_pixels=True).SOPClassUID)] for p in sent_ok} \
        == {"sr", "gsps", "sc"}
    assert node.proc is not None and node.proc.poll() is None, "the node must keep serving"


# --- credentials and HTTPS --------------------------------------------------------------------------


PASSWORD = "right-horse-battery-staple"
WRONG = "wrong-horse-battery-staple"


def test_credentials_deliver_and_a_wrong_password_parks_at_once(
        node_factory: type[NodeProcess], tmp_path: Path, dcmtk: None, rsna: list[Path]) -> None:
    """Orthanc with authentication (HTTP Basic). HTTPS is tested against a second node (below): Debian's
    Orthanc 1.10.1 completes the TLS handshake and then closes every connection without an answer."""
    why = missing_orthanc_dicomweb()
    require(why is None, why or "")
    pacs = OrthancProcess(tmp_path / "secure", dicomweb=True, options={
        "AuthenticationEnabled": True, "RegisteredUsers": {"node": PASSWORD}}).start()
    try:
        url = pacs.dicomweb_url
        node = node_factory(destinations=[
            {"name": "secure", "url": url, "username": "node", "password": PASSWORD},
            {"name": "wrong-password", "url": url, "username": "node", "password": WRONG},
        ], delivery={**FAST_RETRY, "max_attempts": 2}).start()
        assert storescu(node.port, rsna[:1]).returncode == 0
        wait_deliveries(node, {("secure", "delivered"): 3, ("wrong-password", "failed"): 3})
        auth = {"Authorization": "Basic " + base64.b64encode(f"node:{PASSWORD}".encode()).decode()}
        assert_results_in_orthanc(node, orthanc_instances(pacs, auth), rsna[:1])
        parked = {(p["destination"], p["attempts"], p["error"]) for p in deliveries_json(node)["parked"]}
        # not retried: the same password gets the same answer
        assert parked == {("wrong-password", 1, "HTTP 401: Unauthorized")}
        assert "HTTP 401: Unauthorized" in " ".join(node.cli("deliveries").stdout.split())
        echoes = {n: (ok, err) for n, ok, err in query(node, "SELECT name, last_echo_ok, last_echo_error"
                                                               " FROM peer_status")}
        assert echoes["secure"] == (1, None) and echoes["wrong-password"] == (0, "HTTP 401: Unauthorized")
        # No password anywhere a person reads: the log, the commands, the audit trail.
        node.stop()
        shown = [node.log_text(), node.cli("status").stdout, node.cli("status", "--json").stdout,
                 node.cli("deliveries", "--json").stdout, node.cli("logs", "--audit", "--json").stdout]
        assert not [text for text in shown if PASSWORD in text or WRONG in text]
    finally:
        pacs.stop()


def test_results_arrive_over_https_with_a_client_certificate_and_a_wrong_ca_is_not_trusted(
        node_factory: type[NodeProcess], pki: PKI, dcmtk: None, rsna: list[Path]) -> None:  # noqa: F811
    """The destination is a second node whose listener is HTTPS and requires a client certificate of
    our CA; it takes chest images only, so the SC goes there. A destination that trusts another CA
    parks its delivery, saying the certificate is not trusted."""
    receiver = node_factory("receiver", worker={"threads": 0}, dicomweb={"enabled": True, "tls": {
        "certificate": str(pki.server_cert), "key": str(pki.server_key), "ca": str(pki.ca)}}).start()
    url = receiver.dicomweb_url
    assert url.startswith("https://")
    ours = {"kinds": ["sc"], "tls_certificate": str(pki.client_cert), "tls_key": str(pki.client_key)}
    node = node_factory(destinations=[
        {"name": "node-https", "url": url, "tls_ca": str(pki.ca), **ours},
        {"name": "wrong-ca", "url": url, "tls_ca": str(pki.ca.with_name("other-ca.pem")), **ours},
    ], delivery={**FAST_RETRY, "max_attempts": 2}).start()
    assert storescu(node.port, rsna[:1]).returncode == 0
    wait_deliveries(node, {("node-https", "delivered"): 1, ("wrong-ca", "failed"): 1})

    # The receiver holds the SC, byte for byte as the outbox has it (WADO-RS on it, over HTTPS)
    [(sc_uid, sc_path)] = [(uid, path) for uid, (kind, path) in outbox_files(node).items() if kind == "sc"]
    assert held(receiver)[0] == {sc_uid}
    study = str(pydicom.dcmread(rsna[0], stop_before_pixels=True).StudyInstanceUID)
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with httpx.Client(verify=ctx, timeout=60) as https:
        rsp = https.get(f"{url}/studies/{study}", headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert rsp.status_code == 200, rsp.text
    assert [data for _type, data in multipart_parts(rsp)] == [sc_path.read_bytes()]

    # The wrong CA: the delivery tried, then parked, saying why; the probe says the same
    untrusted = "TLS failed: the peer's certificate is not trusted"
    [parked] = deliveries_json(node)["parked"]
    assert (parked["destination"], parked["result_uid"], parked["attempts"]) == ("wrong-ca", sc_uid, 2)
    assert parked["error"].startswith(untrusted) and "check tls_ca" in parked["error"], parked
    assert untrusted in " ".join(node.cli("deliveries").stdout.split())  # as read
    [echo] = wait_for("the wrong-ca probe", lambda: [d for d in node.status()["destinations"]
                                                     if d["name"] == "wrong-ca" and d["last_echo_at"]])
    assert echo["last_echo_ok"] == 0 and echo["last_echo_error"].startswith(untrusted), echo


# --- configuration errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("dest, message", [
    ({"url": "http://127.0.0.1:8042/dicom-web", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
     "destination 'pacs': url and ae_title/host/port exclude each other"),
    ({"ae_title": "PACS", "host": "127.0.0.1"},
     "destination 'pacs': port is missing (a DIMSE destination needs ae_title, host and port"),
    ({}, "destination 'pacs': give ae_title, host and port (DIMSE) or url (DICOMweb)"),
    ({"url": "ftp://127.0.0.1/dicom-web"}, "destination 'pacs': url must be http:// or https://"),
    ({"url": "https://node:s3cret-in-url@pacs/dicom-web"},
     "destination 'pacs': url must not carry credentials; give username and password (or token)"),
    ({"url": "https://pacs/dicom-web", "username": "node"}, "destination 'pacs': username and password go together"),
    ({"url": "https://pacs/dicom-web", "token": "s3cret-token", "username": "node", "password": "s3cret-pw"},
     "destination 'pacs': token and username/password exclude each other"),
    ({"url": "https://pacs/dicom-web", "token": "s3cret token"},
     "destination 'pacs': token must be printable ASCII characters without blanks"),
    ({"url": "http://pacs/dicom-web", "tls_ca": "ca.pem"},
     "destination 'pacs': tls_ca, tls_certificate and tls_key need an https url"),
    ({"url": "https://pacs/dicom-web", "tls": True},
     "destination 'pacs': tls is for DIMSE; a DICOMweb destination uses TLS by an https url"),
    ({"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "password": "s3cret-pw"},
     "destination 'pacs': password is only for a DICOMweb destination (url)"),
])
def test_a_mixed_or_incomplete_destination_stops_serve_with_one_line(tmp_path: Path, dest: dict[str, Any],
                                                                      message: str) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"destinations": [{"name": "pacs", **dest}], "admin": {"enabled": False},
                                   "storage": {"dir": str(tmp_path / "var")}, "node": {"port": free_port()}}))
    res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stdout + res.stderr
    assert "destinations.0" in lines[0] and message in lines[0], lines[0]
    assert "s3cret" not in lines[0]
    assert not (tmp_path / "var").exists(), "a refused config must leave nothing behind"
