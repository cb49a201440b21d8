"""The PROXY protocol: the real sender's address, from the load balancer in front (issue 13).

Behind HAProxy in TCP mode every connection comes from the balancer's address, so the calling-peer
policy (``peers.allowed`` hosts, ``node.max_pending_per_host``, ``peers.max_associations_per_peer``)
and the audit trail would judge the balancer, not the modality. With ``send-proxy-v2`` (or
``send-proxy``) HAProxy writes one header before the first byte of the connection saying whom it
relays; from an address listed in ``node.proxy_protocol`` the node reads that header first and takes
its source as the peer's address (:mod:`dicom_node.guard`).

Specification: "The PROXY protocol, Versions 1 & 2", HAProxy Technologies,
https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt. What is read here:

- **Version 1** (section 2.1), one text line of at most 107 bytes ending in CRLF:
  ``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n``, or ``PROXY UNKNOWN[ anything]\\r\\n``, for which
  the spec says to use the connection's own addresses.
- **Version 2** (section 2.2), binary: the 12-byte signature ``\\r\\n\\r\\n\\0\\r\\nQUIT\\n``, a byte of version
  (2) and command (0 LOCAL, 1 PROXY), a byte of address family and transport, a 16-bit length, and
  that many bytes: the addresses, then type-length-value vectors (TLVs, 2.2.7), which are skipped
  (their layout is checked, their values, the CRC32C of ``PP2_TYPE_CRC32C`` included, are not).
  LOCAL (HAProxy's health checks) means: use the connection's own addresses.

Refused: anything else before the header (:class:`MissingHeader`), a header that ends before it is
whole (:class:`IncompleteHeader`), and (:class:`InvalidHeader`) a malformed line, another version or
command, a v2 length over :data:`V2_MAX_LENGTH`, and a PROXY command for anything but TCP over IPv4 or
IPv6 (UDP, UNIX sockets, UNSPEC: section 2.2 lets a receiver refuse those; a DICOM peer is TCP).

The reader never takes a byte past the header: what follows is the A-ASSOCIATE-RQ (or a TLS
ClientHello), read by pynetdicom.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
#: Longest version 1 line, CRLF included (section 2.1: "PROXY UNKNOWN" with two IPv6 addresses and ports).
V1_MAX_BYTES = 107
V1_MIN_BYTES = len(b"PROXY UNKNOWN\r\n")
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_BYTES = 16  # signature, version and command, family and transport, length
#: Longest version 2 address block with its TLVs read. HAProxy's own, with every ``send-proxy-v2-ssl*``
#: TLV, an authority and a unique id, stay well under 1 KiB; the spec allows 65535.
V2_MAX_LENGTH = 4096

_LOCAL, _PROXY = 0x0, 0x1
_AF_INET, _AF_INET6 = 0x1, 0x2
_STREAM = 0x1
_ADDRESS_BYTES = {_AF_INET: 12, _AF_INET6: 36}  # two addresses and two ports (section 2.2)
_DETECT_BYTES = len(V1_PREFIX)  # enough to tell v1, v2 and neither apart


class ProxyHeaderError(ValueError):
    """A connection from a balancer that did not start with a valid PROXY header."""

    #: what :class:`dicom_node.guard.ConnectionGate` counts the closed connection as
    outcome = "proxy_header_invalid"


class MissingHeader(ProxyHeaderError):
    """The first bytes are not a PROXY header's signature (a sender not behind the balancer)."""

    outcome = "proxy_header_missing"


class IncompleteHeader(ProxyHeaderError):
    """The connection ended, or its deadline passed, before the header was whole."""

    outcome = "proxy_header_incomplete"


class InvalidHeader(ProxyHeaderError):
    """A signature, then something this module does not read (see the module's docstring)."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header. ``source`` is None for LOCAL (v2) and UNKNOWN (v1): the connection's own
    address stands."""

    version: int
    length: int  # bytes of the header, CRLF or TLVs included
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def local(self) -> bool:
        return self.source is None


def parse(data: bytes) -> ProxyHeader:
    """The header at the start of ``data`` (which may go on past it: ``length`` says where it ends)."""
    if _needed(data):
        raise IncompleteHeader(f"the PROXY header ends before it is whole ({len(data)} bytes)")
    if data.startswith(V1_PREFIX):
        return _parse_v1(data[:data.index(b"\r\n") + 2])
    (length,) = struct.unpack_from(">H", data, 14)
    return _parse_v2(data[:V2_FIXED_BYTES + length])


def read(recv: Callable[[int], bytes]) -> ProxyHeader:
    """Read one header from a stream and nothing after it.

    ``recv(n)`` returns at most ``n`` bytes, ``b""`` at the end (or at a deadline). A v2 length over
    :data:`V2_MAX_LENGTH` and anything that is not a PROXY header are refused on their first bytes,
    before more is read.
    """
    buf = b""
    while (n := _needed(buf)) > 0:
        chunk = recv(n)
        if not chunk:
            raise IncompleteHeader(f"the connection ended {len(buf)} bytes into its PROXY header"
                                   if buf else "the connection ended before its PROXY header")
        buf += chunk
    return parse(buf)


