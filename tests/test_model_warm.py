"""A starting node listens at once and warms its model beside the receiver; status and /healthz say when
it is ready, so the first study after a start does not pay for loading the model."""

from __future__ import annotations

import json

import httpx

from dicom_node.testing import NodeProcess, free_port, wait_for


def test_model_warms_in_the_background_and_status_says_so(node_factory: type[NodeProcess], dcmtk: None) -> None:
    admin_port = free_port()
    node = node_factory(admin={"enabled": True, "port": admin_port}).start()
    # Listening already (start() waited for the DICOM port); the model state is loading or ready.
    assert node.status()["model"]["state"] in ("loading", "ready")
    ready = wait_for("model ready", lambda: node.status()["model"] if node.status()["model"]["state"] == "ready"
                     else None, 120)
    assert ready["name"] and ready["version"] and 0.0 < ready["score_threshold"] < 1.0 and ready["seconds"] > 0
    health = httpx.get(f"http://127.0.0.1:{admin_port}/healthz", timeout=5).json()
    assert health["model_ready"] is True and health["model"] == "ready"
    shown = node.cli("status").stdout
    assert f"model: ready ({ready['name']} {ready['version']})" in shown
    assert node.stop() == 0
    assert json.loads(node.cli("status", "--json").stdout)["model"]["state"] == "stopped"


def test_a_receive_only_node_says_it_runs_no_model(node_factory: type[NodeProcess], dcmtk: None) -> None:
    node = node_factory(worker={"threads": 0}).start()
    assert node.status()["model"]["state"] == "not used"
