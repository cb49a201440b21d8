"""Issue 12 against real nodes over loopback: slow HTTP, weak tokens, escape sequences, thumbnail
decodes, missing security headers. Figures before and after: docs/reliability.md, section 11.
"""

from __future__ import annotations

import io
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from admin_attack_support import (
    SLOW_REQUEST,
    LimitedNode,
    closing_all,
    echoscu,
    fd_count,
    http_status,
    nofile_limits,
    port_fds,
    raise_own_fd_limit,
    slow_clients,
    start_console_node,
    still_open,
)
from admin_support import CHROMIUM_FLAGS, FedNode
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from dicom_node.admin.limits import SECURITY_HEADERS, http_share, listen_backlog
from dicom_node.testing import free_port, load_script, peak_rss_growth, require, storescu, wait_for
from models import SHIPPED_WEIGHTS

FLOOD = 300  # slow connections kept open against a node allowed 256 descriptors
CAP = 16


@pytest.fixture
def nodes() -> Iterator[list[LimitedNode]]:
    made: list[LimitedNode] = []
    yield made
    for n in made:
        n.stop()


def _admin_node(nodes: list[LimitedNode], root: Path, admin: dict[str, Any], *,
                nofile: tuple[int, int] | None = None, **overrides: Any) -> tuple[LimitedNode, str]:
    return start_console_node(root, admin, nofile=nofile, nodes=nodes, **overrides)


def _metrics(url: str, **kw: Any) -> dict[str, float]:
    rsp = httpx.get(url + "/metrics", timeout=10, **kw)
    assert rsp.status_code == 200
    return {s.name: s.value for f in text_string_to_metric_families(rsp.text) for s in f.samples}


def _serve(config: Path, nofile: tuple[int, int] | None = None) -> subprocess.CompletedProcess[str]:
    """``dicom-node serve`` expected to stop at once (a bad setting)."""
    import resource

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, nofile)

    return subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)


# --- item 1: slow HTTP ---------------------------------------------------------------------------


