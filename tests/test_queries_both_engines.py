"""Every query outside the store that reads the node's tables, on SQLite and on PostgreSQL (issue 13).

One realistic database is filled through the Store's own methods on each engine (the ``database``
fixture), on a fake clock so the times are known; then the admin console's queries, the node status,
the ``logs --audit`` and ``deliveries`` queries and the QIDO-RS search are asked, and each answer is the
one written here once: the same on both engines.
"""

from __future__ import annotations

import json
import time as real_time
from pathlib import Path
from typing import Any

import pytest

from dicom_node.admin import queries
from dicom_node.cli.logs import audit_rows
from dicom_node.config import Config
from dicom_node.dicomweb import index, qido
from dicom_node.status import node_status
from dicom_node.store import InstanceRow, Store
from dicom_node.store import audit as audit_mod
from dicom_node.store import deliveries as deliveries_mod
from dicom_node.store import instances as instances_mod
from dicom_node.store import jobs as jobs_mod
from dicom_node.store import nodes as nodes_mod
from dicom_node.store import results as results_mod
from dicom_node.store.dialect import group_concat, json_text

T0 = 1_700_000_000.0
STUDY_A, STUDY_B = "1.2.3.100", "1.2.3.200"
SERIES_A, SERIES_B = "1.2.3.100.1", "1.2.3.200.1"
CR, DX, SC = "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.7"
TS = "1.2.840.10008.1.2.1"


class Clock:
    """``time`` for the store's modules: ``time()`` steps one second a call, the rest is the real module."""

    def __init__(self) -> None:
        self.now = T0

    def time(self) -> float:
        self.now += 1.0
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(real_time, name)


def _instance(uid: str, study: str, series: str, modality: str, ae: str, size: int) -> InstanceRow:
    return InstanceRow(uid, CR if modality == "CR" else DX, study, series, modality, TS, f"/spool/{uid}.dcm",
                       size, ae, "10.0.0.9")


def _index_row(uid: str, study: str, series: str, sop_class: str, origin: str, **attrs: str) -> dict[str, Any]:
    return {"sop_instance_uid": uid, "study_instance_uid": study, "series_instance_uid": series,
            "sop_class_uid": sop_class, "transfer_syntax_uid": TS, "path": f"/nowhere/{uid}.dcm", "origin": origin,
            "attributes": json.dumps(attrs)}