def _needed(buf: bytes) -> int:
    """More bytes the header needs, at least (0: ``buf`` holds it whole); never more than it has left,
    so a reader asking for this many takes nothing behind it. Raises as soon as ``buf`` cannot be the
    start of a header this module reads."""
    if len(buf) < _DETECT_BYTES:
        if not (V1_PREFIX.startswith(buf) or V2_SIGNATURE.startswith(buf)):
            raise MissingHeader("the connection does not start with a PROXY header")
        return _DETECT_BYTES - len(buf)
    if buf.startswith(V1_PREFIX):
        if buf.find(b"\r\n", 0, V1_MAX_BYTES) >= 0:
            return 0
        line = buf[:V1_MAX_BYTES]
        if len(line) >= V1_MAX_BYTES or b"\n" in line or b"\r" in line[:-1]:
            raise InvalidHeader(f"a PROXY v1 line must end in CRLF within {V1_MAX_BYTES} bytes")
        return max(1, V1_MIN_BYTES - len(buf))
    head = buf[:V2_FIXED_BYTES]
    if not V2_SIGNATURE.startswith(head[:len(V2_SIGNATURE)]):
        raise MissingHeader("the connection does not start with a PROXY header")
    if len(head) < V2_FIXED_BYTES:
        return V2_FIXED_BYTES - len(head)
    version, length = head[12] >> 4, struct.unpack_from(">H", head, 14)[0]
    if version != 2:
        raise InvalidHeader(f"PROXY protocol version {version} after a v2 signature (only 2 is defined)")
    if length > V2_MAX_LENGTH:
        raise InvalidHeader(f"a PROXY v2 header of {length} bytes after its first 16 (at most {V2_MAX_LENGTH} read)")
    return max(0, V2_FIXED_BYTES + length - len(buf))


def _parse_v1(line: bytes) -> ProxyHeader:
    text = line[len(V1_PREFIX):-2]
    if not all(0x20 <= b < 0x7F for b in text):
        raise InvalidHeader("a PROXY v1 line holds printable ASCII only")
    fields = text.decode("ascii").split(" ")
    if fields[0] == "UNKNOWN":  # section 2.1: the rest of the line is ignored, the real addresses used
        return ProxyHeader(version=1, length=len(line))
    if fields[0] not in ("TCP4", "TCP6") or len(fields) != 5:
        raise InvalidHeader("a PROXY v1 line is 'PROXY TCP4|TCP6 SRC DST SPORT DPORT' or 'PROXY UNKNOWN'")
    family = 4 if fields[0] == "TCP4" else 6
    src, dst = _v1_address(fields[1], family), _v1_address(fields[2], family)
    return ProxyHeader(version=1, length=len(line), source=(src, _v1_port(fields[3])),
                       destination=(dst, _v1_port(fields[4])))


def _v1_address(text: str, family: int) -> str:
    try:
        addr = ipaddress.IPv4Address(text) if family == 4 else ipaddress.IPv6Address(text)
    except ValueError:
        raise InvalidHeader(f"not an IPv{family} address in a PROXY v1 line: {text[:45]!r}") from None
    if "%" in text:  # a scope id is not an address on the wire
        raise InvalidHeader(f"not an IPv6 address in a PROXY v1 line: {text[:45]!r}")
    return str(addr)


def _v1_port(text: str) -> int:
    if not (text.isdigit() and len(text) <= 5 and (text == "0" or not text.startswith("0"))) or int(text) > 65535:
        raise InvalidHeader(f"not a port (0-65535) in a PROXY v1 line: {text[:8]!r}")
    return int(text)


def _parse_v2(header: bytes) -> ProxyHeader:
    command, family, transport = header[12] & 0x0F, header[13] >> 4, header[13] & 0x0F
    body = header[V2_FIXED_BYTES:]
    if command == _LOCAL:  # section 2.2: accept, use the real endpoints, discard the address block
        return ProxyHeader(version=2, length=len(header))
    if command != _PROXY:
        raise InvalidHeader(f"PROXY v2 command {command:#x} (0 LOCAL and 1 PROXY are defined)")
    size = _ADDRESS_BYTES.get(family)
    if size is None or transport != _STREAM:
        raise InvalidHeader(f"PROXY v2 family/transport {header[13]:#04x}: only TCP over IPv4 (0x11) or IPv6 (0x21)")
    if len(body) < size:
        raise InvalidHeader(f"PROXY v2 length {len(body)} is shorter than its addresses ({size} bytes)")
    n = size // 2 - 2  # bytes of one address
    ip = ipaddress.IPv4Address if family == _AF_INET else ipaddress.IPv6Address
    src, dst = str(ip(body[:n])), str(ip(body[n:2 * n]))
    sport, dport = struct.unpack_from(">HH", body, 2 * n)
    return ProxyHeader(version=2, length=len(header), source=(src, sport), destination=(dst, dport),
                       tlvs=_tlvs(body[size:]))


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Section 2.2.7: type (1 byte), length (2 bytes), value; they fill the rest of the header."""
    out: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        if at + 3 > len(data):
            raise InvalidHeader("a PROXY v2 TLV is cut off by the header's length")
        kind, size = data[at], struct.unpack_from(">H", data, at + 1)[0]
        if at + 3 + size > len(data):
            raise InvalidHeader("a PROXY v2 TLV is longer than the header")
        out.append((kind, bytes(data[at + 3:at + 3 + size])))
        at += 3 + size
    return tuple(out)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(items: Iterable[str]) -> tuple[Network, ...]:
    """``node.proxy_protocol`` as networks (validated at load by :mod:`dicom_node.config`)."""
    return tuple(ipaddress.ip_network(item, strict=True) for item in items)


def trusted(host: str, sources: tuple[Network, ...]) -> bool:
    """Whether a connection from ``host`` must start with a PROXY header (an IPv4 address seen on a
    dual-stack listener as ``::ffff:a.b.c.d`` counts as itself)."""
    if not sources:
        return False
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == net.version and addr in net for net in sources)
