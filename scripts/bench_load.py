#!/usr/bin/env python
"""Load: several DCMTK storescu senders at once into one ``dicom-node serve``, every instance accounted for.

Each sender is a storescu process sending its own synthetic radiographs (``models.phantoms``, fresh
UIDs, explicit VR little endian) over one association, all senders at once. The node runs as it is
shipped (one analysis worker, the demo detector on CPU). Measured:

- every association answered and every instance's status, from storescu's own ``-v`` log: acknowledged,
  refused, or unanswered; then every acknowledged instance is looked up in the node's database
  (lost = acknowledged but not there)
- send throughput (instances/s and MB/s, first sender started to last sender done)
- queue drain: from the last sender done until every analysis job has ended, and the detector's share
- peak RSS of the node process (psutil, sampled every 0.1 s, children included)

``--analyse-every K`` keeps one radiograph in K a chest (the rest say BodyPartExamined ABDOMEN, so
routing skips them after the twin has seen them): the CI test uses it to bound the detector's time;
the figure for a full drain is this script with the default ``--analyse-every 1``.

    .venv/bin/python scripts/bench_load.py --senders 8 --per-sender 100 --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dicom_node.testing import NodeProcess  # noqa: E402
from models.phantoms import device_fleet, generate, to_dataset  # noqa: E402

_SENDING = re.compile(r"Sending file: (?P<file>.+?)\s*$")
_RESPONSE = re.compile(r"Received Store Response \((?P<status>[^)]*)\)")


def storescu_statuses(output: str) -> dict[str, str]:
    """File → the status storescu ``-v`` logged for it (``Success``, ``Warning``, or a failure text).

    A file that was in flight when the association broke has no entry: its sender never heard back.
    """
    out: dict[str, str] = {}
    current: str | None = None
    for line in output.splitlines():
        m = _SENDING.search(line)
        if m:
            current = m["file"]
            continue
        m = _RESPONSE.search(line)
        if m and current is not None:
            out[current] = m["status"]
            current = None
    return out


class PeakRSS:
    """Samples the resident set of a process and its children in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        self.pid = pid
        self.every_s = every_s
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        proc = psutil.Process(self.pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.sample())
                self.samples += 1
            except psutil.Error:
                return
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def make_inputs(folder: Path, senders: int, per_sender: int, *, seed: int = 20260407, size: int = 256,
                analyse_every: int = 1) -> list[list[Path]]:
    """Radiographs for each sender, written once: ``senders`` folders of ``per_sender`` files."""
    fleet = device_fleet(8, seed)
    inputs = []
    for s in range(senders):
        d = folder / f"sender{s}"
        d.mkdir(parents=True, exist_ok=True)
        files = []
        for i in range(per_sender):
            index = s * per_sender + i
            ds = to_dataset(generate(seed, index, size=size), fleet[index % len(fleet)])
            if analyse_every > 1 and i % analyse_every:
                ds.BodyPartExamined = "ABDOMEN"
            path = d / f"xr_{index:05d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            files.append(path)
        inputs.append(files)
    return inputs


@dataclass
class LoadReport:
    senders: int
    per_sender: int
    size: int
    analyse_every: int
    sent: int = 0
    acknowledged: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    unanswered: int = 0
    associations_accepted: int = 0
    associations_failed: int = 0
    sender_errors: int = 0      # storescu processes that exited non-zero
    stored: int = 0
    lost: int = 0
    send_s: float = 0.0
    instances_per_s: float = 0.0
    mb_per_s: float = 0.0
    drain_s: float = 0.0
    analysed: int = 0
    skipped: int = 0
    failed_jobs: int = 0
    detector_ms_mean: float | None = None
    peak_rss_mb: float = 0.0
    rss_idle_mb: float = 0.0
    machine: dict[str, Any] = field(default_factory=dict)


def _query(node: NodeProcess, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return node.rows(sql, args)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}


