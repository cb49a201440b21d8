"""The admin token: without it a token-protected console answers 401; a public address needs one."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import httpx
import pytest
from admin_support import FedNode

from dicom_node.testing import NodeProcess, free_port, require
from models import SHIPPED_WEIGHTS

PROTECTED = ("/", "/api/status", "/api/devices", "/api/jobs", "/api/studies/1.2.3", "/metrics", "/openapi.json",
             "/devices/1", "/thumbs/1.2.3.png")


def test_token_protected_console_refuses_without_the_token(token_node: tuple[NodeProcess, str, str]) -> None:
    node, url, token = token_node
    assert httpx.get(url + "/healthz").status_code == 200  # liveness stays open
    for path in PROTECTED:
        rsp = httpx.get(url + path)
        assert rsp.status_code == 401, path
        assert rsp.headers["www-authenticate"].startswith("Bearer")
        assert token not in rsp.text
    assert httpx.get(url + "/api/status", headers={"Authorization": "Bearer not-it"}).status_code == 401
    assert httpx.get(url + "/api/status", params={"token": "not-it"}).status_code == 401
    assert httpx.get(url + "/api/status", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(url + "/metrics", params={"token": token}).status_code == 200


def test_dashboard_links_keep_the_token(token_node: tuple[NodeProcess, str, str]) -> None:
    node, url, token = token_node
    page = httpx.get(url + "/", params={"token": token})
    assert page.status_code == 200
    links = re.findall(r'(?:href|src)="(/[^"]*)"', page.text)
    assert links and all(f"token={token}" in link for link in links), links


def test_the_token_is_never_logged(token_node: tuple[NodeProcess, str, str]) -> None:
    node, url, token = token_node
    httpx.get(url + "/api/status", params={"token": token})
    httpx.get(url + "/api/status", params={"token": "guess"})
    logs = "".join(p.read_text(errors="replace") for p in node.log_dir.glob("node.jsonl*"))
    assert "admin console serving" in logs
    assert token not in logs and token not in node.log_text()


def test_a_public_admin_address_needs_a_token(node_factory: type[NodeProcess]) -> None:
    node = node_factory("public-admin", admin={"enabled": True, "host": "0.0.0.0", "port": free_port()})
    res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(node.config_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "admin.host 0.0.0.0 is not loopback: set admin.token first" in res.stderr


def test_a_busy_admin_port_stops_the_start_with_its_address(node_factory: type[NodeProcess]) -> None:
    require(SHIPPED_WEIGHTS.is_file(), f"the shipped model {SHIPPED_WEIGHTS.name}")  # checked before the port
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = node_factory("busy-admin", admin={"enabled": True, "port": port})
        res = subprocess.run([sys.executable, "-m", "dicom_node.cli", "serve", "--config", str(node.config_path)],
                             capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert f"admin 127.0.0.1:{port}" in res.stderr


def test_without_a_token_only_loopback_names_are_answered(fed_node: FedNode) -> None:
    """A page served from a DNS name rebound to 127.0.0.1 cannot read the console."""
    assert fed_node.get("/api/status", headers={"Host": "rebound.example:8080"}).status_code == 403
    assert fed_node.get("/", headers={"Host": "rebound.example"}).status_code == 403
    assert fed_node.get("/healthz", headers={"Host": "rebound.example"}).status_code == 200
    assert fed_node.get("/api/status", headers={"Host": "localhost:8080"}).status_code == 200


def test_sigterm_stops_the_node_and_its_console(token_node: tuple[NodeProcess, str, str]) -> None:
    node, url, token = token_node
    assert httpx.get(url + "/api/status", params={"token": token}).status_code == 200
    assert node.stop() == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/healthz", timeout=2)
