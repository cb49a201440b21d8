"""Read-only queries over the node's tables that the dashboard and /metrics need beyond ``Store``'s own.

Every figure comes from the database, not from process memory, so it is right after a restart and the
same whichever process asks. UIDs, AE titles, addresses and counts only: no patient data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from dicom_node.store import Store
from dicom_node.store.dialect import group_concat

# seconds; analysis on a CPU takes seconds, on a GPU a fraction of one
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def recent_studies(store: Store, limit: int = 10, thumbs: int = 4) -> list[dict[str, Any]]:
    """The latest studies received: instance count, senders, analysis outcomes, findings and up to
    ``thumbs`` source instances that have an overlay (SC) result to show."""
    conn = store.conn()
    studies = [dict(r) for r in conn.execute(
        "SELECT study_instance_uid, COUNT(*) AS instances, MIN(received_at) AS first_received_at,"
        f" MAX(received_at) AS last_received_at, {group_concat(store, 'calling_ae', distinct=True)} AS senders,"
        f" {group_concat(store, 'modality', distinct=True)} AS modalities"
        " FROM instances GROUP BY study_instance_uid ORDER BY last_received_at DESC, study_instance_uid"
        " LIMIT ?", (limit,))]
    for s in studies:
        uid = s["study_instance_uid"]
        outcomes = {r[0]: r[1] for r in conn.execute(
            "SELECT COALESCE(a.outcome, 'pending'), COUNT(*) FROM instances i"
            " LEFT JOIN analyses a USING (sop_instance_uid) WHERE i.study_instance_uid = ?"
            " GROUP BY 1", (uid,))}
        s["outcomes"] = outcomes
        s["findings"] = conn.execute(
            "SELECT COUNT(*) FROM findings f JOIN instances i USING (sop_instance_uid)"
            " WHERE i.study_instance_uid = ?", (uid,)).fetchone()[0]
        s["max_score"] = conn.execute(
            "SELECT MAX(score) FROM findings f JOIN instances i USING (sop_instance_uid)"
            " WHERE i.study_instance_uid = ?", (uid,)).fetchone()[0]
        s["overlays"] = [dict(r) for r in conn.execute(
            "SELECT r.source_sop_instance_uid AS sop_instance_uid, COALESCE(a.n_findings, 0) AS n_findings"
            " FROM results r LEFT JOIN analyses a ON a.sop_instance_uid = r.source_sop_instance_uid"
            " WHERE r.study_instance_uid = ? AND r.kind = 'sc'"
            " ORDER BY r.created_at, r.source_sop_instance_uid LIMIT ?", (uid, thumbs))]
        s["overlay_count"] = conn.execute(
            "SELECT COUNT(*) FROM results WHERE study_instance_uid = ? AND kind = 'sc'", (uid,)).fetchone()[0]
        s["senders"] = sorted(set(s["senders"].split(","))) if s["senders"] else []
        # neither engine orders the values of a DISTINCT aggregate (SQLite takes no ORDER BY in it)
        s["modalities"] = ",".join(sorted(set(s["modalities"].split(",")))) if s["modalities"] else None
    return studies


def study_count(store: Store) -> int:
    return int(store.conn().execute("SELECT COUNT(DISTINCT study_instance_uid) FROM instances").fetchone()[0])


def overlay(store: Store, source_sop_instance_uid: str) -> tuple[str, str] | None:
    """(result UID, outbox path) of the Secondary Capture overlay made for one received instance, if any."""
    row = store.conn().execute(
        "SELECT sop_instance_uid, path FROM results WHERE source_sop_instance_uid = ? AND kind = 'sc'",
        (source_sop_instance_uid,)).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def recent_associations(store: Store, limit: int = 10, *, after_id: int = 0) -> list[dict[str, Any]]:
    """Audit rows (newest first), with their JSON detail decoded."""
    rows = [dict(r) for r in store.conn().execute(
        "SELECT id, at, event, peer_ae, peer_host, outcome, detail FROM audit WHERE id > ?"
        " ORDER BY id DESC LIMIT ?", (after_id, limit))]
    for r in rows:
        r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
    return rows


def association_outcomes(store: Store) -> dict[str, int]:
    """Associations in the audit trail by outcome (released, aborted, rejected)."""
    return {r[0]: r[1] for r in store.conn().execute(
        "SELECT outcome, COUNT(*) FROM audit WHERE event = 'association' GROUP BY outcome")}


def deliveries_by_destination(store: Store) -> list[dict[str, Any]]:
    """Result deliveries per destination and state, with their attempts."""
    return [dict(r) for r in store.conn().execute(
        "SELECT destination, state, COUNT(*) AS n, CAST(COALESCE(SUM(attempts), 0) AS BIGINT) AS attempts"
        " FROM deliveries GROUP BY destination, state ORDER BY destination, state")]


def peer_status(store: Store) -> dict[str, dict[str, Any]]:
    return {r["name"]: dict(r) for r in store.conn().execute("SELECT * FROM peer_status ORDER BY name")}


def latest_model(store: Store) -> dict[str, Any] | None:
    """Name and version of the model behind the latest analysis, with when it ran."""
    row = store.conn().execute(
        "SELECT model_name, model_version, analysed_at FROM analyses WHERE model_version IS NOT NULL"
        " ORDER BY analysed_at DESC, sop_instance_uid LIMIT 1").fetchone()
    return dict(row) if row else None


def latency_histogram(store: Store, column: str,
                      buckets_s: Sequence[float] = LATENCY_BUCKETS_S) -> tuple[list[tuple[float, int]], int, float]:
    """Cumulative bucket counts (upper bound in seconds, count), total count and sum in seconds of
    ``analyses.<column>`` (``total_ms`` or ``inference_ms``) over analysed images."""
    if column not in ("total_ms", "inference_ms", "preprocess_ms"):
        raise ValueError(f"column: total_ms, inference_ms or preprocess_ms (got {column!r})")
    # COUNT of a CASE, not SUM of a comparison: PostgreSQL's comparisons are booleans, which it does not sum
    counts = ", ".join(f"COUNT(CASE WHEN {column} <= {b * 1000!r} THEN 1 END)" for b in buckets_s)
    row = store.conn().execute(
        f"SELECT COUNT({column}), CAST(COALESCE(SUM({column}), 0) AS DOUBLE PRECISION), {counts} FROM analyses"
        f" WHERE outcome = 'analysed' AND {column} IS NOT NULL").fetchone()
    count, total_ms = int(row[0]), float(row[1])
    return [(b, int(n)) for b, n in zip(buckets_s, row[2:], strict=True)], count, total_ms / 1000
