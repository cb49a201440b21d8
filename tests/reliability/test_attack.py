"""The receiver under attack (issue 12): each attack thrown at a real ``dicom-node serve`` over loopback,
with DCMTK echoscu and storescu served beside the floods. Figures before and after: docs/reliability.md
section 10.

- Half-sent A-ASSOCIATE-RQs, floods of them, a request trickled byte by byte, silent TLS clients:
  closed at ``node.acse_timeout_s``, capped per source address and in total (dicom_node.guard); a PDU
  stalled once associated: closed at ``node.network_timeout_s``; one longer than ``node.max_pdu_size``:
  not read.
- SOP class smuggling: a CT image on the Verification context, or a CR context's command naming CT:
  0x0122; a CT data set under a CR command: 0xA900.
- A full disk at commit: 0xA700, no orphan file; orphans of earlier failures swept at start.
- One peer holding every association slot with C-ECHO keep-alives: ``peers.max_associations_per_peer``.
- Absurd requests (too large, > 128 presentation contexts, thousands of bogus transfer syntaxes):
  refused early, one summary line per association, nothing rotated away, one audit row each.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pydicom
import pytest
from attack_support import (
    CR_STORAGE,
    CT_STORAGE,
    bogus_request,
    closed_by_peer,
    command_status,
    connect,
    echoscu,
    fuzz,
    image,
    legit_sender_served,
    log_lines,
    recv_pdu,
    rejection,
    store_command,
    threads_fds,
)
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from reliability_support import SEED, query, spool_files, write_radiographs

from dicom_node.testing import NodeProcess, require, self_signed_cert, storescu, wait_for

ACSE_S = 4.0  # node.acse_timeout_s in these tests: a connection must have sent its request by then


def _waiting_until(socks: list[socket.socket], at_most: int, deadline: float) -> list[socket.socket]:
    """The connections still open once no more than ``at_most`` are, which must be before ``deadline``
    (before the first could have timed out: the cap closed the rest, not the timeout)."""
    while True:
        waiting = [s for s in socks if not closed_by_peer(s)]
        if len(waiting) <= at_most:
            return waiting
        assert time.monotonic() < deadline, f"{len(waiting)} connections still open, at most {at_most} expected"
        time.sleep(0.1)


def _audit_counts(node: NodeProcess, event: str) -> Counter[str]:
    """Connections per outcome in the node's audit trail (rows are counts per address and period)."""
    counts: Counter[str] = Counter()
    for outcome, detail in query(node, "SELECT outcome, detail FROM audit WHERE event = ?", event):
        counts[outcome] += json.loads(detail).get("connections", 1) if detail else 1
    return counts


# -- item 2: connections that never complete their request ---------------------------------------------