class _Flood:
    """Keeps ``n`` slow connections open (reopening those the server closes) while sampling the
    node's descriptors: all of them, and those on the admin port."""

    def __init__(self, pid: int, port: int, n: int) -> None:
        self.pid, self.port, self.n = pid, port, n
        self.socks: list[socket.socket] = []
        self.opened = 0
        self.max_fds = self.max_http_fds = 0
        self.served_samples: list[int] = []  # connections the server is serving (not half-closed)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._attack, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]

    def __enter__(self) -> _Flood:
        for t in self._threads:
            t.start()
        wait_for("the flood at full strength", lambda: self.opened >= self.n, 60, 0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
        for s in self.socks:
            s.close()

    def _attack(self) -> None:
        """Connects without blocking (the backlog is small on purpose), so the flood is up in seconds."""
        pending: dict[int, tuple[socket.socket, float]] = {}
        poller = select.poll()
        while not self._stop.is_set():
            alive = [s for s in self.socks if still_open([s])]
            for s in set(self.socks) - set(alive):
                s.close()
            self.socks = alive
            while len(self.socks) + len(pending) < self.n:
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", self.port))
                pending[s.fileno()] = (s, time.monotonic())
                poller.register(s, select.POLLOUT)
            for fd, _ in poller.poll(50):
                s, _ = pending.pop(fd)
                poller.unregister(fd)
                try:
                    if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        s.send(SLOW_REQUEST)
                        self.socks.append(s)
                        self.opened += 1
                        continue
                except OSError:
                    pass
                s.close()
            for fd, (s, since) in list(pending.items()):
                if time.monotonic() - since > 3:  # a SYN the full backlog dropped: try again
                    poller.unregister(fd)
                    del pending[fd]
                    s.close()
        for s, _ in pending.values():
            s.close()

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                self.max_fds = max(self.max_fds, fd_count(self.pid))
                http = port_fds(self.pid, self.port)
                self.served_samples.append(port_fds(self.pid, self.port, established=True))
            except OSError:
                continue
            self.max_http_fds = max(self.max_http_fds, http)
            time.sleep(0.02)


def test_slow_http_flood_leaves_the_dicom_receiver_its_descriptors(
        tmp_path: Path, nodes: list[LimitedNode], dcmtk: None, rsna: list[Path]) -> None:
    """Before: the flood took every descriptor (256 of 256), echoscu and storescu failed. After: HTTP
    holds at most its share, the DICOM receiver answers C-ECHO and C-STORE during the flood."""
    raise_own_fd_limit(FLOOD + 200)
    node, url = _admin_node(nodes, tmp_path / "flood", {"max_connections": CAP, "header_timeout_s": 2},
                            node={"max_associations": 4}, nofile=(256, 256))
    assert nofile_limits(node.pid) == (256, 256)
    with _Flood(node.pid, int(url.rsplit(":", 1)[1]), FLOOD) as flood:
        time.sleep(3)  # past header_timeout_s: the first slow ones were closed and replaced
        echo = echoscu(node.port)
        sent = storescu(node.port, rsna[:1], timeout_s=60)
        opened = flood.opened
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert opened > FLOOD  # the slow ones were closed (408 or 503) and the attacker came back
    share = http_share(CAP)
    assert flood.max_http_fds <= share, (flood.max_http_fds, share)
    served = sorted(flood.served_samples)
    # Established sockets are the connections served (at most CAP) and those asyncio has accepted and not
    # yet handed to the protocol, which refuses them: it accepts up to listen_backlog(CAP) per loop turn
    # and hands a batch over two turns later, so up to three batches are in flight at a sampled moment
    # (CI once saw 33 = CAP + 2 batches + 1 under load). The median is the cap at work.
    in_flight = 3 * listen_backlog(CAP)
    assert served[len(served) // 2] <= CAP and served[-1] <= CAP + in_flight, served[-10:]
    assert flood.max_fds < 256 - 40, flood.max_fds  # room left for the receiver
    assert node.status()["instances"] == 1
    wait_for("the console answers again", lambda: http_status(url + "/healthz") == 200, 10, 0.2)
    m = _metrics(url)
    assert m["dicom_node_admin_http_refused_total"] > 0 and m["dicom_node_admin_http_timeouts_total"] > 0
    print(f"\nflood: {opened} slow connections opened, node fds max {flood.max_fds}, HTTP fds max "
          f"{flood.max_http_fds} (share {share}), served max {served[-1]} median {served[len(served) // 2]}, "
          f"refused {m['dicom_node_admin_http_refused_total']:.0f}, "
          f"timed out {m['dicom_node_admin_http_timeouts_total']:.0f}")


def test_a_slow_client_is_closed_after_the_header_timeout(tmp_path: Path, nodes: list[LimitedNode]) -> None:
    node, url = _admin_node(nodes, tmp_path / "slow", {"max_connections": 4, "header_timeout_s": 1})
    port = int(url.rsplit(":", 1)[1])
    with closing_all(slow_clients(port, 1)) as (slow,):
        time.sleep(1.6)
        slow.setblocking(True)
        slow.settimeout(5)
        answer = slow.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert slow.recv(4096) == b""  # and closed
    # A keep-alive client whose second request stalls is closed too.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        first = s.recv(65536)
        while b"model_ready" not in first:  # the whole JSON body
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        t0 = time.monotonic()
        rest = b""
        while chunk := s.recv(65536):
            rest += chunk
        assert rest.startswith(b"HTTP/1.1 408 ") and time.monotonic() - t0 < 4


def test_past_the_cap_a_connection_gets_503_and_is_closed(tmp_path: Path, nodes: list[LimitedNode]) -> None:
    node, url = _admin_node(nodes, tmp_path / "cap", {"max_connections": 2, "header_timeout_s": 5})
    port = int(url.rsplit(":", 1)[1])
    with closing_all(slow_clients(port, 2)):
        time.sleep(0.3)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            third.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            answer = b""
            while chunk := third.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        _assert_security_headers(_raw_headers(answer))
    wait_for("a slot again", lambda: http_status(url + "/healthz") == 200, 10, 0.2)


def test_the_descriptor_budget_is_checked_at_start(tmp_path: Path, nodes: list[LimitedNode]) -> None:
    """A limit too low for admin.max_connections plus the DICOM share stops the start with one line;
    a soft limit under the hard one is raised."""
    low = LimitedNode(tmp_path / "low", overrides={"admin": {"enabled": True, "port": free_port()},
                                                   "worker": {"threads": 0}})
    res = _serve(low.config_path, nofile=(128, 128))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "admin.max_connections 64" in lines[0] and "RLIMIT_NOFILE 128" in lines[0], lines
    node, _ = _admin_node(nodes, tmp_path / "raised", {}, nofile=(200, 4096))
    assert nofile_limits(node.pid) == (4096, 4096)


# --- item 11: tokens -----------------------------------------------------------------------------


@pytest.mark.parametrize("token, host", [
    (" ", "0.0.0.0"),  # was accepted: ?token=%20 opened the console to the network
    ("", "127.0.0.1"),  # was accepted: no auth at all, while the log said token=True
    ("too-short-token", "127.0.0.1"),  # 15 characters
    ("sixteen chars ok", "127.0.0.1"),  # a blank inside
    ("\t" * 20, "127.0.0.1"),
])
def test_blank_and_short_tokens_are_refused(tmp_path: Path, token: str, host: str) -> None:
    node = LimitedNode(tmp_path / "tok", overrides={
        "admin": {"enabled": True, "host": host, "port": free_port(), "token": token}, "worker": {"threads": 0}})
    res = _serve(node.config_path)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "admin.token must be 16 or more printable ASCII characters" in lines[0], lines
    if token.strip():
        assert token not in res.stderr


def test_the_start_up_log_says_whether_a_token_is_asked(
        tmp_path: Path, nodes: list[LimitedNode], token_node: tuple[Any, str, str]) -> None:
    open_node, url = _admin_node(nodes, tmp_path / "open", {})
    assert http_status(url + "/api/status") == 200
    assert "admin console serving" in open_node.log_text() and "token=False" in open_node.log_text()
    protected, purl, token = token_node
    assert http_status(purl + "/api/status") == 401 and http_status(purl + "/api/status?token=%20") == 401
    assert "token=True" in protected.log_text()


# --- item 13: escape sequences on the console ----------------------------------------------------


def _fuzz_script() -> Any:
    return load_script("fuzz_association")


def test_escape_sequences_from_outside_never_reach_the_console(
        tmp_path: Path, nodes: list[LimitedNode], dcmtk: None, rsna: list[Path]) -> None:
    require(SHIPPED_WEIGHTS.is_file(), f"the shipped model {SHIPPED_WEIGHTS.name}")
    node, _ = _admin_node(nodes, tmp_path / "ansi", {}, worker={"threads": 1},
                          routing={"modalities": ["DX"]})  # the twin records it, the detector skips it
    ds = pydicom.dcmread(rsna[0])
    ds.Manufacturer = "ACME\x1b[2J\x1b[31mPWNED"
    ds.ManufacturerModelName = "M\x1b]0;owned\x07X"
    ds.DeviceSerialNumber = "SN\x9b31m"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    crafted = tmp_path / "ansi.dcm"
    ds.save_as(crafted)
    assert storescu(node.port, [crafted]).returncode == 0
    fz = _fuzz_script()
    with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:  # an AE title with ESC and a newline
        s.sendall(fz.associate_rq(called=b"X\x1b[1A\nFORGED 1", calling=b"EVIL\x1b]0;x\x07"))
        s.recv(64)
    wait_for("the twin's new device line", lambda: "twin: new device" in node.log_text(), 120, 0.3)
    time.sleep(0.5)
    node.stop()
    console = node.log_path.read_bytes().decode("utf-8", "replace")
    unsafe = re.findall(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", console)
    assert not unsafe, sorted(set(unsafe))
    assert not any(line.startswith("FORGED") for line in console.splitlines())
    line = next(ln for ln in console.splitlines() if "twin: new device" in ln)
    assert "acme\\x1b[2j\\x1b[31mpwned" in line and "\\x9b31m" in line, line  # shown, harmless


# --- item 14: thumbnails -------------------------------------------------------------------------


def _peak_growth_mb(pid: int, action: Any) -> float:
    return peak_rss_growth(pid, action)[1]


def _big_overlay(path: Path, side: int) -> None:
    """Make the overlay at ``path`` ``side`` x ``side`` RGB (an overlay from before they were capped)."""
    ds = pydicom.dcmread(path)
    ramp = (np.arange(side, dtype=np.uint32) * 255 // side).astype(np.uint8)
    pixels = np.empty((side, side, 3), np.uint8)
    pixels[:] = ramp[None, :, None]
    pixels[::97, :, 0] = 255  # thin lines, as burned-in boxes are
    ds.Rows = ds.Columns = side
    ds.PixelData = pixels.tobytes()
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as tmp:
        ds.save_as(tmp.name)
    Path(tmp.name).replace(path)


def test_thumbnails_decode_each_overlay_once(
        tmp_path: Path, nodes: list[LimitedNode], dcmtk: None, rsna: list[Path]) -> None:
    """Before: every size not yet cached decoded the whole overlay (+954 MB for 286 MB). After: one
    bounded decode, every size made from it."""
    require(SHIPPED_WEIGHTS.is_file(), f"the shipped model {SHIPPED_WEIGHTS.name}")
    node, url = _admin_node(nodes, tmp_path / "thumbs", {}, worker={"threads": 1}, routing={"modalities": ["CR"]})
    assert storescu(node.port, rsna[:1]).returncode == 0
    node.wait_jobs_settled(1, 300)
    [(source, path)] = node.rows("SELECT source_sop_instance_uid, path FROM results WHERE kind = 'sc'")
    side = 6000
    _big_overlay(Path(path), side)
    overlay_mb = Path(path).stat().st_size / 2**20
    thumb = f"{url}/thumbs/{source}.png"
    pngs: dict[int, bytes] = {}

    def one(size: int) -> None:
        rsp = httpx.get(thumb, params={"size": size}, timeout=120)
        assert rsp.status_code == 200 and rsp.headers["content-type"] == "image/png"
        pngs[size] = rsp.content

    sizes = [192, 320, 1024, 100, 500, 777, 48, 256]
    sequential = _peak_growth_mb(node.pid, lambda: [one(s) for s in sizes])

    def burst() -> None:
        threads = [threading.Thread(target=one, args=(s,)) for s in range(600, 608)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    concurrent = _peak_growth_mb(node.pid, burst)
    t0 = time.perf_counter()
    again = httpx.get(thumb, params={"size": 192}, timeout=30).content
    cached_s = time.perf_counter() - t0
    assert again == pngs[192]
    for size, data in pngs.items():
        image = Image.open(io.BytesIO(data))
        assert max(image.size) == size and image.size[0] == image.size[1], (size, image.size)
    m = _metrics(url)
    assert m["dicom_node_admin_thumbnail_decodes_total"] == 1
    assert m["dicom_node_admin_thumbnail_cache_bytes"] < 64 * 2**20
    print(f"\nthumbnails of a {overlay_mb:.0f} MB overlay: peak RSS +{sequential:.0f} MB for {len(sizes)} sizes "
          f"one after the other, +{concurrent:.0f} MB for 8 at once; cached reply {cached_s * 1000:.0f} ms")
    assert sequential < overlay_mb / 3 and concurrent < overlay_mb / 3, (sequential, concurrent, overlay_mb)


# --- item 15: security headers -------------------------------------------------------------------


def _raw_headers(response: bytes) -> dict[str, str]:
    head = response.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head)}


def _assert_security_headers(headers: Any) -> None:
    for name, value in SECURITY_HEADERS:
        assert headers.get(name.lower()) == value, (name, headers.get(name.lower()))
    assert "default-src 'self'" in headers["content-security-policy"]
    assert "unsafe-inline" not in headers["content-security-policy"]


def test_every_response_carries_the_security_headers(tmp_path: Path, nodes: list[LimitedNode]) -> None:
    token = "a-long-enough-admin-token"
    node, url = _admin_node(nodes, tmp_path / "headers", {"token": token, "max_connections": 4})
    auth = {"Authorization": f"Bearer {token}"}
    for path, expected in [("/", 200), ("/static/console.css", 200), ("/api/status", 200), ("/metrics", 200),
                           ("/openapi.json", 200), ("/healthz", 200), ("/api/studies/1.2.3", 404),
                           ("/nothing", 404), ("/api/jobs?state=bogus", 422), ("/thumbs/1.2.png", 404)]:
        rsp = httpx.get(url + path, headers=auth, timeout=10)
        assert rsp.status_code == expected, path
        _assert_security_headers(rsp.headers)
    unauthorised = httpx.get(url + "/api/status", timeout=10)
    assert unauthorised.status_code == 401
    _assert_security_headers(unauthorised.headers)
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost localhost\r\n\r\n")  # malformed: uvicorn's own 400
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 400 ")
    _assert_security_headers(_raw_headers(answer))


def _chromium_console(url: str, screenshot: Path | None = None) -> str:
    """What headless Chromium logged while loading ``url`` (CSP violations are logged there)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
        cmd += [f"--screenshot={screenshot}", "--window-size=1280,900"] if screenshot else ["--dump-dom"]
        res = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=90)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stderr


def test_the_pages_render_under_the_content_security_policy(
        fed_node: FedNode, chromium_tool: None, tmp_path: Path) -> None:
    device = fed_node.json(f"/api/devices/{fed_node.drifting_serial}")
    for path in ("/", f"/devices/{device['id']}", f"/studies/{fed_node.rsna_studies[0]}"):
        rsp = fed_node.get(path)
        assert rsp.status_code == 200
        _assert_security_headers(rsp.headers)
        assert "style=" not in rsp.text and "<style" not in rsp.text and "<script" not in rsp.text, path
        log = _chromium_console(fed_node.url + path)
        assert "Content Security Policy" not in log, [ln for ln in log.splitlines() if "Security Policy" in ln]
    shot = tmp_path / "dashboard.png"
    _chromium_console(fed_node.url + "/", screenshot=shot)
    header = Image.open(shot).convert("RGB").getpixel((4, 4))
    assert header == (0x11, 0x18, 0x27), header  # the stylesheet applied: the dark top bar
