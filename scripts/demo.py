#!/usr/bin/env python
"""``make demo``: a node, a PACS, the RSNA sample and a few phantoms, end to end, on this machine.

Starts Orthanc (the Debian package) as the PACS when it is installed, else DCMTK storescp as the
results receiver; starts a node that delivers to it; sends the nine RSNA radiographs and a few
synthetic phantoms with DCMTK storescu; waits for every result; prints a table of findings per
image; and writes PNG previews of the overlays to the folder it names. Everything lives under
``--out`` (default ./demo-out) and every process it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import dcmread
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicom_node.store import Store  # noqa: E402
from dicom_node.testing import NodeProcess, OrthancProcess, free_port, rsna_files, storescu, tool, wait_port  # noqa: E402
from models.phantoms import device_fleet, generate, to_dataset  # noqa: E402

console = Console()


def start_pacs(out: Path) -> tuple[dict[str, object], object]:
    """Orthanc when installed, else storescp; returns (destination config, process handle)."""
    if tool("Orthanc"):
        pacs = OrthancProcess(out / "orthanc").start()
        console.print(f"PACS: Orthanc on DICOM port {pacs.dicom_port}, web http://127.0.0.1:{pacs.http_port}/app/explorer.html")
        return pacs.destination(), pacs
    port = free_port()
    (out / "received").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["storescp", "-aet", "RESULTS", "-od", str(out / "received"), str(port)])
    wait_port(port, 30, proc)
    console.print(f"PACS: DCMTK storescp on port {port}, files in {out / 'received'}")
    return {"name": "results", "ae_title": "RESULTS", "host": "127.0.0.1", "port": port}, proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("demo-out"))
    ap.add_argument("--phantoms", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=900.0)
    args = ap.parse_args()
    if not tool("storescu"):
        console.print("[red]error:[/] DCMTK storescu is missing: run make setup")
        return 2
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    (out / "phantoms").mkdir(parents=True)
    fleet = device_fleet(1, seed=4242)
    for i in range(args.phantoms):
        to_dataset(generate(seed=4242, index=i, size=1024), fleet[0]).save_as(
            out / "phantoms" / f"phantom-{i}.dcm", enforce_file_format=True)
    files = rsna_files() + sorted((out / "phantoms").glob("*.dcm"))

    destination, pacs = start_pacs(out)
    node = NodeProcess(out / "node", overrides={"destinations": [destination]})
    try:
        node.start()
        console.print(f"node: DICOM_NODE on port {node.port}, storage {node.storage}")
        t0 = time.monotonic()
        sent = storescu(node.port, files)
        if sent.returncode != 0:
            console.print(f"[red]storescu failed:[/] {sent.stderr.strip()}")
            return 1
        console.print(f"sent {len(files)} images; waiting for the analysis and the results …")
        expected = 3 * len(files)
        with console.status("analysing") as status:
            while True:
                st = node.status()
                done = st["jobs_by_kind"].get("deliver", {}).get("done", 0)
                analysed = st["jobs_by_kind"].get("analyse", {})
                status.update(f"analysed {analysed.get('done', 0) + analysed.get('skipped', 0)}/{len(files)}, "
                              f"results delivered {done}/{expected}")
                if done >= expected:
                    break
                if time.monotonic() - t0 > args.timeout:
                    console.print(f"[red]timed out[/]: {st['jobs_by_kind']}")
                    return 1
                time.sleep(1)
        elapsed = time.monotonic() - t0
        report(node, files, out / "previews")
        console.print(f"all results delivered in {elapsed:.0f} s ({elapsed / len(files):.1f} s per image)")
        console.print(f"overlay previews: {out / 'previews'}")
    finally:
        node.stop()
        if isinstance(pacs, OrthancProcess):
            pacs.stop()
        else:
            pacs.terminate()  # type: ignore[attr-defined]
    return 0


def report(node: NodeProcess, files: list[Path], previews: Path) -> None:
    previews.mkdir(parents=True, exist_ok=True)
    store = Store(node.storage / "node.db")
    table = Table("image", "opacity p (image)", "findings (score: box x0,y0–x1,y1)", "results")
    try:
        for f in files:
            ds = dcmread(f, stop_before_pixels=True)
            uid = str(ds.SOPInstanceUID)
            findings = store.findings(uid)
            analysis = store.analysis(uid) or {}
            p = analysis.get("opacity_probability")
            text = "\n".join(f"{x['score']:.2f}: {x['x0']:.0f},{x['y0']:.0f}–{x['x1']:.0f},{x['y1']:.0f}"
                             for x in findings) or "no opacity detected"
            kinds = []
            for r in store.results_for(uid):
                kinds.append(r["kind"])
                if r["kind"] == "sc":
                    sc = dcmread(r["path"])
                    img = Image.fromarray(np.asarray(sc.pixel_array, dtype=np.uint8))
                    img.thumbnail((768, 768))
                    img.save(previews / f"{f.stem}.png")
            table.add_row(f.stem[:24], "" if p is None else f"{p:.2f}", text, ", ".join(kinds))
    finally:
        store.close()
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
