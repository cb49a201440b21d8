"""Helpers for test_attack.py: raw PDUs on loopback sockets (the fuzzer's builders, PS3.8 §9.3),
DCMTK's echoscu and storescu beside them, and the node process's threads and descriptors.

Sockets are bound to a chosen loopback source address (127.0.0.2, 127.0.0.3, ...): Linux routes all of
127.0.0.0/8 to the loopback interface, so one test machine plays many hosts, and DCMTK on 127.0.0.1
stands for the real sender.
"""

from __future__ import annotations

import io
import random
import socket
import struct
import subprocess
import time
from pathlib import Path

import psutil
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from reliability_support import load_script

from dicom_node.testing import NodeProcess, storescu

fuzz = load_script("fuzz_association")

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
APP_CONTEXT = b"1.2.840.10008.3.1.1.1"


def connect(port: int, source: str = "127.0.0.2", timeout_s: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.settimeout(timeout_s)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the node has closed (or reset) the connection; never blocks."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def recv_pdu(sock: socket.socket, timeout_s: float = 10.0) -> tuple[int | None, bytes]:
    """(PDU type, body) of the next PDU, or (None, b"") when the connection closed first."""
    sock.settimeout(timeout_s)
    head = b""
    try:
        while len(head) < 6:
            chunk = sock.recv(6 - len(head))
            if not chunk:
                return None, b""
            head += chunk
        want = struct.unpack(">I", head[2:6])[0]
        body = b""
        while len(body) < want:
            chunk = sock.recv(min(65536, want - len(body)))
            if not chunk:
                break
            body += chunk
    except (ConnectionResetError, TimeoutError):
        return None, b""
    return head[0], body


def rejection(body: bytes) -> tuple[int, int, int]:
    """(result, source, reason) of an A-ASSOCIATE-RJ body (PS3.8 §9.3.4)."""
    return body[1], body[2], body[3]


def bogus_request(called: str, calling: str, contexts: int, syntaxes: int) -> bytes:
    """An A-ASSOCIATE-RQ proposing ``contexts`` CT contexts of ``syntaxes`` made-up transfer syntaxes each
    (DICOM-rooted UIDs that are no transfer syntax: pynetdicom warns once for each)."""
    items = b"".join(
        fuzz.presentation_context(1 + 2 * (i % 128), CT_STORAGE,
                                  [f"1.2.840.10008.1.2.99.{i}.{j}" for j in range(syntaxes)])
        for i in range(contexts))
    return fuzz.associate_rq(called, calling, items=fuzz._item(0x10, APP_CONTEXT) + items + fuzz.user_information())


def command_status(sock: socket.socket, timeout_s: float = 30.0) -> int | None:
    """The Status (0000,0900) of the next DIMSE response, or None if anything else came."""
    fragments = b""
    while True:
        pdu_type, body = recv_pdu(sock, timeout_s)
        if pdu_type != 0x04:
            return None
        at = 0
        while at < len(body):
            length = struct.unpack(">I", body[at:at + 4])[0]
            control, value = body[at + 5], body[at + 6:at + 4 + length]
            at += 4 + length
            if control & 0x01:  # a command fragment (PS3.8 E.2)
                fragments += value
                if control & 0x02:
                    return int(read_dataset(io.BytesIO(fragments), True, True).Status)


def store_command(sop_class: str, sop_instance: str) -> bytes:
    """C-STORE-RQ command set (PS3.7 §9.3.1) naming ``sop_class``."""
    c = Dataset()
    c.AffectedSOPClassUID = sop_class
    c.CommandField = 0x0001
    c.MessageID = 1
    c.Priority = 0
    c.CommandDataSetType = 0x0000
    c.AffectedSOPInstanceUID = sop_instance
    return fuzz.command_set(c)


def image(sop_class: str, sop_instance: str, *, implicit: bool) -> bytes:
    """The fuzzer's 32 x 32 image with ``sop_class`` (Modality CT for CT), encoded for its context."""
    ds = read_dataset(io.BytesIO(fuzz.small_cr(sop_instance, random.Random(1))), False, True)
    ds.SOPClassUID = sop_class
    if sop_class == CT_STORAGE:
        ds.Modality = "CT"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def echoscu(port: int, *extra: str, aet: str = "MODALITY1",
            timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", *extra, "-aet", aet, "-aec", "DICOM_NODE", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=timeout_s)


def legit_sender_served(node: NodeProcess, files: list[Path]) -> tuple[float, float]:
    """DCMTK echoscu, then storescu of ``files``, both successful; returns their seconds."""
    t0 = time.monotonic()
    echo = echoscu(node.port)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    t1 = time.monotonic()
    sent = storescu(node.port, files, extra=["-v"], timeout_s=60)
    out = sent.stdout + sent.stderr
    assert out.count("Received Store Response (Success)") == len(files), out
    return round(t1 - t0, 2), round(time.monotonic() - t1, 2)


def threads_fds(node: NodeProcess) -> tuple[int, int]:
    assert node.proc is not None
    proc = psutil.Process(node.proc.pid)
    return proc.num_threads(), proc.num_fds()


def log_lines(node: NodeProcess, text: str | None = None) -> int:
    """JSON log lines of the node (all files, rotated ones too), those containing ``text`` if given."""
    n = 0
    for path in node.log_dir.glob("node.jsonl*"):
        with open(path, encoding="utf-8", errors="replace") as fh:
            n += sum(1 for line in fh if text is None or text in line)
    return n
