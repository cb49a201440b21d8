"""Workers that drain the job queue, and the analysis pipeline they run for each received instance.

:class:`WorkerPool` is the generic part: threads that lease jobs of some kinds from the store in
batches, hand them to a handler, and record each job's end (done, skipped, failed, or back to the
queue after a delay). A handler that raises puts its jobs back with back-off until their attempts are
spent. A heartbeat thread renews the pool's leases while it works, so a lease is short (seconds) and
the jobs of a crashed process are taken again soon after, however long a job runs.

:class:`Analysis` is the handler for ``analyse`` jobs: the steps of ARCHITECTURE.md, each idempotent,
so doing one twice after a crash changes nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.ingest import read_header
from dicom_node.store import Job, Store

log = logging.getLogger("dicom_node.worker")


@dataclass(frozen=True)
class Outcome:
    """How one job ended. ``retry`` puts it back in the queue after ``delay_s``."""

    state: Literal["done", "skipped", "failed", "retry"]
    detail: str | None = None
    delay_s: float = 0.0


Handler = Callable[[Sequence[Job]], dict[int, Outcome]]


class WorkerPool:
    """``threads`` workers leasing up to ``batch_size`` jobs of ``kinds`` at a time."""

    def __init__(self, store: Store, name: str, kinds: Sequence[str], handler: Handler, *,
                 threads: int = 1, batch_size: int = 1, lease_s: float = 15.0, poll_s: float = 1.0,
                 retry_backoff_s: float = 5.0) -> None:
        self.store = store
        self.kinds = tuple(kinds)
        self.handler = handler
        self.threads = threads
        self.batch_size = batch_size
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.retry_backoff_s = retry_backoff_s
        # Unique per process start, so a restarted node never mistakes an old lease for its own.
        self.prefix = f"{name}:{os.getpid()}:{int(time.time() * 1000)}:"
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._pending_wake = False
        self._threads: list[threading.Thread] = []
        self.busy = 0

    def start(self) -> None:
        if self.threads > 0:
            beat = threading.Thread(target=self._heartbeat, name=f"{self.prefix}heartbeat", daemon=True)
            beat.start()
            self._threads.append(beat)
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(f"{self.prefix}{i}",), name=f"{self.prefix}{i}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def wake(self) -> None:
        """Tell idle workers that a job was queued (they also poll every ``poll_s``)."""
        with self._wake:
            self._pending_wake = True
            self._wake.notify_all()

    def stop(self, grace_s: float = 30.0) -> int:
        """Let running batches finish for up to ``grace_s``, then give back what is still leased."""
        self._stop.set()
        self.wake()
        deadline = time.monotonic() + grace_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        released = self.store.release(self.prefix)
        if released:
            log.info("running jobs released", extra={"jobs": released, "pool": self.kinds[0]})
        self._threads.clear()
        return released

    def run_once(self, worker: str | None = None) -> int:
        """Lease and handle one batch in the calling thread; returns how many jobs it took."""
        worker = worker or f"{self.prefix}x"
        jobs = self.store.lease(self.kinds, worker, limit=self.batch_size, lease_s=self.lease_s)
        if not jobs:
            return 0
        self.busy += 1
        try:
            try:
                outcomes = self.handler(jobs)
            except Exception as exc:
                log.error("handler failed", extra={"jobs": len(jobs), "error": _short(exc)})
                outcomes = {j.id: Outcome("retry", _short(exc), self.retry_backoff_s * j.attempts) for j in jobs}
            for job in jobs:
                self._finish(job, outcomes.get(job.id, Outcome("failed", "handler gave no outcome")))
        finally:
            self.busy -= 1
        return len(jobs)

    def _finish(self, job: Job, outcome: Outcome) -> None:
        if outcome.state == "retry":
            if job.attempts >= job.max_attempts:
                self.store.finish(job, "failed", error=outcome.detail)
            else:
                self.store.retry_later(job, outcome.delay_s, outcome.detail or "retry")
            return
        error = outcome.detail if outcome.state == "failed" else None
        detail = outcome.detail if outcome.state != "failed" else None
        self.store.finish(job, outcome.state, error=error, detail=detail)

    def _heartbeat(self) -> None:
        """Renew this pool's leases every third of ``lease_s`` while it runs (see :meth:`Store.renew`)."""
        every = max(0.2, self.lease_s / 3.0)
        while not self._stop.wait(every):
            try:
                self.store.renew(self.prefix, self.lease_s)
            except Exception:  # a database hiccup: the next beat tries again, well within the lease
                log.error("lease heartbeat failed", extra={"error": traceback.format_exc(limit=2)})

    def _run(self, worker: str) -> None:
        while not self._stop.is_set():
            try:
                took = self.run_once(worker)
            except Exception:  # a database hiccup must not kill the worker thread
                log.error("worker loop error", extra={"error": traceback.format_exc(limit=2)})
                took = 0
            if took == 0:
                with self._wake:
                    if not self._pending_wake:
                        self._wake.wait(self.poll_s)
                    self._pending_wake = False


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


@dataclass
class Item:
    """One received instance in an analysis batch: its job, its stored row and its header."""

    job: Job
    row: dict[str, Any]
    header: Dataset
    dataset: Dataset | None = None  # the whole instance, once a step has read its pixels
    detections: list[Any] = field(default_factory=list)
    opacity_probability: float | None = None
    assumptions: tuple[Any, ...] = ()  # what routing assumed for it (dicom_node.results.Assumption)
    timings: dict[str, float] = field(default_factory=dict)


StepFn = Callable[[Sequence[Item]], dict[int, Outcome]]


class Analysis:
    """Handler of ``analyse`` jobs: reads each instance's header once, then runs the steps in order.

    A step returns an outcome per job id (absent means done); a job leaves the batch at its first
    outcome other than done, with that outcome as its end.
    """

    def __init__(self, store: Store, steps: Sequence[StepFn]) -> None:
        self.store = store
        self.steps = list(steps)

    def __call__(self, jobs: Sequence[Job]) -> dict[int, Outcome]:
        outcomes: dict[int, Outcome] = {}
        live: list[Item] = []
        for job in jobs:
            row = self.store.instance(job.ref)
            if row is None:
                outcomes[job.id] = Outcome("failed", "instance is not in the store")
                continue
            try:
                header = read_header(row["path"])  # bounded memory, a deflated instance too
            except (OSError, InvalidDicomError) as exc:
                outcomes[job.id] = Outcome("failed", f"spooled file unreadable: {_short(exc)}")
                continue
            live.append(Item(job, row, header))
        for step in self.steps:
            if not live:
                break
            result = step(live)
            still = []
            for item in live:
                out = result.get(item.job.id, Outcome("done"))
                if out.state == "done":
                    still.append(item)
                    if out.detail:
                        outcomes[item.job.id] = out
                else:
                    outcomes[item.job.id] = out
            live = still
        for item in live:
            outcomes.setdefault(item.job.id, Outcome("done"))
        return outcomes
