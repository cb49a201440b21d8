#!/usr/bin/env python3
"""The figures of docs/reliability.md section 11 (issue 12): each attack on a real node, measured.

    .venv/bin/python tests/admin/measure_attacks.py [--only flood,tokens,ansi,thumbs,headers] [--legacy]

``--legacy`` leaves out the settings that did not exist before (admin.max_connections, ...), to
measure a checkout of the code before the fixes (PYTHONPATH=that checkout). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
from admin_attack_support import (
    LimitedNode,
    echoscu,
    fd_count,
    nofile_limits,
    port_fds,
    raise_own_fd_limit,
    slow_clients,
    start_console_node,
    still_open,
)

from dicom_node.testing import load_script, peak_rss_growth, rsna_files, storescu, wait_for


def _node(root: Path, admin: dict[str, Any], nofile: tuple[int, int] | None = None,
          **overrides: Any) -> tuple[LimitedNode, str]:
    return start_console_node(root, admin, nofile=nofile, **overrides)


def _get(url: str, **kw: Any) -> int | str:
    try:
        return httpx.get(url, timeout=10, **kw).status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def flood(root: Path, n: int, nofile: tuple[int, int], hold_s: float,
          admin: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """``n`` slow connections at once, then a C-ECHO, a C-STORE and /healthz; what is left after ``hold_s``."""
    raise_own_fd_limit(n + 200)
    node, url = _node(root, admin or {}, nofile=nofile, **overrides)
    port = int(url.rsplit(":", 1)[1])
    out: dict[str, Any] = {"slow_connections": n, "nofile": nofile_limits(node.pid), "fds_idle": fd_count(node.pid)}
    try:
        t0 = time.monotonic()
        socks = slow_clients(port, n)
        out["connected"] = len(socks)
        time.sleep(2)
        out["fds_during"], out["http_fds_during"] = fd_count(node.pid), port_fds(node.pid, port)
        echo = echoscu(node.port)
        out["echoscu"] = "ok" if echo.returncode == 0 else (echo.stdout + echo.stderr).strip()[-120:]
        sent = storescu(node.port, rsna_files()[:1], timeout_s=60)
        out["storescu"] = "ok" if sent.returncode == 0 else (sent.stdout + sent.stderr).strip()[-120:]
        out["healthz"] = _get(url + "/healthz")
        time.sleep(max(0.0, hold_s - (time.monotonic() - t0)))
        out["held_s"] = round(time.monotonic() - t0)
        out["still_open"] = still_open(socks)
        out["fds_end"], out["http_fds_end"] = fd_count(node.pid), port_fds(node.pid, port)
        for s in socks:
            s.close()
    finally:
        node.stop()
    out["asyncio_error_lines"] = node.log_text().count("ERROR   asyncio")
    return out


def tokens(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, token, host in (("space", " ", "0.0.0.0"), ("empty", "", "127.0.0.1"), ("short", "short", "127.0.0.1")):
        try:
            node, url = _node(root / name, {"host": host, "token": token})
        except (RuntimeError, TimeoutError):
            lines = (root / name / "serve.log").read_text(errors="replace").strip().splitlines()
            out[name] = {"started": False, "says": lines[-1] if lines else ""}
            continue
        try:
            out[name] = {"started": True, "no_token": _get(url + "/api/status"),
                         "token=%20": _get(url + "/api/status?token=%20"),
                         "log": next((ln.split(": ", 1)[1] for ln in node.log_text().splitlines()
                                      if "admin console serving" in ln), "")}
        finally:
            node.stop()
    return out


def ansi(root: Path) -> dict[str, Any]:

    node, _ = _node(root, {}, worker={"threads": 1}, routing={"modalities": ["DX"]})
    try:
        ds = pydicom.dcmread(rsna_files()[0])
        ds.Manufacturer, ds.ManufacturerModelName, ds.DeviceSerialNumber = \
            "ACME\x1b[2J\x1b[31mPWNED", "M\x1b]0;owned\x07X", "SN\x9b31m"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(root / "ansi.dcm")
        storescu(node.port, [root / "ansi.dcm"])
        fz = load_script("fuzz_association")
        with socket.create_connection(("127.0.0.1", node.port), timeout=5) as s:
            s.sendall(fz.associate_rq(called=b"X\x1b[1A\nFORGED 1", calling=b"EVIL\x1b]0;x\x07"))
            s.recv(64)
        wait_for("twin line", lambda: "new device" in node.log_text(), 120, 0.3)
        time.sleep(0.5)
    finally:
        node.stop()
    text = node.log_path.read_bytes().decode("utf-8", "replace")
    return {"esc": text.count("\x1b"), "bel": text.count("\x07"), "c1_csi": text.count("\x9b"),
            "forged_lines": sum(ln.startswith("FORGED") for ln in text.splitlines())}


def thumbs(root: Path, side: int) -> dict[str, Any]:
    node, url = _node(root, {}, worker={"threads": 1}, routing={"modalities": ["CR"]})

    def peak(action: Any) -> tuple[float, float]:
        t0 = time.perf_counter()
        growth = peak_rss_growth(node.pid, action)[1]
        return round(growth), round(time.perf_counter() - t0, 2)

    out: dict[str, Any] = {}
    try:
        storescu(node.port, rsna_files()[:1])
        node.wait_jobs_settled(1, 300)
        with sqlite3.connect(node.storage / "node.db") as db:
            source, path = db.execute("SELECT source_sop_instance_uid, path FROM results WHERE kind='sc'").fetchone()
        ds = pydicom.dcmread(path)
        ramp = (np.arange(side, dtype=np.uint32) * 255 // side).astype(np.uint8)
        pixels = np.empty((side, side, 3), np.uint8)
        pixels[:] = ramp[None, :, None]
        ds.Rows = ds.Columns = side
        ds.PixelData = pixels.tobytes()
        del pixels
        ds.save_as(path)
        del ds
        out["overlay_mb"] = round(Path(path).stat().st_size / 2**20)
        thumb = f"{url}/thumbs/{source}.png"
        out["per_new_size"] = [peak(lambda s=s: httpx.get(thumb, params={"size": s}, timeout=600))
                               for s in (192, 193, 320, 1024)]
        out["same_size_again"] = peak(lambda: httpx.get(thumb, params={"size": 192}, timeout=600))

        def four() -> None:
            ts = [threading.Thread(target=httpx.get, args=(thumb,), kwargs={"params": {"size": s}, "timeout": 600})
                  for s in range(600, 604)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        out["four_new_sizes_at_once"] = peak(four)
    finally:
        node.stop()
    return out


def headers(root: Path) -> dict[str, Any]:
    token = "a-long-enough-admin-token"
    node, url = _node(root, {"token": token})
    names = ("content-security-policy", "x-frame-options", "x-content-type-options", "referrer-policy")
    out: dict[str, Any] = {}
    try:
        for label, path, kw in (("200 /", "/", {"params": {"token": token}}), ("401", "/api/status", {}),
                                ("404", "/nothing", {"params": {"token": token}})):
            rsp = httpx.get(url + path, timeout=10, **kw)
            out[label] = [n for n in names if n in rsp.headers]
    finally:
        node.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="flood,tokens,ansi,thumbs,headers")
    ap.add_argument("--hold", type=float, default=65.0, help="seconds the slow connections are held")
    ap.add_argument("--side", type=int, default=10000, help="overlay side in pixels (10000: 286 MB)")
    ap.add_argument("--legacy", action="store_true", help="the code before: no admin.max_connections etc.")
    args = ap.parse_args(argv)
    only = args.only.split(",")
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="attacks-") as tmp:
        root = Path(tmp)
        if "flood" in only:
            out["flood_1100_select"] = flood(root / "f1", 1100, (20000, 20000), args.hold)
            out["flood_1100_soft1024"] = flood(root / "f2", 1100, (1024, 20000), args.hold)
            small = {} if args.legacy else {"max_connections": 16, "header_timeout_s": 2}
            out["flood_300_of_256"] = flood(root / "f3", 300, (256, 256), 15, small, node={"max_associations": 4})
        if "tokens" in only:
            out["tokens"] = tokens(root / "t")
        if "ansi" in only:
            out["ansi"] = ansi(root / "a")
        if "thumbs" in only:
            out["thumbs"] = thumbs(root / "th", args.side)
        if "headers" in only:
            out["headers"] = headers(root / "h")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
