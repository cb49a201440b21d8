"""Bad input, generated here, sent byte for byte: each gets the right DICOM status, or is accepted and
skipped by routing with its reason recorded; nothing is half-written; the node answers C-ECHO after
every one.

One node serves the whole catalogue (module scope), one association per case, as a modality would
send. Raw bytes go out as they are with ``STORE_SEND_CHUNKED_DATASET`` (the File Meta of the file we
write gives the SOP Class, SOP Instance and transfer syntax; the data set follows unchanged).
"""

from __future__ import annotations

import json
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from reliability_support import SEED, encode, query, radiograph, spool_files, write_raw

from dicom_node.testing import NodeProcess, require, tool, wait_for

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"  # PS3.5 (2024): no pydicom decoder, so never offered
DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a file-set index, not an image
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
MF_GRAY_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03  # A-ASSOCIATE-AC presentation context result (PS3.8 §9.3.3.2)
TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04

PYDICOM_DICOMDIR = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "DICOMDIR"


@dataclass(frozen=True)
class Case:
    """One bad input and what the sender must see (a status, a refused context) or the node must record."""

    kind: str
    name: str
    build: Callable[[Path], Path]
    status: int | None = None
    skip: str | None = None       # accepted (Success), then routing skips it with this reason
    refused: int | None = None    # the presentation context is refused at negotiation with this result


def _dx(index: int, **attrs: object) -> Dataset:
    return radiograph(SEED, index, modality="DX", **attrs)


def _cr(index: int, **attrs: object) -> Dataset:
    return radiograph(SEED, index, modality="CR", **attrs)


def _raw(path: Path, ds: Dataset, data: bytes, ts: str = EXPLICIT) -> Path:
    return write_raw(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), ts, data)


def _elem_offset(data: bytes, group: int, element: int) -> int:
    """Offset of a top-level element's tag in an explicit VR little endian data set."""
    off = data.find(struct.pack("<HH", group, element))
    assert off > 0
    return off


def _patched(ds: Dataset, group: int, element: int, at: int, value: bytes) -> bytes:
    """The encoded data set with ``value`` written at byte ``at`` of element (group, element)."""
    data = bytearray(encode(ds))
    off = _elem_offset(bytes(data), group, element) + at
    data[off:off + len(value)] = value
    return bytes(data)


# -- the catalogue ---------------------------------------------------------------------------------

