"""The analysis steps the worker runs for each received instance (ARCHITECTURE.md, "one radiograph's way").

Each step takes a batch of :class:`~dicom_node.worker.Item` and returns an outcome per job that does
not simply go on (absent means "done, next step"). Every step is idempotent: the twin keys on the SOP
Instance UID, findings are replaced, result objects are built once per source and their delivery
jobs are unique per (result, destination), so a step redone after a crash changes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.config import Config
from dicom_node.results import NodeIdentity, build_all
from dicom_node.routing import decide, destinations_for
from dicom_node.spool import Spool
from dicom_node.store import Store
from dicom_node.worker import Item, Outcome
from models.detection import Detection, ModelInfo
from twin.store import TwinStore

log = logging.getLogger("dicom_node.pipeline")


class TwinStep:
    """Feed every instance's header to the device twin (every body part, not only chests)."""

    def __init__(self, twin: TwinStore) -> None:
        self.twin = twin

    def __call__(self, batch: Sequence[Item]) -> dict[int, Outcome]:
        for item in batch:
            try:
                received = datetime.fromtimestamp(item.row["received_at"], UTC)
                self.twin.record_instance(item.header, received_at=received)
            except Exception as exc:  # the twin must never hold back the analysis of an image
                log.error("twin could not record an instance",
                          extra={"sop_instance_uid": item.job.ref, "error": f"{type(exc).__name__}: {exc}"[:300]})
        return {}


def _tell_twin(twin: TwinStore | None, uid: str, *, score: float | None, findings: int, skipped: bool) -> None:
    """One image's AI outcome to the device twin's AI watch (docs/twin.md); never holds back the image."""
    if twin is None:
        return
    try:
        twin.record_ai_outcome(uid, score=score, findings=findings, skipped=skipped)
    except Exception as exc:
        log.error("twin could not record an AI outcome",
                  extra={"sop_instance_uid": uid, "error": f"{type(exc).__name__}: {exc}"[:300]})


