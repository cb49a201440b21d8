"""One real node for the admin tests, fed the RSNA sample and a simulated fleet with a drifting device.

The node runs as its own process (``dicom-node serve``) with the admin console on a free loopback
port. The fleet's two devices are DX (``--seed 2``) and the node analyses CR only, so the detector sees
just the nine RSNA images while the twin records every image: the tests stay quick on two CPUs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator

import httpx
import pydicom
import pytest
from admin_support import FedNode

from dicom_node.testing import REPO, NodeProcess, free_port, require, rsna_files, storescu, tool, wait_for
from models import SHIPPED_WEIGHTS

FLEET_IMAGES = 64  # per device: more than the 50-image exposure-index baseline, so the drift chart has limits
DRIFT_FROM = 50


@pytest.fixture(scope="session")
def fed_node(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str | None]) -> Iterator[FedNode]:
    require(all(tool(t) for t in ("storescu", "echoscu")), "DCMTK (storescu, echoscu)")
    files = rsna_files()
    require(len(files) == 9, "the RSNA sample")
    require(SHIPPED_WEIGHTS.is_file(), f"the shipped model {SHIPPED_WEIGHTS.name}")
    root = tmp_path_factory.mktemp("admin") / "node"
    admin_port = free_port()
    node = NodeProcess(root, database=new_database(), overrides={
        "admin": {"enabled": True, "port": admin_port},
        "twin": {"sidecar_poll_s": 1, "evaluate_every_s": 2},
        "routing": {"modalities": ["CR"]},
    })
    node.start()
    try:
        wait_for("admin console", lambda: _answers(f"http://127.0.0.1:{admin_port}/healthz"), 30)
        sim = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "simulate_modality.py"),
             "--to", f"DICOM_NODE@127.0.0.1:{node.port}", "--devices", "2", "--images", str(FLEET_IMAGES),
             "--days", "10", "--size", "128", "--seed", "2", "--sidecar-dir", str(root / "sidecar"),
             "--drift", f"2:{DRIFT_FROM}:0.2", "--software-update", "2:20", "--fault-burst", "1", "--json"],
            capture_output=True, text=True, timeout=300, cwd=REPO,
        )
        assert sim.returncode == 0, sim.stderr[-2000:]
        fleet = json.loads(sim.stdout)
        sent = storescu(node.port, files)  # after the fleet, so the RSNA studies are the most recent
        assert sent.returncode == 0, sent.stderr[-2000:]
        studies = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files})
        fed = FedNode(node, f"http://127.0.0.1:{admin_port}", studies, fleet)
        wait_for("the twin recorded every image", fed.twin_recorded, 180)
        note = node.cli("maintenance", "add", fed.drifting_serial, "--kind", "qc", "--note",
                        "weekly QC phantom check", check=False)
        assert note.returncode == 0, note.stderr
        yield fed
    finally:
        node.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture(scope="session")
def chromium_tool() -> None:
    require(tool("chromium") is not None, "Chromium (Debian package chromium)")


@pytest.fixture
def token_node(node_factory: type[NodeProcess]) -> Iterator[tuple[NodeProcess, str, str]]:
    """A node whose admin console asks for a token (nothing sent to it)."""
    require(SHIPPED_WEIGHTS.is_file(), f"the shipped model {SHIPPED_WEIGHTS.name}")
    port = free_port()
    token = "s3cret-admin-token"
    node = node_factory("token-node", admin={"enabled": True, "port": port, "token": token}).start()
    wait_for("admin console", lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 30)
    yield node, f"http://127.0.0.1:{port}", token