def run_load(node: NodeProcess, inputs: list[list[Path]], *, size: int = 256, analyse_every: int = 1,
             drain_timeout_s: float = 3600.0, aet_prefix: str = "LOAD") -> LoadReport:
    """Send every sender's files at once, wait for the queue to drain, and account for every instance."""
    assert node.proc is not None, "start the node first"
    report = LoadReport(senders=len(inputs), per_sender=max(len(f) for f in inputs), size=size,
                        analyse_every=analyse_every, machine=machine())
    nbytes = sum(p.stat().st_size for files in inputs for p in files)
    report.sent = sum(len(files) for files in inputs)
    with PeakRSS(node.proc.pid) as rss:
        report.rss_idle_mb = round(rss.sample() / 2**20, 1)
        t0 = time.monotonic()
        procs = [subprocess.Popen(["storescu", "-v", "-aet", f"{aet_prefix}{i}", "-aec", "DICOM_NODE",
                                   "127.0.0.1", str(node.port), *map(str, files)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i, files in enumerate(inputs)]
        outputs = [p.communicate(timeout=drain_timeout_s)[0] for p in procs]
        t_sent = time.monotonic()
        report.send_s = round(t_sent - t0, 2)
        acked: list[str] = []
        for files, out, proc in zip(inputs, outputs, procs, strict=True):
            report.sender_errors += int(proc.returncode != 0)
            if "Association Accepted" in out:
                report.associations_accepted += 1
            else:
                report.associations_failed += 1
            statuses = storescu_statuses(out)
            for f in files:
                status = statuses.get(str(f))
                if status is None:
                    report.unanswered += 1
                elif status == "Success":
                    acked.append(str(f))
                else:
                    report.refused[status] = report.refused.get(status, 0) + 1
        report.acknowledged = len(acked)
        uids = {str(pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID)
                for f in acked}
        stored = {r[0] for r in _query(node, "SELECT sop_instance_uid FROM instances")}
        report.stored = len(stored)
        report.lost = len(uids - stored)
        report.instances_per_s = round(report.acknowledged / report.send_s, 1)
        report.mb_per_s = round(nbytes / 2**20 / report.send_s, 1)
        deadline = t_sent + drain_timeout_s
        while time.monotonic() < deadline:
            ended = _query(node, "SELECT COUNT(*) FROM jobs WHERE kind='analyse' AND state IN"
                                 " ('done', 'skipped', 'failed')")[0][0]
            if ended >= report.stored:
                break
            time.sleep(0.2)
        report.drain_s = round(time.monotonic() - t_sent, 2)
        report.peak_rss_mb = round(rss.peak / 2**20, 1)
    states = dict(_query(node, "SELECT state, COUNT(*) FROM jobs WHERE kind='analyse' GROUP BY state"))
    report.skipped = states.get("skipped", 0)
    report.failed_jobs = states.get("failed", 0)
    report.analysed = _query(node, "SELECT COUNT(*) FROM analyses WHERE outcome='analysed'")[0][0]
    mean = _query(node, "SELECT AVG(inference_ms) FROM analyses WHERE outcome='analysed'")[0][0]
    report.detector_ms_mean = round(mean, 1) if mean is not None else None
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--per-sender", type=int, default=100)
    ap.add_argument("--size", type=int, default=256, help="radiograph side in pixels (16-bit)")
    ap.add_argument("--analyse-every", type=int, default=1, help="1: every radiograph is a chest to analyse")
    ap.add_argument("--batch-size", type=int, default=4, help="worker.batch_size of the node")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        root = Path(tmp)
        t0 = time.monotonic()
        inputs = make_inputs(root / "in", args.senders, args.per_sender, size=args.size,
                             analyse_every=args.analyse_every)
        print(f"wrote {args.senders * args.per_sender} radiographs in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        node = NodeProcess(root / "node", overrides={"worker": {"batch_size": args.batch_size}}).start()
        try:
            report = run_load(node, inputs, size=args.size, analyse_every=args.analyse_every)
        finally:
            node.stop()
    if args.json:
        print(json.dumps(asdict(report), indent=1))
        return 0 if report.lost == 0 else 1
    r = report
    print(f"{r.senders} senders x {r.per_sender} radiographs ({r.size}x{r.size}): {r.acknowledged}/{r.sent} "
          f"acknowledged, {r.lost} lost, {r.unanswered} unanswered, refused {r.refused or 'none'}")
    print(f"associations accepted {r.associations_accepted}/{r.senders}")
    print(f"send {r.send_s} s: {r.instances_per_s} instances/s, {r.mb_per_s} MB/s")
    print(f"drain after the last sender: {r.drain_s} s ({r.analysed} analysed, {r.skipped} skipped, "
          f"{r.failed_jobs} failed; detector {r.detector_ms_mean} ms per image)")
    print(f"peak RSS {r.peak_rss_mb} MiB (idle {r.rss_idle_mb} MiB); machine {r.machine}")
    return 0 if r.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
