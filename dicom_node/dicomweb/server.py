"""The DICOMweb listener: uvicorn on a background thread of the node, on ``dicomweb.host:port``.

Its own socket, not the admin console's (which stays on loopback), started and stopped as the admin
server is (:class:`dicom_node.admin.server.AdminServer`: bound in ``start()``, so a port in use
stops the node with a line naming the DICOMweb address; signals left to the node), and bounded by
the same guarded protocol (connection cap, header deadline, request deadline), here with the
``dicomweb.*`` limits and a request deadline long enough for a large STOW-RS body. ``dicomweb.tls``
serves HTTPS; with ``ca``, client certificates are required (as ``node.tls`` does for DICOM TLS,
PS3.15 B.1).
"""

from __future__ import annotations

import logging
import ssl

import uvicorn

from dicom_node.admin.limits import GuardedH11, descriptor_budget
from dicom_node.admin.server import AdminServer, _bind
from dicom_node.dicomweb import PREFIX
from dicom_node.dicomweb.app import WebNode, create_app

log = logging.getLogger("dicom_node.dicomweb")


class DicomWebServer(AdminServer):
    """``start()`` serves ``/dicom-web`` on ``dicomweb.host:dicomweb.port``; ``stop()`` ends it."""

    def __init__(self, node: WebNode) -> None:  # not AdminServer's: another app, other limits
        self.node = node  # type: ignore[assignment]
        cfg = node.cfg.dicomweb
        self.budget = descriptor_budget(node.cfg)
        self.counters = {"refused": 0, "timed_out": 0, "draining": 0}
        self.protocol = type("DicomWebH11", (GuardedH11,), {
            "max_connections": cfg.max_connections, "header_timeout_s": cfg.header_timeout_s,
            "request_timeout_s": cfg.request_timeout_s, "fd_limit": self.budget.http_fd_limit,
            "counters": self.counters})
        self.app = create_app(node)
        self.address = None
        self._server = self._thread = self._socket = None

    @property
    def url(self) -> str | None:
        """``http(s)://host:port/dicom-web`` once started."""
        if self.address is None:
            return None
        host, port = self.address
        scheme = "https" if self.node.cfg.dicomweb.tls else "http"
        return f"{scheme}://[{host}]:{port}{PREFIX}" if ":" in host else f"{scheme}://{host}:{port}{PREFIX}"

    def start(self) -> tuple[str, int]:
        """Bind, serve in the background, return the bound (host, port); OSError names the address."""
        cfg = self.node.cfg.dicomweb
        tls = cfg.tls
        logging.getLogger("uvicorn").setLevel(logging.WARNING)  # as the admin console: its INFO lines say nothing
        config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5,
            server_header=False, http=self.protocol, ws="none", backlog=max(1, cfg.max_connections // 2),
            timeout_keep_alive=cfg.keepalive_timeout_s, headers=[("X-Content-Type-Options", "nosniff")],
            ssl_certfile=str(tls.certificate) if tls else None, ssl_keyfile=str(tls.key) if tls else None,
            ssl_ca_certs=str(tls.ca) if tls and tls.ca else None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if tls and tls.ca else ssl.CERT_NONE,
        )
        address = self._launch(config, _bind(cfg.host, cfg.port, "dicomweb"), "dicomweb", f"{cfg.host}:{cfg.port}")
        log.info("DICOMweb serving", extra={"url": self.url, "token": bool(cfg.token), "tls": bool(tls),
                                           "client_certificates": bool(tls and tls.ca)})
        return address
