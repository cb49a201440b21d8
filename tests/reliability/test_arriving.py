"""Instances are written to the spool as they arrive (dicom_node.arriving): memory stays bounded for
a large instance, and an instance cut off mid-way leaves no file behind.

The over-size cut-off as a sender sees it is in test_guards.py; the figures for 600 MB instances
(one, and four at once, against DCMTK storescp) come from scripts/bench_memory.py.
"""

from __future__ import annotations

import random
import socket
import subprocess
from pathlib import Path

import pydicom
from reliability_support import load_script, query

from dicom_node.testing import NodeProcess, storescu, wait_for

fuzz = load_script("fuzz_association")
bench_memory = load_script("bench_memory")


def _partial_files(node: NodeProcess) -> list[Path]:
    return sorted((node.storage / "spool" / "tmp").glob("*"))


def _echo(node: NodeProcess) -> int:
    return subprocess.run(["echoscu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)],
                          capture_output=True, timeout=30).returncode


def test_instance_cut_off_by_its_sender_leaves_no_file(node_factory: type[NodeProcess], dcmtk: None) -> None:
    node = node_factory(worker={"threads": 0}).start()
    uid = pydicom.uid.generate_uid()
    data = fuzz.small_cr(uid, random.Random(7))
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(fuzz.associate_rq())
        assert fuzz._read_pdu(sock, 5.0) == "A-ASSOCIATE-AC"
        # The command, then half of the data set in a fragment that is not the last one.
        sock.sendall(fuzz.p_data(fuzz.pdv(3, 0x03, fuzz.store_rq(uid))) +
                     fuzz.p_data(fuzz.pdv(3, 0x00, data[: len(data) // 2])))
        # It is on disk while it arrives, not in memory ...
        wait_for("the arriving instance's file", lambda: len(_partial_files(node)) == 1, 10)
    # ... and gone once the connection drops without the rest.
    wait_for("the partial file to be removed", lambda: not _partial_files(node), 10)
    assert query(node, "SELECT COUNT(*) FROM instances")[0][0] == 0
    assert _echo(node) == 0


def test_a_large_instance_is_received_in_bounded_memory(node_factory: type[NodeProcess], dcmtk: None,
                                                        tmp_path: Path) -> None:
    # 11585 x 11585 at 16 bits: 268 MB. Assembled in memory, as before, the node's peak RSS rose by
    # about twice that; written as it arrives, by one PDU's worth and the checks.
    node = node_factory(worker={"threads": 0}).start()
    assert node.proc is not None
    [big] = bench_memory.write_instances(tmp_path / "big", 1, 11585)
    wait_for("the node to be idle", lambda: _echo(node) == 0, 30)
    figures = bench_memory.measure(node.proc.pid, [bench_memory.storescu(node.port, "DICOM_NODE", [big])])
    assert figures["senders_ok"] == 1, figures
    assert figures["peak_growth_mb"] < 100, figures
    [(path, size)] = query(node, "SELECT path, size FROM instances")
    assert size > 268_000_000
    stored = pydicom.dcmread(path, defer_size=1024)
    assert stored.Rows == stored.Columns == 11585 and not _partial_files(node)
    assert storescu(node.port, [big]).returncode == 0  # a second copy: acknowledged, kept once
    assert query(node, "SELECT COUNT(*) FROM instances")[0][0] == 1
