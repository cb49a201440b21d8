"""End to end: the simulator (pynetdicom) and DCMTK storescu send to a running ``dicom-node serve``;
the twin's records, read with the real commands, match what was sent.

Detection is routed off (``routing.modalities: [OT]``) so the test stays quick and needs no model
weights; the twin step runs for every instance whatever the routing.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import typer
from typer.testing import CliRunner

from dicom_node.cli.twin import register
from dicom_node.testing import NodeProcess, load_script, storescu

REPO = Path(__file__).resolve().parents[2]


def _simulator() -> ModuleType:
    return load_script("simulate_modality")


def _sim(sim: ModuleType, *args: str) -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert sim.main([*args, "--json"]) == 0
    return json.loads(out.getvalue())


def _devices(config: Path) -> list[dict[str, Any]]:
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["devices", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_simulator_and_storescu_build_matching_twin_records(
    node_factory: type[NodeProcess], dcmtk: None, tmp_path: Path
) -> None:
    sim = _simulator()
    # detection is routed off, so the detector (loaded lazily) never needs real weights
    weights = tmp_path / "unused.pth"
    weights.write_bytes(b"")
    node = node_factory(
        routing={"modalities": ["OT"]},
        twin={"sidecar_poll_s": 0.5, "evaluate_every_s": 1.0},
        model={"weights": str(weights)},
    ).start()
    sidecar = node.root / "sidecar"
    sent = _sim(
        sim,
        "--to",
        f"DICOM_NODE@127.0.0.1:{node.port}",
        "--devices",
        "3",
        "--images",
        "8",
        "--size",
        "128",
        "--sidecar-dir",
        str(sidecar),
        "--fault-burst",
        "2",
        "--software-update",
        "3:5",
    )
    # a fourth device, written to files by the simulator and sent by DCMTK
    files = _sim(
        sim, "--out-dir", str(tmp_path / "dcm"), "--devices", "1", "--images", "5", "--size", "128", "--seed", "7"
    )
    res = storescu(node.port, sorted((tmp_path / "dcm").glob("*.dcm")))
    assert res.returncode == 0, res.stderr
    node.wait_jobs_settled(sent["sent"] + files["sent"], timeout_s=120)

    expected = {d["serial"]: d for d in [*sent["devices"], *files["devices"]]}
    deadline = time.monotonic() + 30
    while True:
        twins = {d["serial"]: d for d in _devices(node.config_path)}
        faults_in = sum(t["faults"] for t in twins.values())
        if faults_in == sum(d["events"].get("fault", 0) for d in expected.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert set(twins) == set(expected)
    for serial, d in expected.items():
        assert twins[serial]["acquisitions"] == d["sent"] == d["planned"]
        assert twins[serial]["faults"] == d["events"].get("fault", 0)
        assert (twins[serial]["manufacturer"], twins[serial]["station"]) == (d["manufacturer"], d["station"])
    burst = twins[sent["devices"][1]["serial"]]["health"]
    assert burst["status"] == "ALERT" and any(r.startswith("fault rate up") for r in burst["reasons"])
    updated = twins[sent["devices"][2]["serial"]]
    assert (
        "UPDATED-2.0" in sent["devices"][2]["software_versions"] and len(sent["devices"][2]["software_versions"]) == 2
    )
    assert updated["software_versions"] == "UPDATED-2.0"  # the current configuration, same device
    assert node.stop() == 0
