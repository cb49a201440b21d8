#!/usr/bin/env python
"""Protocol fuzzer for a DICOM listener on loopback: seeded mutations of valid A-ASSOCIATE-RQ and
P-DATA-TF PDUs (PS3.8 §9.3), each thrown at the listener over a fresh TCP connection.

The valid PDUs are built by hand, field by field, as PS3.8 §9.3.2 (A-ASSOCIATE-RQ) and §9.3.5
(P-DATA-TF) lay them out, so every length field and item boundary is known and can be mutated on
purpose. P-DATA cases first open a real association (the listener's A-ASSOCIATE-AC is read), then
send the mutated PDU in the established state; they carry a C-ECHO-RQ, or a C-STORE-RQ with a small
CR image so that mutated data sets reach the receiver's checks too.

Bounded: at most ``--cases`` cases and ``--seconds`` of wall time; loopback only (the script refuses
any other address). The same ``--seed`` gives the same cases. Prints what the listener answered per
mutation kind; ``--json`` prints one object.

    .venv/bin/python scripts/fuzz_association.py --port 11112 --cases 2000 --seconds 300
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid

APP_CONTEXT = "1.2.840.10008.3.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"

PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
             0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}


# -- valid PDUs, by hand (PS3.8 §9.3) ------------------------------------------------------------------

def _item(item_type: int, value: bytes) -> bytes:
    """A variable item: type, reserved, 2-byte big-endian length, value."""
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def _ae(title: str | bytes) -> bytes:
    raw = title.encode("ascii") if isinstance(title, str) else title
    return raw[:16].ljust(16, b" ")


def presentation_context(context_id: int, abstract: str, transfers: list[str]) -> bytes:
    """Presentation Context item of an A-ASSOCIATE-RQ (§9.3.2.2)."""
    body = struct.pack(">BBBB", context_id, 0, 0, 0) + _item(0x30, _uid(abstract))
    body += b"".join(_item(0x40, _uid(ts)) for ts in transfers)
    return _item(0x20, body)


def user_information(max_pdu: int = 16384, impl_uid: str = "1.2.826.0.1.3680043.10.1452.77",
                     version: bytes = b"FUZZ_010") -> bytes:
    """User Information item (§9.3.2.3): maximum length, implementation class UID and version name."""
    sub = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, _uid(impl_uid)) + _item(0x55, version)
    return _item(0x50, sub)


def associate_rq(called: str | bytes = "DICOM_NODE", calling: str | bytes = "FUZZER", *,
                 items: bytes | None = None, version: int = 1) -> bytes:
    """A-ASSOCIATE-RQ PDU (§9.3.2) proposing Verification (implicit VR) and CR (explicit VR little endian)."""
    if items is None:
        items = (_item(0x10, _uid(APP_CONTEXT)) + presentation_context(1, VERIFICATION, [IMPLICIT_LE])
                 + presentation_context(3, CR_STORAGE, [EXPLICIT_LE]) + user_information())
    fixed = struct.pack(">HH", version, 0) + _ae(called) + _ae(calling) + bytes(32)
    body = fixed + items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def pdv(context_id: int, control: int, fragment: bytes) -> bytes:
    """Presentation Data Value item (§9.3.5.1): length, context ID, message control header, fragment."""
    return struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment


def p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def release_rq() -> bytes:
    return struct.pack(">BBII", 0x05, 0, 4, 0)


def _implicit(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, True
    write_dataset(buf, ds)
    return buf.getvalue()


def command_set(ds: Dataset) -> bytes:
    """A DIMSE command set (PS3.7 §6.3, implicit VR little endian) with its group length first."""
    body = _implicit(ds)
    return _implicit(_group_length(len(body))) + body


def _group_length(n: int) -> Dataset:
    g = Dataset()
    g.add_new(0x00000000, "UL", n)
    return g


def echo_rq(message_id: int = 1) -> bytes:
    """C-ECHO-RQ command set (PS3.7 §9.3.5)."""
    c = Dataset()
    c.AffectedSOPClassUID = VERIFICATION
    c.CommandField = 0x0030
    c.MessageID = message_id
    c.CommandDataSetType = 0x0101
    return command_set(c)


def store_rq(sop_instance: str, message_id: int = 1) -> bytes:
    """C-STORE-RQ command set (PS3.7 §9.3.1) for a CR image."""
    c = Dataset()
    c.AffectedSOPClassUID = CR_STORAGE
    c.CommandField = 0x0001
    c.MessageID = message_id
    c.Priority = 0
    c.CommandDataSetType = 0x0000
    c.AffectedSOPInstanceUID = sop_instance
    return command_set(c)


def small_cr(sop_instance: str, rng: random.Random) -> bytes:
    """A 32 x 32 CR image data set in explicit VR little endian (the CR context's first syntax)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CR_STORAGE, sop_instance
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "FUZZ", "CR", "KNEE", "AP"
    ds.Rows = ds.Columns = 32
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.random.default_rng(rng.randrange(2**32)).integers(0, 4096, (32, 32), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


# -- mutations -----------------------------------------------------------------------------------------

_SPECIAL_32 = (0, 1, 2, 6, 0x7F, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF)
_SPECIAL_16 = (0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF)


def _flip(data: bytes, rng: random.Random, start: int = 0) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(start, len(b))] = rng.randrange(256)
    return bytes(b)


def _fix_pdu_length(data: bytes) -> bytes:
    return data[:2] + struct.pack(">I", len(data) - 6) + data[6:]


def _set_pdu_length(data: bytes, rng: random.Random) -> bytes:
    true = len(data) - 6
    value = rng.choice([*_SPECIAL_32, true - 1, true + 1, true + 4096])
    return data[:2] + struct.pack(">I", value & 0xFFFFFFFF) + data[6:]


def _insert(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(6, len(data))
    return _fix_pdu_length(data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:])


def _delete(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(6, len(data) - 1)
    return _fix_pdu_length(data[:at] + data[at + rng.randint(1, 32):])


def _random_title(rng: random.Random) -> bytes:
    return rng.choice([b"", b" " * 16, b"\x00" * 16, rng.randbytes(16), "ÄÖÜ\\*?".encode("latin-1"),
                       b"DICOM_NODE\x00\x00", b"A" * 16])


def _random_uid(rng: random.Random) -> str:
    return rng.choice(["", "1", "1..2", "0" * 64, "1." + "2" * 80, "1.2.840.10008.1.2.1\x00",
                       "abc.def", "1.2.840.10008.5.1.4.1.1.1", generate_uid(), "\xff\xfe"])


def _ascii(text: str) -> bytes:
    return text.encode("latin-1", errors="replace")


def _associate_variants(rng: random.Random) -> tuple[str, bytes]:
    """One mutated A-ASSOCIATE-RQ and the name of its mutation."""
    valid = associate_rq()
    kind = rng.choice(["flip", "flip-header", "pdu-length", "item-length", "truncate", "append", "insert",
                       "delete", "pdu-type", "version", "ae-titles", "many-contexts", "context-ids",
                       "bad-uids", "user-info", "no-app-context", "garbage", "two-requests"])
    if kind == "flip":
        return kind, _flip(valid, rng, 6)
    if kind == "flip-header":
        return kind, _flip(valid[:74], rng) + valid[74:]
    if kind == "pdu-length":
        return kind, _set_pdu_length(valid, rng)
    if kind == "item-length":
        # the items start at 74; pick one of the item headers this builder wrote and break its length
        offsets = []
        at = 74
        while at + 4 <= len(valid):
            offsets.append(at)
            at += 4 + struct.unpack(">H", valid[at + 2:at + 4])[0]
        at = rng.choice(offsets)
        b = bytearray(valid)
        b[at + 2:at + 4] = struct.pack(">H", rng.choice(_SPECIAL_16))
        return kind, bytes(b)
    if kind == "truncate":
        return kind, valid[: rng.randrange(1, len(valid))]
    if kind == "append":
        extra = rng.randbytes(rng.randint(1, 512))
        return kind, (_fix_pdu_length(valid + extra) if rng.random() < 0.5 else valid + extra)
    if kind == "insert":
        return kind, _insert(valid, rng)
    if kind == "delete":
        return kind, _delete(valid, rng)
    if kind == "pdu-type":
        return kind, bytes([rng.choice([0x00, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x10, 0xFF])]) + valid[1:]
    if kind == "version":
        return kind, associate_rq(version=rng.choice([0, 2, 0x8000, 0xFFFF]))
    if kind == "ae-titles":
        return kind, associate_rq(_random_title(rng), _random_title(rng))
    if kind == "many-contexts":
        n = rng.choice([0, 128, 129, 255, 300])
        items = _item(0x10, _uid(APP_CONTEXT)) + b"".join(
            presentation_context((2 * i + 1) & 0xFF, CR_STORAGE, [EXPLICIT_LE]) for i in range(n)) + user_information()
        return kind, associate_rq(items=items)
    if kind == "context-ids":
        ids = [rng.choice([0, 2, 1, 1, 255, 256 & 0xFF]) for _ in range(rng.randint(1, 4))]
        items = _item(0x10, _uid(APP_CONTEXT)) + b"".join(
            presentation_context(i, rng.choice([VERIFICATION, CR_STORAGE]), rng.choice([[], [IMPLICIT_LE],
                                                                                         [EXPLICIT_LE] * 3]))
            for i in ids) + user_information()
        return kind, associate_rq(items=items)
    if kind == "bad-uids":
        items = (_item(0x10, _ascii(_random_uid(rng))) + _item(0x20, struct.pack(">BBBB", 1, 0, 0, 0)
                 + _item(0x30, _ascii(_random_uid(rng))) + _item(0x40, _ascii(_random_uid(rng))))
                 + user_information(impl_uid=rng.choice(["", "1." + "9" * 70, "x"])))
        return kind, associate_rq(items=items)
    if kind == "user-info":
        sub = rng.choice([
            b"",                                                        # no maximum length
            _item(0x51, struct.pack(">I", rng.choice([0, 1, 6, 0xFFFFFFFF]))),
            _item(0x51, b"\x00\x01"),                                   # maximum length of 2 bytes
            _item(0x51, struct.pack(">I", 16384)) + _item(0x55, rng.randbytes(rng.randint(0, 300))),
            _item(0x51, struct.pack(">I", 16384)) + _item(0x5F, rng.randbytes(40)),   # unknown sub-item
            _item(0x51, struct.pack(">I", 16384)) + _item(0x58, rng.randbytes(rng.randint(0, 80))),  # identity
            _item(0x51, struct.pack(">I", 16384)) + _item(0x53, b"\x00"),   # async window, too short
            _item(0x51, struct.pack(">I", 16384)) + _item(0x54, b"\x00\x05abc"),  # role selection, bad
        ])
        items = (_item(0x10, _uid(APP_CONTEXT)) + presentation_context(1, VERIFICATION, [IMPLICIT_LE])
                 + _item(0x50, sub))
        return kind, associate_rq(items=items)
    if kind == "no-app-context":
        items = presentation_context(1, VERIFICATION, [IMPLICIT_LE]) + user_information()
        return kind, associate_rq(items=items)
    if kind == "garbage":
        return kind, rng.randbytes(rng.randint(1, 2048))
    return kind, valid + valid  # two-requests


def _pdata_variants(rng: random.Random) -> tuple[str, bytes, bool]:
    """A mutated P-DATA-TF for the established state; the flag says it carries a C-STORE."""
    uid = generate_uid()
    store = rng.random() < 0.5
    if store:
        cmd, data = store_rq(uid), small_cr(uid, rng)
        valid = p_data(pdv(3, 0x03, cmd)) + p_data(pdv(3, 0x02, data))
    else:
        cmd, data = echo_rq(), b""
        valid = p_data(pdv(1, 0x03, cmd))
    kind = rng.choice(["flip", "pdu-length", "pdv-length", "context-id", "control-header", "command-flip",
                       "command-field", "data-flip", "data-truncate", "split-wrong", "data-first", "truncate",
                       "pdu-type", "associate-again", "release-then-data", "empty-pdv"])
    if kind == "flip":
        return kind, _flip(valid, rng), store
    if kind == "pdu-length":
        return kind, _set_pdu_length(valid, rng), store
    if kind == "pdv-length":
        b = bytearray(valid)
        b[6:10] = struct.pack(">I", rng.choice([*_SPECIAL_32, len(cmd) + 1, len(cmd) + 3]))
        return kind, bytes(b), store
    if kind == "context-id":
        b = bytearray(valid)
        b[10] = rng.choice([0, 2, 5, 7, 255])
        return kind, bytes(b), store
    if kind == "control-header":
        b = bytearray(valid)
        b[11] = rng.choice([0x00, 0x01, 0x02, 0x04, 0x07, 0xFF])
        return kind, bytes(b), store
    if kind == "command-flip":
        return kind, p_data(pdv(3 if store else 1, 0x03, _flip(cmd, rng))) + (
            p_data(pdv(3, 0x02, data)) if store else b""), store
    if kind == "command-field":
        c = Dataset()
        c.AffectedSOPClassUID = rng.choice([VERIFICATION, CR_STORAGE, "1.2.3"])
        c.CommandField = rng.choice([0x0000, 0x0020, 0x0FFF, 0x8030, 0xFFFF, 0x0021, 0x0010])
        c.MessageID = rng.randrange(65536)
        c.CommandDataSetType = rng.choice([0x0101, 0x0000, 0x1234])
        return kind, p_data(pdv(1, 0x03, command_set(c))), False
    if kind == "data-flip":
        if not store:
            return kind, valid, store
        return kind, p_data(pdv(3, 0x03, cmd)) + p_data(pdv(3, 0x02, _flip(data, rng))), store
    if kind == "data-truncate":
        if not store:
            return kind, valid[:-3], store
        return kind, p_data(pdv(3, 0x03, cmd)) + p_data(pdv(3, 0x02, data[: rng.randrange(0, len(data))])), store
    if kind == "split-wrong":
        half = len(cmd) // 2
        cid = 3 if store else 1
        # the first half says "last fragment", the second half arrives as another command
        return kind, p_data(pdv(cid, 0x03, cmd[:half])) + p_data(pdv(cid, 0x03, cmd[half:])), store
    if kind == "data-first":
        return kind, (p_data(pdv(3, 0x02, data or b"\x00" * 8)) + p_data(pdv(3, 0x03, store_rq(uid)))), True
    if kind == "truncate":
        return kind, valid[: rng.randrange(1, len(valid))], store
    if kind == "pdu-type":
        return kind, bytes([rng.choice([0x00, 0x01, 0x02, 0x03, 0x06, 0x08, 0xFF])]) + valid[1:], store
    if kind == "associate-again":
        return kind, associate_rq(), False
    if kind == "release-then-data":
        return kind, release_rq() + valid, store
    return kind, p_data(struct.pack(">I", 0)), store  # empty-pdv: a PDV item of length 0


# -- running -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    number: int
    target: str        # "associate" (a mutated A-ASSOCIATE-RQ on a fresh connection) or "p-data"
    mutation: str
    payload: bytes
    store: bool = False


def make_cases(seed: int, n: int) -> Iterator[Case]:
    """``n`` cases, the same for the same seed: two in three mutate the request, one in three P-DATA."""
    rng = random.Random(seed)
    for i in range(n):
        if rng.random() < 2 / 3:
            kind, payload = _associate_variants(rng)
            yield Case(i, "associate", kind, payload)
        else:
            kind, payload, store = _pdata_variants(rng)
            yield Case(i, "p-data", kind, payload, store)


def _read_pdu(sock: socket.socket, timeout_s: float) -> str:
    """The type of the next PDU the listener sends, or closed / reset / silent."""
    sock.settimeout(timeout_s)
    try:
        head = sock.recv(6)
    except TimeoutError:
        return "silent"
    except ConnectionResetError:
        return "reset"
    except OSError as exc:
        return f"error:{type(exc).__name__}"
    if not head:
        return "closed"
    name = PDU_NAMES.get(head[0], f"unknown-0x{head[0]:02X}")
    if len(head) == 6:
        want = struct.unpack(">I", head[2:6])[0]
        deadline = time.monotonic() + timeout_s
        while want > 0 and time.monotonic() < deadline:
            try:
                chunk = sock.recv(min(want, 65536))
            except OSError:
                break
            if not chunk:
                break
            want -= len(chunk)
    return name


def _send(sock: socket.socket, payload: bytes) -> bool:
    try:
        sock.sendall(payload)
        return True
    except OSError:
        return False


def run_case(host: str, port: int, case: Case, *, called: str = "DICOM_NODE", timeout_s: float = 0.25) -> str:
    """Throw one case at the listener; returns what it answered (e.g. ``A-ASSOCIATE-RJ``, ``closed``)."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if case.target == "p-data":
            if not _send(sock, associate_rq(called)):
                return "setup-failed"
            answer = _read_pdu(sock, 5.0)
            if answer != "A-ASSOCIATE-AC":
                return f"setup-{answer}"
        if not _send(sock, case.payload):
            return "send-failed"
        answer = _read_pdu(sock, timeout_s)
        if case.target == "p-data" and answer == "P-DATA-TF":
            _send(sock, release_rq())  # be polite after a served request
            _read_pdu(sock, timeout_s)
        return answer


@dataclass
class FuzzReport:
    seed: int
    cases: int = 0
    seconds: float = 0.0
    by_target: Counter[str] = field(default_factory=Counter)
    by_mutation: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    stores_sent: int = 0
    stopped_by: str = "cases"

    def as_dict(self) -> dict[str, object]:
        return {"seed": self.seed, "cases": self.cases, "seconds": round(self.seconds, 1),
                "stopped_by": self.stopped_by, "stores_sent": self.stores_sent,
                "by_target": dict(self.by_target), "by_mutation": dict(sorted(self.by_mutation.items())),
                "answers": dict(self.answers.most_common())}


def check_loopback(host: str) -> None:
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"{host} is not a loopback address: this fuzzer only runs against this machine")


def fuzz(host: str, port: int, *, seed: int, cases: int, seconds: float, called: str = "DICOM_NODE",
         timeout_s: float = 0.25, alive: Callable[[], bool] | None = None) -> FuzzReport:
    """Run up to ``cases`` cases for at most ``seconds``; stop early when ``alive()`` says the target died."""
    check_loopback(host)
    report = FuzzReport(seed=seed)
    t0 = time.monotonic()
    for case in make_cases(seed, cases):
        if time.monotonic() - t0 > seconds:
            report.stopped_by = "time"
            break
        if alive is not None and not alive():
            report.stopped_by = "target died"
            break
        try:
            answer = run_case(host, port, case, called=called, timeout_s=timeout_s)
        except OSError as exc:  # connection refused: the listener is gone or its backlog is full
            answer = f"connect-{type(exc).__name__}"
        report.cases += 1
        report.by_target[case.target] += 1
        report.by_mutation[f"{case.target}:{case.mutation}"] += 1
        report.answers[f"{case.target}:{answer}"] += 1
        report.stores_sent += int(case.store)
    report.seconds = time.monotonic() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1", help="loopback address of the listener")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--called", default="DICOM_NODE", help="called AE title for the set-up of P-DATA cases")
    ap.add_argument("--seed", type=int, default=20260407)
    ap.add_argument("--cases", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = fuzz(args.host, args.port, seed=args.seed, cases=args.cases, seconds=args.seconds, called=args.called)
    if args.json:
        print(json.dumps(report.as_dict(), indent=1))
        return 0
    print(f"{report.cases} cases in {report.seconds:.1f} s (seed {report.seed}, stopped by {report.stopped_by})")
    for answer, n in report.answers.most_common():
        print(f"  {n:5d}  {answer}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
