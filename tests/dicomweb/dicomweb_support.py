"""Helpers for the DICOMweb tests: STOW-RS bodies made byte by byte, what a node holds, its answers.

Bodies are built here (RFC 2387 ``multipart/related``) so that a test can send exactly the bad input
it means, and posted with httpx to a real ``dicom-node serve``; the well-formed traffic goes through
``dicomweb-client`` as a user's would. What the node holds is read from its own database and spool,
with the reliability tests' helpers.
"""

from __future__ import annotations

import io
import json
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import httpx
import pydicom
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

from reliability_support import query, spool_files  # noqa: E402

from dicom_node.store.dialect import json_text  # noqa: E402
from dicom_node.testing import NodeProcess, OrthancProcess, wait_for  # noqa: E402

__all__ = ["query", "spool_files"]

DICOM_JSON = "application/dicom+json"


def part10(ds: Dataset) -> bytes:
    """``ds`` as a PS3.10 file (preamble, File Meta, data set), as a STOW-RS part carries it."""
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def related(parts: list[bytes], *, part_type: str = "application/dicom",
            boundary: str | None = None) -> tuple[bytes, str]:
    """A ``multipart/related; type="application/dicom"`` body of ``parts`` and its Content-Type."""
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(node: NodeProcess, parts: list[bytes], *, path: str = "/studies", headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:
    """POST ``parts`` to the node's STOW-RS (``path`` under /dicom-web)."""
    body, content_type = related(parts)
    return post(node, body, content_type, path=path, headers=headers, **kwargs)


def post(node: NodeProcess, body: Any, content_type: str, *, path: str = "/studies",
         headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(node.dicomweb_url + path, content=body,
                      headers={"Content-Type": content_type, "Accept": DICOM_JSON, **(headers or {})},
                      timeout=120, **kwargs)


def failures(response: httpx.Response) -> dict[str, int]:
    """SOP Instance UID -> Failure Reason of a Store Instances Response (JSON)."""
    ds = Dataset.from_json(response.json())
    return {str(item.get("ReferencedSOPInstanceUID", "")): int(item.FailureReason)
            for item in ds.get("FailedSOPSequence", [])}


def stored(response: httpx.Response) -> list[str]:
    """SOP Instance UIDs referenced as stored by a Store Instances Response (JSON)."""
    ds = Dataset.from_json(response.json())
    return [str(item.ReferencedSOPInstanceUID) for item in ds.get("ReferencedSOPSequence", [])]


def held(node: NodeProcess) -> tuple[set[str], list[Path]]:
    """The instance rows and every spool file (temporary ones included) of ``node``."""
    return {r[0] for r in query(node, "SELECT sop_instance_uid FROM instances")}, spool_files(node)


def serving(node: NodeProcess) -> bool:
    """The node still answers a QIDO-RS search (and its process is alive)."""
    alive = node.proc is not None and node.proc.poll() is None
    return alive and httpx.get(node.dicomweb_url + "/studies", timeout=30).status_code == 200


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """The (Content-Type, bytes) of each part of a ``multipart/related`` answer (RFC 2387)."""
    media = response.headers["content-type"]
    assert media.startswith("multipart/related"), media
    boundary = next(p.split("=", 1)[1].strip('"') for p in media.split(";") if p.strip().startswith("boundary="))
    out = []
    for segment in response.content.split(b"--" + boundary.encode())[1:-1]:
        head, _, data = segment.partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n"), "a part must end with CRLF before the next delimiter"
        content_type = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-type:"))
        out.append((content_type, data[:-2]))
    return out


# --- results delivered to a DICOMweb peer (Orthanc) -------------------------------------------


def delivery_states(node: NodeProcess) -> dict[tuple[str, str], int]:
    return {(d, s): n for d, s, n in query(node, "SELECT destination, state, COUNT(*) FROM deliveries"
                                                  " GROUP BY destination, state")}


def wait_deliveries(node: NodeProcess, expected: dict[tuple[str, str], int], timeout_s: float = 600) -> None:
    wait_for(f"deliveries {expected}", lambda: delivery_states(node) == expected, timeout_s)


def deliveries_json(node: NodeProcess, *args: str) -> dict[str, Any]:
    return dict(json.loads(node.cli("deliveries", "--json", *args).stdout))


def outbox_files(node: NodeProcess) -> dict[str, tuple[str, Path]]:
    """The node's results: SOP Instance UID → (kind, outbox file)."""
    return {uid: (kind, Path(path)) for uid, kind, path in query(node, "SELECT sop_instance_uid, kind, path"
                                                                        " FROM results")}


def orthanc_rest(orthanc: OrthancProcess, path: str, method: str = "GET", data: bytes | None = None,
          headers: dict[str, str] | None = None) -> Any:
    """Orthanc's REST API with any method, body and headers (``OrthancProcess.get`` is GET only)."""
    req = urllib.request.Request(f"{orthanc.http_url}{path}", data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30, context=orthanc._ssl()) as rsp:
        body = rsp.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body


def orthanc_instances(orthanc: OrthancProcess, headers: dict[str, str] | None = None) -> dict[str, bytes]:
    """Every instance Orthanc holds, by SOP Instance UID, as the file it stored."""
    def get(path: str) -> Any:
        return orthanc_rest(orthanc, path, headers=headers)

    held: dict[str, bytes] = {}
    for oid in get("/instances"):
        uid = get(f"/instances/{oid}/simplified-tags")["SOPInstanceUID"]
        assert uid not in held, f"{uid} stored twice"
        held[uid] = get(f"/instances/{oid}/file")
    return held


def assert_results_in_orthanc(node: NodeProcess, held: dict[str, bytes], sources: list[Path]) -> None:
    """Each source's SR, GSPS and SC are in Orthanc once, byte-identical to the outbox file."""
    outbox = outbox_files(node)
    assert set(held) == set(outbox), "Orthanc holds other instances than the node's results"
    for uid, (_kind, path) in outbox.items():
        assert held[uid] == path.read_bytes(), f"{uid} differs from its outbox file"
    for src in sources:
        src_uid = str(pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID)
        kinds = [kind for (kind,) in query(node, "SELECT kind FROM results WHERE source_sop_instance_uid=?", src_uid)]
        assert sorted(kinds) == ["gsps", "sc", "sr"], f"results of {src.name}: {kinds}"


def delivered_once(node: NodeProcess, destination: str) -> None:
    """The audit trail records one 'delivered' attempt per result for ``destination``, never two."""
    rows = query(node, f"SELECT {json_text(node.engine, 'detail', 'result_uid')}, COUNT(*) FROM audit"
                       f" WHERE event='delivery' AND outcome='delivered'"
                       f" AND {json_text(node.engine, 'detail', 'destination')}=? GROUP BY 1", destination)
    assert rows and all(n == 1 for _uid, n in rows), rows
    assert len(rows) == len(outbox_files(node))
