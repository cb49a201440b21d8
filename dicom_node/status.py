"""The node's status as one dictionary: what ``dicom-node status --json`` and ``/api/status`` return."""

from __future__ import annotations

from typing import Any

from dicom_node.config import Config
from dicom_node.store import Store


def model_of(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The model state ``status`` shows first: of the newest live node that analyses (each node's own
    is in ``nodes``), else of the newest node listed; ``unknown`` when none is."""
    live = [n for n in nodes if n["state"] == "alive" and "analyse" in n["roles"]]
    chosen = live or nodes  # newest first
    return dict(chosen[0]["model"]) if chosen else {"state": "unknown"}


def node_status(cfg: Config, store: Store | None = None) -> dict[str, Any]:
    """Instances stored, jobs by state and kind, each destination's last echo and delivery, and every
    node process on this database with its roles and last heartbeat (``nodes``).

    Reads the database, so it works from another process while the node serves.
    """
    own = store is None
    st = store or Store(cfg.database)
    try:
        data = st.status()
        peers = {r["name"]: dict(r) for r in st.conn().execute("SELECT * FROM peer_status")}
        data["nodes"] = st.nodes()
    finally:
        if own:
            st.close()
    data["model"] = model_of(data["nodes"])
    data["node"] = {"ae_title": cfg.node.ae_title, "port": cfg.node.port, "storage": str(cfg.storage.dir),
                    "roles": list(cfg.node.roles)}
    data["destinations"] = [
        {
            "name": d.name,
            "address": d.address,  # AE@HOST:PORT or the DICOMweb URL, never a credential
            "protocol": "stow-rs" if d.is_dicomweb else "dimse",
            "kinds": list(d.kinds),
            **{k: peers.get(d.name, {}).get(k) for k in
               ("last_echo_at", "last_echo_ok", "last_echo_error", "last_delivery_at", "last_delivery_ok")},
        }
        for d in cfg.destinations
    ]
    return data