def _truncated_in_pixel_data(p: Path) -> Path:
    ds = _dx(1)
    data = encode(ds)
    return _raw(p, ds, data[: _elem_offset(data, 0x7FE0, 0x0010) + 12 + len(ds.PixelData) // 2])


def _truncated_one_byte_short(p: Path) -> Path:
    ds = _dx(2)
    return _raw(p, ds, encode(ds)[:-1])


def _truncated_in_header_value(p: Path) -> Path:
    ds = _dx(3)
    data = encode(ds)
    # StudyDescription (0008,1030) "XR CHEST": cut after its first 3 value bytes
    return _raw(p, ds, data[: _elem_offset(data, 0x0008, 0x1030) + 8 + 3])


def _truncated_in_element_header(p: Path) -> Path:
    ds = _dx(4)
    data = encode(ds)
    # Pixel Data's tag and VR arrive, its length does not: the data set ends before any pixel
    return _raw(p, ds, data[: _elem_offset(data, 0x7FE0, 0x0010) + 6])


def _unknown_vr(p: Path) -> Path:
    ds = _dx(5)
    return _raw(p, ds, _patched(ds, 0x0028, 0x0010, 4, b"ZZ"))  # Rows with VR "ZZ"


def _us_of_three_bytes(p: Path) -> Path:
    ds = _dx(6)
    return _raw(p, ds, _patched(ds, 0x0028, 0x0010, 6, struct.pack("<H", 3)))  # Rows: US, length 3


def _rows_as_decimal_string(p: Path) -> Path:
    ds = _dx(7)
    return _raw(p, ds, _patched(ds, 0x0028, 0x0010, 4, b"DS"))  # Rows: VR DS over binary 256


def _implicit_on_explicit_context(p: Path) -> Path:
    ds = _dx(8)
    return _raw(p, ds, encode(ds, IMPLICIT), EXPLICIT)


def _explicit_on_implicit_context(p: Path) -> Path:
    ds = _dx(9)
    return _raw(p, ds, encode(ds, EXPLICIT), IMPLICIT)


def _no_pixel_data(p: Path) -> Path:
    ds = _dx(10)
    del ds.PixelData
    return _raw(p, ds, encode(ds))


def _declares_60000_square(p: Path) -> Path:
    ds = _dx(11, Rows=60000, Columns=60000)
    return _raw(p, ds, encode(ds))


def _pixel_length_beyond_data(p: Path) -> Path:
    ds = _dx(12)
    return _raw(p, ds, _patched(ds, 0x7FE0, 0x0010, 8, struct.pack("<I", 0xFFFFFFF0)))


def _empty_data_set(p: Path) -> Path:
    ds = _dx(13)
    return _raw(p, ds, b"")


def _zero_length_pixel_data(p: Path) -> Path:
    ds = _dx(14)
    ds.PixelData = b""
    return _raw(p, ds, encode(ds))


def _zero_rows(p: Path) -> Path:
    ds = _dx(15, Rows=0)
    return _raw(p, ds, encode(ds))


def _other_instance_uid_inside(p: Path) -> Path:
    ds = _dx(16)
    data = encode(ds)
    return write_raw(p, str(ds.SOPClassUID), generate_uid(), EXPLICIT, data)


def _colour(p: Path) -> Path:
    ds = _cr(17)
    rgb = np.zeros((int(ds.Rows), int(ds.Columns), 3), dtype=np.uint8)
    rgb[..., 0] = 200
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for kw in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        delattr(ds, kw)
    ds.PixelData = rgb.tobytes()
    return _raw(p, ds, encode(ds))


def _multi_frame(p: Path) -> Path:
    ds = _dx(18)
    ds.SOPClassUID = MF_GRAY_WORD_SC
    ds.NumberOfFrames = 2
    ds.PixelData = bytes(ds.PixelData) * 2
    return _raw(p, ds, encode(ds))


def _for_processing(p: Path) -> Path:
    ds = _dx(19, PresentationIntentType="FOR PROCESSING")
    ds.SOPClassUID = DX_FOR_PROCESSING
    return _raw(p, ds, encode(ds))


def _knee(p: Path) -> Path:
    ds = _cr(20, BodyPartExamined="KNEE")
    return _raw(p, ds, encode(ds))


def _jpeg_xl(p: Path) -> Path:
    ds = _cr(21)
    # Encapsulated Pixel Data (PS3.5 A.4): empty offset table, one fragment, sequence delimiter
    frag = b"\xff\x0a" + bytes(62)
    pixel = (struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, len(frag)) + frag
             + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    del ds.PixelData
    data = encode(ds) + struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\x00\x00" + struct.pack("<I", 0xFFFFFFFF) + pixel
    return _raw(p, ds, data, JPEG_XL_LOSSLESS)


def _dicomdir(p: Path) -> Path:
    p.write_bytes(PYDICOM_DICOMDIR.read_bytes())
    return p


CASES = [
    Case("truncated", "cut-inside-pixel-data", _truncated_in_pixel_data, CANNOT_UNDERSTAND),
    Case("truncated", "one-byte-short", _truncated_one_byte_short, CANNOT_UNDERSTAND),
    Case("truncated", "cut-inside-a-header-value", _truncated_in_header_value, CANNOT_UNDERSTAND),
    Case("truncated", "cut-inside-pixel-data-element-header", _truncated_in_element_header, DOES_NOT_MATCH),
    Case("wrong VR", "unknown-vr-ZZ", _unknown_vr, CANNOT_UNDERSTAND),
    Case("wrong VR", "US-of-3-bytes", _us_of_three_bytes, CANNOT_UNDERSTAND),
    Case("wrong VR", "rows-as-DS", _rows_as_decimal_string, DOES_NOT_MATCH),
    Case("inconsistent encoding", "implicit-VR-on-explicit-context", _implicit_on_explicit_context, CANNOT_UNDERSTAND),
    Case("inconsistent encoding", "explicit-VR-on-implicit-context", _explicit_on_implicit_context, CANNOT_UNDERSTAND),
    Case("inconsistent identifiers", "instance-uid-differs-from-request", _other_instance_uid_inside, DOES_NOT_MATCH),
    Case("missing pixel data", "no-pixel-data", _no_pixel_data, DOES_NOT_MATCH),
    Case("declared size beyond data", "60000x60000", _declares_60000_square, DOES_NOT_MATCH),
    Case("declared size beyond data", "pixel-length-4GB", _pixel_length_beyond_data, CANNOT_UNDERSTAND),
    Case("zero length", "empty-data-set", _empty_data_set, CANNOT_UNDERSTAND),
    Case("zero length", "empty-pixel-data", _zero_length_pixel_data, DOES_NOT_MATCH),
    Case("zero length", "zero-rows", _zero_rows, DOES_NOT_MATCH),
    Case("colour", "rgb-cr", _colour, SUCCESS, skip="a colour image"),
    Case("multi-frame", "two-frame-sc", _multi_frame, SUCCESS, skip="a multi-frame image"),
    Case("for processing", "dx-for-processing", _for_processing, SUCCESS, skip="a FOR PROCESSING image"),
    Case("non-chest", "knee-cr", _knee, SUCCESS, skip="body part KNEE is not analysed"),
    Case("no decoder", "jpeg-xl", _jpeg_xl, refused=TRANSFER_SYNTAXES_NOT_SUPPORTED),
    Case("DICOMDIR", "pydicom-dicomdir", _dicomdir, refused=ABSTRACT_SYNTAX_NOT_SUPPORTED),
]

# What each case did, for the last test and the report: name -> (status or context result, file meta)
SEEN: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="module")
def bad_node(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str | None]) -> Iterator[NodeProcess]:
    require(all(tool(t) for t in ("storescu", "echoscu")), "DCMTK (storescu, echoscu)")
    node = NodeProcess(tmp_path_factory.mktemp("bad-input") / "node", database=new_database()).start()
    yield node
    node.stop()


