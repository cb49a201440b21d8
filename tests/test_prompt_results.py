"""What keeps results prompt (issue 11): outbound associations without TCP stalls, deliveries woken as
soon as they are queued, result builders made ready at start."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import SecondaryCaptureImageStorage  # type: ignore[attr-defined]

from dicom_node.config import parse_config
from dicom_node.node import Node
from dicom_node.pipeline import ResultsStep
from dicom_node.results import NodeIdentity
from dicom_node.scu import Peer, _ae
from dicom_node.testing import free_port, wait_port


@pytest.fixture
def storescp(tmp_path: Path, dcmtk: None) -> Iterator[Peer]:
    port = free_port()
    proc = subprocess.Popen(["storescp", "--ignore", str(port)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, 30, proc)
        yield Peer("STORESCP", "127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(10)


def test_outbound_associations_disable_nagle(storescp: Peer) -> None:
    """A stall between Nagle and a delayed ACK cost 40 ms per write pair (20 small C-STOREs: 1.8 s
    with it, 0.06 s without; timed in scripts/bench_results.py, docs/benchmarks.md, not here)."""
    ae = _ae("DICOM_NODE", 10)
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(storescp.host, storescp.port, ae_title=storescp.ae_title)
    try:
        assert assoc.is_established and assoc.dul.socket is not None
        sock = assoc.dul.socket.socket
        assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        assoc.release()


def test_node_wakes_delivery_when_results_are_queued(tmp_path: Path) -> None:
    cfg = parse_config({"storage": {"dir": str(tmp_path / "var"), "min_free_mb": 1},
                        "destinations": [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
                        "admin": {"enabled": False}})
    node = Node(cfg)
    try:
        assert node.results is not None and node.results.on_queued == node.delivery.wake
    finally:
        node.store.close()
        node.lock.release()


def test_result_builders_warm_up_without_storing_anything(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = parse_config({"storage": {"dir": str(tmp_path / "var")}})
    step = ResultsStep(cfg, None, None, NodeIdentity(ae_title="DICOM_NODE", device_uid=str(generate_uid())),  # type: ignore[arg-type]
                       None)  # type: ignore[arg-type]
    with caplog.at_level("INFO", logger="dicom_node.pipeline"):
        step.warm()  # a store or outbox touched would fail on None
    assert any(r.getMessage() == "result builders warm" for r in caplog.records)
    assert not (tmp_path / "var").exists()
