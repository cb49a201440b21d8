"""The PROXY protocol parser (dicom_node.proxy_protocol) against the spec's own examples and layouts
(https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt, sections 2.1 and 2.2), and
``node.proxy_protocol``'s validation. The headers here are written byte by byte from the spec, not by
the module under test; the node behind a real HAProxy is tests/cluster/test_cluster_proxy.py."""

from __future__ import annotations

import socket
import struct

import pytest

from dicom_node.config import ConfigError, parse_config
from dicom_node.proxy_protocol import (
    V1_MAX_BYTES,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    IncompleteHeader,
    InvalidHeader,
    MissingHeader,
    ProxyHeader,
    networks,
    parse,
    read,
    trusted,
)

#: what follows the header on a real connection: the start of an A-ASSOCIATE-RQ (PS3.8 9.3.2)
AFTER = b"\x01\x00\x00\x00\x00\xca\x00\x01"


def v2(command: int, family: int, body: bytes, *, version: int = 2, length: int | None = None) -> bytes:
    """A v2 header as section 2.2 lays it out: signature, ver_cmd, fam, len (network order), body."""
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack(">H", len(body) if length is None
                                                                                else length) + body


def ipv4_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return socket.inet_pton(socket.AF_INET, src) + socket.inet_pton(socket.AF_INET, dst) + struct.pack(">HH", sport,
                                                                                                       dport)


def ipv6_block(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack(">HH", sport, dport))


class Stream:
    """A connection's bytes, handed out as ``recv(n)`` does: at most ``n``, at most ``chunk`` at a time."""

    def __init__(self, data: bytes, chunk: int = 65536) -> None:
        self.data, self.chunk, self.asked = data, chunk, 0

    def recv(self, n: int) -> bytes:
        self.asked += 1
        out, self.data = self.data[:min(n, self.chunk)], self.data[min(n, self.chunk):]
        return out


# Version 1 (section 2.1)

def test_v1_tcp4_gives_the_source_and_leaves_what_follows() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"  # the spec's own example
    assert parse(line + AFTER) == ProxyHeader(version=1, length=len(line), source=("192.168.0.1", 56324),
                                              destination=("192.168.0.11", 443))
    stream = Stream(line + AFTER)
    assert read(stream.recv).source == ("192.168.0.1", 56324)
    assert stream.data == AFTER  # nothing of the A-ASSOCIATE-RQ was taken


def test_v1_tcp6() -> None:
    line = b"PROXY TCP6 2001:db8::7 2001:db8:0:0:0:0:0:1 65535 11112\r\n"
    header = parse(line)
    assert header.source == ("2001:db8::7", 65535) and header.destination == ("2001:db8::1", 11112)
    assert not header.local


@pytest.mark.parametrize("line", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
])
def test_v1_unknown_means_the_connections_own_address(line: bytes) -> None:
    assert len(line) <= V1_MAX_BYTES
    header = parse(line + AFTER)
    assert header.local and header.source is None and header.length == len(line)


@pytest.mark.parametrize("line", [
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n",        # a field missing
    b"PROXY TCP4 2001:db8::7 192.168.0.11 1 2\r\n",          # IPv6 under TCP4
    b"PROXY TCP6 192.168.0.1 ::1 1 2\r\n",                   # IPv4 under TCP6
    b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 2\r\n",      # port out of range
    b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 2\r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 01 2\r\n",         # leading zero
    b"PROXY TCP4 192.168.000.1 192.168.0.11 1 2\r\n",
    b"PROXY TCP4 192.168.0.1  192.168.0.11 1 2\r\n",         # two blanks
    b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n",
    b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",                  # a scope id
    b"PROXY \xff\r\n",
    b"PROXY \r\n",
    b"PROXY TCP4 192.168.0.1 192.168.0.11 1 2\n",           # LF without CR
    b"PROXY TCP4 192.168.0.1\r192.168.0.11 1 2\r\n",
])
def test_v1_malformed_lines_are_refused(line: bytes) -> None:
    with pytest.raises(InvalidHeader):
        parse(line + AFTER)


