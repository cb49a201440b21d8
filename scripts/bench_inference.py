#!/usr/bin/env python
"""Per-radiograph latency of the shipped compact Cascade R-CNN against Detectron2's stock Cascade R-50-FPN.

Both run on the same DICOM radiographs in the same process, one image at a time, timed end to end as
the worker runs them: decode + preprocessing + forward + boxes back to source pixels. The stock
model is Detectron2's ``Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml`` loaded by path with the mask head
off (box-only, like ours), shortest edge 800 / longest 1333, 3-channel input, randomly initialised:
weights do not change the cost of a forward pass and nothing is downloaded. It also reports the
compact model's batched throughput (``Detector.predict`` on batches of 4), and the whole worker's:
a ``dicom-node serve`` process is sent the same radiographs by DCMTK storescu and timed until every
analysis job is done (twin, routing, detection in batches, the three result objects written) and
until DCMTK storescp, its destination, holds every result.

Writes the "Inference" section of docs/benchmarks.md (other sections are left as they are).

    python scripts/bench_inference.py --images 12 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pydicom
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402

from dicom_node.testing import RSNA_DIR, NodeProcess, free_port, storescu, wait_for, wait_port  # noqa: E402
from models import phantoms  # noqa: E402
from models.detector import Detector  # noqa: E402
from models.modeling import SHIPPED_WEIGHTS, build  # noqa: E402
from models.preprocess import display_image  # noqa: E402

STOCK_CONFIG = "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _radiographs(n: int, rsna: Path | None) -> list[pydicom.Dataset]:
    """n encoded radiographs (read back from bytes, as the worker reads spooled files)."""
    import io

    out: list[pydicom.Dataset] = []
    if rsna is not None and rsna.is_dir():
        out += [pydicom.dcmread(p) for p in sorted(rsna.glob("*.dcm"))[: n // 2]]
    fleet = phantoms.device_fleet(3, 77)
    i = 0
    while len(out) < n:
        ds = phantoms.to_dataset(phantoms.generate(77, i, size=1024), fleet[i % 3])
        buf = io.BytesIO()
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
        buf.seek(0)
        out.append(pydicom.dcmread(buf))
        i += 1
    return out


def _reset_pixels(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A fresh copy whose pixel data must be decoded again (no cached pixel_array)."""
    import copy

    return copy.deepcopy(ds)


class StockCascade:
    """Detectron2's stock Cascade R-50-FPN, box only, with its own test-time resize."""

    def __init__(self, device: str) -> None:
        import detectron2

        cfg = get_cfg()
        cfg.merge_from_file(str(Path(detectron2.__file__).parent / "model_zoo" / "configs" / STOCK_CONFIG))
        cfg.MODEL.MASK_ON = False
        cfg.MODEL.WEIGHTS = ""
        self.model = build(cfg, device).eval()
        self.aug = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        self.size = (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)

    def __call__(self, ds: pydicom.Dataset) -> int:
        img = (display_image(ds) * 255.0).astype(np.uint8)
        h, w = img.shape
        resized = self.aug.get_transform(img).apply_image(img)
        bgr = np.repeat(resized[None, :, :], 3, axis=0).astype(np.float32)
        with torch.inference_mode():
            out = self.model([{"image": torch.from_numpy(bgr), "height": h, "width": w}])
        return len(out[0]["instances"])


def _time_interleaved(fns: list, images: list[pydicom.Dataset], warmup: int = 2) -> list[list[float]]:
    """Seconds per image for each model, alternating models image by image so that load from other
    processes on a shared machine falls on both alike."""
    for ds in images[:warmup]:
        for fn in fns:
            fn(_reset_pixels(ds))
    times: list[list[float]] = [[] for _ in fns]
    for ds in images:
        for fn, out in zip(fns, times, strict=True):
            fresh = _reset_pixels(ds)
            t0 = time.perf_counter()
            fn(fresh)
            out.append(time.perf_counter() - t0)
    return times


def _stats(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(np.ceil(0.95 * len(ordered))) - 1)]
    return statistics.median(ordered), p95


