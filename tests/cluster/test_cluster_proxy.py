"""The PROXY protocol behind HAProxy (docs/cluster.md, dicom_node.proxy_protocol): a real ``dicom-node
serve`` with ``node.proxy_protocol: [127.0.0.1/32]`` behind a real HAProxy on docs/cluster.md's own
configuration (``send-proxy-v2``), judged by what a sender sees and what the node records.

Senders play modalities on loopback addresses of their own (127.0.0.2, 127.0.0.3...: Linux routes all of
127.0.0.0/8 to the loopback interface): pynetdicom bound to that source (``bind_address``), since DCMTK's
echoscu and storescu cannot choose one; DCMTK runs from 127.0.0.1, HAProxy's own address here. Without
the PROXY protocol the node saw 127.0.0.1 for all of them. The headers sent by hand are written byte by
byte from the spec (https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt), not by the parser.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from cluster_support import BACKEND, BEHIND_HAPROXY, HaproxyFactory, check_status, health_check_rq
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.config import load_config
from dicom_node.store.connections import Connections
from dicom_node.testing import (
    HaproxyProcess,
    NodeProcess,
    cluster_haproxy_config,
    free_port,
    require,
    self_signed_cert,
    storescu,
    tool,
    wait_for,
)

pytestmark = pytest.mark.engines("postgresql")  # behind HAProxy the nodes are a cluster's, on PostgreSQL

VERIFICATION = "1.2.840.10008.1.1"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"  # section 2.2
REJECT_CALLING_AE = (0x01, 0x01, 0x03)  # rejected-permanent, service-user, calling AE not recognised
REJECT_BUSY = (0x02, 0x03, 0x02)  # rejected-transient, service-provider (presentation), local limit exceeded
ACSE_TIMEOUT_S = 3.0
#: who may associate in these tests: MODALITY1 from 127.0.0.2 only (and 127.0.0.4 where a test says),
#: HAProxy's health check from HAProxy's address, DCMTK's storescu as STORESCU from 127.0.0.1
ALLOWED = [{"ae_title": "MODALITY1", "host": "127.0.0.2"}, {"ae_title": "HAPROXY_CHECK", "host": "127.0.0.1"},
           {"ae_title": "STORESCU", "host": "127.0.0.1"}]


def receiver(node_factory: type[NodeProcess], name: str = "a", *, proxy: bool = True,
             allowed: list[dict[str, str]] | None = None, **node: Any) -> NodeProcess:
    """A receive-only node as docs/cluster.md sets one up behind HAProxy (``proxy=False``: without
    ``node.proxy_protocol``, as before), started."""
    settings = {**(BEHIND_HAPROXY if proxy else {}), "acse_timeout_s": ACSE_TIMEOUT_S, **node}
    return node_factory(name, node=settings, peers={"allowed": allowed or ALLOWED, "max_associations_per_peer": 4},
                        worker={"threads": 0}).start()


def associate(port: int, source: str, aet: str = "MODALITY1", files: tuple[Path, ...] = (),
              tls: tuple[ssl.SSLContext, str] | None = None) -> Association:
    """A pynetdicom association to 127.0.0.1:``port`` from the loopback address ``source``."""
    ae = AE(aet)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 15
    ae.add_requested_context(VERIFICATION)
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE", bind_address=(source, 0), tls_args=tls)


def rejection(assoc: Association) -> tuple[int, int, int] | None:
    """The A-ASSOCIATE-RJ's (result, source, reason) the sender got, None if it got none."""
    rj = assoc.acceptor.primitive
    if not assoc.is_rejected or rj is None:
        return None
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)  # type: ignore[arg-type]