def test_v1_longer_than_107_bytes_is_refused_without_reading_on() -> None:
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX_BYTES - len(b"PROXY UNKNOWN ") - 2) + b"\r\n"
    assert len(longest) == V1_MAX_BYTES and parse(longest).local
    endless = Stream(b"PROXY UNKNOWN " + b"x" * 100_000)
    with pytest.raises(InvalidHeader, match="107"):
        read(endless.recv)
    assert len(endless.data) == 100_000 + len(b"PROXY UNKNOWN ") - V1_MAX_BYTES


# Version 2 (section 2.2)

def test_v2_proxy_ipv4() -> None:
    header = v2(0x1, 0x11, ipv4_block("127.0.0.2", "127.0.0.1", 40000, 11112))
    assert parse(header + AFTER) == ProxyHeader(version=2, length=28, source=("127.0.0.2", 40000),
                                                destination=("127.0.0.1", 11112))
    stream = Stream(header + AFTER, chunk=3)  # a header arriving a few bytes at a time
    assert read(stream.recv).source == ("127.0.0.2", 40000)
    assert stream.data == AFTER


def test_v2_proxy_ipv6() -> None:
    header = v2(0x1, 0x21, ipv6_block("2001:db8::7", "::1", 1, 11112))
    parsed = parse(header)
    assert parsed.source == ("2001:db8::7", 1) and parsed.destination == ("::1", 11112) and parsed.length == 52


def test_v2_local_uses_the_connections_own_address_and_ignores_its_block() -> None:
    """HAProxy's health check with ``send-proxy-v2``: LOCAL, family UNSPEC, length 0 (captured from
    HAProxy 2.6: 0d0a0d0a000d0a515549540a 20 00 0000)."""
    captured = bytes.fromhex("0d0a0d0a000d0a515549540a20000000")
    assert parse(captured + AFTER) == ProxyHeader(version=2, length=16)
    assert parse(captured).local
    with_block = v2(0x0, 0x11, ipv4_block("10.9.9.9", "10.0.0.1", 1, 2))  # discarded, even with addresses
    assert parse(with_block).source is None


def test_v2_tlvs_are_skipped() -> None:
    tlvs = (bytes([0x01]) + struct.pack(">H", 8) + b"dicom/1."       # PP2_TYPE_ALPN
            + bytes([0x04]) + struct.pack(">H", 0)                   # PP2_TYPE_NOOP, empty
            + bytes([0x05]) + struct.pack(">H", 4) + b"\x00\x01\x02\x03")  # PP2_TYPE_UNIQUE_ID
    header = v2(0x1, 0x11, ipv4_block("192.0.2.1", "192.0.2.2", 5, 6) + tlvs)
    stream = Stream(header + AFTER)
    parsed = read(stream.recv)
    assert parsed.source == ("192.0.2.1", 5)
    assert parsed.tlvs == ((0x01, b"dicom/1."), (0x04, b""), (0x05, b"\x00\x01\x02\x03"))
    assert stream.data == AFTER


@pytest.mark.parametrize("tail", [b"\x01\x00", b"\x01\x00\x09abc"])
def test_v2_tlv_past_the_header_is_refused(tail: bytes) -> None:
    with pytest.raises(InvalidHeader, match="TLV"):
        parse(v2(0x1, 0x11, ipv4_block("192.0.2.1", "192.0.2.2", 5, 6) + tail))


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",                # version 1
    v2(0x1, 0x11, ipv4_block("127.0.0.2", "127.0.0.1", 40000, 11112)),  # version 2
], ids=["v1", "v2"])
def test_truncated(header: bytes) -> None:
    for n in range(len(header)):
        with pytest.raises(IncompleteHeader):
            parse(header[:n])
        with pytest.raises(IncompleteHeader):
            read(Stream(header[:n]).recv)


def test_v2_length_over_the_limit_is_refused_before_its_body_is_read() -> None:
    stream = Stream(v2(0x1, 0x11, b"", length=V2_MAX_LENGTH + 1) + b"\x00" * 70_000)
    with pytest.raises(InvalidHeader, match="at most"):
        read(stream.recv)
    assert len(stream.data) == 70_000  # only the 16 fixed bytes were taken
    body = ipv4_block("127.0.0.2", "127.0.0.1", 1, 2)
    at_limit = v2(0x1, 0x11, body + bytes([0x04]) + struct.pack(">H", V2_MAX_LENGTH - len(body) - 3)
                  + b"\x00" * (V2_MAX_LENGTH - len(body) - 3))
    assert parse(at_limit).length == 16 + V2_MAX_LENGTH