@pytest.fixture
def send_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)


def _echo(node: NodeProcess) -> bool:
    res = subprocess.run(["echoscu", "-aet", "MODALITY1", "-aec", "DICOM_NODE", "127.0.0.1", str(node.port)],
                         capture_output=True, text=True, timeout=30)
    return res.returncode == 0


@pytest.mark.parametrize("case", CASES, ids=[f"{c.kind.replace(' ', '_')}-{c.name}" for c in CASES])
def test_bad_input_gets_its_status(case: Case, bad_node: NodeProcess, send_raw: None, tmp_path: Path) -> None:
    path = case.build(tmp_path / f"{case.name}.dcm")
    meta = read_file_meta_info(path)
    sop_class, sop_inst = str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)
    ae = AE(ae_title="MODALITY1")
    ae.add_requested_context(sop_class, [str(meta.TransferSyntaxUID)])
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification, so the association is worth accepting
    assoc = ae.associate("127.0.0.1", bad_node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        if case.refused is not None:
            [refused] = [c for c in assoc.rejected_contexts if str(c.abstract_syntax) == sop_class]
            assert refused.result == case.refused
            with pytest.raises(ValueError, match="presentation context"):
                assoc.send_c_store(path)
            SEEN[case.name] = {"kind": case.kind, "seen": f"context refused (result {refused.result})"}
        else:
            rsp = assoc.send_c_store(path)
            assert "Status" in rsp, "no C-STORE response"
            status = int(rsp.Status)
            SEEN[case.name] = {"kind": case.kind, "seen": f"0x{status:04X}", "uid": sop_inst,
                               "study": _study_of(path) if case.status == SUCCESS else None}
            assert status == case.status, f"0x{status:04X} != 0x{case.status:04X}"
        assert assoc.send_c_echo().Status == 0  # the same association goes on
    finally:
        assoc.release()
    assert _echo(bad_node), "the node stopped answering C-ECHO"
    stored = query(bad_node, "SELECT COUNT(*) FROM instances WHERE sop_instance_uid = ?", sop_inst)[0][0]
    assert stored == (1 if case.status == SUCCESS else 0)


def _study_of(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def test_after_every_bad_input_nothing_is_half_written_and_skips_are_recorded(bad_node: NodeProcess) -> None:
    assert len(SEEN) == len(CASES), "run with the cases above (same module)"
    accepted = [c for c in CASES if c.status == SUCCESS]
    # Routing: every accepted case ends skipped, with its reason, as `dicom-node results` shows it.
    wait_for("routing of the accepted bad inputs",
             lambda: query(bad_node, "SELECT COUNT(*) FROM jobs WHERE kind='analyse' AND state='skipped'")[0][0]
             == len(accepted), 60)
    for case in accepted:
        shown = json.loads(bad_node.cli("results", str(SEEN[case.name]["study"]), "--json").stdout)
        [inst] = shown["instances"]
        assert inst["outcome"] == "skipped", inst
        assert case.skip is not None and case.skip in inst["reason"], inst["reason"]
        SEEN[case.name]["seen"] = f"0x0000, skipped: {inst['reason']}"
    # Nothing half-written: the spool holds exactly the accepted instances, no temporary file, and
    # the database exactly their rows.
    files = spool_files(bad_node)
    assert not [f for f in files if f.suffix != ".dcm"], files
    assert sorted(f.stem for f in files) == sorted(str(SEEN[c.name]["uid"]) for c in accepted)
    rows = {r[0] for r in query(bad_node, "SELECT sop_instance_uid FROM instances")}
    assert rows == {str(SEEN[c.name]["uid"]) for c in accepted}
    assert bad_node.proc is not None and bad_node.proc.poll() is None
    assert _echo(bad_node)
    kinds = sorted({c.kind for c in CASES})
    print(f"\nbad inputs: {len(CASES)} cases of {len(kinds)} kinds; node alive and answering C-ECHO")
    for name, seen in SEEN.items():
        print(f"  {seen['kind']:<26} {name:<40} {seen['seen']}")
