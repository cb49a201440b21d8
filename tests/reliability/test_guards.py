"""Guards: the maximum instance size, the maximum number of concurrent associations, and the per-peer
rate limit, each as a sender sees it.

The free-disk floor (0xA700 and its log line) is tested in tests/test_receiver.py
(``test_disk_floor_refuses_with_out_of_resources``) and not repeated here.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from reliability_support import SEED, query, spool_files, write_radiographs

from dicom_node.testing import NodeProcess, storescu

VERIFICATION = "1.2.840.10008.1.1"


def _associate(port: int, aet: str = "MODALITY1") -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = 10
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")


def _rejection(assoc: Association) -> tuple[int, int, int]:
    """(result, source, reason) of the A-ASSOCIATE-RJ the peer sent (PS3.8 §9.3.4)."""
    assert assoc.is_rejected, "the association was not rejected"
    rj = assoc.acceptor.primitive
    assert rj is not None
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


@pytest.fixture
def guarded(node_factory: type[NodeProcess], dcmtk: None) -> Iterator[NodeProcess]:
    yield node_factory(storage={"max_instance_mb": 1}, node={"max_associations": 2},
                       peers={"rate_limit_per_min": 5}, worker={"threads": 0}).start()


def test_instance_over_max_size_is_cut_off_while_arriving(guarded: NodeProcess, tmp_path: Path) -> None:
    small = write_radiographs(tmp_path / "small", 1, SEED, size=256)      # ~130 KB
    large = write_radiographs(tmp_path / "large", 1, SEED, size=4096)     # ~33 MB, over 1 MB
    res = storescu(guarded.port, [*small, *large], extra=["-v"])
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert out.count("Received Store Response (Success)") == 1, out
    # Cut off while it was arriving: the node aborts the association (PS3.8 A-ABORT) rather than
    # take 33 MB to answer 0xA700 at the end.
    assert "Store Failed" in out and "Peer Aborted Association" in out, out
    assert query(guarded, "SELECT COUNT(*) FROM instances")[0][0] == 1
    assert len(spool_files(guarded)) == 1  # no file, no temporary, for the refused one
    assert "larger than storage.max_instance_mb while arriving" in guarded.log_text()
    audit = query(guarded, "SELECT outcome, detail FROM audit WHERE event = 'association'")
    assert [o for o, _ in audit] == ["aborted"]
    assert '"cut_off_over_max_instance_mb": 1' in audit[0][1]
    # The node serves the next sender as before.
    again = storescu(guarded.port, write_radiographs(tmp_path / "again", 1, SEED + 1, size=256))
    assert again.returncode == 0, again.stderr


def test_association_over_the_limit_is_rejected_transient_local_limit(guarded: NodeProcess) -> None:
    # Connections that never send an A-ASSOCIATE-RQ (port probes, health checks) take no slot.
    probes = [socket.create_connection(("127.0.0.1", guarded.port), timeout=5) for _ in range(3)]
    held = [_associate(guarded.port, "HOLD1"), _associate(guarded.port, "HOLD2")]
    try:
        assert all(a.is_established for a in held)
        third = _associate(guarded.port, "THIRD")
        # rejected-transient (2), service-provider presentation related (3), local-limit-exceeded (2)
        assert _rejection(third) == (2, 3, 2)
        # DCMTK says it in words
        res = subprocess.run(["echoscu", "-aet", "DCMTK", "-aec", "DICOM_NODE", "127.0.0.1", str(guarded.port)],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode != 0
        assert "Rejected Transient" in res.stderr and "Local Limit Exceeded" in res.stderr, res.stderr
        assert held[0].send_c_echo().Status == 0  # those inside are served meanwhile
    finally:
        for a in held:
            a.release()
        for p in probes:
            p.close()
    # A slot frees as soon as an association ends: the next sender gets in.
    deadline = time.monotonic() + 10
    while True:
        again = _associate(guarded.port, "LATER")
        if again.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.is_established, "no slot after the held associations were released"
    assert again.send_c_echo().Status == 0
    again.release()


def test_peer_over_its_rate_is_rejected_transient(guarded: NodeProcess) -> None:
    for _ in range(5):
        a = _associate(guarded.port, "BURSTY")
        assert a.is_established
        a.release()
    over = _associate(guarded.port, "BURSTY")
    # rejected-transient (2), service-user (1), no-reason-given (1): try again later
    assert _rejection(over) == (2, 1, 1)
    res = subprocess.run(["echoscu", "-aet", "BURSTY", "-aec", "DICOM_NODE", "127.0.0.1", str(guarded.port)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "Rejected Transient" in res.stderr, res.stderr
    # The limit is per peer (calling AE title and host): another sender on this host is served.
    calm = _associate(guarded.port, "CALM")
    assert calm.is_established
    calm.release()
    rows = query(guarded, "SELECT COUNT(*) FROM audit WHERE event='association' AND outcome='rejected'"
                          " AND peer_ae='BURSTY'")
    assert rows[0][0] == 2
