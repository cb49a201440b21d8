"""The admin HTTP API, over real HTTP against a running node fed the RSNA sample and a simulated fleet."""

from __future__ import annotations

import json
from typing import Any

from admin_support import Dom, FedNode


def test_healthz_and_openapi_are_served(fed_node: FedNode) -> None:
    assert fed_node.json("/healthz") == {"ok": True, "ae_title": "DICOM_NODE", "model": "ready", "model_ready": True}
    schema = fed_node.json("/openapi.json")
    for path in ("/healthz", "/api/status", "/api/devices", "/api/devices/{ref}", "/api/studies/{study_uid}",
                 "/api/jobs", "/metrics"):
        assert path in schema["paths"], path
    assert fed_node.get("/docs").status_code == 404  # Swagger UI would load scripts from a CDN


def test_status_is_what_the_status_command_prints(fed_node: FedNode) -> None:
    fed_node.settled()
    api = fed_node.json("/api/status")
    cli = json.loads(fed_node.node.cli("status", "--json").stdout)

    def but_the_beat(st: dict[str, Any]) -> dict[str, Any]:  # a heartbeat may fall between the two reads
        return {**st, "nodes": [{k: v for k, v in n.items() if k != "last_seen_at"} for n in st["nodes"]]}

    assert but_the_beat(api) == but_the_beat(cli)
    assert [(n["state"], n["roles"]) for n in api["nodes"]] == [("alive", ["receive", "analyse", "deliver",
                                                                           "schedule", "admin"])]
    assert api["instances"] == fed_node.fleet["sent"] + 9
    assert api["jobs_by_kind"]["analyse"]["done"] == 9  # the RSNA images (CR)
    assert api["jobs_by_kind"]["analyse"]["skipped"] == fed_node.fleet["sent"]  # the fleet (DX, not routed)


def test_devices_list_and_one_device_record(fed_node: FedNode) -> None:
    devices = fed_node.json("/api/devices")
    by_serial = {d["serial"]: d for d in devices}
    for sent in fed_node.fleet["devices"]:
        twin = by_serial[sent["serial"]]
        assert twin["acquisitions"] == sent["sent"]
        assert twin["health"]["status"] in ("OK", "WARN", "ALERT")
    drifting = by_serial[fed_node.drifting_serial]
    record = fed_node.json(f"/api/devices/{drifting['id']}")
    assert record["serial"] == fed_node.drifting_serial
    assert sum(u["acquisitions"] for u in record["usage_per_day"]) == drifting["acquisitions"]
    assert [c["software_versions"] for c in record["configuration_history"]][-1] != \
        record["configuration_history"][0]["software_versions"]  # the injected software update
    assert any(m["kind"] == "qc" for m in record["maintenance"])
    assert fed_node.json(f"/api/devices/{fed_node.drifting_serial}")["id"] == drifting["id"]  # by serial too
    missing = fed_node.get("/api/devices/999999")
    assert missing.status_code == 404 and "no device" in missing.json()["detail"]


def test_study_with_findings_and_results(fed_node: FedNode) -> None:
    fed_node.settled()
    found = 0
    for uid in fed_node.rsna_studies:
        study = fed_node.json(f"/api/studies/{uid}")
        assert study["study_instance_uid"] == uid
        for inst in study["instances"]:
            assert inst["outcome"] == "analysed" and inst["calling_ae"] == "MODALITY1"
            assert {r["kind"] for r in inst["results"]} == {"sr", "gsps", "sc"}
            found += len(inst["findings"])
    assert found > 0, "the model found no opacity in any RSNA image"
    assert fed_node.get("/api/studies/1.2.3.4.5.6.7.8.9").status_code == 404
    # The DICOMweb listener is off: no URL anywhere, no dead link (on: test_admin_dicomweb_links.py)
    uid = fed_node.rsna_studies[0]
    assert fed_node.json(f"/api/studies/{uid}")["dicomweb_url"] is None
    assert json.loads(fed_node.node.cli("results", uid, "--json").stdout)["dicomweb_url"] is None
    assert "DICOMweb" not in fed_node.node.cli("results", uid).stdout
    for page in (f"/studies/{uid}", "/"):
        html = fed_node.get(page).text
        assert "dicom-web" not in html and not Dom(html).find("a", class_="dicomweb"), page


def test_jobs_filtered_by_state_and_kind(fed_node: FedNode) -> None:
    fed_node.settled()
    done = fed_node.json("/api/jobs?state=done&kind=analyse&limit=1000")
    assert len(done) == 9 and {j["state"] for j in done} == {"done"}
    skipped = fed_node.json("/api/jobs?state=skipped&limit=5")
    assert len(skipped) == 5 and all(j["kind"] == "analyse" for j in skipped)
    assert fed_node.get("/api/jobs?state=bogus").status_code == 422