def test_half_sent_requests_time_out_and_are_capped(node_factory: type[NodeProcess], dcmtk: None,
                                                    tmp_path: Path) -> None:
    node = node_factory(node={"acse_timeout_s": ACSE_S, "network_timeout_s": 10}, worker={"threads": 0}).start()
    files = write_radiographs(tmp_path / "xr", 3, SEED)
    legit_sender_served(node, files[:1])  # the receiver's store threads exist from here on
    threads0, fds0 = threads_fds(node)
    lines0 = log_lines(node)
    half = fuzz.associate_rq("DICOM_NODE", "HALF")[:20]  # 20 bytes of a 267-byte A-ASSOCIATE-RQ, then silence

    # 300 from one address: past node.max_pending_per_host (8) each is closed at once, long before
    # the first one's deadline.
    flood = []
    first = time.monotonic()
    for _ in range(300):
        sock = connect(node.port, "127.0.0.2")
        sock.sendall(half)
        flood.append(sock)
    waiting = _waiting_until(flood, 8, first + ACSE_S - 0.5)
    threads, fds = threads_fds(node)
    assert threads <= threads0 + 2 * 8 + 4 and fds <= fds0 + 8 + 4, (threads0, threads, fds0, fds)
    echo_s, store_s = legit_sender_served(node, files[1:2])  # the real sender is served meanwhile
    print(f"\none address: {300 - len(waiting)} of 300 closed at once, {len(waiting)} waiting; threads "
          f"{threads0} -> {threads}, descriptors {fds0} -> {fds}; echo {echo_s} s, store {store_s} s")

    # 200 more from 50 addresses: in all at most node.max_pending_connections (64) wait, the oldest
    # are closed to make room, and a request that comes at once still gets in.
    spread = []
    first = time.monotonic()
    for i in range(200):
        sock = connect(node.port, f"127.0.1.{i % 50 + 1}")
        sock.sendall(half)
        spread.append(sock)
    waiting = _waiting_until(flood[-8:] + spread, 64, first + ACSE_S - 0.5)
    legit_sender_served(node, files[2:3])
    threads, fds = threads_fds(node)
    print(f"50 addresses: {len(waiting)} waiting of 200; threads {threads}, descriptors {fds}")
    assert threads <= threads0 + 2 * 64 + 40, (threads0, threads)

    # A peer trickling its request a byte at a time gains nothing: the deadline is over all its bytes.
    rq = fuzz.associate_rq("DICOM_NODE", "TRICKLE")
    trickle = connect(node.port, "127.0.0.3")
    start = time.monotonic()
    for i in range(len(rq)):
        try:
            trickle.send(rq[i:i + 1])
        except OSError:
            break
        if closed_by_peer(trickle):
            break
        time.sleep(0.2)
    trickled_s = time.monotonic() - start
    assert ACSE_S - 0.5 < trickled_s < ACSE_S + 3, trickled_s
    print(f"a request trickled a byte every 0.2 s: closed after {trickled_s:.1f} s")

    # Every one of them is closed within the ACSE timeout, and the threads and descriptors come back.
    wait_for("every half-sent connection to be closed", lambda: all(closed_by_peer(s) for s in flood + spread),
             ACSE_S + 5, 0.25)
    # (the receiver's store pool may have grown by a few threads, each with its SQLite connection)
    wait_for("the threads to wind down", lambda: threads_fds(node)[0] <= threads0 + 6, 15, 0.25)
    assert threads_fds(node)[1] <= fds0 + 2 * 6
    for sock in [*flood, *spread, trickle]:
        sock.close()
    assert echoscu(node.port).returncode == 0

    # Audited as counts per address and outcome, not a row (or a log line) per connection.
    node.stop()
    turned_away = _audit_counts(node, "connection")
    assert turned_away["refused_pending_per_host"] >= 280, turned_away
    assert turned_away["closed_oldest_pending"] >= 100, turned_away
    assert turned_away["timed_out_before_association"] >= 8, turned_away
    rows = query(node, "SELECT COUNT(*) FROM audit WHERE event = 'connection'")[0][0]
    assert rows <= 3 * 3, rows  # one per outcome and period (REPORT_EVERY_S)
    assert log_lines(node) - lines0 <= 80, log_lines(node) - lines0  # not one or two per connection
    assert log_lines(node, "connections turned away") <= 6
    print(f"audit: {dict(turned_away)} in {rows} rows")


def test_a_pdu_stalled_after_association_is_cut_at_the_network_timeout(node_factory: type[NodeProcess],
                                                                       dcmtk: None) -> None:
    # The same blocking read, once associated: part of a P-DATA-TF, then silence. pynetdicom's idle
    # timer cannot end it while its reader is blocked; the socket's timeout does.
    node = node_factory(node={"network_timeout_s": 3}, worker={"threads": 0}).start()
    assert echoscu(node.port).returncode == 0  # the receiver's store threads exist from here on
    threads0, _ = threads_fds(node)
    sock = connect(node.port, "127.0.0.1")
    sock.sendall(fuzz.associate_rq("DICOM_NODE", "MODALITY1"))
    assert recv_pdu(sock)[0] == 0x02
    sock.sendall(fuzz.p_data(fuzz.pdv(1, 0x03, fuzz.echo_rq()))[:10])
    start = time.monotonic()
    wait_for("the stalled association to be closed", lambda: closed_by_peer(sock), 10, 0.1)
    assert 2.5 < time.monotonic() - start < 6
    wait_for("its threads to end", lambda: threads_fds(node)[0] <= threads0 + 1, 10, 0.25)
    sock.close()
    assert echoscu(node.port).returncode == 0


