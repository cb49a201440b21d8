"""``/metrics``: the node in Prometheus text format, read from the database at each scrape.

A custom collector rather than counters in memory: the store already counts everything durably, so
the figures are right after a restart and agree with ``dicom-node status``. Families (all prefixed
``dicom_node_``):

- ``instances_received_total``, ``received_bytes_total``: instances stored and their size
- ``associations_total{outcome="accepted|rejected"}``: from the audit trail plus the ones open now
- ``association_ends_total{outcome="released|aborted"}``, ``associations_active``
- ``jobs{kind,state}``: the queue (analyse, deliver) by state
- ``analysis_seconds``, ``inference_seconds``: histograms over analysed images
- ``deliveries{destination,state}``, ``delivery_attempts_total{destination}``
- ``destination_echo_ok{destination}``, ``destination_last_echo_timestamp_seconds{destination}``
- ``devices{status="OK|WARN|ALERT"}``: device-twin health
- ``model_info{name,version}``: the model behind the latest analysis
- ``info{version,ae_title}``, ``admin_start_time_seconds``
- ``admin_http_refused_total``, ``admin_http_timeouts_total``, ``admin_thumbnail_decodes_total``,
  ``admin_thumbnail_cache_bytes``: the console's own guards (:class:`AdminCollector`)
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dicom_node.admin import queries
from dicom_node.store import JOB_STATES

log = logging.getLogger("dicom_node.admin")

HEALTH_STATUSES = ("OK", "WARN", "ALERT")


class NodeCollector(Collector):
    """Collects every ``dicom_node_*`` family from the node's store, receiver and twin."""

    def __init__(self, node: Any, version: str = "", started_at: float | None = None) -> None:
        self.node = node
        self.version = version
        self.started_at = started_at or time.time()

    def collect(self) -> Iterator[Metric]:
        store = self.node.store
        status = store.status()
        yield from self._receiver(store, status)
        yield from self._queue(status)
        yield from self._latency(store)
        yield from self._deliveries(store)
        yield from self._devices()
        yield from self._model(store)

    def _receiver(self, store: Any, st: dict[str, Any]) -> Iterator[Metric]:
        yield CounterMetricFamily("dicom_node_instances_received", "Instances stored (each SOP Instance UID once)",
                                  value=st["instances"])
        yield CounterMetricFamily("dicom_node_received_bytes", "Bytes of the stored instances", value=st["bytes"])
        ends = queries.association_outcomes(store)
        active = active_associations(self.node)
        assoc = CounterMetricFamily("dicom_node_associations", "Associations requested, by outcome",
                                    labels=["outcome"])
        assoc.add_metric(["accepted"], ends.get("released", 0) + ends.get("aborted", 0) + active)
        assoc.add_metric(["rejected"], ends.get("rejected", 0))
        yield assoc
        closed = CounterMetricFamily("dicom_node_association_ends", "Accepted associations that ended, by how",
                                     labels=["outcome"])
        for outcome in ("released", "aborted"):
            closed.add_metric([outcome], ends.get(outcome, 0))
        yield closed
        yield GaugeMetricFamily("dicom_node_associations_active", "Associations open now", value=active)
        info = GaugeMetricFamily("dicom_node_info", "This node", labels=["version", "ae_title"])
        info.add_metric([self.version, self.node.cfg.node.ae_title], 1)
        yield info
        yield GaugeMetricFamily("dicom_node_admin_start_time_seconds", "When the admin server (and node) started",
                                value=self.started_at)

    def _queue(self, status: dict[str, Any]) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("dicom_node_jobs", "Jobs by kind and state (queue depth: state=queued)",
                                 labels=["kind", "state"])
        for kind, counts in sorted(status["jobs_by_kind"].items()):
            for state in JOB_STATES:
                jobs.add_metric([kind, state], counts.get(state, 0))
        yield jobs

    def _latency(self, store: Any) -> Iterator[Metric]:
        for name, column, what in (("dicom_node_analysis_seconds", "total_ms", "Preprocessing plus inference"),
                                   ("dicom_node_inference_seconds", "inference_ms", "Detector inference")):
            buckets, count, total = queries.latency_histogram(store, column)
            hist = HistogramMetricFamily(name, f"{what} per analysed image")
            hist.add_metric([], [(_le(b), n) for b, n in buckets] + [("+Inf", count)], sum_value=total)
            yield hist

    def _deliveries(self, store: Any) -> Iterator[Metric]:
        rows = queries.deliveries_by_destination(store)
        by_state = GaugeMetricFamily("dicom_node_deliveries", "Result deliveries by destination and state",
                                     labels=["destination", "state"])
        attempts: Counter[str] = Counter()
        for r in rows:
            by_state.add_metric([r["destination"], r["state"]], r["n"])
            attempts[r["destination"]] += r["attempts"]
        yield by_state
        tries = CounterMetricFamily("dicom_node_delivery_attempts", "C-STORE attempts of result deliveries",
                                    labels=["destination"])
        for dest, n in sorted(attempts.items()):
            tries.add_metric([dest], n)
        yield tries
        peers = queries.peer_status(store)
        ok = GaugeMetricFamily("dicom_node_destination_echo_ok", "1 when the last C-ECHO of a destination succeeded",
                               labels=["destination"])
        at = GaugeMetricFamily("dicom_node_destination_last_echo_timestamp_seconds",
                               "When a destination was last echoed", labels=["destination"])
        for d in self.node.cfg.destinations:
            p = peers.get(d.name, {})
            if p.get("last_echo_at") is not None:
                ok.add_metric([d.name], 1 if p.get("last_echo_ok") else 0)
                at.add_metric([d.name], p["last_echo_at"])
        yield ok
        yield at

    def _devices(self) -> Iterator[Metric]:
        health = GaugeMetricFamily("dicom_node_devices", "Devices of the twin by health status", labels=["status"])
        try:
            counts = Counter(d["health"]["status"] for d in self.node.twin.devices())
        except Exception:  # a scrape must not fail because one family could not be read
            log.exception("metrics: device health could not be read")
            return
        for status in HEALTH_STATUSES:
            health.add_metric([status], counts.get(status, 0))
        yield health

    def _model(self, store: Any) -> Iterator[Metric]:
        info = GaugeMetricFamily("dicom_node_model_info", "The model behind the latest analysis",
                                 labels=["name", "version"])
        model = queries.latest_model(store)
        if model:
            info.add_metric([model["model_name"] or "", model["model_version"] or ""], 1)
        yield info


