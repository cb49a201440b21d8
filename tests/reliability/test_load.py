"""Load: 8 DCMTK storescu senders at once, 100 radiographs each, into one node; nothing lost.

How the drain is bounded for CI (two shared cores, the detector at ~0.3-1 s per image): all 800
radiographs are sent and acknowledged and must all be stored and queued (zero loss at full count);
one in 20 is a chest the detector analyses (40 images), the other 760 carry BodyPartExamined ABDOMEN
and are skipped by routing after the twin has seen them, so the whole queue drains in CI time. The
figure for a full drain of 800 chests is scripts/bench_load.py (same code, ``--analyse-every 1``),
recorded in docs/reliability.md.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pytest
from reliability_support import SEED, job_states, load_script

from dicom_node.testing import NodeProcess

SENDERS = 8
PER_SENDER = 100
ANALYSE_EVERY = 20
RSS_CEILING_MB = 2048  # the node with the detector loaded stays well under this (see docs/reliability.md)


def test_eight_senders_at_once_lose_nothing(node_factory: type[NodeProcess], dcmtk: None, tmp_path: Path,
                                            record_property: pytest.RecordProperty) -> None:
    bench = load_script("bench_load")
    inputs = bench.make_inputs(tmp_path / "in", SENDERS, PER_SENDER, seed=SEED, analyse_every=ANALYSE_EVERY)
    node = node_factory().start()
    report = bench.run_load(node, inputs, analyse_every=ANALYSE_EVERY, drain_timeout_s=420)
    figures = asdict(report)
    print(f"\nload: {figures}")
    record_property("load", figures)

    total = SENDERS * PER_SENDER
    # Every association answered and accepted, every instance acknowledged, none lost.
    assert report.associations_accepted == SENDERS and report.sender_errors == 0, figures
    assert report.acknowledged == total and report.unanswered == 0 and not report.refused, figures
    assert report.lost == 0 and report.stored == total, figures
    # The queue drained: every analysis job ended, as routing says.
    analysed = total // ANALYSE_EVERY
    assert report.analysed == analysed and report.skipped == total - analysed and report.failed_jobs == 0, figures
    assert job_states(node, "analyse") == {"done": analysed, "skipped": total - analysed}
    assert report.peak_rss_mb < RSS_CEILING_MB, figures