@pytest.mark.parametrize("called", ["DICOM_NODE", "ELSEWHERE"])
def test_a_pdu_longer_than_max_pdu_size_is_not_read(node_factory: type[NodeProcess], dcmtk: None,
                                                    called: str) -> None:
    # A P-DATA-TF header declaring 512 MiB after the A-ASSOCIATE-AC (or -RJ), then data as fast as
    # loopback takes it. pynetdicom reads a PDU whole before looking at it: alone, +301 MiB of RSS
    # for 300 MiB sent. node.max_pdu_size (1 MiB) is what we said we receive (PS3.8 D.1).
    node = node_factory(worker={"threads": 0}).start()
    assert node.proc is not None
    proc = psutil.Process(node.proc.pid)
    rss0 = proc.memory_info().rss
    sock = connect(node.port, "127.0.0.1")
    sock.sendall(fuzz.associate_rq(called, "MODALITY1"))
    assert recv_pdu(sock)[0] == (0x02 if called == "DICOM_NODE" else 0x03)
    sent = 0
    try:
        sock.sendall(struct.pack(">BBI", 0x04, 0, 512 << 20))
        chunk = bytes(1 << 20)
        while sent < 300 << 20:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        sock.close()
    grown = (proc.memory_info().rss - rss0) >> 20
    print(f"\n512 MiB P-DATA-TF after {called}: {sent >> 20} MiB taken before the node closed; RSS +{grown} MiB")
    assert sent < 64 << 20 and grown < 32, (sent, grown)
    assert echoscu(node.port).returncode == 0


def test_silent_tls_clients_do_not_stop_the_listener(node_factory: type[NodeProcess], dcmtk: None,
                                                     tmp_path: Path) -> None:
    require(shutil.which("openssl") is not None, "openssl")
    cert, key = self_signed_cert(tmp_path / "pki")
    node = node_factory(node={"acse_timeout_s": ACSE_S, "tls": {"certificate": str(cert), "key": str(key)}},
                        worker={"threads": 0}).start()
    # TCP connections that never send a ClientHello. pynetdicom ran the TLS handshake on the
    # listener's own thread: the first of them stopped every other connection.
    silent = [connect(node.port, "127.0.0.2") for _ in range(3)]
    start = time.monotonic()
    res = echoscu(node.port, "+tla", "+cf", str(cert))
    assert res.returncode == 0, res.stdout + res.stderr
    answered_s = time.monotonic() - start
    assert answered_s < ACSE_S / 2, answered_s
    print(f"\nTLS C-ECHO beside 3 silent connections: {answered_s:.2f} s")
    wait_for("the silent TLS connections to be closed", lambda: all(closed_by_peer(s) for s in silent),
             ACSE_S + 5, 0.25)
    for sock in silent:
        sock.close()


# -- item 5: SOP class smuggling ----------------------------------------------------------------------

def _smuggle(port: int, context_id: int, command_class: str, data_class: str) -> tuple[str, int | None]:
    """One C-STORE over a raw association: the fuzzer's request proposes Verification (context 1,
    implicit VR) and CR (context 3, explicit VR little endian)."""
    uid = generate_uid()
    sock = connect(port, "127.0.0.1")
    try:
        sock.sendall(fuzz.associate_rq("DICOM_NODE", "MODALITY1"))
        assert recv_pdu(sock)[0] == 0x02, "not accepted"
        data = image(data_class, uid, implicit=context_id == 1)
        sock.sendall(fuzz.p_data(fuzz.pdv(context_id, 0x03, store_command(command_class, uid)))
                     + fuzz.p_data(fuzz.pdv(context_id, 0x02, data)))
        status = command_status(sock)
        sock.sendall(fuzz.release_rq())
        recv_pdu(sock, 5)
    finally:
        sock.close()
    return uid, status


def test_sop_class_smuggling_is_refused(node_factory: type[NodeProcess], dcmtk: None) -> None:
    node = node_factory(worker={"threads": 0}).start()
    cases = {
        "CT image on the Verification context": (1, CT_STORAGE, CT_STORAGE, 0x0122),
        "CT command and image on the CR context": (3, CT_STORAGE, CT_STORAGE, 0x0122),
        "CR command, CT image, CR context": (3, CR_STORAGE, CT_STORAGE, 0xA900),
        "CR command and image, CR context": (3, CR_STORAGE, CR_STORAGE, 0x0000),
    }
    stored = {}
    for name, (context_id, command_class, data_class, expected) in cases.items():
        uid, status = _smuggle(node.port, context_id, command_class, data_class)
        assert status == expected, f"{name}: 0x{status or 0:04X}, expected 0x{expected:04X}"
        stored[name] = query(node, "SELECT sop_class_uid FROM instances WHERE sop_instance_uid = ?", uid)
    assert stored.pop("CR command and image, CR context") == [(CR_STORAGE,)]
    assert not any(stored.values()), stored  # nothing of the refused ones, no row ...
    assert len(spool_files(node)) == 1        # ... and no file, not even a temporary one
    assert echoscu(node.port).returncode == 0


# -- item 6: disk full at commit ------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs as a node's storage.dir (``<root>/var``); yields ``<root>``. Needs root, as CI has."""
    root = tmp_path / "full"
    var = root / "var"
    var.mkdir(parents=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(var)], capture_output=True, text=True)
    require(res.returncode == 0, f"a tmpfs mount for a full disk (root): {res.stderr.strip()}")
    try:
        yield root
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(var)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(var)], capture_output=True)