@pytest.fixture
def filled(database: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    clock = Clock()
    for module in (audit_mod, deliveries_mod, instances_mod, jobs_mod, nodes_mod, results_mod):
        monkeypatch.setattr(module, "time", clock)
    store = Store(database)
    # study A: three CR/DX images from two senders; study B: one DX image
    rows = [_instance("1.1", STUDY_A, SERIES_A, "CR", "MODALITY_A", 1000),          # t+1
            _instance("1.2", STUDY_A, SERIES_A, "DX", "MODALITY_B", 3_000_000_000),  # t+2: over 2 GiB
            _instance("1.3", STUDY_A, SERIES_A, "CR", "MODALITY_A", 500),           # t+3
            _instance("2.1", STUDY_B, SERIES_B, "DX", "MODALITY_B", 700)]           # t+4
    for r in rows:
        assert store.add_instance(r)
    box = {"x0": 1.0, "y0": 2.0, "x1": 30.0, "y1": 40.0, "label": "opacity"}
    store.record_analysis("1.1", "analysed", findings=[dict(box, score=0.9), dict(box, score=0.4)],
                          model_name="det", model_version="1.0",
                          timings_ms={"preprocess": 20.0, "inference": 80.0, "total": 100.0})       # t+5
    store.record_analysis("1.2", "analysed", findings=[], model_name="det", model_version="1.0",
                          timings_ms={"preprocess": 100.0, "inference": 1400.0, "total": 1500.0})   # t+6
    store.record_analysis("1.3", "skipped", reason="not a chest film")                             # t+7
    store.record_analysis("2.1", "analysed", findings=[dict(box, score=0.7)], model_name="det",
                          model_version="1.1",
                          timings_ms={"preprocess": 10.0, "inference": 30.0, "total": 40.0})        # t+8
    store.add_results("1.1", STUDY_A, [
        {"sop_instance_uid": "9.1.sr", "kind": "sr", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.22",
         "path": "/outbox/9.1.sr.dcm"},
        {"sop_instance_uid": "9.1.sc", "kind": "sc", "sop_class_uid": SC, "path": "/outbox/9.1.sc.dcm"},
    ], ["PACS", "VIEWER"], max_attempts=3)                                                          # t+9
    store.add_results("2.1", STUDY_B, [
        {"sop_instance_uid": "9.2.sc", "kind": "sc", "sop_class_uid": SC, "path": "/outbox/9.2.sc.dcm"},
    ], ["PACS"], max_attempts=3)                                                                    # t+10
    store.set_delivery("9.1.sr", "PACS", "delivered", attempts=1, peer_ae="PACS", peer_host="10.0.0.2")  # t+11
    store.set_delivery("9.1.sc", "PACS", "retrying", attempts=2, peer_ae="PACS", peer_host="10.0.0.2",
                       error="timeout")                                                                 # t+12
    store.set_delivery("9.1.sr", "VIEWER", "failed", attempts=3, peer_ae="VIEW", peer_host="10.0.0.3",
                       error="refused")                                                                 # t+13
    store.set_echo("PACS", True, None)                                                                  # t+14
    store.set_echo("VIEWER", False, "connection refused")                                               # t+15
    store.audit("association", peer_ae="MODALITY_A", peer_host="10.0.0.9", outcome="released",
                detail={"instances": 2, "bytes": 1500, "seconds": 1.5})                                # t+16
    store.audit("association", peer_ae="MODALITY_B", peer_host="10.0.0.9", outcome="aborted",
                detail={"instances": 1})                                                               # t+17
    store.audit("association", peer_ae="STRANGER", peer_host="10.0.0.66", outcome="rejected",
                detail={"reason": "calling AE not allowed", "called_ae": "NODE"})                      # t+18
    store.audit("stow", peer_host="10.0.0.5", outcome="stored", detail={"instances": 1})               # t+19
    store.audit("association", peer_ae="MODALITY_A", peer_host="10.0.0.9", outcome="released")         # t+20
    store.beat("host-a:1", host="host-a", pid=1, ae_title="NODE", roles=["receive", "analyse"], version="1",
               started_at=T0, model={"state": "loading"})                                              # t+21
    store.beat("host-b:2", host="host-b", pid=2, ae_title="NODE", roles=["deliver"], version="1",
               started_at=T0 + 5, model={"state": "not used"})                                         # t+22
    store.node_stopped("host-b:2", {"state": "stopped"})                                                # t+23
    assert not store.add_instance(rows[0])  # a duplicate changes nothing                                # t+24
    store.node_model("host-a:1", {"state": "ready", "version": "1.1"})
    # the DICOMweb index, as dicom_node.dicomweb.index writes it (results last, as unindexed gives them)
    store.put_index([
        _index_row("2.1", STUDY_B, SERIES_B, DX, "received", Modality="DX", PatientName="Doe^Jane",
                   StudyDate="20240102"),
        _index_row("1.3", STUDY_A, SERIES_A, CR, "received", Modality="CR", PatientName="Roe^Rick",
                   StudyDate="20240101", InstanceNumber="3"),
        _index_row("1.1", STUDY_A, SERIES_A, CR, "received", Modality="CR", PatientName="Roe^Rick",
                   StudyDate="20240101", InstanceNumber="1"),
        _index_row("1.2", STUDY_A, SERIES_A, DX, "received", Modality="DX", PatientName="Roe^Rick",
                   StudyDate="20240101", InstanceNumber="2"),
        _index_row("9.2.sc", STUDY_B, "1.2.3.200.99", SC, "result", Modality="OT"),
        _index_row("9.1.sc", STUDY_A, "1.2.3.100.99", SC, "result", Modality="OT"),
        _index_row("9.1.sr", STUDY_A, "1.2.3.100.98", "1.2.840.10008.5.1.4.1.1.88.22", "result", Modality="SR"),
    ])
    cfg = Config.model_validate({
        "storage": {"dir": str(tmp_path / "var"), "database": database if database.startswith("postgres") else None},
        "destinations": [{"name": "PACS", "ae_title": "PACS", "host": "10.0.0.2", "port": 104},
                         {"name": "VIEWER", "ae_title": "VIEW", "host": "10.0.0.3", "port": 11112},
                         {"name": "ARCHIVE", "ae_title": "ARCH", "host": "10.0.0.4", "port": 104}],
    })
    if not database.startswith("postgres"):  # the SQLite file where the config says it is
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={"dir": Path(database).parent})})
        assert cfg.database == database
    yield store, cfg
    store.close()


