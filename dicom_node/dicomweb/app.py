"""The DICOMweb application (PS3.18) at ``/dicom-web``: STOW-RS in, QIDO-RS, WADO-RS.

``create_app(node)`` builds it over a running node's ingest and store; ``DicomWebServer``
(dicom_node.dicomweb.server) serves it. STOW-RS reads the body as it comes (streamed to part files
in the spool's ``tmp/``) and stores each part on a worker thread through the C-STORE ingest; the
answer goes back only when every part is committed or refused. Every refusal is one text line with
its HTTP status (:mod:`dicom_node.dicomweb.access`).
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any, Protocol

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

from dicom_node import __version__
from dicom_node.config import Config
from dicom_node.dicomweb import PREFIX, index, qido, wado
from dicom_node.dicomweb.access import access_middleware, refusal
from dicom_node.dicomweb.errors import Refusal
from dicom_node.dicomweb.multipart import DICOM, PartWriter, related_boundary
from dicom_node.dicomweb.response import (
    DICOM_JSON,
    DICOM_XML,
    PartResult,
    http_status,
    store_response,
    to_json,
    to_xml,
    wants_xml,
)
from dicom_node.dicomweb.stow import StowIn
from dicom_node.ingest import Ingest
from dicom_node.spool import is_valid_uid
from dicom_node.store import Store

log = logging.getLogger("dicom_node.dicomweb")

#: STOW-RS body bytes gathered before a worker thread parses and writes them (256 KiB a request)
FEED_BYTES = 2**18


class WebNode(Protocol):
    """What the DICOMweb service uses of the running node (dicom_node.node.Node has it)."""

    cfg: Config
    store: Store
    ingest: Ingest


def create_app(node: WebNode) -> FastAPI:
    """The FastAPI app over ``node``; ``dicomweb.allowed_hosts`` and ``dicomweb.token`` guard every route."""
    cfg = node.cfg.dicomweb
    app = FastAPI(title="dicom-node DICOMweb", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.middleware("http")(access_middleware(cfg.allowed_hosts, cfg.token))
    stow = StowIn(node.ingest)
    max_body = cfg.max_request_mb * 2**20

    @app.exception_handler(Refusal)
    async def _refused(request: Request, exc: Refusal) -> Response:
        # the one line an admin reads for a refused request (reasons name UIDs and limits, no patient data)
        log.warning("DICOMweb request refused", extra={
            "method": request.method, "path": request.url.path[:200], "http_status": exc.status,
            "reason": exc.reason, "peer_host": request.client.host if request.client else None})
        return refusal(exc.status, exc.reason, exc.headers)

    def base(request: Request) -> str:
        """The service's base URL as the client addressed it; the listening port when its Host header
        names none (dicomweb-client sends the host alone) and the port is not the scheme's own."""
        url = request.base_url
        server = request.scope.get("server")
        if url.port is None and server and server[1] != {"http": 80, "https": 443}.get(url.scheme):
            url = url.replace(port=server[1])
        return str(url).rstrip("/") + PREFIX

    def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    # --- STOW-RS (PS3.18 §10.5) -------------------------------------------------------------------

    async def store_instances(request: Request, study_uid: str | None) -> Response:
        if study_uid is not None and not is_valid_uid(study_uid):
            raise Refusal(400, "the study in the path is not a valid UID")
        boundary = related_boundary(request.headers.get("content-type"))
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_body:
            raise Refusal(413, f"request body of {length} bytes is larger than dicomweb.max_request_mb"
                               f" ({cfg.max_request_mb})")
        spool = node.ingest.spool
        if await run(spool.free_bytes) < node.ingest.min_free_bytes:
            raise Refusal(503, "free disk space is under storage.min_free_mb; try again later", {"Retry-After": "60"})
        writer = PartWriter(boundary, spool.tmp, node.ingest.max_instance_bytes, max_body)
        peer = request.client.host if request.client else None
        results: list[PartResult] = []
        try:
            try:
                # Parsed and written on a worker thread, FEED_BYTES at a time: a slow disk under one upload
                # must not stall the event loop that serves every other DICOMweb request.
                pending = bytearray()
                async for chunk in request.stream():
                    pending += chunk
                    if len(pending) >= FEED_BYTES or not chunk:
                        await run(writer.feed, bytes(pending))
                        pending.clear()
                if pending:
                    await run(writer.feed, bytes(pending))
            except ClientDisconnect:
                raise Refusal(400, "the client went away before the body ended") from None
            parts = writer.finish()
            for i, part in enumerate(parts, 1):
                results.append(await run(stow.store, part, i, study_uid=study_uid, peer_host=peer))
        finally:
            writer.discard()  # what a refusal or a cancelled request left (a stored part is linked already)
        status = http_status(results)
        study_url = await run(_urls, node.store, results, base(request), study_uid)
        outcome = {200: "stored", 202: "partial"}.get(status, "refused")
        await run(node.store.audit, "stow", peer_host=peer, outcome=outcome,
                  detail={"parts": len(results), "stored": sum(1 for r in results if r.status == 0),
                          "failures": {f"0x{r.status:04X}": sum(1 for x in results if x.status == r.status)
                                       for r in results if r.status}, "bytes": writer.received})
        log.info("STOW-RS request", extra={"peer_host": peer, "parts": len(results), "http_status": status,
                                           "stored": sum(1 for r in results if r.status == 0)})
        response = store_response(results, study_url)
        if wants_xml(request.headers.get("accept")):
            return Response(to_xml(response), status_code=status, media_type=DICOM_XML)
        return Response(to_json(response), status_code=status, media_type=DICOM_JSON)

    @app.post(PREFIX + "/studies")
    async def stow_studies(request: Request) -> Response:
        return await store_instances(request, None)

    @app.post(PREFIX + "/studies/{study_uid}")
    async def stow_study(request: Request, study_uid: str) -> Response:
        return await store_instances(request, study_uid)

    # --- QIDO-RS (PS3.18 §10.6) -------------------------------------------------------------------

    def search(request: Request, level: str, study: str | None = None, series: str | None = None) -> Response:
        _json_accepted(request)
        q = qido.parse_query(level, request.query_params.multi_items())
        found = qido.search(node.store, q, base(request), study=study, series=series)
        headers = {}
        if q.ignored:
            headers["Warning"] = f'299 dicom-node "query keys not supported, ignored: {", ".join(q.ignored)}"'
        return Response(json.dumps(found), media_type=DICOM_JSON, headers=headers)

    @app.get(PREFIX + "/studies")
    def qido_studies(request: Request) -> Response:
        return search(request, "study")

    @app.get(PREFIX + "/series")
    def qido_all_series(request: Request) -> Response:
        return search(request, "series")

    @app.get(PREFIX + "/instances")
    def qido_all_instances(request: Request) -> Response:
        return search(request, "instance")

    @app.get(PREFIX + "/studies/{study}/series")
    def qido_series(request: Request, study: str) -> Response:
        return search(request, "series", study)

    @app.get(PREFIX + "/studies/{study}/instances")
    def qido_study_instances(request: Request, study: str) -> Response:
        return search(request, "instance", study)

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances")
    def qido_instances(request: Request, study: str, series: str) -> Response:
        return search(request, "instance", study, series)

    # --- WADO-RS (PS3.18 §10.4) -------------------------------------------------------------------

    def found(study: str, series: str | None = None, instance: str | None = None) -> list[dict[str, Any]]:
        rows = index.objects(node.store, study=study, series=series, instance=instance)
        if not rows:
            what = f"instance {instance}" if instance else f"series {series}" if series else f"study {study}"
            raise Refusal(404, f"no {what} is held here")
        return rows

    def retrieve(request: Request, rows: list[dict[str, Any]]) -> StreamingResponse:
        wado.negotiate(request.headers.get("accept"), DICOM, {r["transfer_syntax_uid"] for r in rows})
        boundary = wado.new_boundary()
        parts = [wado.instance_part(r) for r in rows]
        return StreamingResponse(wado.multipart(parts, boundary),
                                 media_type=f'multipart/related; type="{DICOM}"; boundary={boundary}')

    @app.get(PREFIX + "/studies/{study}")
    def wado_study(request: Request, study: str) -> StreamingResponse:
        return retrieve(request, found(study))

    @app.get(PREFIX + "/studies/{study}/series/{series}")
    def wado_series(request: Request, study: str, series: str) -> StreamingResponse:
        return retrieve(request, found(study, series))

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}")
    def wado_instance(request: Request, study: str, series: str, instance: str) -> StreamingResponse:
        return retrieve(request, found(study, series, instance))

    def metadata(request: Request, rows: list[dict[str, Any]]) -> Response:
        _json_accepted(request)
        return Response(json.dumps(wado.metadata(rows)), media_type=DICOM_JSON)

    @app.get(PREFIX + "/studies/{study}/metadata")
    def wado_study_metadata(request: Request, study: str) -> Response:
        return metadata(request, found(study))

    @app.get(PREFIX + "/studies/{study}/series/{series}/metadata")
    def wado_series_metadata(request: Request, study: str, series: str) -> Response:
        return metadata(request, found(study, series))

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}/metadata")
    def wado_instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
        return metadata(request, found(study, series, instance))

    @app.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
    def wado_frames(request: Request, study: str, series: str, instance: str, frames: str) -> StreamingResponse:
        numbers = wado.parse_frames(frames)
        [row] = found(study, series, instance)
        media, ranges = wado.frame_ranges(row, numbers)
        wado.negotiate(request.headers.get("accept"), media, {row["transfer_syntax_uid"]})
        boundary = wado.new_boundary()
        part_type = f"{media}; transfer-syntax={row['transfer_syntax_uid']}"
        return StreamingResponse(wado.multipart([(part_type, r) for r in ranges], boundary),
                                 media_type=f'multipart/related; type="{media}"; boundary={boundary}')

    return app


def _json_accepted(request: Request) -> None:
    """QIDO-RS and metadata answer DICOM JSON only (PS3.18 §8.7.3.1); 406 for an Accept without it."""
    accept = request.headers.get("accept", "")
    media = {a.split(";")[0].strip().lower() for a in accept.split(",")} if accept else {"*/*"}
    if not media & {DICOM_JSON, "application/json", "*/*", "application/*"}:
        raise Refusal(406, f"this resource is served as {DICOM_JSON} only (no XML, no multipart)")


def _urls(store: Store, results: list[PartResult], base_url: str, study_uid: str | None) -> str | None:
    """Fill each stored part's Retrieve URL; return the study's (the path's, or the one study stored)."""
    studies: set[str] = set()
    for i, r in enumerate(results):
        if r.status:
            continue
        row = store.instance(r.sop_instance_uid)
        if row is None:
            continue
        studies.add(row["study_instance_uid"])
        url = f"{base_url}/studies/{row['study_instance_uid']}/series/{row['series_instance_uid']}" \
              f"/instances/{r.sop_instance_uid}"
        results[i] = PartResult(r.sop_class_uid, r.sop_instance_uid, r.status, r.reason, url)
    study = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    return f"{base_url}/studies/{study}" if study else None