def active_associations(node: Any) -> int:
    """Associations established right now on the node's receiver."""
    server = getattr(node.receiver, "server", None)
    if server is None:
        return 0
    return sum(1 for a in list(server.active_associations) if a.is_established)


class AdminCollector(Collector):
    """The console's own guards: HTTP connections refused past the cap or cut by a timeout, and the
    thumbnail cache (overlays decoded, bytes held)."""

    def __init__(self, thumbnails: Any, http_counters: dict[str, int]) -> None:
        self.thumbnails = thumbnails
        self.http = http_counters

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("dicom_node_admin_http_refused",
                                  "HTTP connections refused past admin.max_connections",
                                  value=self.http.get("refused", 0))
        yield CounterMetricFamily("dicom_node_admin_http_timeouts",
                                  "HTTP connections closed for slow headers or a stuck response",
                                  value=self.http.get("timed_out", 0))
        yield CounterMetricFamily("dicom_node_admin_thumbnail_decodes", "Overlays decoded for thumbnails",
                                  value=self.thumbnails.decodes)
        yield GaugeMetricFamily("dicom_node_admin_thumbnail_cache_bytes", "Bytes held by the thumbnail caches",
                                value=self.thumbnails.cached_bytes)


def build_registry(node: Any, version: str = "", started_at: float | None = None) -> CollectorRegistry:
    """A registry of the node's collector plus the standard ``process_*`` figures."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node, version, started_at))
    ProcessCollector(registry=registry)
    return registry


def _le(bound: float) -> str:
    return repr(float(bound))
