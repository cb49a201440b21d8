"""The device page's issue-15 charts in a real headless Chromium: each signal with its limits and the
forecast's predicted crossing, the tube's used life, the AI's positive rate with the configuration
change marked; and the dashboard's nearest predicted crossing.

A real node (``dicom-node serve`` with its admin console) receives the simulator's images over
C-STORE and reads its sidecar logs: device 1's tube housing temperature ramps toward its 60 °C limit
under heavy use (120 images), device 2 gets a software update at its 31st of 60 images that changes
its image processing (its planned AI outcomes are handed to the node's twin as numbers, the detector
is not run), device 3 is stable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import httpx
import pytest
from admin_support import ARTIFACTS, Dom, Element, chromium

from dicom_node.testing import NodeProcess, free_port, load_script, wait_for
from twin.db import thread_local_connect
from twin.store import TwinStore

RATED_LIFE_HU = 320_000.0  # the heavy-use device has used about 85% of it: WARN


def _simulator() -> ModuleType:
    return load_script("simulate_modality")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str | None]) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("charts") / "node"
    root.mkdir(parents=True)
    weights = root / "unused.pth"  # nothing is analysed (routing OT): no model is loaded
    weights.write_bytes(b"")
    port = free_port()
    node = NodeProcess(root, database=new_database(), overrides={
        "admin": {"enabled": True, "port": port},
        "twin": {"sidecar_poll_s": 0.5, "evaluate_every_s": 1.0, "tube_rated_life": RATED_LIFE_HU},
        "routing": {"modalities": ["OT"]},
        "model": {"weights": str(weights)},
    })
    node.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("admin console", lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200 or None, 30)
        sim = _simulator()
        args = ["--to", f"DICOM_NODE@127.0.0.1:{node.port}", "--devices", "3", "--days", "30", "--all-signals",
                "--degrade", "1:ramp:tube_housing_temperature:70", "--degrade", "1:tube:2",
                "--degrade", "2:processing:31:PROC-7"]
        inj = sim.injections_from(sim.build_parser().parse_args(args))
        plan = sim.plan(3, 60, seed=11, days=30, now=datetime.now(UTC), injections=inj, all_signals=True)
        sim.write_sidecar(plan, root / "sidecar")
        counts = sim.send(plan, f"DICOM_NODE@127.0.0.1:{node.port}", size=64)
        assert sum(c["failed"] for c in counts.values()) == 0
        summary = sim.summary(plan, counts, {})

        def recorded() -> list[dict[str, Any]] | None:
            devices = httpx.get(url + "/api/devices", timeout=30).json()
            return devices if sum(d["acquisitions"] for d in devices) == len(plan.shots) else None

        wait_for("the twin recorded every image", recorded, 180)
        store = TwinStore(thread_local_connect(node.database or node.storage / "node.db"))
        assert sim.record_ai_outcomes(plan, store) == len(plan.shots)

        def read_logs() -> bool | None:
            telemetry = [httpx.get(f"{url}/api/devices/{d['serial']}", timeout=30).json()["events"].get("telemetry")
                         for d in summary["devices"]]
            expected = [d["events"]["telemetry"] for d in summary["devices"]]
            return telemetry == expected or None

        wait_for("the twin read every sidecar line", read_logs, 120)
        yield {"url": url, "summary": summary, "node": node}
    finally:
        node.stop()


def _record(site: dict[str, Any], number: int) -> dict[str, Any]:
    serial = site["summary"]["devices"][number - 1]["serial"]
    rec: dict[str, Any] = httpx.get(f"{site['url']}/api/devices/{serial}", timeout=30).json()
    return rec


def _texts(el: Element) -> str:
    return " ".join([el.text, *(d.text for d in el.descendants())])


def test_signal_chart_shows_limits_forecast_and_crossing_date(site: dict[str, Any], chromium_tool: None) -> None:
    rec = _record(site, 1)
    truth = site["summary"]["devices"][0]["injected"][0]
    forecast = next(f for f in rec["forecasts"]
                    if f["signal"] == "tube_housing_temperature" and f["limit_kind"] == "warn")
    crossing = forecast["crossing_at"][:10]
    assert rec["health"]["status"] == "WARN" and truth["warn_limit"] == 60.0
    dom = Dom(chromium(f"{site['url']}/devices/{rec['id']}"))

    chart = dom.one("svg", id="signal-tube_housing_temperature")
    assert chart.attrs["data-crossing"] == crossing and int(chart.attrs["data-forecasts"]) >= 1
    assert int(chart.attrs["data-readings"]) > 100
    words = _texts(chart)
    assert "tube housing temperature over time" in words
    assert "warn limit 60 °C" in words and "alert limit 70 °C" in words
    assert f"60 °C on {crossing}" in words  # the predicted date, printed beside the crossing
    assert chart.find("polyline", class_="forecast") and chart.find("polygon", class_="forecast-band")
    assert chart.find("line", class_="warn-limit") and chart.find("line", class_="alert-limit")
    assert chart.find("rect", class_="zone-warn") and chart.find("line", class_="now")
    note = dom.one("section", id="signal-tube_housing_temperature-card")
    assert "WARN" in _texts(note) and f"forecast to rise above its warn limit 60 °C on {crossing}" in _texts(note)
    # every signal the device logs has its chart; the stable ones predict no crossing
    flow = dom.one("svg", id="signal-cooling_water_flow")
    assert flow.attrs["data-forecasts"] == "0" and flow.attrs["data-crossing"] == ""
    assert "warn limit 2 L/min" in _texts(flow)

    tube = dom.one("svg", id="tube-chart")
    used = rec["tube"]["used_fraction"]
    assert abs(float(tube.attrs["data-used"]) - used) < 1e-3
    assert f"{used:.1%} of the rated life used" in _texts(tube)
    assert f"replacement projected {rec['tube']['projected_replacement']}" in _texts(tube)
    assert "heat units" in _texts(dom.one("section", id="tube-card"))

    shot = ARTIFACTS / "device-signals.png"
    chromium(f"{site['url']}/devices/{rec['id']}", screenshot=shot, size=(1280, 3600))
    assert shot.stat().st_size > 10_000


def test_ai_chart_marks_the_configuration_change(site: dict[str, Any], chromium_tool: None) -> None:
    rec = _record(site, 2)
    days = [d for d in rec["ai"]["daily"] if d["analysed"]]
    assert sum(d["analysed"] for d in days) == 60
    dom = Dom(chromium(f"{site['url']}/devices/{rec['id']}"))
    chart = dom.one("svg", id="ai-chart")
    assert int(chart.attrs["data-days"]) == len(days) and chart.attrs["data-changes"] == "1"
    marker = chart.find("g", class_="marker-config")
    assert marker and "PROC-7" in _texts(marker[0])
    dots = chart.find("g", class_="ai-days")[0].find("circle")
    assert len(dots) == len(days)
    first = days[0]
    assert f"{first['day']}: {first['positive']} of {first['analysed']} positive" in _texts(chart)
    assert "baseline" in _texts(dom.one("section", id="ai-card"))


def test_dashboard_shows_the_nearest_predicted_crossing(site: dict[str, Any], chromium_tool: None) -> None:
    ramp, stable = _record(site, 1), _record(site, 3)
    dom = Dom(chromium(site["url"] + "/"))
    rows = {r.attrs["data-device-id"]: r for r in dom.find("tr", class_="device")}
    cell = rows[str(ramp["id"])].find("td", class_="crossing")[0]
    soonest = ramp["forecasts"][0]
    assert soonest["crossing_at"][:10] in _texts(cell)
    assert "tube housing temperature above warn 60 °C" in " ".join(_texts(cell).split())
    assert "none" in _texts(rows[str(stable["id"])].find("td", class_="crossing")[0])
    assert stable["health"]["status"] == "OK" and stable["forecasts"] == []