def test_dialect_fragments_per_engine() -> None:
    assert group_concat("sqlite", "modality", distinct=True) == "GROUP_CONCAT(DISTINCT modality)"
    assert group_concat("postgresql", "modality", distinct=True) == "string_agg(DISTINCT CAST(modality AS TEXT), ',')"
    assert json_text("sqlite", "a.detail", "result_uid") == "json_extract(a.detail, '$.result_uid')"
    assert json_text("postgresql", "a.detail", "result_uid") == "(CAST(a.detail AS json) ->> 'result_uid')"
    with pytest.raises(ValueError):
        json_text("sqlite", "detail", "x') OR ('1")
    with pytest.raises(ValueError):
        group_concat("mysql", "x")


def test_admin_queries(filled: Any) -> None:
    store, _ = filled
    studies = queries.recent_studies(store, limit=10, thumbs=4)
    assert [s["study_instance_uid"] for s in studies] == [STUDY_B, STUDY_A]  # newest first
    b, a = studies
    assert a == {
        "study_instance_uid": STUDY_A, "instances": 3, "first_received_at": T0 + 1, "last_received_at": T0 + 3,
        "senders": ["MODALITY_A", "MODALITY_B"], "modalities": "CR,DX",
        "outcomes": {"analysed": 2, "skipped": 1}, "findings": 2, "max_score": 0.9,
        "overlays": [{"sop_instance_uid": "1.1", "n_findings": 2}], "overlay_count": 1,
    }
    assert b["senders"] == ["MODALITY_B"] and b["modalities"] == "DX" and b["findings"] == 1
    assert b["outcomes"] == {"analysed": 1} and b["max_score"] == 0.7
    assert [s["study_instance_uid"] for s in queries.recent_studies(store, limit=1)] == [STUDY_B]
    assert queries.study_count(store) == 2
    assert queries.overlay(store, "1.1") == ("9.1.sc", "/outbox/9.1.sc.dcm")
    assert queries.overlay(store, "1.2") is None

    assoc = queries.recent_associations(store, 10)
    assert [(r["event"], r["outcome"]) for r in assoc] == [
        ("association", "released"), ("stow", "stored"), ("association", "rejected"), ("association", "aborted"),
        ("association", "released"), ("delivery", "failed"), ("delivery", "retrying"), ("delivery", "delivered")]
    assert assoc[0]["detail"] == {} and assoc[4]["detail"] == {"instances": 2, "bytes": 1500, "seconds": 1.5}
    assert [r["id"] for r in queries.recent_associations(store, 10, after_id=assoc[2]["id"])] == [
        assoc[0]["id"], assoc[1]["id"]]
    assert queries.association_outcomes(store) == {"released": 2, "aborted": 1, "rejected": 1}

    by_dest = queries.deliveries_by_destination(store)
    assert by_dest == [
        {"destination": "PACS", "state": "delivered", "n": 1, "attempts": 1},
        {"destination": "PACS", "state": "queued", "n": 1, "attempts": 0},
        {"destination": "PACS", "state": "retrying", "n": 1, "attempts": 2},
        {"destination": "VIEWER", "state": "failed", "n": 1, "attempts": 3},
        {"destination": "VIEWER", "state": "queued", "n": 1, "attempts": 0},
    ]
    assert all(type(r["attempts"]) is int and type(r["n"]) is int for r in by_dest)  # not Decimal

    peers = queries.peer_status(store)
    assert list(peers) == ["PACS", "VIEWER"]
    assert peers["PACS"] == {"name": "PACS", "last_echo_at": T0 + 14, "last_echo_ok": 1, "last_echo_error": None,
                             "last_delivery_at": T0 + 12, "last_delivery_ok": 0}
    assert peers["VIEWER"]["last_echo_ok"] == 0 and peers["VIEWER"]["last_echo_error"] == "connection refused"
    assert queries.latest_model(store) == {"model_name": "det", "model_version": "1.1", "analysed_at": T0 + 8}

    buckets, count, total_s = queries.latency_histogram(store, "total_ms")
    assert count == 3 and total_s == pytest.approx(1.64)
    assert dict(buckets) == {0.05: 1, 0.1: 2, 0.25: 2, 0.5: 2, 1.0: 2, 2.5: 3, 5.0: 3, 10.0: 3, 30.0: 3,
                             60.0: 3, 120.0: 3}
    assert all(type(n) is int for _, n in buckets) and type(total_s) is float
    buckets, count, total_s = queries.latency_histogram(store, "inference_ms", (0.05, 1.0))
    assert buckets == [(0.05, 1), (1.0, 2)] and count == 3 and total_s == pytest.approx(1.51)
    with pytest.raises(ValueError):
        queries.latency_histogram(store, "analysed_at")


