"""Results delivery: the ``deliver`` jobs of the outbox, to DIMSE and DICOMweb destinations alike.

A DIMSE destination gets one association per batch (C-STORE, PS3.4 Annex B, :mod:`dicom_node.scu`);
a DICOMweb destination one STOW-RS request per batch, or per ``max_request_mb`` of files (PS3.18
§10.5, :mod:`dicom_node.dicomweb.stow_out`). Retries, back-off, parking after
``delivery.max_attempts`` and the record of every attempt (``Store.set_delivery``) are the same for
both; a DICOMweb failure that no retry can mend is parked at once (see stow_out's docstring).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_node.config import Config, Destination
from dicom_node.dicomweb import stow_out
from dicom_node.scu import echo, peer_for, send_datasets
from dicom_node.store import Job, Store
from dicom_node.worker import Outcome as WorkOutcome

log = logging.getLogger("dicom_node.delivery")


@dataclass(frozen=True)
class _Pending:
    job: Job
    result_uid: str
    path: Path


class Delivery:
    """Handler of ``deliver`` jobs (ref ``<result UID>><destination>``): one association or one
    STOW-RS request per destination per batch, retries with exponential back-off that survive
    restarts (the delay is in the job row), and after ``delivery.max_attempts`` (or a failure no
    retry mends) the delivery is parked as failed with its error."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store

    def backoff(self, attempts: int) -> float:
        d = self.cfg.delivery
        return float(min(d.backoff_s * 2 ** max(attempts - 1, 0), d.backoff_max_s))

    def __call__(self, jobs: Sequence[Job]) -> dict[int, WorkOutcome]:
        by_dest: dict[str, list[Job]] = {}
        for job in jobs:
            by_dest.setdefault(job.ref.rpartition(">")[2], []).append(job)
        destinations = {d.name: d for d in self.cfg.destinations}
        out: dict[int, WorkOutcome] = {}
        for name, group in by_dest.items():
            dest = destinations.get(name)
            if dest is None:
                for job in group:
                    out[job.id] = WorkOutcome("failed", f"destination {name!r} is no longer configured")
                continue
            pending: list[_Pending] = []
            for job in group:
                result_uid = job.ref.rpartition(">")[0]
                row = self.store.result(result_uid)
                if row is None or not Path(row["path"]).exists():
                    out[job.id] = WorkOutcome("failed", "result object is missing from the outbox")
                    continue
                pending.append(_Pending(job, result_uid, Path(row["path"])))
            failures = self._send(dest, pending)
            for p in pending:
                out[p.job.id] = self._record(dest, p, failures.get(str(p.job.id)))
            if failures:
                log.warning("delivery failed", extra={"destination": name, "failed": len(failures),
                                                      "error": next(iter(failures.values())).reason})
        return out

    def _send(self, dest: Destination, pending: Sequence[_Pending]) -> dict[str, stow_out.Failure]:
        """Send a batch to one destination; the failures by job id (as text)."""
        if not pending:
            return {}
        if dest.is_dicomweb:
            report = stow_out.store_instances(
                dest, [stow_out.Item(str(p.job.id), p.result_uid, p.path) for p in pending])
            return report.failed
        items: list[tuple[str, Dataset | Path]] = [(str(p.job.id), p.path) for p in pending]
        sent = send_datasets(peer_for(dest), items, calling_ae=self.cfg.node.ae_title)
        return {label: stow_out.Failure(error, retryable=True) for label, error in sent.failed}

    def _record(self, dest: Destination, p: _Pending, failure: stow_out.Failure | None) -> WorkOutcome:
        job = p.job
        if failure is None:
            state, outcome = "delivered", WorkOutcome("done", f"delivered to {dest.name}")
        elif job.attempts >= job.max_attempts or not failure.retryable:
            state, outcome = "failed", WorkOutcome("failed", failure.reason)
        else:
            state, outcome = "retrying", WorkOutcome("retry", failure.reason, self.backoff(job.attempts))
        # A DICOMweb destination has no AE title: its URL stands where a DIMSE peer's host is.
        self.store.set_delivery(p.result_uid, dest.name, state, attempts=job.attempts,
                                peer_ae=dest.ae_title or "", peer_host=dest.host or dest.address,
                                error=None if failure is None else failure.reason)
        return outcome


def echo_destinations(cfg: Config, store: Store) -> None:
    """C-ECHO every DIMSE destination, probe every DICOMweb one (an authenticated QIDO-RS query), and
    record the answer: the node's view of its peers' health."""
    for d in cfg.destinations:
        res = stow_out.probe(d) if d.is_dicomweb else echo(peer_for(d), calling_ae=cfg.node.ae_title, timeout_s=10)
        store.set_echo(d.name, res.ok, res.error)
