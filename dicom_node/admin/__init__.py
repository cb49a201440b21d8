"""The admin console inside the node: HTTP API, Prometheus /metrics and the dashboard.

``create_app(node)`` builds the FastAPI application; ``AdminServer(node)`` serves it on
``admin.host:admin.port`` from a background thread of the node process. See docs/admin.md.
"""

from dicom_node.admin.app import create_app
from dicom_node.admin.server import AdminServer

__all__ = ["AdminServer", "create_app"]
