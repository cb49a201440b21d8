"""The twin's scheduled jobs, run by a real APScheduler BackgroundScheduler."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from twin_support import both_engines, event, make_ds, new_store, write_jsonl

from twin import jobs
from twin.db import one
from twin.store import TwinStore


def _stored_health(store: TwinStore) -> dict[str, Any] | None:
    return one(store._connect(), "SELECT * FROM twin_health")


@both_engines
def test_jobs_ingest_the_sidecar_and_evaluate(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    now = datetime.now(UTC)
    store.record_instance(make_ds("1.1", now, serial="SN-J"), received_at=now)
    side = tmp_path / "sidecar"
    write_jsonl(side / "a.jsonl", [event(now, "fault", serial="SN-J", code="E1")])
    scheduler = BackgroundScheduler(timezone="UTC")
    ids = jobs.register(scheduler, store, side, sidecar_poll_s=0.2, evaluate_every_s=0.2, retention_days=90)
    assert sorted(j.id for j in scheduler.get_jobs()) == sorted(ids)
    scheduler.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if store.devices()[0]["faults"] == 1 and _stored_health(store):
                break
            time.sleep(0.1)
        assert store.devices()[0]["faults"] == 1
        health = _stored_health(store)
        assert health is not None and health["status"] in ("OK", "WARN", "ALERT")
    finally:
        scheduler.shutdown(wait=True)