def test_store_status_and_node_status(filled: Any) -> None:
    store, cfg = filled
    st = store.status()
    assert st["instances"] == 4 and st["bytes"] == 3_000_002_200 and type(st["bytes"]) is int
    assert st["last_received_at"] == T0 + 4
    assert st["jobs_by_kind"]["analyse"]["queued"] == 4 and st["jobs_by_kind"]["deliver"]["queued"] == 5
    for data in (node_status(cfg, store), node_status(cfg)):  # the node's store, or one of its own
        assert data["instances"] == 4 and data["bytes"] == 3_000_002_200
        assert data["model"] == {"state": "ready", "version": "1.1"}
        assert [(n["id"], n["roles"], n["state"], n["model"]["state"]) for n in data["nodes"]] == [
            ("host-b:2", ["deliver"], "stopped", "stopped"), ("host-a:1", ["receive", "analyse"], "alive", "ready")]
        assert [(d["name"], d["last_echo_ok"], d["last_echo_at"], d["last_delivery_ok"], d["last_delivery_at"])
                for d in data["destinations"]] == [
            ("PACS", 1, T0 + 14, 0, T0 + 12), ("VIEWER", 0, T0 + 15, 0, T0 + 13), ("ARCHIVE", None, None, None, None)]


def test_logs_audit_rows(filled: Any) -> None:
    store, _ = filled
    rows = audit_rows(store, None)
    assert [r["at"] for r in rows] == [T0 + t for t in (11, 12, 13, 16, 17, 18, 19, 20)]  # oldest first
    deliveries = [r for r in rows if r["event"] == "delivery"]
    assert [(r["result_uid"], r["destination"], r["outcome"], r["kind"], r["sop_instance_uid"], r["attempts"],
             r["error"]) for r in deliveries] == [
        ("9.1.sr", "PACS", "delivered", "sr", "1.1", 1, None),
        ("9.1.sc", "PACS", "retrying", "sc", "1.1", 2, "timeout"),
        ("9.1.sr", "VIEWER", "failed", "sr", "1.1", 3, "refused")]
    assert rows[3] == {"id": rows[3]["id"], "time": "2023-11-14T22:13:36.000Z", "at": T0 + 16,
                       "event": "association", "peer_ae": "MODALITY_A", "peer_host": "10.0.0.9",
                       "outcome": "released", "instances": 2, "bytes": 1500, "seconds": 1.5}
    assert "kind" not in rows[6] and rows[6]["event"] == "stow"  # only deliveries are joined to results
    since = audit_rows(store, None, after_id=rows[5]["id"])
    assert [r["at"] for r in since] == [T0 + 19, T0 + 20]
    from datetime import UTC, datetime
    assert [r["at"] for r in audit_rows(store, datetime.fromtimestamp(T0 + 18, UTC))] == [T0 + 18, T0 + 19, T0 + 20]


