#!/usr/bin/env python
"""Receiver memory: peak RSS of dicom-node and of DCMTK storescp receiving 600 MB radiographs, in one run.

A 16-bit CR of 17320 x 17320 (600 MB, explicit VR little endian) is sent by DCMTK storescu:

- ``one``: one instance to each receiver;
- ``four``: four such instances at once, four storescu processes in parallel (storescp, without
  ``--fork``, serves them one after the other; the node takes all four at once);
- ``over-limit``: the same instance to a node with ``storage.max_instance_mb: 50``, which must cut it
  off while it arrives (the bytes the sender managed to send, and the node's RSS, are reported).

The figure per phase is the growth of the process's peak RSS (``VmHWM`` in /proc, reset through
``clear_refs`` before each phase) over its RSS before the phase. Target (issue 11): under 200 MB for
one instance and bounded for four. ``worker.threads: 0`` so that no analysis runs: this measures the
receiver. Needs ~8 GB of free disk in the temporary folder. ``--json`` for docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicom_node.testing import NodeProcess, free_port, missing_dcmtk, peak_rss_growth, synthetic_cr, wait_port  # noqa: E402


def write_instances(folder: Path, n: int, side: int) -> list[Path]:
    """``n`` CRs of ``side`` x ``side`` at 16 bits that differ only in their UIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    row = (np.arange(side, dtype=np.uint32) * 7 % 4000 + 100).astype(np.uint16)
    pixels = np.broadcast_to(row, (side, side)).tobytes()
    files = []
    for i in range(n):
        path = folder / f"{i:02d}.dcm"
        synthetic_cr(side, side, pixels).save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def measure(pid: int, send: list[list[str]]) -> dict[str, Any]:
    """Run the storescu commands in ``send`` at once; the receiver's RSS growth and the time taken."""
    results: list[subprocess.CompletedProcess[str]] = []

    def send_all() -> None:
        threads = [threading.Thread(target=lambda c=c: results.append(
            subprocess.run(c, capture_output=True, text=True))) for c in send]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    t0 = time.perf_counter()
    before, growth = peak_rss_growth(pid, send_all)
    seconds = time.perf_counter() - t0
    return {"rss_before_mb": round(before, 1), "peak_growth_mb": round(growth, 1),
            "seconds": round(seconds, 1), "senders_ok": sum(r.returncode == 0 for r in results),
            "errors": [r.stderr.strip().splitlines()[-1][:200] for r in results
                       if r.returncode != 0 and r.stderr.strip()]}


def storescu(port: int, aec: str, files: list[Path]) -> list[str]:
    return ["storescu", "-aet", "MODALITY1", "-aec", aec, "127.0.0.1", str(port), *map(str, files)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=17320, help="rows = columns (17320 → 600 MB at 16 bits)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if error := missing_dcmtk("storescu", "storescp"):
        print(error, file=sys.stderr)
        return 2
    result: dict[str, object] = {"instance_mb": round(args.side * args.side * 2 / 1e6)}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        root = Path(tmp)
        files = write_instances(root / "src", 5, args.side)
        node = NodeProcess(root / "node", overrides={"worker": {"threads": 0}}).start()
        limited = NodeProcess(root / "limited", overrides={"worker": {"threads": 0},
                                                           "storage": {"max_instance_mb": 50}}).start()
        port = free_port()
        (root / "storescp").mkdir()
        scp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(root / "storescp"), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, 30, scp)
            assert node.proc is not None and limited.proc is not None
            time.sleep(5)  # let the node finish starting (model warm-up thread, first writes)
            for name, pid, target in (("dicom-node", node.proc.pid, (node.port, "DICOM_NODE")),
                                      ("storescp", scp.pid, (port, "STORESCP"))):
                one = measure(pid, [storescu(*target, files[:1])])
                # fresh UIDs for the second phase: files 1-4
                four = measure(pid, [storescu(*target, [f]) for f in files[1:5]])
                result[name] = {"one": one, "four": four}
                if not args.json:
                    print(f"{name:>10}: one {one}, four {four}", file=sys.stderr)
            over = measure(limited.proc.pid, [storescu(limited.port, "DICOM_NODE", files[:1])])
            over["spool_files_left"] = sum(1 for p in (limited.storage / "spool").rglob("*") if p.is_file())
            result["dicom-node max_instance_mb 50"] = over
            result["stored_by_node"] = node.status()["instances"]
            if not args.json:
                print(f"over-limit: {over}", file=sys.stderr)
        finally:
            node.stop()
            limited.stop()
            scp.terminate()
            scp.wait()
    for phase in ("one", "four"):
        n, s = result["dicom-node"][phase], result["storescp"][phase]  # type: ignore[index]
        result[f"{phase}_growth_node_over_storescp"] = round(n["peak_growth_mb"] / max(s["peak_growth_mb"], 0.1), 2)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for phase in ("one", "four"):
            print(f"{phase}: node peak RSS +{result['dicom-node'][phase]['peak_growth_mb']} MB, "  # type: ignore[index]
                  f"storescp +{result['storescp'][phase]['peak_growth_mb']} MB")  # type: ignore[index]
        print(f"stored by the node: {result['stored_by_node']} of 5")
    return 0 if result["stored_by_node"] == 5 else 1


if __name__ == "__main__":
    sys.exit(main())
