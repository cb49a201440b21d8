"""The twin's periodic jobs inside the node: sidecar intake, health evaluation, retention.

The node owns the scheduler (and adds its own peer-echo job); this module only adds jobs. Each job
runs on a scheduler worker thread and asks the store for that thread's connection; a failing run
is logged and the next run tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from pathlib import Path
from typing import Any

from apscheduler.schedulers.base import BaseScheduler

from twin.store import TwinStore

log = logging.getLogger(__name__)

JOB_IDS = ("twin-sidecar", "twin-evaluate", "twin-retention")
RETENTION_EVERY_H = 6.0


def _guarded(name: str, fn: Callable[[], Any]) -> Callable[[], None]:
    @wraps(fn)
    def run() -> None:
        try:
            fn()
        except Exception:
            log.exception("twin: %s job failed; it runs again at its next time", name)

    return run


def register(
    scheduler: BaseScheduler,
    store: TwinStore,
    sidecar_dir: Path,
    sidecar_poll_s: float,
    evaluate_every_s: float,
    retention_days: int,
) -> list[str]:
    """Add the twin's jobs (config: twin.sidecar_dir, sidecar_poll_s, evaluate_every_s,
    retention_days); returns their ids. Each job runs one at a time and missed runs coalesce."""
    now = datetime.now(UTC)
    common: dict[str, Any] = {"max_instances": 1, "coalesce": True, "replace_existing": True}
    scheduler.add_job(
        _guarded("sidecar intake", lambda: store.ingest_sidecar(Path(sidecar_dir))),
        "interval",
        seconds=sidecar_poll_s,
        id=JOB_IDS[0],
        name="twin sidecar intake",
        next_run_time=now,
        **common,
    )
    scheduler.add_job(
        _guarded("health evaluation", store.evaluate),
        "interval",
        seconds=evaluate_every_s,
        id=JOB_IDS[1],
        name="twin health evaluation",
        next_run_time=now + timedelta(seconds=min(5.0, evaluate_every_s)),
        **common,
    )
    scheduler.add_job(
        _guarded("retention", lambda: store.apply_retention(retention_days)),
        "interval",
        hours=RETENTION_EVERY_H,
        id=JOB_IDS[2],
        name="twin retention",
        next_run_time=now + timedelta(minutes=1),
        **common,
    )
    return list(JOB_IDS)
