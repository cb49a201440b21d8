"""The admin HTTP application: JSON API, /metrics and the server-rendered dashboard.

``create_app(node)`` builds it over a running node's store, receiver and twin; ``AdminServer``
(dicom_node.admin.server) serves it inside the node process. Handlers are plain functions, so
FastAPI runs them on its worker threads, each with its own SQLite connection from ``Store``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dicom_node import __version__
from dicom_node.admin import queries
from dicom_node.admin.auth import token_middleware
from dicom_node.admin.device_view import device_page, health_chart_note
from dicom_node.admin.metrics import AdminCollector, build_registry
from dicom_node.admin.overview import overview
from dicom_node.admin.thumbnails import ThumbnailCache
from dicom_node.config import Config
from dicom_node.dicomweb import study_url
from dicom_node.status import node_status
from dicom_node.store import JOB_STATES, Store
from twin.store import TwinStore

TEMPLATES = Path(__file__).with_name("templates")
#: The pages' stylesheet, a file rather than inline so that the Content-Security-Policy needs no
#: 'unsafe-inline' (limits.SECURITY_HEADERS).
STYLESHEET = Path(__file__).with_name("static") / "console.css"
REFRESH_S = 15


class AdminNode(Protocol):
    """What the admin console reads of the running node (dicom_node.node.Node has it all)."""

    cfg: Config
    store: Store
    twin: TwinStore
    receiver: Any  # .counters: accepted, rejected, instances, bytes; .server: the association server
    device_uid: str
    model_state: dict[str, Any]  # this process's model: loading, ready, failed, not used, stopped


def create_app(node: AdminNode, http_counters: dict[str, int] | None = None) -> FastAPI:
    """The FastAPI app over ``node``; with ``admin.token`` set every route but /healthz needs it.
    ``http_counters`` are the server's refused and timed-out connections, for /metrics."""
    started_at = time.time()
    app = FastAPI(
        title="dicom-node admin",
        version=__version__,
        description="Status, queue, device twin and studies of one dicom-node; Prometheus metrics at /metrics.",
        docs_url=None,  # the Swagger and ReDoc pages load scripts from a CDN: the schema is at /openapi.json
        redoc_url=None,
    )
    app.middleware("http")(token_middleware(node.cfg.admin.token))
    registry = build_registry(node, __version__, started_at)
    thumbnails = ThumbnailCache()
    registry.register(AdminCollector(thumbnails, http_counters if http_counters is not None else {}))
    stylesheet = STYLESHEET.read_bytes()
    templates = _templates()

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("refresh", status_code == 200)
        context.update(link=_linker(request), node=node.cfg.node, refresh_s=REFRESH_S, version=__version__,
                       now_utc=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    # --- API -------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["api"], summary="Liveness: the admin server answers; whether the model is warm")
    def healthz() -> dict[str, Any]:
        state = node.model_state
        return {"ok": True, "ae_title": node.cfg.node.ae_title, "model": state.get("state"),
                "model_ready": state.get("state") == "ready"}

    @app.get("/api/status", tags=["api"], summary="What `dicom-node status --json` prints")
    def api_status() -> dict[str, Any]:
        return node_status(node.cfg, node.store)

    @app.get("/api/devices", tags=["api"], summary="Every device of the twin with counts and health")
    def api_devices() -> list[dict[str, Any]]:
        return node.twin.devices()

    @app.get("/api/devices/{ref}", tags=["api"], summary="One device's whole twin record")
    def api_device(ref: str) -> dict[str, Any]:
        try:
            return node.twin.device(_device_id(node, ref))
        except KeyError:
            raise HTTPException(404, f"no device {ref!r}") from None

    @app.get("/api/studies/{study_uid}", tags=["api"],
             summary="What `dicom-node results --json` prints: a study's images, findings, deliveries, DICOMweb URL")
    def api_study(study_uid: str) -> dict[str, Any]:
        study = node.store.study(study_uid)
        if not study:
            raise HTTPException(404, f"no instance of study {study_uid} is stored")
        return {"study_instance_uid": study_uid, "dicomweb_url": study_url(node.cfg.dicomweb, study_uid),
                "instances": study}

    @app.get("/api/jobs", tags=["api"], summary="Jobs, newest first, by state and kind")
    def api_jobs(state: str | None = Query(None, description=f"one of {', '.join(JOB_STATES)}"),
                 kind: str | None = Query(None, description="analyse or deliver"),
                 limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        if state is not None and state not in JOB_STATES:
            raise HTTPException(422, f"state: one of {', '.join(JOB_STATES)} (got {state!r})")
        return node.store.jobs(state=state, kind=kind, limit=limit)

    @app.get("/metrics", tags=["metrics"], summary="Prometheus text format", response_class=Response)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # --- dashboard -------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def dashboard(request: Request) -> HTMLResponse:
        return render(request, "index.html", **overview(node, started_at))

    @app.get("/devices/{device_id}", response_class=HTMLResponse, include_in_schema=False)
    def device(request: Request, device_id: str) -> HTMLResponse:
        try:
            page = device_page(node.twin, node.store.conn(), _device_id(node, device_id))
        except HTTPException as exc:
            return render(request, "missing.html", 404, what=exc.detail)
        return render(request, "device.html", drift_note=health_chart_note(page["device"]), **page)

    @app.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
    def study(request: Request, study_uid: str) -> HTMLResponse:
        instances = node.store.study(study_uid)
        if not instances:
            return render(request, "missing.html", 404, what=f"no instance of study {study_uid} is stored")
        return render(request, "study.html", study_uid=study_uid, instances=instances,
                      dicomweb_url=study_url(node.cfg.dicomweb, study_uid),
                      overlays={i["sop_instance_uid"] for i in instances
                                if any(r["kind"] == "sc" for r in i["results"])})

    @app.get("/static/console.css", include_in_schema=False)
    def console_css() -> Response:
        return Response(stylesheet, media_type="text/css", headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/thumbs/{sop_instance_uid}.png", include_in_schema=False)
    def thumbnail(sop_instance_uid: str, size: int = Query(192, ge=48, le=1024)) -> Response:
        found = queries.overlay(node.store, sop_instance_uid)
        if found is None:
            raise HTTPException(404, "no overlay for this instance")
        try:
            png = thumbnails.png(*found, size)
        except (OSError, ValueError) as exc:  # gone from the outbox, or not an image pydicom can decode
            raise HTTPException(404, f"overlay unreadable: {type(exc).__name__}") from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    return app


def _device_id(node: AdminNode, ref: str) -> int:
    found = node.twin.find_device(ref)
    if found is None:
        raise HTTPException(404, f"no device {ref!r} (give its id, serial number or station name)")
    return found


def _linker(request: Request) -> Callable[..., str]:
    """``link(path, **query)``: a URL that keeps the ``token`` query parameter the page was opened with."""
    token = request.query_params.get("token")

    def link(path: str, **query: Any) -> str:
        params = {k: v for k, v in query.items() if v is not None}
        if token:
            params["token"] = token
        return f"{path}?{urlencode(params)}" if params else path

    return link


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES))
    templates.env.filters.update(when=when, ago=ago, mib=mib, short=short)
    return templates


def _stamp(value: float | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def when(value: float | str | None, seconds: bool = False) -> str:
    """An epoch or ISO time as ``YYYY-MM-DD HH:MM`` UTC; ``-`` when missing."""
    t = _stamp(value)
    if t is None:
        return "-"
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def ago(value: float | str | None) -> str:
    """``12 s ago``, ``5 min ago``, ``3 h ago``, ``4 d ago``, ``on 2025-01-31``; ``never`` when missing."""
    t = _stamp(value)
    if t is None:
        return "never"
    s = (datetime.now(UTC) - t).total_seconds()
    if s < 0:
        return "in the future"
    if s > 45 * 86400:
        return f"on {t:%Y-%m-%d}"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size * (2 if unit != "min" else 1):
            return f"{s / size:.0f} {unit} ago"
    return f"{s:.0f} s ago"


def mib(n: int | float | None) -> str:
    n = float(n or 0)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def short(uid: str | None, keep: int = 14) -> str:
    """The tail of a long UID (the distinctive part), with an ellipsis."""
    if not uid:
        return "-"
    return uid if len(uid) <= keep + 1 else "…" + uid[-keep:]
