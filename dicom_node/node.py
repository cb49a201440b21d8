"""Composition root: builds the store, spool, receiver, workers and schedules from one Config.

``Node(cfg).serve()`` is what ``dicom-node serve`` runs. SIGTERM or SIGINT stops it gracefully: the
listener closes, in-flight C-STOREs finish, running jobs finish or are released for the next start.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from pydicom.uid import generate_uid

from dicom_node import __version__
from dicom_node.config import Config
from dicom_node.delivery import Delivery, echo_destinations
from dicom_node.ingest import Ingest
from dicom_node.pipeline import DetectStep, ResultsStep, build_steps
from dicom_node.results import NodeIdentity
from dicom_node.scp import Receiver
from dicom_node.spool import Spool
from dicom_node.store import Store
from dicom_node.store.leader import Leadership
from dicom_node.store.listen import JobListener
from dicom_node.store.nodes import BEAT_S
from dicom_node.storelock import StorageLock
from dicom_node.worker import Analysis, StepFn, WorkerPool
from models import SHIPPED_WEIGHTS
from twin import jobs as twin_jobs
from twin.store import TwinStore

if TYPE_CHECKING:
    from dicom_node.admin import AdminServer
    from dicom_node.dicomweb.server import DicomWebServer

PEER_ECHO_EVERY_S = 300.0

log = logging.getLogger("dicom_node.node")


class Node:
    """One running node. Build it, ``start()`` it, ``stop()`` it; or ``serve()`` until a signal."""

    def __init__(self, cfg: Config, *, steps: Sequence[StepFn] | None = None) -> None:
        self.cfg = cfg
        roles = set(cfg.node.roles)
        analyse_threads = cfg.worker.threads if "analyse" in roles else 0
        weights = cfg.model.weights or SHIPPED_WEIGHTS
        if analyse_threads > 0 and not weights.is_file():  # a receive-only node needs no model
            raise ValueError(f"model.weights: no such file {weights}")
        cfg.storage.dir.mkdir(parents=True, exist_ok=True)
        # Embedded (SQLite): one node per storage folder. On PostgreSQL the nodes share the database
        # and the spool (docs/cluster.md), so none owns them alone.
        self.shared = cfg.storage.database is not None
        self.lock = None if self.shared else StorageLock(cfg.storage.dir / "node.lock")
        self.store = Store(cfg.database)
        if not self.shared:
            # We own the database alone, so what is still running was cut by our predecessor's death;
            # in a cluster a dead node's jobs come back when their heartbeat lease runs out.
            orphans = self.store.take_back_orphans(["analyse", "deliver"])
            if orphans:
                log.info("jobs of a stopped or killed predecessor taken back", extra={"jobs": orphans})
        self.spool = Spool(cfg.spool_dir, shared=self.shared)  # shared: spare the other nodes' files in flight
        swept = self.spool.sweep()
        if swept:
            log.info("removed partial files left by an earlier stop", extra={"files": swept})
        self.outbox = Spool(cfg.outbox_dir, shared=self.shared)
        self.outbox.sweep()
        self.device_uid = self.store.set_meta_once("node_device_uid", generate_uid())
        self.identity = NodeIdentity(ae_title=cfg.node.ae_title, device_uid=self.device_uid)
        self.twin = TwinStore(self.store.conn, thresholds=cfg.twin.thresholds(),
                              max_clock_skew_s=cfg.twin.max_clock_skew_s)
        if steps is None:
            steps = build_steps(cfg, self.store, self.outbox, self.identity, self.twin)
        self.detect = next((s for s in steps if isinstance(s, DetectStep)), None)
        self.results = next((s for s in steps if isinstance(s, ResultsStep)), None)
        self.analysis = WorkerPool(
            self.store, "analyse", ["analyse"], Analysis(self.store, list(steps)),
            threads=analyse_threads, batch_size=cfg.worker.batch_size, lease_s=cfg.worker.lease_s,
        )
        self.delivery = WorkerPool(
            self.store, "deliver", ["deliver"], Delivery(cfg, self.store),
            threads=1 if cfg.destinations and "deliver" in roles else 0, batch_size=16, lease_s=cfg.delivery.lease_s,
        )
        if self.results is not None and self.results.on_queued is None:
            self.results.on_queued = self.delivery.wake  # results go out when queued, not a poll later
        self.scheduler = BackgroundScheduler(timezone="UTC")
        if "schedule" in roles:
            twin_jobs.register(self.scheduler, self.twin, cfg.twin.sidecar_dir, cfg.twin.sidecar_poll_s,
                               cfg.twin.evaluate_every_s, cfg.twin.retention_days)
        if cfg.destinations and "schedule" in roles:
            self.scheduler.add_job(echo_destinations, "interval", args=(cfg, self.store), id="peer-echo",
                                   seconds=PEER_ECHO_EVERY_S, max_instances=1, coalesce=True,
                                   next_run_time=_now())
        if self.shared and "schedule" in roles:
            # A killed node's temporaries and uncommitted files stay on a shared spool (a start-up
            # sweep spares what may be another node's in flight): the leading node sweeps them.
            self.scheduler.add_job(self.sweep_shared_spool, "interval", id="spool-sweep", max_instances=1,
                                   coalesce=True, seconds=cfg.storage.shared_sweep_every_s)
        # Other nodes' queued jobs wake this node's idle workers at once (PostgreSQL LISTEN/NOTIFY).
        pools = {"analyse": self.analysis, "deliver": self.delivery}
        self.listener = JobListener(cfg.database, lambda kind: pools[kind].wake() if kind in pools else None) \
            if self.shared else None
        # Cluster-wide: on one node at a time, the holder of the schedules' advisory lock.
        self.leadership = Leadership(cfg.database if self.shared else None)
        for job in self.scheduler.get_jobs():
            self.scheduler.modify_job(job.id, func=_when_leading(self.leadership, job.func))
        self.ingest = Ingest(
            self.store, self.spool,
            min_free_bytes=cfg.storage.min_free_mb * 2**20,
            max_instance_bytes=cfg.storage.max_instance_mb * 2**20,
            max_attempts=cfg.worker.max_attempts,
            on_stored=self.analysis.wake,
        )
        self.receiver = Receiver(cfg, self.store, self.ingest) if "receive" in roles else None
        self.admin: AdminServer | None = None
        if cfg.admin.enabled and "admin" in roles:
            from dicom_node.admin import AdminServer  # FastAPI and uvicorn load only when the console is on

            self.admin = AdminServer(self)
        self.dicomweb: DicomWebServer | None = None
        if cfg.dicomweb.enabled and "receive" in roles:  # STOW-RS is a second front door
            from dicom_node.dicomweb.server import DicomWebServer  # loads FastAPI when DICOMweb is on

            self.dicomweb = DicomWebServer(self)
        self.address: tuple[str, int] | None = None
        self._stopped = threading.Event()
        self._warm: threading.Thread | None = None
        self.node_id = f"{socket.gethostname()}:{os.getpid()}"
        self._beat = threading.Thread(target=self._beat_loop, name="node-beat", daemon=True)
        self._listed = False  # this process's row is in ``nodes``
        self._started_at = time.time()
        #: this process's model: loading, ready, failed, not used or stopped; in its ``nodes`` row
        self.model_state: dict[str, Any] = {"state": "unknown"}

    def start(self) -> None:
        warm = self.detect is not None and self.analysis.threads > 0
        self.model_state = {"state": "loading" if warm else "not used", "since": time.time()}
        self._beat_once()  # listed, with its model's state, before the receiver listens: status is never stale
        self.analysis.start()
        self.delivery.start()
        if self.listener is not None:
            self.listener.start()
        try:  # each listener's OSError names its own address
            if self.receiver is not None:
                self.address = self.receiver.start()
            if self.admin is not None:
                self.admin.start()
            if self.dicomweb is not None:
                self.dicomweb.start()
        except OSError:
            self.stop(grace_s=0)
            raise
        if warm and self.detect is not None:
            # The model loads and warms beside the receiver: it listens at once, the first study waits less.
            self._warm = threading.Thread(target=self._warm_up, name="model-warm", daemon=True)
            self._warm.start()
        self.scheduler.start()
        self._beat.start()
        host, port = self.address or (None, None)
        log.info("node serving", extra={"ae_title": self.cfg.node.ae_title, "host": host, "port": port,
                                        "roles": self.cfg.node.roles, "storage": str(self.cfg.storage.dir),
                                        "version": __version__})

    def sweep_shared_spool(self) -> dict[str, int]:
        """Remove what killed nodes left on the shared spool and outbox, untouched for
        :data:`~dicom_node.spool.SHARED_IDLE_S`: temporaries, and instance files with no row."""
        swept = {"temporaries": self.spool.sweep() + self.outbox.sweep(),
                 "orphans": self.spool.sweep_orphans(self.store.has_instance)}
        if any(swept.values()):
            log.info("swept files left on the shared spool by stopped or killed nodes", extra=swept)
        return swept

    def _beat_once(self) -> None:
        self.store.beat(self.node_id, host=socket.gethostname(), pid=os.getpid(), ae_title=self.cfg.node.ae_title,
                        roles=self.cfg.node.roles, version=__version__, started_at=self._started_at,
                        model=self.model_state)
        self._listed = True

    def _beat_loop(self) -> None:
        """Every BEAT_S, this process's row in ``nodes`` (dicom-node status lists every node)."""
        while not self._stopped.wait(BEAT_S):
            try:
                self._beat_once()
            except Exception:  # a locked or briefly unreachable database: the next beat tries again
                log.warning("node heartbeat not recorded; trying again", exc_info=True)

    def _warm_up(self) -> None:
        """Warm the result builders, then load and warm the model, one after the other.

        Before the model, not beside it: no study can be analysed before the model is ready, so the
        first one's results never find the builders half-warm, loading the same tables again beside
        this thread (the interpreter's lock would run the two one after the other anyway).
        """
        if self.results is not None:
            self.results.warm()
        if self.detect is not None:
            self.model_state = self.detect.warm()
            self.store.node_model(self.node_id, self.model_state)

    def stop(self, grace_s: float = 30.0) -> None:
        """Graceful stop; safe to call twice."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        aborted = self.receiver.stop(grace_s) if self.receiver is not None else 0
        if self.dicomweb is not None:  # the second front door closes with the first, its requests finished
            self.dicomweb.stop()
        if self.scheduler.running:
            # Wait for a twin job that is running: it uses its own store connection, which close()
            # below must not pull from under it (a closed sqlite3 connection in use crashes the process).
            self.scheduler.shutdown(wait=True)
        released = self.analysis.stop(grace_s) + self.delivery.stop(grace_s)
        if self._warm is not None:  # an interpreter must not exit while a thread is still importing torch
            self._warm.join(max(grace_s, 30.0))
        if self.admin is not None:
            self.admin.stop()
        self.leadership.close()
        if self.listener is not None:
            self.listener.stop()
        if self._beat.ident is not None:  # started: it ends at _stopped
            self._beat.join(BEAT_S + 1.0)
        self.model_state = {"state": "stopped", "since": time.time()}
        if self._listed:  # the row says stopped, not gone three beats later
            self.store.node_stopped(self.node_id, self.model_state)
        log.info("node stopped", extra={"associations_aborted": aborted, "jobs_released": released})
        self.store.close()
        if self.lock is not None:
            self.lock.release()

    def serve(self) -> None:
        """Run until SIGTERM or SIGINT (the main thread waits; handlers only set a flag)."""
        done = threading.Event()

        def _signal(signum: int, _frame: Any) -> None:
            log.info("stop requested", extra={"signal": signal.Signals(signum).name})
            done.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        try:
            while not done.wait(1.0):
                pass
        finally:
            self.stop()


def _when_leading(leadership: Leadership, fn: Any) -> Any:
    """``fn`` run only while this node leads the cluster-wide schedules."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs) if leadership.leads() else None

    return run


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC)
