"""Who may call the DICOMweb listener: the calling-peer policy of the receiver, for HTTP.

In order, each refusal saying why in one line: the client's address must be in
``dicomweb.allowed_hosts`` (403); with ``dicomweb.token`` set, the request must carry
``Authorization: Bearer <token>`` (401, compared in constant time, never logged); without a token,
the Host header must be an IP address or a loopback name (403), so that a web page cannot read the
node through a DNS name rebound to an allowed address. HTTPS client certificates, when
``dicomweb.tls.ca`` is set, are checked by the TLS handshake before any of this.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Sequence
from http import HTTPStatus

from fastapi import Request, Response
from fastapi.responses import PlainTextResponse

from dicom_node.admin.auth import loopback_name, token_ok

Next = Callable[[Request], Awaitable[Response]]


def _ip_literal(host_header: str) -> bool:
    host = host_header.strip()
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def access_middleware(allowed_hosts: Sequence[str],
                      token: str | None) -> Callable[[Request, Next], Awaitable[Response]]:
    """HTTP middleware applying the policy above to every request."""
    networks = [ipaddress.ip_network(h, strict=False) for h in allowed_hosts]

    async def check(request: Request, call_next: Next) -> Response:
        client = request.client.host if request.client else ""
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            address = None
        if address is None or not any(address in n for n in networks):
            return refusal(403, f"client address {client or '?'} is not in dicomweb.allowed_hosts")
        if token:
            if not token_ok(token, bearer(request)):
                return refusal(401, "this DICOMweb service needs its token (Authorization: Bearer <dicomweb.token>)",
                               {"WWW-Authenticate": 'Bearer realm="dicom-node DICOMweb"'})
        else:
            host = request.headers.get("host", "")
            if not (_ip_literal(host) or loopback_name(host)):
                return refusal(403, "without dicomweb.token this service answers only requests addressed to an"
                                    " IP address or localhost")
        return await call_next(request)

    return check


def refusal(status: int, reason: str, headers: dict[str, str] | None = None) -> PlainTextResponse:
    """``<status> <phrase>: <reason>`` as text/plain, the one line every refusal answers."""
    return PlainTextResponse(f"{status} {HTTPStatus(status).phrase}: {reason}\n", status_code=status,
                             headers=headers)
