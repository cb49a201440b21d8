"""A request the DICOMweb listener refuses: an HTTP status and a one-line reason for the client."""

from __future__ import annotations


class Refusal(Exception):
    """Raised anywhere under a handler; answered as ``text/plain`` ``"<status> <phrase>: <reason>"``."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
