#!/usr/bin/env python
"""Send-to-results time: from storescu's send to the SR, GSPS and SC all stored in Orthanc.

Runs a real Orthanc (PACS), a real ``dicom-node serve`` with the shipped compact model delivering to
it, and DCMTK storescu sending the nine RSNA radiographs, in two modes:

- ``single``: one radiograph at a time, the next sent when the previous one's results are in Orthanc
  (the latency a radiologist sees when studies trickle in);
- ``burst``: all nine in one association (queueing included);
- ``cold``: all nine in one association the moment a freshly started node listens, with no warm-up
  radiograph first: what the first studies after a (re)start see while the model loads and warms in
  the background (target, issue 11: p95 under 5 s).

Per radiograph, the time runs from the node's receipt of the instance to the last of its three
results acknowledged by Orthanc (both clocks are this machine's). Prints median and p95 per mode, and
the ratio of the burst's wall time to the time Orthanc takes to store the same radiographs sent to it
directly (what the AI round trip costs over plain PACS storage).
Target (issue 4): p95 under 5 s per radiograph on 2 CPU cores with the compact model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicom_node.store import Store  # noqa: E402
from dicom_node.testing import NodeProcess, OrthancProcess, rsna_files, storescu, tool  # noqa: E402


def wait_delivered(node: NodeProcess, n: int, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while node.status()["jobs_by_kind"].get("deliver", {}).get("done", 0) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("results not delivered in time")
        time.sleep(0.1)


def latencies(node: NodeProcess, files: list[Path]) -> list[float]:
    store = Store(node.storage / "node.db")
    out = []
    try:
        for f in files:
            uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
            row = store.conn().execute(
                "SELECT i.received_at, MAX(d.delivered_at) FROM instances i JOIN results r"
                " ON r.source_sop_instance_uid = i.sop_instance_uid JOIN deliveries d ON d.result_uid ="
                " r.sop_instance_uid WHERE i.sop_instance_uid = ?", (uid,)).fetchone()
            out.append(row[1] - row[0])
    finally:
        store.close()
    return out


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--modes", default="single,burst,cold", help="comma-separated: single, burst, cold")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"single", "burst", "cold"}:
        print(f"error: --modes {args.modes}: expected single, burst and/or cold", file=sys.stderr)
        return 2
    if not (tool("storescu") and tool("Orthanc")):
        print("error: DCMTK and Orthanc are needed: make setup installs them", file=sys.stderr)
        return 2
    files = rsna_files()
    result: dict[str, object] = {"machine": "x86_64 Linux, 2 CPUs", "radiographs": len(files)}
    with tempfile.TemporaryDirectory(prefix="bench-results-") as tmp:
        for mode in modes:
            pacs = OrthancProcess(Path(tmp) / f"orthanc-{mode}").start()
            node = NodeProcess(Path(tmp) / f"node-{mode}", overrides={"destinations": [pacs.destination()]}).start()
            try:
                if mode == "cold":  # sent the moment the node listens: the model warms meanwhile
                    warm, measured = None, files
                else:  # the first radiograph after a start is reported apart, not counted
                    warm, measured = files[0], files[1:]
                    storescu(node.port, [warm])
                    wait_delivered(node, 3)
                t0 = time.monotonic()
                if mode == "single":
                    for i, f in enumerate(measured):
                        storescu(node.port, [f])
                        wait_delivered(node, 3 * (i + 2))
                else:
                    storescu(node.port, measured)
                    wait_delivered(node, 3 * len(files))
                wall = time.monotonic() - t0
                lat = latencies(node, measured)
                figures: dict[str, float] = {"radiographs": len(measured), "median_s": round(statistics.median(lat), 2),
                                             "p95_s": round(p95(lat), 2), "max_s": round(max(lat), 2),
                                             "wall_s": round(wall, 1)}
                if warm is not None:
                    figures["first_after_start_s"] = round(latencies(node, [warm])[0], 2)
                result[mode] = figures
            finally:
                node.stop()
                pacs.stop()
            if not args.json:
                print(f"{mode:>6}: {result[mode]}", file=sys.stderr)
        # The peer alone: the same radiographs stored straight into Orthanc, no node in between.
        pacs = OrthancProcess(Path(tmp) / "orthanc-direct").start()
        try:
            t0 = time.monotonic()
            sent = storescu(pacs.dicom_port, files[1:], aec=pacs.destination()["ae_title"])
            direct = time.monotonic() - t0
            if sent.returncode != 0 or len(pacs.get("/instances")) != len(files) - 1:
                raise RuntimeError(f"Orthanc did not store the radiographs sent to it directly: {sent.stderr[-300:]}")
        finally:
            pacs.stop()
        result["orthanc_direct_store_s"] = round(direct, 2)
        burst = result.get("burst")
        if isinstance(burst, dict):
            result["burst_wall_over_direct_store"] = round(burst["wall_s"] / direct, 1)
            if not args.json:
                print(f"direct: {len(files) - 1} radiographs stored straight into Orthanc in {direct:.2f} s; "
                      f"node's burst send-to-all-results / that = {result['burst_wall_over_direct_store']}x",
                      file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