def echo_works(port: int, source: str = "127.0.0.2") -> bool:
    assoc = associate(port, source)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def connect(port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def answer(sock: socket.socket, timeout_s: float) -> tuple[bool, bytes]:
    """(closed by the node within ``timeout_s``, every byte it sent before)."""
    got = b""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:  # reset
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def v2_proxy(src: str, sport: int, dst: str = "127.0.0.1", dport: int = 11112) -> bytes:
    """PROXY v2, command PROXY, TCP over IPv4 (0x21, 0x11), 12 bytes of addresses (section 2.2)."""
    return (V2_SIGNATURE + b"\x21\x11" + struct.pack(">H", 12) + socket.inet_aton(src) + socket.inet_aton(dst)
            + struct.pack(">HH", sport, dport))


def rows(node: NodeProcess, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Read the node's database (either engine), through the store's own connections."""
    db = Connections(load_config(node.config_path).database, readonly=True)
    try:
        return [tuple(r) for r in db.conn().execute(sql, params).fetchall()]
    finally:
        db.close()


def turned_away(node: NodeProcess) -> Counter[tuple[str, str]]:
    """Connections turned away before association, per (outcome, address), from the audit trail (rows
    are counts per outcome and period; the node writes what is left of its period when it stops)."""
    counts: Counter[tuple[str, str]] = Counter()
    for outcome, detail in rows(node, "SELECT outcome, detail FROM audit WHERE event = 'connection'"):
        for host, n in json.loads(detail)["by_host"].items():
            counts[(outcome, host)] += n
    return counts


def associations(node: NodeProcess) -> list[tuple[str, str, str]]:
    """(calling AE, address, outcome) of every association the node audited."""
    return [tuple(r) for r in rows(node, "SELECT peer_ae, peer_host, outcome FROM audit WHERE event = 'association'"
                                         " ORDER BY id")]  # type: ignore[misc]


def test_the_peer_policy_judges_the_modalitys_address_not_haproxys(
        dcmtk: None, rsna: list[Path], node_factory: type[NodeProcess], haproxy_factory: HaproxyFactory) -> None:
    """MODALITY1 may call from 127.0.0.2 only. Through HAProxy, from 127.0.0.2 it stores; from 127.0.0.3
    it gets A-ASSOCIATE-RJ "calling AE not recognised"; audit, instance row and log name the sender's
    address, the health check HAProxy's. Without the header the node saw 127.0.0.1 for both and
    refused the first as well."""
    node = receiver(node_factory)
    ha = haproxy_factory([("node_a", node.port)])
    assert check_status(ha, "node_a") == "L7OK"  # the check (a LOCAL header, then an association) passes

    sent = rsna[0]
    ok = associate(ha.port, "127.0.0.2", files=(sent,))
    assert ok.is_established
    try:
        assert ok.send_c_echo().Status == 0x0000
        assert ok.send_c_store(pydicom.dcmread(sent)).Status == 0x0000
    finally:
        ok.release()
    stranger = associate(ha.port, "127.0.0.3")
    assert rejection(stranger) == REJECT_CALLING_AE
    # DCMTK through HAProxy from 127.0.0.1: the header names 127.0.0.1, where only STORESCU may call.
    echo = subprocess.run(["echoscu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(ha.port)],
                          capture_output=True, text=True, timeout=60)
    assert echo.returncode != 0 and "Calling AE Title Not Recognized" in echo.stdout + echo.stderr
    store = storescu(ha.port, [rsna[1]], aet="STORESCU")
    assert store.returncode == 0, store.stderr
    wait_for("two instances stored", lambda: len(rows(node, "SELECT 1 FROM instances")) == 2, 30, 0.2)
    assert node.stop() == 0

    uid = str(pydicom.dcmread(sent, stop_before_pixels=True).SOPInstanceUID)
    assert rows(node, "SELECT calling_ae, peer_host FROM instances WHERE sop_instance_uid = ?", uid) == [
        ("MODALITY1", "127.0.0.2")]
    audited = associations(node)
    modality = [a for a in audited if a[0] == "MODALITY1"]
    assert modality == [("MODALITY1", "127.0.0.2", "released"), ("MODALITY1", "127.0.0.3", "rejected"),
                        ("MODALITY1", "127.0.0.1", "rejected")], audited
    assert ("STORESCU", "127.0.0.1", "released") in audited
    checks = {a for a in audited if a[0] == "HAPROXY_CHECK"}
    assert checks == {("HAPROXY_CHECK", "127.0.0.1", "released")}, checks
    log = node.log_text()
    assert re.search(r"association released calling_ae=MODALITY1 peer_host=127\.0\.0\.2 instances=1", log), log[-3000:]
    assert re.search(r"association rejected calling_ae=MODALITY1 peer_host=127\.0\.0\.3 ", log)
    assert not turned_away(node), turned_away(node)  # nothing refused before association
    assert "ERROR" not in log


def test_per_host_and_per_peer_caps_count_the_modality_not_haproxy(
        dcmtk: None, node_factory: type[NodeProcess], haproxy_factory: HaproxyFactory) -> None:
    """``node.max_pending_per_host: 2``: two silent connections through HAProxy from 127.0.0.3 fill that
    host's share, a third from it is closed at once, while 127.0.0.2 still associates.
    ``peers.max_associations_per_peer: 1``: MODALITY1 holding an association from 127.0.0.2 is refused
    a second one there ("local limit exceeded"), not from 127.0.0.4. Counted against 127.0.0.1 (HAProxy),
    both would have refused 127.0.0.2 or 127.0.0.4 too."""
    allowed = [*ALLOWED, {"ae_title": "MODALITY1", "host": "127.0.0.4"}]
    node = node_factory("a", node={**BEHIND_HAPROXY, "acse_timeout_s": 20, "max_pending_per_host": 2},
                        peers={"allowed": allowed, "max_associations_per_peer": 1}, worker={"threads": 0}).start()
    ha = haproxy_factory([("node_a", node.port)])

    silent = [connect(ha.port, "127.0.0.3") for _ in range(2)]
    time.sleep(1.0)  # HAProxy connects to the node and sends each one's header at once
    third = connect(ha.port, "127.0.0.3")
    closed, got = answer(third, 5)
    assert closed and got == b""
    assert echo_works(ha.port, "127.0.0.2")
    assert not any(answer(s, 0.1)[0] for s in silent)  # still waiting for their requests
    for s in [*silent, third]:
        s.close()

    held = associate(ha.port, "127.0.0.2")
    assert held.is_established
    try:
        assert rejection(associate(ha.port, "127.0.0.2")) == REJECT_BUSY
        other = associate(ha.port, "127.0.0.4")
        assert other.is_established
        other.release()
    finally:
        held.release()
    assert node.stop() == 0
    refused = turned_away(node)
    assert refused[("refused_pending_per_host", "127.0.0.3")] == 1, refused
    assert {h for (o, h) in refused if o == "refused_pending_per_host"} == {"127.0.0.3"}
    rejected = [a for a in associations(node) if a[2] == "rejected"]
    assert rejected == [("MODALITY1", "127.0.0.2", "rejected")], rejected
    detail = rows(node, "SELECT detail FROM audit WHERE event = 'association' AND outcome = 'rejected'")
    assert json.loads(detail[0][0])["limit"] == "peers.max_associations_per_peer"


def test_bad_headers_from_haproxys_address_are_closed_and_the_node_keeps_serving(
        dcmtk: None, node_factory: type[NodeProcess], haproxy_factory: HaproxyFactory) -> None:
    """From the listed address (127.0.0.1, straight to the node's port): no header, a bad v2
    signature, a v2 length over the limit, a v1 line past 107 bytes, a header cut off by a close or by
    silence until ``node.acse_timeout_s``. Each is closed without a byte of answer and counted once by
    outcome; an association through HAProxy works after each."""
    node = receiver(node_factory)
    ha = haproxy_factory([("node_a", node.port)])
    rq = health_check_rq("MODALITY1")
    cases: list[tuple[str, bytes, str]] = [
        ("no header: an A-ASSOCIATE-RQ straight away", rq, "proxy_header_missing"),
        ("a v2 signature with QUIX for QUIT", V2_SIGNATURE.replace(b"QUIT", b"QUIX") + b"\x21\x11\x00\x0c"
         + socket.inet_aton("127.0.0.2") + socket.inet_aton("127.0.0.1") + b"\x9c\x40\x2b\x68" + rq,
         "proxy_header_missing"),
        ("a v2 length of 65535", V2_SIGNATURE + b"\x21\x11\xff\xff" + rq, "proxy_header_invalid"),
        ("a v1 line of 200 bytes", b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 11112" + b" " * 160 + b"\r\n" + rq,
         "proxy_header_invalid"),
        ("a v2 header cut off, then FIN", v2_proxy("127.0.0.2", 40000)[:20], "proxy_header_incomplete"),
    ]
    for what, data, _ in cases:
        sock = connect(node.port, "127.0.0.1")
        sock.sendall(data)
        if what.endswith("FIN"):
            sock.shutdown(socket.SHUT_WR)
        closed, got = answer(sock, 5)
        sock.close()
        assert closed and got == b"", (what, got[:16])
        assert echo_works(ha.port), what

    cut = connect(node.port, "127.0.0.1")
    cut.sendall(b"PROXY TCP4 127.0.0.2 ")  # and nothing more
    started = time.monotonic()
    closed, got = answer(cut, ACSE_TIMEOUT_S + 5)
    waited = time.monotonic() - started
    cut.close()
    assert closed and got == b"" and ACSE_TIMEOUT_S - 0.5 <= waited <= ACSE_TIMEOUT_S + 2.5, waited
    assert echo_works(ha.port)
    assert node.proc is not None and node.proc.poll() is None
    assert check_status(ha, "node_a") == "L7OK" and ha.server_status(BACKEND, "node_a") == "UP"

    assert node.stop() == 0
    expected = Counter(outcome for _, _, outcome in cases) + Counter(["proxy_header_incomplete"])
    refused = turned_away(node)
    assert refused == Counter({(o, "127.0.0.1"): n for o, n in expected.items()}), refused  # no timed_out twice
    log = node.log_text()
    for outcome, n in expected.items():
        assert re.search(rf"connections turned away outcome={outcome} connections={n} hosts=1 peer_host=127\.0\.0\.1",
                         log), (outcome, log[-3000:])
    assert {a[1] for a in associations(node) if a[0] == "MODALITY1"} == {"127.0.0.2"}


def test_a_proxy_header_from_an_unlisted_address_is_refused_as_before(dcmtk: None,
                                                                     node_factory: type[NodeProcess]) -> None:
    """127.0.0.5 is not in ``node.proxy_protocol``: a PROXY line (v1) or header (v2) it sends before its
    A-ASSOCIATE-RQ is never parsed, so it cannot name another address: it is the start of a malformed
    PDU, refused exactly as by a node without ``node.proxy_protocol``. An unlisted sender without a
    header associates as before."""
    behind, before = receiver(node_factory, "behind"), receiver(node_factory, "before", proxy=False)
    rq = health_check_rq("MODALITY1")
    forged = [b"PROXY TCP4 127.0.0.2 127.0.0.1 40000 11112\r\n" + rq, v2_proxy("127.0.0.2", 40000) + rq]
    for node in (behind, before):
        for data in forged:
            sock = connect(node.port, "127.0.0.5")
            sock.sendall(data)
            closed, got = answer(sock, 5)
            sock.close()
            assert closed and got == b"", (node.root.name, data[:16], got[:16])
        assert echo_works(node.port, "127.0.0.2")  # straight from an unlisted address: no header wanted
    for node in (behind, before):
        assert node.stop() == 0
    # Counted as the same refusal on both (the DUL may read a second bogus PDU header off such a
    # connection before it closes, and count it again: so at least one per connection). That second
    # read is what makes pynetdicom abort: answering it as a closed connection instead left a refused
    # P-DATA-TF of 512 MiB read whole (tests/reliability/test_attack.py), so the count stays loose.
    refused_behind, refused_before = turned_away(behind), turned_away(before)
    assert set(refused_behind) == set(refused_before) == {("associate_rq_too_large", "127.0.0.5")}
    assert min(refused_behind.values()) >= len(forged) and min(refused_before.values()) >= len(forged)
    assert associations(behind) == associations(before) == [("MODALITY1", "127.0.0.2", "released")]


def test_one_side_without_the_other_takes_the_receiver_out(
        dcmtk: None, node_factory: type[NodeProcess], haproxy_factory: HaproxyFactory, tmp_path: Path) -> None:
    """docs/cluster.md: HAProxy sending headers to a node that does not expect them, or a node that
    expects them from an HAProxy that does not send them: the health check fails, the receiver is DOWN,
    no modality is served with the wrong address."""
    unaware = receiver(node_factory, "unaware", proxy=False)
    ha = haproxy_factory([("unaware", unaware.port)])
    wait_for("unaware marked DOWN", lambda: ha.server_status(BACKEND, "unaware") == "DOWN", 30, 0.2)
    # its refusal closes the check's connection with a FIN or, unread bytes left, a reset
    assert check_status(ha, "unaware") in ("L7RSP", "SOCKERR")
    assert re.search(r"dicom_receivers/unaware is DOWN, reason: .*no A-ASSOCIATE-AC", ha.log_text())
    assert not associate(ha.port, "127.0.0.2").is_established

    expecting = receiver(node_factory, "expecting")
    with tempfile.TemporaryDirectory(prefix="haproxy-") as sock_dir:
        port = free_port()
        text = cluster_haproxy_config(f"127.0.0.1:{port}", [("expecting", expecting.port)], Path(sock_dir) / "a.sock")
        without, n = re.subn(r"^(\s*default-server .*) send-proxy-v2$", r"\1", text, flags=re.M)
        assert n == 1 and not re.search(r"^\s*[^#\s].*send-proxy", without, re.M)
        with HaproxyProcess(without, tmp_path / "plain", port=port) as plain:
            wait_for("expecting marked DOWN", lambda: plain.server_status(BACKEND, "expecting") == "DOWN", 30, 0.2)
            assert check_status(plain, "expecting") in ("L7RSP", "SOCKERR")
            assert re.search(r"dicom_receivers/expecting is DOWN, reason: .*no A-ASSOCIATE-AC", plain.log_text())
            assert not associate(port, "127.0.0.2").is_established
    assert unaware.stop() == 0 and expecting.stop() == 0
    assert {o for o, h in turned_away(unaware)} == {"associate_rq_too_large"}
    assert {o for o, h in turned_away(expecting)} == {"proxy_header_missing"}
    assert not associations(unaware) and not associations(expecting)


# TLS: the header comes first, in the clear, then the handshake (HAProxy in TCP mode passing DICOM TLS
# through). HAProxy's DICOM check cannot pass a TLS node, so a relay plays HAProxy here.

@pytest.fixture(scope="module")
def server_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require(tool("openssl") is not None, "openssl")
    return self_signed_cert(tmp_path_factory.mktemp("pki"))


class Relay:
    """What HAProxy's ``send-proxy-v2`` does in TCP mode, for one node: each connection accepted on
    ``port`` is relayed from 127.0.0.1, after a PROXY v2 header naming the client's address and port."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, (host, port) = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            upstream.sendall(v2_proxy(host, port, dport=self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def relay_factory() -> Iterator[type[Relay]]:
    made: list[Relay] = []

    class _Relay(Relay):
        def __init__(self, target: int) -> None:
            super().__init__(target)
            made.append(self)

    yield _Relay
    for r in made:
        r.close()


def test_tls_behind_a_balancer_reads_the_header_before_the_handshake(
        dcmtk: None, node_factory: type[NodeProcess], server_cert: tuple[Path, Path],
        relay_factory: type[Relay]) -> None:
    cert, key = server_cert
    node = receiver(node_factory, tls={"certificate": str(cert), "key": str(key)})
    relay = relay_factory(node.port)
    client = ssl.create_default_context(cafile=str(cert))
    via = associate(relay.port, "127.0.0.2", tls=(client, "localhost"))
    assert via.is_established
    assert via.send_c_echo().Status == 0x0000
    via.release()
    # TLS straight from the listed address: its ClientHello is not a PROXY header
    assert not associate(node.port, "127.0.0.1", aet="HAPROXY_CHECK", tls=(client, "localhost")).is_established
    assert node.stop() == 0
    assert associations(node) == [("MODALITY1", "127.0.0.2", "released")]
    assert turned_away(node) == Counter({("proxy_header_missing", "127.0.0.1"): 1})
