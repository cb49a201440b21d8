"""The dashboard in a real headless Chromium: counts, the device table, overlays and the SVG charts.

Screenshots go to test-artifacts/admin/ (dashboard.png, device.png).
"""

from __future__ import annotations

import io

from admin_support import ARTIFACTS, Dom, FedNode, chromium
from PIL import Image


def test_dashboard_shows_counts_devices_and_studies(fed_node: FedNode, chromium_tool: None) -> None:
    status = fed_node.settled()
    devices = fed_node.json("/api/devices")
    dom = Dom(chromium(fed_node.url + "/"))

    assert dom.one(id="instances-received").attrs["data-value"] == str(status["instances"])
    assert dom.one(id="device-count").attrs["data-value"] == str(len(devices))
    assert dom.one(id="queue-depth").attrs["data-value"] == "0"
    assert int(dom.one(id="associations").attrs["data-value"]) >= 2

    rows = dom.find("tr", class_="device")
    assert sorted(int(r.attrs["data-device-id"]) for r in rows) == sorted(d["id"] for d in devices)
    table = dom.one("table", id="devices-table").text
    for sent in fed_node.fleet["devices"]:
        assert sent["serial"] in table
    for row in rows:
        badge = [el for el in row.children[0].children if "badge" in el.attrs.get("class", "")]
        assert badge and badge[0].text.strip() == row.attrs["data-health"] in ("OK", "WARN", "ALERT")

    studies = {r.attrs["data-study-uid"]: r for r in dom.find("div", class_="study")}
    assert set(fed_node.rsna_studies) <= set(studies)  # sent last: the most recent
    assert sum(int(e.attrs["data-findings"]) for e in dom.find("span", class_="findings")) > 0
    thumbs = [img.attrs["src"] for img in dom.find("img") if img.attrs.get("src", "").startswith("/thumbs/")]
    assert len(thumbs) >= len(fed_node.rsna_studies)
    png = fed_node.get(thumbs[0])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert max(Image.open(io.BytesIO(png.content)).size) <= 256

    shot = ARTIFACTS / "dashboard.png"
    chromium(fed_node.url + "/", screenshot=shot, size=(1280, 1700))
    assert Image.open(shot).size == (1280, 1700)


def test_device_page_draws_the_drift_chart_with_limits(fed_node: FedNode, chromium_tool: None) -> None:
    device = fed_node.json(f"/api/devices/{fed_node.drifting_serial}")
    url = f"{fed_node.url}/devices/{device['id']}"
    dom = Dom(chromium(url))

    assert dom.one(id="device-title").attrs["data-device-id"] == str(device["id"])
    di = dom.one("svg", id="di-chart")
    images = sum(u["acquisitions"] for u in device["usage_per_day"])
    assert int(di.attrs["data-points"]) == images
    assert int(di.attrs["data-ewma-points"]) == images - 50  # after the 50-image baseline
    inside = di
    assert len(inside.find("circle")) >= images
    assert inside.find("polygon", class_="control-limits") and inside.find("polyline", class_="ewma")
    assert len(inside.find("line", class_="action-level")) == 2  # ±3 DI
    assert inside.find("g", class_="marker-config") and inside.find("g", class_="marker-maintenance")

    bars = dom.one("svg", id="exposures-chart")
    assert int(bars.attrs["data-exposures"]) == images
    events = dom.one("svg", id="events-chart")
    assert int(events.attrs["data-lane-faults"]) == device["faults"] >= 1
    assert int(events.attrs["data-lane-config"]) == len(device["configuration_history"]) - 1 >= 1

    shot = ARTIFACTS / "device.png"
    chromium(url, screenshot=shot, size=(1280, 2300))
    assert Image.open(shot).size == (1280, 2300)