def _statuses(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.split("(", 1)[1].rstrip(")") for line in (res.stdout + res.stderr).splitlines()
            if "Received Store Response (" in line]


@pytest.mark.engines("sqlite")  # the database on the full disk: on PostgreSQL it lives elsewhere
def test_disk_full_at_commit_refuses_with_out_of_resources(node_factory: type[NodeProcess], dcmtk: None,
                                                           small_disk: Path, tmp_path: Path) -> None:
    node = node_factory("full", storage={"min_free_mb": 0}, worker={"threads": 0})
    assert node.root == small_disk
    files = write_radiographs(tmp_path / "xr", 6, SEED, size=64)  # ~10 KB each
    try:
        node.start()
        assert _statuses(storescu(node.port, files[:1], extra=["-v"])) == ["Success"]
        # Fill the disk until an instance still fits in the spool but SQLite cannot grow its WAL
        # for the commit (an instance's commit needs 20-36 KB more WAL; measured). First the warm-up
        # association's audit row, so that no write of the node's is still to come.
        wait_for("the warm-up association's audit row",
                 lambda: query(node, "SELECT COUNT(*) FROM audit WHERE event = 'association'")[0][0] >= 1, 10, 0.1)
        time.sleep(0.5)
        st = os.statvfs(node.storage)
        instance = -(-files[1].stat().st_size // st.f_frsize) * st.f_frsize  # in whole pages
        filler = node.storage / "filler"
        filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - instance - 16 * 1024))
        refused = storescu(node.port, files[1:], extra=["-v", "-nh"])  # -nh: go on after a failure
        statuses = _statuses(refused)
        print(f"\ndisk full at commit: {statuses}")
        # Every instance answered (no 0xC211, no aborted association), nearly all refused: a failed
        # commit may leave the WAL grown by a few pages, which a later one can use.
        assert len(statuses) == 5 and set(statuses) <= {"Refused: OutOfResources", "Success"}, \
            refused.stdout + refused.stderr
        assert statuses.count("Refused: OutOfResources") >= 3, statuses
        assert "database or disk is full" in node.log_text()
        rows = query(node, "SELECT path FROM instances")
        assert sorted(str(f) for f in spool_files(node)) == sorted(r for (r,) in rows)  # no orphan, no temporary
        assert len(rows) == 1 + statuses.count("Success")

        # Room again: the sender's retry of the same five is stored.
        filler.unlink()
        again = storescu(node.port, files[1:], extra=["-v", "-nh"])
        assert _statuses(again) == ["Success"] * 5, again.stdout + again.stderr
        assert query(node, "SELECT COUNT(*) FROM instances")[0][0] == 6

        # An orphan left by an earlier failure (a file in the spool, no row) is removed at start.
        node.stop()
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        orphan = node.storage / "spool" / str(first.StudyInstanceUID) / f"{generate_uid()}.dcm"
        shutil.copy(files[0], orphan)
        node.start()
        assert not orphan.exists()
        assert "removed spool files with no instance row" in node.log_text()
        assert len(spool_files(node)) == 6
    finally:
        node.stop()


def test_disk_full_while_an_instance_arrives_aborts_it_cleanly(node_factory: type[NodeProcess], dcmtk: None,
                                                                small_disk: Path, tmp_path: Path) -> None:
    node = node_factory("full", storage={"min_free_mb": 0}, worker={"threads": 0})
    [large] = write_radiographs(tmp_path / "large", 1, SEED, size=1536)  # ~4.7 MB on a 3 MB disk
    [small] = write_radiographs(tmp_path / "small", 1, SEED + 1, size=64)
    try:
        node.start()
        res = storescu(node.port, [large], extra=["-v"])
        assert res.returncode != 0 and "Peer Aborted Association" in res.stdout + res.stderr
        assert "could not be written while arriving (No space left on device)" in node.log_text()
        assert "Traceback" not in node.log_text()
        assert query(node, "SELECT COUNT(*) FROM instances")[0][0] == 0
        assert spool_files(node) == []  # the partial file went with the association
        # The disk has room again for what fits, and the node serves the next sender.
        assert _statuses(storescu(node.port, [small], extra=["-v"])) == ["Success"]
    finally:
        node.stop()


# -- item 8: one peer holding every slot -------------------------------------------------------------------

def _associate(port: int, aet: str) -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")