def test_deliveries_command(filled: Any, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicom_node.cli import app

    _, cfg = filled
    path = tmp_path / "node.yaml"
    storage: dict[str, Any] = {"dir": str(cfg.storage.dir)}
    if cfg.storage.database is not None:
        storage["database"] = cfg.storage.database.get_secret_value()
    path.write_text(json.dumps({"storage": storage}))  # YAML reads JSON
    out = CliRunner().invoke(app, ["deliveries", "--config", str(path), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["by_state"] == [
        {"destination": "PACS", "state": "delivered", "n": 1}, {"destination": "PACS", "state": "queued", "n": 1},
        {"destination": "PACS", "state": "retrying", "n": 1}, {"destination": "VIEWER", "state": "failed", "n": 1},
        {"destination": "VIEWER", "state": "queued", "n": 1}]
    assert data["parked"] == [{"result_uid": "9.1.sr", "destination": "VIEWER", "attempts": 3, "error": "refused"}]


def test_qido_search_and_index_order(filled: Any) -> None:
    store, _ = filled
    # oldest first: by when each object was received or made, whatever order it was indexed in
    assert [r["sop_instance_uid"] for r in index.objects(store)] == ["1.1", "1.2", "1.3", "2.1", "9.1.sc",
                                                                     "9.1.sr", "9.2.sc"]
    assert [r["sop_instance_uid"] for r in index.objects(store, study=STUDY_A, series=SERIES_A)] == [
        "1.1", "1.2", "1.3"]
    assert index.objects(store, instance="1.2")[0]["attributes"]["Modality"] == "DX"
    base = "http://node/dicom-web"

    def search(level: Any, params: list[tuple[str, str]], **kw: Any) -> list[dict[str, Any]]:
        return qido.search(store, qido.parse_query(level, params), base, **kw)

    found = search("study", [])
    assert [s["0020000D"]["Value"] for s in found] == [[STUDY_A], [STUDY_B]]
    assert found[0]["00080061"]["Value"] == ["CR", "DX", "OT", "SR"]  # ModalitiesInStudy
    assert found[0]["00201208"]["Value"] == [5] and found[0]["00201206"]["Value"] == [3]
    assert found[0]["00100010"]["Value"] == [{"Alphabetic": "Roe^Rick"}]  # a received image stands for it
    assert [s["0020000D"]["Value"] for s in search("study", [("PatientName", "doe*")])] == [[STUDY_B]]
    assert [s["0020000D"]["Value"] for s in search("study", [("ModalitiesInStudy", "CR")])] == [[STUDY_A]]
    assert [s["0020000D"]["Value"] for s in search("study", [("StudyDate", "20240102-")])] == [[STUDY_B]]
    assert [s["0020000D"]["Value"] for s in search("study", [("limit", "1"), ("offset", "1")])] == [[STUDY_B]]
    series = search("series", [], study=STUDY_A)
    assert [s["0020000E"]["Value"] for s in series] == [[SERIES_A], ["1.2.3.100.99"], ["1.2.3.100.98"]]
    assert series[0]["00201209"]["Value"] == [3]
    inst = search("instance", [], study=STUDY_A, series=SERIES_A)
    assert [i["00080018"]["Value"] for i in inst] == [["1.1"], ["1.2"], ["1.3"]]
    assert [i["00080018"]["Value"] for i in search("instance", [("Modality", "CR")], study=STUDY_A)] == [
        ["1.1"], ["1.3"]]