def _write_section(path: Path, body: str) -> None:
    """Replace (or append) the '## Inference' section, leaving every other section untouched."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "## Inference"), None)
    section = ["## Inference", "", *body.rstrip().splitlines(), ""]
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        lines[start:end] = section
    path.write_text("\n".join(lines).rstrip() + "\n")


def _worker_throughput(images: list[pydicom.Dataset], threads: int, batch: int) -> tuple[float, float]:
    """Images/s of a real node's worker: (all analysis jobs done, all results at the destination),
    both counted from the start of the send."""
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        root = Path(tmp)
        files = []
        for i, ds in enumerate(images):
            files.append(root / "in" / f"{i:04d}.dcm")
            files[-1].parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(files[-1], enforce_file_format=True)
        sink_port, received = free_port(), root / "pacs"
        received.mkdir()

        def results_at_destination() -> int:
            return sum(1 for p in received.rglob("*") if p.is_file())

        sink = subprocess.Popen(["storescp", "-od", str(received), "-aet", "PACS", str(sink_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node = NodeProcess(root / "node", {
            "worker": {"threads": 1, "batch_size": batch},
            "model": {"threads": threads},
            "destinations": [{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": sink_port}],
        })
        try:
            wait_port(sink_port, 30, sink)
            node.start()
            # Warm-up: the first image loads the model in the worker; it is not part of the figure.
            warm = root / "warm.dcm"
            phantoms.to_dataset(phantoms.generate(78, 0, size=1024), phantoms.device_fleet(1, 78)[0]).save_as(
                warm, enforce_file_format=True)
            if storescu(node.port, [warm]).returncode != 0:
                raise RuntimeError("storescu failed on the warm-up image")
            node.wait_jobs_settled(1, timeout_s=600)
            wait_for("warm-up results", lambda: results_at_destination() >= 3, 600, 0.2)
            t0 = time.monotonic()
            sent = storescu(node.port, files)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.stderr[-300:]}")
            node.wait_jobs_settled(1 + len(files), timeout_s=1800)
            analysed = time.monotonic() - t0
            wait_for("every result at the destination", lambda: results_at_destination() >= 3 * (1 + len(files)),
                     1800, 0.2)
            delivered = time.monotonic() - t0
        finally:
            node.stop()
            sink.terminate()
            sink.wait()
    return len(images) / analysed, len(images) / delivered


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12, help="radiographs to time (half RSNA, half phantoms)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rsna", type=Path, default=RSNA_DIR / "images")
    ap.add_argument("--weights", type=Path, default=None, help="compact model weights (default: shipped)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    images = _radiographs(args.images, args.rsna)
    weights = args.weights or SHIPPED_WEIGHTS
    compact = Detector.load(weights, device=args.device, threads=args.threads)
    stock = StockCascade(compact.device)

    t_compact, t_stock = _time_interleaved([lambda ds: compact.predict([ds]), stock], images)
    per_image = []
    for i in range(0, len(images) - 3, 4):
        batch = [_reset_pixels(ds) for ds in images[i : i + 4]]
        t0 = time.perf_counter()
        compact.predict(batch)
        per_image.append((time.perf_counter() - t0) / len(batch))
    batched_ips = 1.0 / statistics.median(per_image)
    worker_ips, delivered_ips = _worker_throughput(images, args.threads, batch=4)
    c_med, c_p95 = _stats(t_compact)
    s_med, s_p95 = _stats(t_stock)
    n_rsna = sum(1 for ds in images if ds.get("SOPClassUID") == "1.2.840.10008.5.1.4.1.1.7")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = (
        f"{_cpu_name()} ({os.cpu_count()} vCPUs), {args.threads} torch threads ({args.device}), "
        f"torch {torch.__version__}, load average at the end {load}"
    )
    compact_params = sum(p.numel() for p in compact.model.parameters()) / 1e6
    stock_params = sum(p.numel() for p in stock.model.parameters()) / 1e6
    name = f"compact Cascade R-CNN (shipped, `{compact.metadata.config_name}`)"
    row_compact = f"| {name} | {compact.input_size} letterbox | {compact_params:.1f} M | {c_med:.3f} | {c_p95:.3f} |"
    row_stock = f"| Detectron2 stock Cascade R-50-FPN | 800 / 1333 | {stock_params:.1f} M | {s_med:.3f} | {s_p95:.3f} |"
    body = f"""Command: `python scripts/bench_inference.py --images {args.images} --threads {args.threads}`, run
{datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")} on {machine}.
{len(images)} radiographs ({n_rsna} RSNA 1024 x 1024 JPEG Baseline, the rest 1024 x 1024 phantoms as
CR/DX), one at a time, the two models alternating image by image, each timed end to end: DICOM decode,
preprocessing, forward pass, boxes back to source pixels.
The stock model is Detectron2's `{STOCK_CONFIG}` with the mask head off, 800 / 1333 resize,
**randomly initialised** (nothing is downloaded; the weights do not change the cost of a forward pass,
and proposals are capped at 1000 either way). No GPU was lent to this task, so the R-101 config's
GPU throughput is not measured.

| model | input | parameters | median s / radiograph | p95 s |
|---|---|---|---|---|
{row_compact}
{row_stock}

Stock / compact: **{s_med / c_med:.1f}x** (median), {s_p95 / c_p95:.1f}x (p95). Target, compact <= 1.0 s
per radiograph on 2 CPU cores: {"met" if c_med <= 1.0 else "NOT met"} at the median,
{"met" if c_p95 <= 1.0 else "NOT met"} at p95. Compact model in batches of 4 through `Detector.predict`:
{batched_ips:.2f} images/s (median batch, the detector alone).

The whole worker, in a `dicom-node serve` process (one analysis thread, batches of 4, {args.threads} torch
threads) sent the same {len(images)} radiographs by DCMTK storescu over one association (after one warm-up
image that loads the model), with DCMTK
storescp as its results destination: **{worker_ips:.2f} images/s** from the start of the send until
every analysis job was done (receive, twin, routing, detection, SR + GSPS + SC written to the outbox),
and {delivered_ips:.2f} images/s until storescp held all {3 * len(images)} results.
"""
    print(body)
    if not args.no_write:
        _write_section(args.out, body)
        print(f"wrote the Inference section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
