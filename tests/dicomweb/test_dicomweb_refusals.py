"""Every STOW-RS refusal against a real node: the HTTP status and one line (or the Failure Reason of
the part), nothing half-written (no file in the spool's tmp/, no spool file and no row beyond what was
stored) and the node still serving.

The C-STORE bad-input catalogue (tests/reliability/test_bad_input.py) goes through STOW-RS too, each
case one part: the same checks give the same statuses as Failure Reasons (PS3.18 Table I.2-2).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from dicomweb_support import failures, held, part10, post, related, serving, spool_files, stored, stow
from pydicom.uid import generate_uid
from reliability_support import SEED, radiograph
from test_bad_input import ABSTRACT_SYNTAX_NOT_SUPPORTED, CASES, SUCCESS, Case

from dicom_node.testing import NodeProcess, wait_for

MAX_INSTANCE_MB = 1
MAX_REQUEST_MB = 3
NOT_DICOM = b"%PDF-1.4 not a DICOM file\n" * 40


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, new_database: Callable[[], str | None]) -> Iterator[NodeProcess]:
    node = NodeProcess(tmp_path_factory.mktemp("dicomweb-refusals") / "node", database=new_database(), overrides={
        "worker": {"threads": 0}, "storage": {"max_instance_mb": MAX_INSTANCE_MB},
        "dicomweb": {"enabled": True, "max_request_mb": MAX_REQUEST_MB}}).start()
    yield node
    node.stop()


@pytest.fixture
def unchanged(web: NodeProcess) -> Iterator[set[str]]:
    """Rows before the test; after it, no temporary file, a spool file per row, the node serving.
    The test adds what it stored to the set it is given."""
    rows, _ = held(web)
    expected = set(rows)
    yield expected
    rows, files = held(web)
    assert rows == expected
    assert not [f for f in files if f.suffix != ".dcm"], files  # nothing left in tmp/
    assert sorted(f.stem for f in files) == sorted(rows)
    assert serving(web)


def _xr(index: int, size: int = 256, **attrs: object) -> bytes:
    return part10(radiograph(SEED, 9000 + index, size=size, modality="CR", **attrs))


def _one_line(rsp: httpx.Response, status: int, words: str) -> None:
    assert rsp.status_code == status, rsp.text
    assert rsp.text.count("\n") == 1 and rsp.text.startswith(f"{status} ") and words in rsp.text, rsp.text


def test_wrong_content_type_is_415(web: NodeProcess, unchanged: set[str]) -> None:
    body = _xr(1)
    _one_line(post(web, body, "application/dicom"), 415, "multipart/related")
    _one_line(post(web, b"{}", "application/json"), 415, "multipart/related")
    body, ct = related([_xr(2)])
    _one_line(post(web, body, ct.replace('type="application/dicom"', 'type="application/dicom+json"')), 415,
              "type must be application/dicom")


def test_malformed_multipart_is_400(web: NodeProcess, unchanged: set[str]) -> None:
    body, ct = related([_xr(3)])
    _one_line(post(web, body, "multipart/related; type=\"application/dicom\""), 400, "no boundary")
    long_body, long_ct = related([_xr(3)], boundary="b" * 201)  # past MAX_BOUNDARY (Orthanc's are 73)
    _one_line(post(web, long_body, long_ct), 400, "over 200 characters")
    _one_line(post(web, body[: len(body) // 2], ct), 400, "ends before its close delimiter")
    _one_line(post(web, b"--nothing-here--\r\n", ct), 400, "")
    empty, ct = related([])
    _one_line(post(web, empty, ct), 400, "no part")


def test_a_part_that_is_not_dicom(web: NodeProcess, unchanged: set[str]) -> None:
    rsp = stow(web, [NOT_DICOM])
    assert rsp.status_code == 400 and failures(rsp) == {"": 0xC210}, rsp.text
    # beside a good one: 202, the good one stored, the other failed as 0xC210
    good = radiograph(SEED, 9004, modality="CR")
    rsp = stow(web, [part10(good), NOT_DICOM])
    assert rsp.status_code == 202, rsp.text
    assert stored(rsp) == [str(good.SOPInstanceUID)] and failures(rsp) == {"": 0xC210}
    unchanged.add(str(good.SOPInstanceUID))
    # a part that says it is something else
    body, ct = related([_xr(5)], part_type="application/pdf")
    rsp = post(web, body, ct)
    assert rsp.status_code == 400 and failures(rsp) == {"": 0xC210}, rsp.text


def test_a_part_over_max_instance_mb_is_413_and_the_request_stores_nothing(web: NodeProcess,
                                                                          unchanged: set[str]) -> None:
    big = _xr(6, size=1024)  # 2 MB of pixels
    assert len(big) > MAX_INSTANCE_MB * 2**20
    _one_line(stow(web, [_xr(7), big]), 413, "storage.max_instance_mb")


def test_a_body_over_max_request_mb_is_413(web: NodeProcess, unchanged: set[str]) -> None:
    parts = [_xr(10 + i, size=640) for i in range(4)]  # 0.8 MB each, 3.3 MB in all
    body, ct = related(parts)
    assert len(body) > MAX_REQUEST_MB * 2**20
    _one_line(post(web, body, ct), 413, "dicomweb.max_request_mb")  # said by its Content-Length
    chunks = (body[i:i + 65536] for i in range(0, len(body), 65536))  # chunked: found while it arrives
    _one_line(post(web, chunks, ct), 413, "dicomweb.max_request_mb")


def test_study_in_the_path_that_does_not_match_is_409(web: NodeProcess, unchanged: set[str]) -> None:
    ds = radiograph(SEED, 9020, modality="CR")
    rsp = stow(web, [part10(ds)], path=f"/studies/{generate_uid()}")
    assert rsp.status_code == 409, rsp.text
    assert failures(rsp) == {str(ds.SOPInstanceUID): 0xA900}
    _one_line(stow(web, [part10(ds)], path="/studies/not-a-uid"), 400, "not a valid UID")
    rsp = stow(web, [part10(ds)], path=f"/studies/{ds.StudyInstanceUID}")  # its own study: stored
    assert rsp.status_code == 200 and stored(rsp) == [str(ds.SOPInstanceUID)], rsp.text
    unchanged.add(str(ds.SOPInstanceUID))


def test_a_client_that_goes_away_mid_body_leaves_nothing(web: NodeProcess, unchanged: set[str]) -> None:
    body, ct = related([_xr(30, size=700)])  # 980 KB: its half is more than the FEED_BYTES fed at a time
    head = (f"POST /dicom-web/studies HTTP/1.1\r\nHost: 127.0.0.1:{web.dicomweb_port}\r\nContent-Type: {ct}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", web.dicomweb_port), timeout=10) as s:
        s.sendall(head + body[: len(body) // 2])
        wait_for("the half-received part in tmp/", lambda: any(f.suffix == ".part" for f in spool_files(web)), 10,
                 0.05)
    # the fixture checks that the half-received part then left no file and no row
    wait_for("the half-received part removed", lambda: not any(f.suffix == ".part" for f in spool_files(web)), 10,
             0.05)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_c_store_bad_input_through_stow(case: Case, web: NodeProcess, unchanged: set[str], tmp_path: Path) -> None:
    data = case.build(tmp_path / f"{case.name}.dcm").read_bytes()
    rsp = stow(web, [data])
    if case.status == SUCCESS:
        assert rsp.status_code == 200, rsp.text
        unchanged.update(stored(rsp))
        return
    expected = case.status if case.refused is None else \
        0x0122 if case.refused == ABSTRACT_SYNTAX_NOT_SUPPORTED else 0xC122
    assert rsp.status_code == 409, rsp.text
    [(uid, reason)] = failures(rsp).items()
    assert (uid != "", f"0x{reason:04X}") == (True, f"0x{expected:04X}")


def test_wado_and_qido_refusals(web: NodeProcess, unchanged: set[str]) -> None:
    ds = radiograph(SEED, 9040, modality="CR")
    assert stow(web, [part10(ds)]).status_code == 200
    unchanged.add(str(ds.SOPInstanceUID))
    url = f"{web.dicomweb_url}/studies/{ds.StudyInstanceUID}"
    rsp = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                            "transfer-syntax=1.2.840.10008.1.2.4.50"})
    _one_line(rsp, 406, "does not transcode")
    _one_line(httpx.get(f"{web.dicomweb_url}/studies/{generate_uid()}"), 404, "no study")
    _one_line(httpx.get(f"{web.dicomweb_url}/studies", headers={"Accept": "application/dicom+xml"}), 406,
              "application/dicom+json")
    frames = f"{url}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/2"
    _one_line(httpx.get(frames), 404, "frame 2 does not exist")
    _one_line(httpx.get(frames.replace("frames/2", "frames/x")), 400, "frame list")
    _one_line(httpx.get(f"{web.dicomweb_url}/studies?limit=many"), 400, "limit")
    rsp = httpx.get(f"{web.dicomweb_url}/studies?PatientWeight=70")
    assert rsp.status_code == 200 and "PatientWeight" in rsp.headers["warning"]
