#!/usr/bin/env python
"""Ingest throughput: dicom-node against DCMTK storescp and a bare pynetdicom SCP, in one run.

The same set of ~10 MB 16-bit CR images (fresh SOP Instance UIDs every round) is sent by DCMTK
storescu over one association to each receiver in turn, alternating, for several rounds:

- dicom-node: the real ``dicom-node serve`` (fsync of every file, SQLite commit per instance,
  Success only after both); ``worker.threads: 0`` so the analysis does not share the CPU
- DCMTK storescp: writes each file, no fsync
- bare pynetdicom SCP: writes the received bytes to a file, no fsync, no checks, no database

Prints MB/s per receiver (median of rounds) and the ratios dicom-node/storescp (target >= 1.0) and
dicom-node/bare (target >= 0.6). ``--json`` prints one object for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicom_node.testing import NodeProcess, free_port, missing_dcmtk, synthetic_cr, wait_port  # noqa: E402

BARE_SCP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pynetdicom import AE, evt, AllStoragePresentationContexts
    out = Path(sys.argv[2])
    def on_store(event):
        with open(out / (event.request.AffectedSOPInstanceUID + ".dcm"), "wb") as f:
            f.write(event.encoded_dataset())
        return 0
    ae = AE(ae_title="BARE")
    ae.maximum_pdu_size = 0
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, on_store)])
""")


def make_cr(rows: int, cols: int, rng: np.random.Generator) -> Dataset:
    """A 16-bit CR (12 bits stored) of ``rows`` x ``cols``; content is smooth noise, values realistic."""
    base = rng.integers(500, 3500, size=(rows // 16 + 1, cols // 16 + 1)).astype(np.uint16)
    img = np.kron(base, np.ones((16, 16), dtype=np.uint16))[:rows, :cols]
    img = img + rng.integers(0, 200, size=(rows, cols), dtype=np.uint16)
    return synthetic_cr(rows, cols, img.astype(np.uint16).tobytes(), PatientName="Bench^Ingest")


def write_round(ds_list: list[Dataset], folder: Path) -> list[Path]:
    """Give every image a fresh SOP Instance UID (and the round a fresh study) and write it; returns
    the files. scripts/bench_dicomweb.py uses it too."""
    for f in folder.glob("*.dcm"):
        f.unlink()
    study, series = generate_uid(), generate_uid()
    files = []
    for i, ds in enumerate(ds_list):
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, i + 1
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def alternate(names: list[str], rounds: int, datasets: list[Dataset], src: Path,
              send_one: Callable[[str, list[Path]], float], *, quiet: bool) -> tuple[dict[str, list[float]], float]:
    """Each round, a fresh copy of ``datasets`` to every receiver, the order reversed every other round
    (so neither always goes first into a warm cache); ``send_one`` returns the seconds one took.
    Returns the seconds per receiver and round, and the MB of a round. bench_dicomweb.py uses it too."""
    times: dict[str, list[float]] = {k: [] for k in names}
    mb = 0.0
    for r in range(rounds):
        for name in names if r % 2 == 0 else list(reversed(names)):
            files = write_round(datasets, src)
            mb = sum(f.stat().st_size for f in files) / 1e6
            times[name].append(send_one(name, files))
        if not quiet:
            print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {mb / v[-1]:.0f} MB/s" for k, v in times.items()),
                  file=sys.stderr)
    return times, mb


def send(port: int, aec: str, files: list[Path]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run(["storescu", "-aet", "MODALITY1", "-aec", aec, "127.0.0.1", str(port),
                          *map(str, files)], capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"storescu to {aec} failed: {res.stderr.strip()[:300]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="images per round")
    ap.add_argument("--size", type=int, default=2300, help="rows = columns (2300 → ~10 MB at 16 bits)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if error := missing_dcmtk("storescu", "storescp"):
        print(error, file=sys.stderr)
        return 2

    rng = np.random.default_rng(7)
    datasets = [make_cr(args.size, args.size, rng) for _ in range(args.images)]
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        root = Path(tmp)
        src = root / "src"
        src.mkdir()
        node = NodeProcess(root / "node", overrides={"worker": {"threads": 0}, "storage": {"min_free_mb": 1}}).start()
        scp_port, bare_port = free_port(), free_port()
        (root / "storescp").mkdir()
        (root / "bare").mkdir()
        storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(root / "storescp"), str(scp_port)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        bare = subprocess.Popen([sys.executable, "-c", BARE_SCP, str(bare_port), str(root / "bare")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(scp_port, 30, storescp)
            wait_port(bare_port, 30, bare)
            targets = {"dicom-node": (node.port, "DICOM_NODE"), "storescp": (scp_port, "STORESCP"),
                       "bare-pynetdicom": (bare_port, "BARE")}
            times, mb = alternate(list(targets), args.rounds, datasets, src,
                                  lambda name, files: send(*targets[name], files), quiet=args.json)
            stored = node.status()["instances"]
        finally:
            node.stop()
            storescp.terminate()
            bare.terminate()
            storescp.wait()
            bare.wait()
    expected = args.images * args.rounds
    rate = {k: mb / statistics.median(v) for k, v in times.items()}
    result = {
        "machine": f"{platform.machine()}, {platform.system()}, {__import__('os').cpu_count()} CPUs",
        "images_per_round": args.images, "rounds": args.rounds, "mb_per_round": round(mb, 1),
        "mb_per_image": round(mb / args.images, 2),
        "mb_s": {k: round(v, 1) for k, v in rate.items()},
        "ratio_vs_storescp": round(rate["dicom-node"] / rate["storescp"], 2),
        "ratio_vs_bare": round(rate["dicom-node"] / rate["bare-pynetdicom"], 2),
        "dicom_node_instances_stored": stored, "expected": expected,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in rate.items():
            print(f"{k:>16}: {v:7.1f} MB/s")
        print(f"dicom-node / storescp: {result['ratio_vs_storescp']:.2f} (target >= 1.0)")
        print(f"dicom-node / bare    : {result['ratio_vs_bare']:.2f} (target >= 0.6)")
        print(f"stored by dicom-node : {stored} of {expected}")
    return 0 if stored == expected else 1


if __name__ == "__main__":
    sys.exit(main())
