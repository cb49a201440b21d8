"""Decompression bombs (issue 12, item 4): a small deflated instance that inflates past the instance
limit is refused while it inflates; one that declares a huge image is stored but never decoded.

Both are sent byte for byte (``STORE_SEND_CHUNKED_DATASET``) to a real node, whose peak RSS is read
from /proc (``VmHWM``, reset before the send).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from reliability_support import SEED, encode, query, radiograph, spool_files, write_raw

from dicom_node.testing import NodeProcess, peak_rss_growth, wait_for

CR = "1.2.840.10008.5.1.4.1.1.1"


def _bomb(folder: Path, side: int) -> tuple[Path, str]:
    """A CR of ``side`` x ``side`` zeros at 16 bits, its data set deflated (PS3.5 §A.5)."""
    ds = radiograph(SEED, 0, size=64)
    ds.SOPClassUID, ds.SOPInstanceUID = CR, generate_uid()
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * 2)
    raw = encode(ds)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(raw) + packer.flush()
    folder.mkdir(parents=True, exist_ok=True)
    path = write_raw(folder / "bomb.dcm", CR, str(ds.SOPInstanceUID), DeflatedExplicitVRLittleEndian, deflated)
    return path, str(ds.SOPInstanceUID)


def _send(node: NodeProcess, path: Path) -> int:
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(CR, [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status)


def _peak_growth_mb(node: NodeProcess, action: Callable[[], object]) -> float:
    assert node.proc is not None
    return peak_rss_growth(node.proc.pid, action)[1]


@pytest.fixture
def send_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)


def test_deflate_bomb_is_refused_while_it_inflates(node_factory: type[NodeProcess], send_as_is: None,
                                                   tmp_path: Path) -> None:
    node = node_factory(storage={"max_instance_mb": 50}, worker={"threads": 0}).start()
    path, uid = _bomb(tmp_path, 6400)  # 82 MB of pixels in a ~80 KB file
    assert path.stat().st_size < 200_000
    statuses: list[int] = []
    growth = _peak_growth_mb(node, lambda: statuses.append(_send(node, path)))
    assert statuses == [0xA700]  # Refused: out of resources (was Success under a 50 MB limit)
    print(f"\ndeflate bomb: status {[hex(s) for s in statuses]}, node peak RSS +{growth:.1f} MB")
    assert growth < 30, growth  # inflated into a file, 1 MiB at a time, and stopped at 50 MB
    assert query(node, "SELECT COUNT(*) FROM instances")[0][0] == 0
    assert spool_files(node) == []  # nor the inflated copy
    assert "inflates past storage.max_instance_mb" in node.log_text()


def test_small_instance_declaring_a_huge_image_is_stored_not_decoded(node_factory: type[NodeProcess],
                                                                     send_as_is: None, tmp_path: Path) -> None:
    node = node_factory().start()
    wait_for("the model to be ready", lambda: node.status().get("model", {}).get("state") == "ready", 120)
    path, uid = _bomb(tmp_path, 10000)  # 10000 x 10000 x 16 bits: 200 MB inflated
    statuses: list[int] = []

    def send_and_settle() -> None:
        statuses.append(_send(node, path))
        node.wait_jobs_settled(1)

    growth = _peak_growth_mb(node, send_and_settle)
    assert statuses == [0x0000]  # a valid instance, under max_instance_mb: stored as sent
    [(outcome, reason)] = query(node, "SELECT outcome, reason FROM analyses WHERE sop_instance_uid = ?", uid)
    assert outcome == "skipped" and "100 megapixels, over routing.max_megapixels" in reason
    assert query(node, "SELECT COUNT(*) FROM results")[0][0] == 0
    assert not list((node.storage / "outbox").rglob("*.dcm"))  # no 300 MB overlay
    print(f"\nhuge declared image: status {[hex(s) for s in statuses]}, node peak RSS +{growth:.1f} MB")
    assert growth < 100, growth  # was a 4.9 GB peak: decoded, analysed and rendered


def test_a_deflated_radiograph_within_the_limits_is_stored_as_sent_and_analysed(
        node_factory: type[NodeProcess], send_as_is: None, tmp_path: Path) -> None:
    node = node_factory().start()
    ds = radiograph(SEED, 1, size=256)
    packer = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = packer.compress(encode(ds)) + packer.flush()
    path = write_raw(tmp_path / "deflated.dcm", str(ds.SOPClassUID), str(ds.SOPInstanceUID),
                     DeflatedExplicitVRLittleEndian, deflated)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(str(ds.SOPClassUID), [DeflatedExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(path).Status) == 0x0000
    finally:
        assoc.release()
    node.wait_jobs_settled(1)
    [(stored, ts)] = query(node, "SELECT path, transfer_syntax_uid FROM instances")
    assert ts == DeflatedExplicitVRLittleEndian
    assert Path(stored).read_bytes().endswith(deflated)  # the data set exactly as it was sent
    [(outcome,)] = query(node, "SELECT outcome FROM analyses")
    assert outcome == "analysed"