class RouteStep:
    """Skip what is not a chest radiograph to analyse, with the reason recorded (and told to the twin's
    AI watch); what an analysed image's route assumed (chest, frontal view) goes on the item for the
    analysis row and the SR."""

    def __init__(self, cfg: Config, store: Store, twin: TwinStore | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.twin = twin

    def __call__(self, batch: Sequence[Item]) -> dict[int, Outcome]:
        out = {}
        for item in batch:
            route = decide(item.header, self.cfg.routing)
            if route.skip is not None:
                self.store.record_analysis(item.job.ref, "skipped", reason=route.skip)
                _tell_twin(self.twin, item.job.ref, score=None, findings=0, skipped=True)
                out[item.job.id] = Outcome("skipped", route.skip)
            item.assumptions = route.assumptions
        return out


class DetectStep:
    """Run the detector on the batch and store each finding (box in source pixels, score, model)."""

    def __init__(self, cfg: Config, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self._detector: Any = None
        self._lock = threading.Lock()

    @property
    def detector(self) -> Any:
        """Loaded on first use (by the warm-up thread, or a worker that gets there first), never before
        the receiver listens; "model loaded" logs the seconds of importing the libraries and loading."""
        with self._lock:
            if self._detector is None:
                t0 = time.perf_counter()
                m = self.cfg.model
                from models.detector import Detector

                self._detector = Detector.load(m.weights, device=m.device, threads=m.threads,
                                               score_threshold=m.score_threshold)
                info = self._detector.info
                log.info("model loaded", extra={"model": info.name, "version": info.version,
                                                "device": self._detector.device,
                                                "seconds": round(time.perf_counter() - t0, 2)})
            return self._detector

    @property
    def info(self) -> ModelInfo:
        return self.detector.info  # type: ignore[no-any-return]

    def warm(self) -> dict[str, Any]:
        """Load the model and run it once on a blank image, so the first study does not pay for either.

        Called in a background thread at start (the receiver listens meanwhile); returns the state the
        node records in its ``nodes`` row for ``dicom-node status`` and ``/healthz``: ready or failed.
        """
        import numpy as np

        from models.preprocess import letterbox

        started = time.time()  # "loading" was written by Node.start before the receiver listened
        try:
            detector = self.detector
            detector.predict_prepared([letterbox(np.zeros((64, 64), np.float32), detector.input_size)])
        except Exception as exc:  # a broken weights file: said in status; each job then fails with it
            state = {"state": "failed", "since": time.time(), "error": f"{type(exc).__name__}: {exc}"[:300]}
            log.error("model failed to load", extra={"error": state["error"]})
        else:
            info = detector.info
            state = {"state": "ready", "since": time.time(), "seconds": round(time.time() - started, 2),
                     "name": info.name, "version": info.version, "score_threshold": info.score_threshold}
            log.info("model warm", extra={"seconds": state["seconds"]})
        return state

    def __call__(self, batch: Sequence[Item]) -> dict[int, Outcome]:
        detector = self.detector
        info: ModelInfo = detector.info
        out: dict[int, Outcome] = {}
        ready, prepared = [], []
        for item in batch:
            t0 = time.perf_counter()
            try:
                ds = dcmread(item.row["path"])
                prepared.append(detector.prepare([ds])[0])
            except Exception as exc:  # undecodable pixels: this image fails, the batch goes on
                reason = f"pixel data cannot be decoded: {type(exc).__name__}: {exc}"[:300]
                self.store.record_analysis(item.job.ref, "failed", reason=reason)
                out[item.job.id] = Outcome("failed", reason)
                continue
            item.dataset = ds
            item.timings["preprocess"] = (time.perf_counter() - t0) * 1000
            ready.append(item)
        if not ready:
            return out
        t0 = time.perf_counter()
        analyses = detector.analyse_prepared(prepared)
        per_image_ms = (time.perf_counter() - t0) * 1000 / len(ready)
        for item, analysis in zip(ready, analyses, strict=True):
            item.detections = list(analysis.detections)
            item.opacity_probability = analysis.opacity_probability
            item.timings["inference"] = per_image_ms
            item.timings["total"] = item.timings["preprocess"] + per_image_ms
            self.store.record_analysis(
                item.job.ref, "analysed", findings=[_finding(d) for d in analysis.detections], model_name=info.name,
                model_version=info.version, timings_ms=item.timings,
                opacity_probability=analysis.opacity_probability,
                assumptions=[str(a) for a in item.assumptions],
            )
        return out


class TwinOutcomeStep:
    """Tell the device twin what the detector made of each analysed image: its opacity probability and
    its number of findings at the operating threshold (``model.score_threshold``; positive = at least
    one), for the per-device AI watch (twin.ai_watch)."""

    def __init__(self, twin: TwinStore) -> None:
        self.twin = twin

    def __call__(self, batch: Sequence[Item]) -> dict[int, Outcome]:
        for item in batch:
            _tell_twin(self.twin, item.job.ref, score=item.opacity_probability, findings=len(item.detections),
                       skipped=False)
        return {}


def _finding(d: Detection) -> dict[str, Any]:
    x0, y0, x1, y1 = d.box
    return {"x0": x0, "y0": y0, "x1": x1, "y1": y1, "score": d.score, "label": d.label}


class ResultsStep:
    """Build the SR, GSPS and SC for each analysed image, keep them in the outbox, queue deliveries.

    ``on_queued`` is called after each image's deliveries are queued (the node wakes its delivery
    workers with it), so they go out while the next image's objects are built, not a poll later.
    """

    def __init__(self, cfg: Config, store: Store, outbox: Spool, node: NodeIdentity, detect: DetectStep,
                 on_queued: Callable[[], None] | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.outbox = outbox
        self.node = node
        self.detect = detect
        self.on_queued = on_queued

    def warm(self) -> None:
        """Build and encode each result kind once for a blank 64 x 64 radiograph, and drop them.

        The first objects built in a process pay for loading what the builders load lazily (highdicom's
        tables of the standard's modules and pydicom's code dictionaries: about 0.4 s here, 0.05 s
        for later objects); paid at start, in the background, the first study after a start does not
        wait for it. Nothing is stored or sent.
        """
        t0 = time.perf_counter()
        try:
            model = ModelInfo(name="warm-up", version="0", device_uid=str(generate_uid()))
            for ds in build_all(_blank_radiograph(), [Detection((8.0, 8.0, 40.0, 40.0), 0.9)], model,
                                self.node, ohif=self.cfg.results.ohif, opacity_probability=0.9).values():
                _encode(ds)
        except Exception as exc:  # only a warm-up: the first study builds them as usual
            log.warning("result builders not warmed", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            return
        log.info("result builders warm", extra={"seconds": round(time.perf_counter() - t0, 2)})

    def __call__(self, batch: Sequence[Item]) -> dict[int, Outcome]:
        for item in batch:
            if self.store.results_for(item.job.ref):
                continue  # built before a crash: keep those objects (and their UIDs), deliver them
            dests = destinations_for(self.cfg, item.row["calling_ae"])
            kinds = sorted({k for d in dests for k in d.kinds}) or ["sr", "gsps", "sc"]
            source: Dataset = item.dataset if item.dataset is not None else dcmread(item.row["path"])
            objects = build_all(source, item.detections, self.detect.info, self.node, kinds=kinds,  # type: ignore[arg-type]
                                ohif=self.cfg.results.ohif, opacity_probability=item.opacity_probability,
                                assumptions=item.assumptions)
            rows: list[dict[str, Any]] = []
            for kind, ds in objects.items():
                path = self.outbox.path_for(str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
                temp = self.outbox.write_temp([_encode(ds)])
                self.outbox.commit(temp, path, replace=True)
                rows.append({"sop_instance_uid": str(ds.SOPInstanceUID), "kind": kind,
                             "sop_class_uid": str(ds.SOPClassUID), "path": str(path),
                             "destinations": [d.name for d in dests if kind in d.kinds]})
            self.store.add_results(item.job.ref, item.row["study_instance_uid"], rows, [],
                                   max_attempts=self.cfg.delivery.max_attempts)
            if self.on_queued is not None and any(r["destinations"] for r in rows):
                self.on_queued()
        return {}


def _blank_radiograph() -> Dataset:
    """A black 64 x 64 CR with the attributes the result builders require, for :meth:`ResultsStep.warm`."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(64 * 64)
    return ds


def _encode(ds: Dataset) -> bytes:
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def build_steps(cfg: Config, store: Store, outbox: Spool, node: NodeIdentity, twin: TwinStore) -> list[Any]:
    """The analysis pipeline in order: twin, routing, detection, the outcome to the twin, results."""
    detect = DetectStep(cfg, store)
    return [TwinStep(twin), RouteStep(cfg, store, twin), detect, TwinOutcomeStep(twin),
            ResultsStep(cfg, store, outbox, node, detect)]
