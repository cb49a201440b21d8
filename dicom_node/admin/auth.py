"""The admin token: with ``admin.token`` set, every page and API call needs it (``/healthz`` excepted).

A client gives it as ``Authorization: Bearer <token>`` or, for a browser, as ``?token=<token>``; the
dashboard's links and images carry the query form on, so a bookmarked URL keeps working. The token is
compared in constant time and never logged (uvicorn's access log, which would record query strings,
is off).

Without a token the console listens on loopback only (config.AdminConfig), and answers only requests
addressed to a loopback name (``Host: localhost``, ``127.0.0.1``, ``[::1]``): a web page the admin
happens to open cannot read it through a DNS name rebound to 127.0.0.1.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from fastapi import Request, Response
from fastapi.responses import PlainTextResponse

OPEN_PATHS = frozenset({"/healthz"})

Next = Callable[[Request], Awaitable[Response]]


def given_token(request: Request) -> str | None:
    """The token the client sent: the Bearer header first, else the ``token`` query parameter."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("token")


def token_ok(expected: str | None, given: str | None) -> bool:
    """True when no token is configured, or the given one matches (constant-time comparison)."""
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def loopback_name(host_header: str) -> bool:
    """True when a Host header names this machine's loopback (``localhost``, ``127.0.0.1:8080``, ``[::1]``)."""
    host = host_header.strip().lower()
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def token_middleware(expected: str | None) -> Callable[[Request, Next], Awaitable[Response]]:
    """HTTP middleware: without a token configured, only loopback Host names (else 403); with one,
    401 (``WWW-Authenticate: Bearer``) unless the request carries it."""

    async def check(request: Request, call_next: Next) -> Response:
        if request.url.path in OPEN_PATHS:
            return await call_next(request)
        if not expected:
            if loopback_name(request.headers.get("host", "")):
                return await call_next(request)
            return PlainTextResponse(
                "403 Forbidden: without admin.token this console answers only to localhost, 127.0.0.1 or [::1]\n",
                status_code=403,
            )
        if token_ok(expected, given_token(request)):
            return await call_next(request)
        return PlainTextResponse(
            "401 Unauthorized: this admin console needs its token "
            "(Authorization: Bearer <admin.token>, or ?token=<admin.token>)\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="dicom-node admin"'},
        )

    return check
