"""Protocol fuzzing: seeded mutations of valid A-ASSOCIATE-RQ and P-DATA-TF PDUs thrown at the node's
listener over loopback (scripts/fuzz_association.py, bounded in cases and time). Afterwards the node
process is alive, answers C-ECHO and stores a radiograph at once, its association threads wind down,
and whatever the fuzzer got stored is a complete instance.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pydicom
import pytest
from reliability_support import SEED, load_script, query, spool_files, write_radiographs

from dicom_node.testing import IN_CI, NodeProcess, storescu, wait_for

CASES = 400          # CI bound: ~20-40 s on two shared cores
SECONDS = 90.0
POOL = 16 + 1        # the receiver's store threads: node.max_associations (default 16) + 1


def test_fuzzed_pdus_leave_the_node_serving(node_factory: type[NodeProcess], dcmtk: None, tmp_path: Path,
                                            record_property: pytest.RecordProperty) -> None:
    # Short ACSE/network timeouts so connections the fuzzer leaves half-open end within seconds;
    # no analysis worker: the listener is under test (what the fuzzer stores stays queued).
    node = node_factory(node={"acse_timeout_s": 5, "network_timeout_s": 10}, worker={"threads": 0}).start()
    assert node.proc is not None
    proc = psutil.Process(node.proc.pid)
    wait_for("first C-ECHO", lambda: subprocess.run(["echoscu", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)],
                                                    capture_output=True, timeout=30).returncode == 0, 30)
    threads_before, fds_before = proc.num_threads(), proc.num_fds()

    fuzzer = load_script("fuzz_association")
    report = fuzzer.fuzz("127.0.0.1", node.port, seed=SEED, cases=CASES, seconds=SECONDS,
                         alive=lambda: node.proc is not None and node.proc.poll() is None)
    summary = report.as_dict()
    print(f"\nfuzz: {summary}")
    record_property("fuzz", summary)
    assert report.stopped_by != "target died", summary
    assert node.proc.poll() is None, "the node process died"
    if IN_CI:
        assert report.cases >= CASES // 2, f"only {report.cases} cases ran in {SECONDS} s"
    assert report.by_target["associate"] > 0 and report.by_target["p-data"] > 0

    # Serves at once: C-ECHO and a C-STORE of a radiograph, over DCMTK.
    echo = subprocess.run(["echoscu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr
    [xr] = write_radiographs(tmp_path / "xr", 1, SEED)
    sent = storescu(node.port, [xr], extra=["-v"])
    assert "Received Store Response (Success)" in sent.stdout + sent.stderr, sent.stdout + sent.stderr
    xr_uid = str(pydicom.dcmread(xr, stop_before_pixels=True).SOPInstanceUID)
    assert query(node, "SELECT COUNT(*) FROM instances WHERE sop_instance_uid=?", xr_uid)[0][0] == 1

    # The association threads the fuzzer opened end (ACSE / network timeouts) and their descriptors
    # are closed: nothing leaks. What may stay is the receiver's store pool, started on demand: at most
    # node.max_associations + 1 = 17 threads, each with one SQLite connection (two descriptors).
    wait_for("association threads to wind down", lambda: proc.num_threads() <= threads_before + POOL + 1, 45)
    assert proc.num_fds() <= fds_before + 2 * POOL + 4, f"descriptors {fds_before} -> {proc.num_fds()}"

    # What the fuzzer got stored is complete: every row has its file, every file reads whole.
    rows = query(node, "SELECT sop_instance_uid, path FROM instances")
    files = spool_files(node)
    assert sorted(str(f) for f in files) == sorted(r[1] for r in rows)
    for _uid, path in rows:
        ds = pydicom.dcmread(path)
        assert len(ds.PixelData) >= int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    print(f"fuzz: {len(rows) - 1} fuzzed C-STOREs stored (all complete); threads {threads_before} before, "
          f"{proc.num_threads()} after; descriptors {fds_before} before, {proc.num_fds()} after")
