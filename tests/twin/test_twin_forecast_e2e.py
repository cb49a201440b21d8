"""Issue 15's checkpoint end to end: the simulator sends images over C-STORE to a running ``dicom-node
serve`` and writes its devices' sidecar logs, one device's tube housing temperature ramping toward its
limit; the real ``dicom-node device --json`` command (a separate process, while the node serves) shows
it WARN with the signal, the limit and the predicted date days before the crossing, the stable device
OK, and ``--what-if`` replays both without changing the database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from dicom_node.testing import REPO, NodeProcess


def test_ramping_sidecar_telemetry_is_warn_days_before_the_limit(
    node_factory: type[NodeProcess], tmp_path: Path
) -> None:
    weights = tmp_path / "unused.pth"  # the fleet's DX and CR images are not analysed: no model needed
    weights.write_bytes(b"")
    node = node_factory(
        routing={"modalities": ["OT"]}, twin={"sidecar_poll_s": 0.5, "evaluate_every_s": 1.0},
        model={"weights": str(weights)},
    ).start()
    sim = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "simulate_modality.py"), "--to",
         f"DICOM_NODE@127.0.0.1:{node.port}", "--devices", "2", "--images", "12", "--days", "30",
         "--size", "96", "--seed", "7", "--sidecar-dir", str(node.root / "sidecar"), "--all-signals",
         "--degrade", "1:ramp:tube_housing_temperature:70", "--json"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert sim.returncode == 0, sim.stderr[-2000:]
    fleet = json.loads(sim.stdout)
    ramping, stable = fleet["devices"]
    truth = ramping["injected"][0]
    crossing_truth = datetime.fromisoformat(truth["crosses_warn_at"])

    def record(serial: str) -> dict[str, Any]:
        res = node.cli("device", serial, "--json", check=False)
        return json.loads(res.stdout) if res.returncode == 0 else {}

    def telemetry_read(rec: dict[str, Any], sent: dict[str, Any]) -> bool:
        return bool(rec) and rec["events"].get("telemetry", 0) == sent["events"]["telemetry"] \
            and rec["acquisitions"] == sent["sent"]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ramp, flat = record(ramping["serial"]), record(stable["serial"])
        if telemetry_read(ramp, ramping) and telemetry_read(flat, stable):
            break
        time.sleep(0.5)
    now = datetime.now(UTC)
    assert telemetry_read(ramp, ramping) and telemetry_read(flat, stable), (ramp.get("events"), ramping["events"])

    assert ramp["health"]["status"] == "WARN", ramp["health"]["reasons"]
    first = ramp["forecasts"][0]
    assert (first["signal"], first["limit"], first["limit_kind"]) == ("tube_housing_temperature", 60.0, "warn")
    predicted = datetime.fromisoformat(first["crossing_at"])
    assert predicted - now > timedelta(days=2)  # days before the limit is crossed
    assert abs((predicted - crossing_truth).total_seconds()) < 4 * 86400
    reason = ramp["health"]["reasons"][0]
    assert "tube housing temperature forecast to rise above its warn limit 60 °C" in reason
    assert predicted.date().isoformat() in reason
    assert flat["health"]["status"] == "OK", flat["health"]["reasons"]
    assert flat["forecasts"] == []

    # what-if on the serving node's database: a 3-day warning time would not have warned yet
    since = (now - timedelta(days=20)).date().isoformat()
    res = node.cli("device", ramping["serial"], "--what-if", "forecast_warn_days=3", "--since", since, "--json")
    replay = {r["rule"]: r for r in json.loads(res.stdout)["rules"]}
    forecast = replay["tube_housing_temperature_forecast"]
    assert forecast["change"] == "would no longer fire" and forecast["what_if"] is None
    assert date.fromisoformat(forecast["current"]["last"]) == now.date()
    res = node.cli("device", stable["serial"], "--what-if", "forecast_warn_days=30", "--json")
    assert json.loads(res.stdout)["rules"] == []
    assert record(ramping["serial"])["health"]["status"] == "WARN"  # nothing was changed
    assert node.stop() == 0
