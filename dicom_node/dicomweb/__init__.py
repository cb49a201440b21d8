"""DICOMweb (PS3.18): the node's second front door (STOW-RS in, QIDO-RS, WADO-RS) and its second kind
of destination (STOW-RS out), over the same ingest and the same outbox as DIMSE."""

from __future__ import annotations

import ipaddress
import socket

from dicom_node.config import DicomWebConfig

PREFIX = "/dicom-web"


def base_url(cfg: DicomWebConfig) -> str | None:
    """The listener's base URL as a client elsewhere addresses it (PS3.18 §8.2): ``dicomweb.public_url``
    when set, else ``http(s)://HOST:PORT/dicom-web`` with the configured host, or this machine's name
    when the host is a wildcard (0.0.0.0, ::). None when the listener is off or its port is not fixed."""
    if not cfg.enabled:
        return None
    if cfg.public_url is not None:
        return cfg.public_url
    if cfg.port == 0:  # an ephemeral port: only the running listener knows it
        return None
    host = cfg.host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_unspecified:
        host = socket.getfqdn()
    elif address is not None and address.version == 6:
        host = f"[{host}]"
    return f"{'https' if cfg.tls is not None else 'http'}://{host}:{cfg.port}{PREFIX}"


def study_url(cfg: DicomWebConfig, study_instance_uid: str) -> str | None:
    """The study's resource ``{base}/studies/{StudyInstanceUID}`` (PS3.18 §10.4.1: WADO-RS retrieves
    it, ``…/metadata`` its metadata), or None when the listener is off."""
    base = base_url(cfg)
    return None if base is None else f"{base}/studies/{study_instance_uid}"