def test_one_peer_cannot_hold_every_association_slot(node_factory: type[NodeProcess], dcmtk: None,
                                                     tmp_path: Path) -> None:
    node = node_factory(node={"max_associations": 4, "network_timeout_s": 4},
                        peers={"max_associations_per_peer": 2}, worker={"threads": 0}).start()
    hog = [_associate(node.port, "HOG") for _ in range(4)]
    try:
        held = [a for a in hog if a.is_established]
        assert len(held) == 2
        for a in hog:
            if a.is_rejected:
                rj = a.acceptor.primitive
                assert rj is not None
                # rejected-transient, service-provider (presentation), local-limit-exceeded
                assert (rj.result, rj.result_source, rj.diagnostic) == (2, 3, 2)
        # Kept alive past node.network_timeout_s with a C-ECHO every 2 s, as the attack did.
        for _ in range(4):
            time.sleep(2)
            assert all(a.send_c_echo().Status == 0 for a in held)
        legit_sender_served(node, write_radiographs(tmp_path / "xr", 1, SEED))
    finally:
        for a in hog:
            if a.is_established:
                a.release()
    rows = query(node, "SELECT detail FROM audit WHERE event = 'association' AND outcome = 'rejected'"
                       " AND peer_ae = 'HOG'")
    assert [json.loads(d)["limit"] for (d,) in rows] == ["peers.max_associations_per_peer"] * 2


# -- item 9: absurd requests and the log --------------------------------------------------------------------

def test_absurd_requests_are_refused_and_the_log_survives(node_factory: type[NodeProcess], dcmtk: None,
                                                          tmp_path: Path) -> None:
    node = node_factory(logging={"max_mb": 1, "backups": 2}, node={"acse_timeout_s": 10},
                        worker={"threads": 0}).start()
    kinds = {  # what is sent: what comes back
        "15 MiB: 10,000 contexts x 50 syntaxes": (bogus_request("DICOM_NODE", "MODALITY1", 10_000, 50), (3, (1, 1, 1))),
        "129 contexts x 50 syntaxes": (bogus_request("DICOM_NODE", "MODALITY1", 129, 50), (3, (1, 1, 1))),
        "128 x 50, called AE not ours": (bogus_request("ELSEWHERE", "MODALITY1", 128, 50), (3, (1, 1, 7))),
        "128 x 50, accepted, no context": (bogus_request("DICOM_NODE", "MODALITY1", 128, 50), (2, None)),
    }
    per_kind = 8
    lines0 = log_lines(node)

    def attack(kind: str) -> tuple[int | None, tuple[int, int, int] | None]:
        sock = connect(node.port, "127.0.0.2", timeout_s=30)
        try:
            try:
                sock.sendall(kinds[kind][0])
            except OSError:  # refused before all of it was read: the answer is still there
                pass
            pdu_type, body = recv_pdu(sock, 30)
            if pdu_type == 0x02:
                sock.sendall(fuzz.release_rq())
                recv_pdu(sock, 5)
            return pdu_type, rejection(body) if pdu_type == 0x03 else None
        finally:
            sock.close()

    with ThreadPoolExecutor(4) as pool:
        answers = {kind: [pool.submit(attack, kind) for _ in range(per_kind)] for kind in kinds}
        echo_s, store_s = legit_sender_served(node, write_radiographs(tmp_path / "xr", 2, SEED))  # during the flood
        for kind, futures in answers.items():
            assert [f.result() for f in futures] == [kinds[kind][1]] * per_kind, kind
    print(f"\nduring the flood: echo {echo_s} s, store {store_s} s")

    # Nothing rotated away; a few lines per association instead of one per bogus syntax.
    logs = node.log_dir
    assert not (logs / "node.jsonl.1").exists(), sorted(p.name for p in logs.iterdir())
    added = log_lines(node) - lines0
    associations = per_kind * len(kinds) + 2
    assert added <= 5 * associations, added
    assert log_lines(node, '"association rejected"') == 2 * per_kind
    # The audit trail: one row per rejected association, with what it proposed ...
    proposed = sorted(json.loads(d)["presentation_contexts"] for (d,) in query(
        node, "SELECT detail FROM audit WHERE event = 'association' AND outcome = 'rejected'"))
    assert proposed == [128] * per_kind + [129] * per_kind
    # ... and the requests refused before they were read, counted per address.
    node.stop()
    assert _audit_counts(node, "connection")["associate_rq_too_large"] == per_kind
    print(f"log lines added: {added} for {associations} associations; node.jsonl "
          f"{(logs / 'node.jsonl').stat().st_size} bytes, not rotated")
