"""Many associations in a row: the node's open file descriptors and threads stay bounded, and it serves.

A node that leaks a descriptor per association stops serving after about a thousand of them
(pynetdicom's select() cannot watch descriptors past 1024): every later connection is dropped. This
drives 1200 short associations (C-ECHO then release, and rejected ones), enough to cross that line
with the leak the fuzz tests found (two descriptors per association), and checks what a sender and
an admin would see: every association answered, descriptors back near where they started.
"""

from __future__ import annotations

import logging
import time

import psutil
import pytest
from pynetdicom import AE

from dicom_node.testing import NodeProcess

ASSOCIATIONS = 1200
MAX_ASSOCIATIONS = 16  # the node's default; the receiver keeps at most one store connection per slot


def test_twelve_hundred_associations_leave_descriptors_bounded(node_factory: type[NodeProcess], dcmtk: None,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.CRITICAL, logger="pynetdicom")  # the rejected ones would log 3 lines each
    node = node_factory(worker={"threads": 0}).start()
    assert node.proc is not None
    proc = psutil.Process(node.proc.pid)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 10

    def one(called: str = "DICOM_NODE") -> bool:
        assoc = ae.associate("127.0.0.1", node.port, ae_title=called)
        if not assoc.is_established:
            return bool(assoc.is_rejected and called != "DICOM_NODE")
        ok = int(assoc.send_c_echo().Status) == 0
        assoc.release()
        return ok

    assert one()
    time.sleep(1.0)
    fds_before, threads_before = proc.num_fds(), proc.num_threads()
    t0 = time.monotonic()
    failures = [i for i in range(ASSOCIATIONS) if not one("NOBODY" if i % 10 == 9 else "DICOM_NODE")]
    seconds = time.monotonic() - t0
    time.sleep(1.0)
    fds_after, threads_after = proc.num_fds(), proc.num_threads()
    print(f"\n{ASSOCIATIONS} associations in {seconds:.1f} s; descriptors {fds_before} -> {fds_after}, "
          f"threads {threads_before} -> {threads_after}")
    assert failures == [], f"{len(failures)} associations not served, first at #{failures[0]}"
    assert fds_after <= fds_before + 2 * (MAX_ASSOCIATIONS + 1) + 4
    assert threads_after <= threads_before + MAX_ASSOCIATIONS + 2
    assert one()
