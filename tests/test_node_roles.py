"""``node.roles`` (issue 13): a node does only what its roles say, and every node process is listed
with its roles and heartbeat by ``dicom-node status`` and the admin console."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from dicom_node.config import ConfigError, parse_config
from dicom_node.testing import NodeProcess, free_port, storescu, wait_for


def _status(node: NodeProcess) -> dict[str, object]:
    return json.loads(node.cli("status", "--json").stdout)


def test_a_receive_only_node_stores_and_leaves_the_analyses_to_an_analyser(
    node_factory: type[NodeProcess], dcmtk: None, rsna: list[Path]
) -> None:
    admin_port = free_port()
    node = node_factory(node={"roles": ["receive", "admin"]},
                        admin={"enabled": True, "port": admin_port}).start()
    res = storescu(node.port, rsna[:2])
    assert res.returncode == 0, res.stderr
    st = _status(node)
    [me] = st["nodes"]  # type: ignore[misc]
    assert (me["roles"], me["state"], me["pid"], me["host"]) == (["receive", "admin"], "alive", node.proc.pid,
                                                                 socket.gethostname())
    assert me["id"] == f"{socket.gethostname()}:{node.proc.pid}"
    assert me["model"]["state"] == "not used" == st["model"]["state"]  # type: ignore[index]
    text = node.cli("status").stdout
    assert "receive, admin" in text and "alive" in text
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/", timeout=30) as rsp:
        page = rsp.read().decode()
    nodes = page[page.index('<table id="nodes">'):].split("</table>")[0]
    assert f'data-node-id="{me["id"]}"' in nodes and ">receive<" in nodes and ">analyse<" not in nodes
    assert '<td class="model" title="">not used</td>' in nodes

    # No analyser on this database: the jobs wait, three worker polls and more later
    time.sleep(3.0)
    assert _status(node)["jobs_by_kind"]["analyse"]["queued"] == 2  # type: ignore[index]
    assert node.stop() == 0
    [gone] = _status(node)["nodes"]  # type: ignore[misc]
    assert gone["state"] == "stopped"

    # The same storage with every role (the default): the analyses that waited are done
    again = node_factory("node").start()  # same folder, its config written anew without node.roles
    wait_for("the waiting analyses done", lambda: _status(again)["jobs_by_kind"]["analyse"]["done"] == 2, 180, 0.5)
    listed = {n["pid"]: n for n in _status(again)["nodes"]}  # type: ignore[attr-defined]
    assert listed[again.proc.pid]["state"] == "alive" and listed[again.proc.pid]["roles"] == [
        "receive", "analyse", "deliver", "schedule", "admin"]
    assert sorted(n["state"] for n in listed.values()) == ["alive", "stopped"]
    # Each node says its own model; status leads with the live analyser's
    wait_for("the analyser's model ready", lambda: _status(again)["model"]["state"] == "ready", 120, 0.5)  # type: ignore[index]
    models = {n["pid"]: n["model"] for n in _status(again)["nodes"]}  # type: ignore[attr-defined]
    assert models[again.proc.pid]["state"] == "ready" and models[again.proc.pid]["version"]
    assert [m["state"] for pid, m in models.items() if pid != again.proc.pid] == ["stopped"]

    # Killed: no clean stop to say so; three missed heartbeats (15 s) later it is gone
    pid = again.proc.pid
    again.kill()
    wait_for("the killed node listed as gone",
             lambda: {n["pid"]: n["state"] for n in _status(again)["nodes"]}[pid] == "gone", 60, 1.0)  # type: ignore[attr-defined]


@pytest.mark.parametrize("roles, words", [
    (["receive", "fly"], "roles out of receive, analyse, deliver, schedule, admin (not 'fly')"),
    ([], "a non-empty list of distinct roles"),
    (["receive", "receive"], "a non-empty list of distinct roles"),
])
def test_unknown_empty_or_repeated_roles_are_refused(tmp_path: Path, roles: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"storage": {"dir": str(tmp_path)}, "node": {"roles": roles}})
    assert "node.roles" in str(err.value) and words in str(err.value), str(err.value)
