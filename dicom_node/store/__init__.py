"""The node's database: instances, jobs, results, deliveries, audit — and the job queue over them.

One database file in WAL mode is shared by the receiver, the workers, the twin and the commands (which
read it while the node serves). Each thread gets its own connection; writes take ``BEGIN IMMEDIATE``
so a lease or an insert is atomic, and ``synchronous=FULL`` so a committed row survives a power cut,
which is what lets the receiver answer Success only after the commit ("nothing lost").

One module per thing held: :mod:`.schema` (tables, migrations), :mod:`.connections`, :mod:`.meta`,
:mod:`.instances`, :mod:`.jobs` (the queue), :mod:`.results`, :mod:`.deliveries`, :mod:`.audit`,
:mod:`.webindex`, :mod:`.nodes` (heartbeats). :class:`Store` is all of them over one set of connections.
"""

from __future__ import annotations

from typing import Any

from dicom_node.store.audit import AuditLog
from dicom_node.store.deliveries import Deliveries
from dicom_node.store.instances import InstanceRow, Instances
from dicom_node.store.jobs import JOB_STATES, Job, JobQueue
from dicom_node.store.meta import Meta
from dicom_node.store.nodes import Nodes
from dicom_node.store.results import Results
from dicom_node.store.schema import SCHEMA_VERSION
from dicom_node.store.webindex import WebIndex

__all__ = ["JOB_STATES", "SCHEMA_VERSION", "InstanceRow", "Job", "Store"]


class Store(Meta, Instances, JobQueue, Results, Deliveries, WebIndex, AuditLog, Nodes):
    """The node's database, one fluent object: each table's queries come from its module."""

    def status(self) -> dict[str, Any]:
        """What ``dicom-node status --json`` prints: instances stored and jobs by state."""
        conn = self.conn()
        instances = conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        size = conn.execute("SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM instances").fetchone()[0]
        last = conn.execute("SELECT MAX(received_at) FROM instances").fetchone()[0]
        by_kind: dict[str, dict[str, int]] = {}
        for kind, state, n in conn.execute("SELECT kind, state, COUNT(*) FROM jobs GROUP BY kind, state"):
            by_kind.setdefault(kind, dict.fromkeys(JOB_STATES, 0))[state] = n
        return {
            "instances": instances,
            "bytes": size,
            "last_received_at": last,
            "jobs": self.job_counts(),
            "jobs_by_kind": by_kind,
        }
