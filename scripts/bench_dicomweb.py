#!/usr/bin/env python
"""STOW-RS ingest: dicom-node's DICOMweb listener against Orthanc's DICOMweb plugin, and against the
node's own C-STORE ingest, in one run.

The same set of ~10 MB 16-bit CR images (fresh SOP Instance UIDs every round, so nothing is a
duplicate) is sent to each receiver in turn, alternating the order, for several rounds:

- **dicom-node, STOW-RS**: ``POST /dicom-web/studies`` of the real ``dicom-node serve``. The body is
  streamed to one file per part in the spool's ``tmp/``; each part then goes through the C-STORE
  ingest: checks, fsync of the file, link into place and fsync of its folder, instance row and job
  committed in SQLite (WAL, ``synchronous=FULL``), and only then the Store Instances Response.
  ``worker.threads: 0`` so the analysis does not share the CPU.
- **Orthanc, STOW-RS**: ``POST /dicom-web/studies`` of Orthanc's DICOMweb plugin (Debian
  ``orthanc`` + ``orthanc-dicomweb``) as :class:`dicom_node.testing.OrthancProcess` configures it,
  i.e. Orthanc's defaults for storage: ``SyncStorageArea`` true (fsync of each stored file, the
  default since 1.7.4), no compression, its SQLite index in WAL mode with no sync at commit (``strace``:
  one fdatasync per instance, of its file). Orthanc's HTTP server reads the whole request body into
  memory before the plugin sees it.
- **dicom-node, C-STORE**: DCMTK ``storescu`` over one association to the same node (same ingest).

Both STOW-RS receivers get the same client: one ``multipart/related; type="application/dicom"``
POST per batch (``--batch`` images, default all of a round), the body streamed from the files with
its Content-Length (httpx), timed from the request's start to the whole response. The peak RSS growth
of each receiver process during its send is measured exactly (the kernel's VmHWM, reset before each
send: :func:`dicom_node.testing.peak_rss_growth`): the node's figure shows whether STOW-RS bodies are
streamed to disk or held whole.

Prints MB/s per receiver (median of rounds) and the ratios node-STOW/Orthanc-STOW and
node-STOW/node-C-STORE. ``--json`` prints one object for docs/benchmarks.md. Exits 2 with one line
when storescu, Orthanc or its DICOMweb plugin is missing; 1 when a receiver did not store everything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicom_node.testing import (  # noqa: E402
    NodeProcess,
    OrthancProcess,
    load_script,
    missing_dcmtk,
    missing_orthanc_dicomweb,
    peak_rss_growth,
)

CHUNK = 1 << 20
DICOM_JSON = "application/dicom+json"

# the same images, written the same way, as the C-STORE ingest benchmark
_INGEST = load_script("bench_ingest")
make_cr, write_round, alternate = _INGEST.make_cr, _INGEST.write_round, _INGEST.alternate


def related_body(files: list[Path], boundary: str) -> tuple[Iterator[bytes], int]:
    """A streamed ``multipart/related`` body of ``files`` (one part each) and its exact length."""
    heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in files]
    tail = f"--{boundary}--\r\n".encode()
    length = sum(len(h) + f.stat().st_size + 2 for h, f in zip(heads, files, strict=True)) + len(tail)

    def chunks() -> Iterator[bytes]:
        for head, path in zip(heads, files, strict=True):
            yield head
            with open(path, "rb") as fh:
                while block := fh.read(CHUNK):
                    yield block
            yield b"\r\n"
        yield tail

    return chunks(), length


def stow(client: httpx.Client, base_url: str, files: list[Path]) -> int:
    """POST ``files`` as one STOW-RS request; returns how many the answer references as stored."""
    boundary = uuid.uuid4().hex
    body, length = related_body(files, boundary)
    rsp = client.post(f"{base_url}/studies", content=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Content-Length": str(length), "Accept": DICOM_JSON})
    if rsp.status_code != 200:
        raise RuntimeError(f"STOW-RS to {base_url} answered {rsp.status_code}: {rsp.text[:300]}")
    answer = Dataset.from_json(rsp.json())
    if answer.get("FailedSOPSequence"):
        raise RuntimeError(f"STOW-RS to {base_url}: {len(answer.FailedSOPSequence)} parts failed")
    return len(answer.get("ReferencedSOPSequence", []))


def send_stow(client: httpx.Client, base_url: str, files: list[Path], batch: int) -> None:
    for i in range(0, len(files), batch):
        group = files[i:i + batch]
        if (n := stow(client, base_url, group)) != len(group):
            raise RuntimeError(f"STOW-RS to {base_url}: {n} of {len(group)} referenced as stored")


def send_cstore(port: int, files: list[Path]) -> None:
    res = subprocess.run(["storescu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(port),
                          *map(str, files)], capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"storescu to the node failed: {res.stderr.strip()[:300]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="images per round")
    ap.add_argument("--size", type=int, default=2300, help="rows = columns (2300 → ~10 MB at 16 bits)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=0, help="images per STOW-RS POST (0: all of a round in one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if error := missing_dcmtk("storescu"):
        print(error, file=sys.stderr)
        return 2
    if why := missing_orthanc_dicomweb():
        print(f"error: {why}: make setup installs it", file=sys.stderr)
        return 2
    batch = args.batch or args.images

    rng = np.random.default_rng(7)
    datasets = [make_cr(args.size, args.size, rng) for _ in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        node = NodeProcess(root / "node", overrides={"worker": {"threads": 0}, "storage": {"min_free_mb": 1},
                                                     "dicomweb": {"enabled": True}})
        orthanc = OrthancProcess(root / "orthanc", dicomweb=True)
        try:
            node.start()
            orthanc.start()
            assert node.proc is not None and orthanc.proc is not None
            node_pid, orthanc_pid = node.proc.pid, orthanc.proc.pid
            with httpx.Client(timeout=600) as client:
                # one request each first, so that neither pays for its first connection or lazy
                # imports inside the measurement (and the node's listener is known to serve)
                warm = write_round(datasets[:1], src)
                send_stow(client, node.dicomweb_url, warm, 1)
                send_stow(client, orthanc.dicomweb_url, warm[:1], 1)
                targets: dict[str, tuple[int, Any]] = {
                    "node-stow": (node_pid, lambda files: send_stow(client, node.dicomweb_url, files, batch)),
                    "orthanc-stow": (orthanc_pid, lambda files: send_stow(client, orthanc.dicomweb_url, files,
                                                                          batch)),
                    "node-cstore": (node_pid, lambda files: send_cstore(node.port, files)),
                }
                rss: dict[str, list[float]] = {k: [] for k in targets}

                def send_one(name: str, files: list[Path]) -> float:
                    pid, action = targets[name]
                    t0 = time.perf_counter()
                    _before, growth = peak_rss_growth(pid, lambda: action(files))
                    rss[name].append(growth)
                    return time.perf_counter() - t0

                times, mb = alternate(list(targets), args.rounds, datasets, src, send_one, quiet=args.json)
            node_stored = int(node.status()["instances"]) - 1  # less the warm-up instance
            orthanc_stored = int(orthanc.get("/statistics")["CountInstances"]) - 1
            node_log = node.log_text()
        finally:
            node.stop()
            orthanc.stop()
    rate = {k: mb / statistics.median(v) for k, v in times.items()}
    node_expected, orthanc_expected = 2 * args.images * args.rounds, args.images * args.rounds
    result = {
        "machine": f"{platform.machine()}, {platform.system()}, {os.cpu_count()} CPUs",
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "images_per_round": args.images, "rounds": args.rounds, "images_per_stow_request": batch,
        "mb_per_round": round(mb, 1), "mb_per_image": round(mb / args.images, 2),
        "mb_s": {k: round(v, 1) for k, v in rate.items()},
        "mb_s_rounds": {k: [round(mb / t, 1) for t in v] for k, v in times.items()},
        "ratio_node_stow_vs_orthanc_stow": round(rate["node-stow"] / rate["orthanc-stow"], 2),
        "ratio_node_stow_vs_node_cstore": round(rate["node-stow"] / rate["node-cstore"], 2),
        "peak_rss_growth_mb_max": {k: round(max(v), 1) for k, v in rss.items()},
        "node_instances_stored": node_stored, "node_expected": node_expected,
        "orthanc_instances_stored": orthanc_stored, "orthanc_expected": orthanc_expected,
        "node_log_warnings_errors": {lvl: len(re.findall(rf'"level": "{lvl}"|^\S+ {lvl} ', node_log, re.M))
                                     for lvl in ("WARNING", "ERROR", "CRITICAL")} | {
                                         "Traceback": node_log.count("Traceback")},
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in rate.items():
            print(f"{k:>13}: {v:7.1f} MB/s   peak RSS growth {result['peak_rss_growth_mb_max'][k]:7.1f} MB"
                  f" (a round is {mb:.0f} MB)")
        print(f"node STOW-RS / Orthanc STOW-RS: {result['ratio_node_stow_vs_orthanc_stow']:.2f}")
        print(f"node STOW-RS / node C-STORE  : {result['ratio_node_stow_vs_node_cstore']:.2f}")
        print(f"stored: node {node_stored} of {node_expected}, Orthanc {orthanc_stored} of {orthanc_expected}")
    return 0 if (node_stored, orthanc_stored) == (node_expected, orthanc_expected) else 1


if __name__ == "__main__":
    sys.exit(main())
