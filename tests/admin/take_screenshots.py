#!/usr/bin/env python3
"""Screenshots of the admin dashboard and of a device page, for docs/screenshots/ (run by hand).

    .venv/bin/python tests/admin/take_screenshots.py [--out docs/screenshots]

Starts a real Orthanc as the PACS, a node that delivers its results there, a simulated fleet of four
modalities (one drifting, one with a burst of faults, one overdue for calibration, one fine) and the
RSNA sample, waits until everything is analysed and delivered, then saves ``dashboard.png`` and
``device.png`` (the drifting device) from headless Chromium.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from admin_support import chromium

from dicom_node.testing import REPO, NodeProcess, OrthancProcess, free_port, rsna_files, storescu, wait_for


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="admin-shots-") as tmp:
        root = Path(tmp)
        pacs = OrthancProcess(root / "orthanc").start()
        port = free_port()
        node = NodeProcess(root / "node", overrides={
            "admin": {"enabled": True, "port": port},
            "destinations": [pacs.destination("pacs")],
            "twin": {"sidecar_poll_s": 1, "evaluate_every_s": 2},
        })
        try:
            node.start()
            url = f"http://127.0.0.1:{port}"
            sim = subprocess.run(
                [sys.executable, str(REPO / "scripts" / "simulate_modality.py"), "--to",
                 f"DICOM_NODE@127.0.0.1:{node.port}", "--devices", "4", "--images", "66", "--days", "21",
                 "--size", "256", "--seed", "4", "--sidecar-dir", str(node.root / "sidecar"),
                 "--drift", "2:50:0.2", "--software-update", "2:24", "--fault-burst", "1:9",
                 "--calibration-lapse", "3:400", "--json"],
                capture_output=True, text=True, timeout=600, check=True)
            fleet = json.loads(sim.stdout)
            storescu(node.port, rsna_files())
            total = fleet["sent"] + len(rsna_files())
            node.wait_jobs_settled(total, timeout_s=1800)
            drifting = fleet["devices"][1]["serial"]
            when = (datetime.now(UTC) - timedelta(days=8)).isoformat(timespec="minutes")
            node.cli("maintenance", "add", drifting, "--kind", "qc", "--note", "weekly QC phantom: within limits",
                     "--at", when)
            wait_for("deliveries", lambda: _delivered(node), 600)
            device = httpx.get(f"{url}/api/devices/{drifting}", timeout=30).json()
            args.out.mkdir(parents=True, exist_ok=True)
            chromium(f"{url}/", screenshot=args.out / "dashboard.png", size=(1280, 1760))
            chromium(f"{url}/devices/{device['id']}", screenshot=args.out / "device.png", size=(1280, 2150))
            print(f"saved {args.out / 'dashboard.png'} and {args.out / 'device.png'}")
        finally:
            node.stop()
            pacs.stop()
    return 0


def _delivered(node: NodeProcess) -> bool:
    deliver = node.status()["jobs_by_kind"].get("deliver", {})
    return bool(deliver) and deliver.get("queued", 0) + deliver.get("running", 0) == 0


if __name__ == "__main__":
    sys.exit(main())
