"""Analyses, findings and result objects of each instance, and the study view over them."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from dicom_node.store.connections import Connections
from dicom_node.store.jobs import enqueue_in
from dicom_node.store.schema import upsert

ANALYSIS_COLUMNS = ("sop_instance_uid", "outcome", "reason", "model_name", "model_version", "n_findings",
                    "opacity_probability", "assumptions", "preprocess_ms", "inference_ms", "total_ms", "analysed_at")


def analysis_row(row: sqlite3.Row | dict[str, Any]) -> dict[str, Any]:
    """An analyses row as callers see it: ``assumptions`` a list of sentences ([] when none)."""
    out = dict(row)
    if "assumptions" in out:
        out["assumptions"] = json.loads(out["assumptions"]) if out["assumptions"] else []
    return out


class Results(Connections):
    """Each instance's analysis, findings and result objects (SR, GSPS, SC)."""

    def record_analysis(self, sop_instance_uid: str, outcome: str, *, reason: str | None = None,
                        findings: Sequence[dict[str, Any]] = (), model_name: str | None = None,
                        model_version: str | None = None, timings_ms: dict[str, float] | None = None,
                        opacity_probability: float | None = None, assumptions: Sequence[str] = ()) -> None:
        """Replace this instance's analysis and findings (idempotent: a redo after a crash overwrites).

        ``assumptions`` are the sentences routing recorded for a film whose header left body part or
        view empty (``dicom_node.results.Assumption``), kept as a JSON list.
        """
        now = time.time()
        t = timings_ms or {}
        with self.transaction() as conn:
            conn.execute("DELETE FROM findings WHERE sop_instance_uid = ?", (sop_instance_uid,))
            conn.executemany(
                "INSERT INTO findings (sop_instance_uid, x0, y0, x1, y1, score, label, model_name, model_version,"
                " created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                [(sop_instance_uid, f["x0"], f["y0"], f["x1"], f["y1"], f["score"], f["label"], model_name,
                  model_version, now) for f in findings],
            )
            conn.execute(
                upsert("analyses", ANALYSIS_COLUMNS, ["sop_instance_uid"]),
                (sop_instance_uid, outcome, reason, model_name, model_version, len(findings), opacity_probability,
                 json.dumps(list(assumptions)) if assumptions else None,
                 t.get("preprocess"), t.get("inference"), t.get("total"), now),
            )

    def analysis(self, sop_instance_uid: str) -> dict[str, Any] | None:
        """This instance's analysis row (outcome, reason, model, opacity probability, assumptions, timings)."""
        row = self.conn().execute("SELECT * FROM analyses WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return analysis_row(row) if row else None

    def findings(self, sop_instance_uid: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn().execute(
            "SELECT * FROM findings WHERE sop_instance_uid = ? ORDER BY score DESC", (sop_instance_uid,))]

    def results_for(self, source_sop_instance_uid: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn().execute(
            "SELECT * FROM results WHERE source_sop_instance_uid = ? ORDER BY kind", (source_sop_instance_uid,))]

    def add_results(self, source_sop_instance_uid: str, study_instance_uid: str,
                    results: Sequence[dict[str, Any]], destinations: Sequence[str], *,
                    max_attempts: int) -> None:
        """Record result objects (``sop_instance_uid``, ``kind``, ``sop_class_uid``, ``path``) and queue one
        delivery job per (result, destination) whose kinds include it — all in one transaction."""
        now = time.time()
        with self.transaction() as conn:
            for r in results:
                conn.execute(
                    "INSERT INTO results (sop_instance_uid, source_sop_instance_uid, study_instance_uid,"
                    " kind, sop_class_uid, path, created_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                    (r["sop_instance_uid"], source_sop_instance_uid, study_instance_uid, r["kind"],
                     r["sop_class_uid"], r["path"], now),
                )
                for dest in r.get("destinations", destinations):
                    conn.execute(
                        "INSERT INTO deliveries (result_uid, destination, state, updated_at)"
                        " VALUES (?, ?, 'queued', ?) ON CONFLICT DO NOTHING", (r["sop_instance_uid"], dest, now))
                    enqueue_in(conn, "deliver", f"{r['sop_instance_uid']}>{dest}", None, max_attempts, 0.0, now)

    def result(self, sop_instance_uid: str) -> dict[str, Any] | None:
        row = self.conn().execute("SELECT * FROM results WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return dict(row) if row else None

    def study(self, study_instance_uid: str) -> list[dict[str, Any]]:
        """Each instance of a study with its analysis, findings, results and their deliveries."""
        conn = self.conn()
        out = []
        for inst in conn.execute(
            "SELECT i.sop_instance_uid, i.sop_class_uid, i.modality, i.calling_ae, i.received_at,"
            " a.outcome, a.reason, a.model_name, a.model_version, a.n_findings, a.opacity_probability,"
            " a.assumptions, a.inference_ms, a.total_ms"
            " FROM instances i LEFT JOIN analyses a USING (sop_instance_uid)"
            " WHERE i.study_instance_uid = ? ORDER BY i.received_at", (study_instance_uid,)):
            item = analysis_row(inst)
            item["findings"] = [{k: f[k] for k in ("x0", "y0", "x1", "y1", "score", "label")}
                                for f in self.findings(inst["sop_instance_uid"])]
            item["results"] = []
            for r in self.results_for(inst["sop_instance_uid"]):
                deliveries = [dict(d) for d in conn.execute(
                    "SELECT destination, state, attempts, error, delivered_at FROM deliveries WHERE result_uid = ?",
                    (r["sop_instance_uid"],))]
                item["results"].append({"kind": r["kind"], "sop_instance_uid": r["sop_instance_uid"],
                                        "sop_class_uid": r["sop_class_uid"], "deliveries": deliveries})
            out.append(item)
        return out