@pytest.mark.parametrize("header, error", [
    (b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x0c" + b"\x00" * 12, MissingHeader),  # bad signature
    (v2(0x1, 0x11, b"\x00" * 12, version=1), InvalidHeader),      # version 1 in a v2 header
    (v2(0x2, 0x11, b"\x00" * 12), InvalidHeader),                 # no such command
    (v2(0x1, 0x11, b"\x00" * 11), InvalidHeader),                 # shorter than its IPv4 addresses
    (v2(0x1, 0x21, b"\x00" * 12), InvalidHeader),                 # shorter than its IPv6 addresses
    (v2(0x1, 0x12, b"\x00" * 12), InvalidHeader),                 # UDP
    (v2(0x1, 0x31, b"\x00" * 216), InvalidHeader),                # a UNIX socket
    (v2(0x1, 0x00, b""), InvalidHeader),                          # PROXY with UNSPEC
])
def test_v2_headers_this_node_does_not_read_are_refused(header: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse(header + AFTER)
    with pytest.raises(error):
        read(Stream(header + AFTER).recv)


@pytest.mark.parametrize("first", [
    AFTER,                                  # an A-ASSOCIATE-RQ straight away: a sender not behind the balancer
    b"\x16\x03\x01\x02\x00\x01",            # a TLS ClientHello
    b"GET / HTTP/1.1\r\n",
    b"proxy TCP4 ",                         # v1 is upper case
    b"\r\n\r\n\x01",
])
def test_anything_else_first_is_a_missing_header(first: bytes) -> None:
    stream = Stream(first + b"\x00" * 200)
    with pytest.raises(MissingHeader):
        read(stream.recv)
    assert stream.asked == 1  # refused on its first bytes
    trickle = Stream(first + b"\x00" * 200, chunk=1)  # one byte at a time, as a stalling peer sends
    with pytest.raises(MissingHeader):
        read(trickle.recv)
    assert trickle.asked <= 5  # refused on the first byte that no header starts with


# node.proxy_protocol and who must send a header

def test_trusted_sources() -> None:
    nets = networks(["127.0.0.1/32", "10.0.0.0/24", "2001:db8::/32"])
    assert trusted("127.0.0.1", nets) and trusted("10.0.0.200", nets) and trusted("2001:db8::1", nets)
    assert trusted("::ffff:10.0.0.5", nets)  # an IPv4 peer on a dual-stack listener
    assert not trusted("127.0.0.2", nets) and not trusted("10.0.1.1", nets) and not trusted("::1", nets)
    assert not trusted("not-an-address", nets) and not trusted("127.0.0.1", ())


@pytest.mark.parametrize("value, fragment", [
    (["bogus"], "got 'bogus'"),
    (["10.0.0.0/33"], "got '10.0.0.0/33'"),
    (["10.0.0.1/8"], "bits set past its prefix length: 10.0.0.0/8"),
    (["0.0.0.0/0"], "any address"),
    (["::/0"], "any address"),
    ("127.0.0.1", "valid list"),
])
def test_bad_proxy_protocol_entries_are_one_line_errors(value: object, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"node": {"proxy_protocol": value}})
    message = str(err.value)
    assert "node.proxy_protocol" in message and fragment in message and "\n" not in message


def test_proxy_protocol_is_off_by_default_and_takes_addresses_and_networks() -> None:
    assert parse_config({}).node.proxy_protocol == []
    cfg = parse_config({"node": {"proxy_protocol": ["127.0.0.1/32", "10.0.0.10", "fd00::/8"]}})
    assert cfg.node.proxy_protocol == ["127.0.0.1/32", "10.0.0.10", "fd00::/8"]
    assert [str(n) for n in networks(cfg.node.proxy_protocol)] == ["127.0.0.1/32", "10.0.0.10/32", "fd00::/8"]
