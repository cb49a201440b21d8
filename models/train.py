"""Training with Detectron2's trainer: phantoms, an RSNA labels CSV or COCO JSON; resumable.

The loop is Detectron2's ``SimpleTrainer`` with its hooks (LR schedule, periodic checkpoints,
periodic evaluation) plus a progress display. Images are preprocessed once with the same code the
detector runs at inference, then augmented per iteration with Detectron2's transforms. Every
checkpoint carries its config and :class:`models.modeling.CheckpointMetadata`: model name and
version, a new Device UID per training run (kept on ``--resume``), classes, input size, score
threshold and the sha256 fingerprint of the training data.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.engine import HookBase, SimpleTrainer, hooks
from detectron2.solver import build_lr_scheduler, build_optimizer
from detectron2.structures import Boxes, Instances
from pydicom.uid import generate_uid

from models import datasets
from models.datasets import Sample
from models.detection import Detection
from models.detector import Detector, pick_device
from models.evaluate import detect_all, evaluate_detections, operating_point
from models.modeling import MODEL_NAME, CheckpointMetadata, build, load_config, resolve_config, save_checkpoint
from models.siim import siim_samples

__all__ = ["TrainOptions", "train"]

MODEL_VERSION = "2.0.0"  # 2: trained on real SIIM radiographs (1: phantoms)


@dataclass
class TrainOptions:
    """What to train on and how; exactly one data source must be given."""

    output_dir: Path
    config: str | Path | None = None
    phantoms: int | None = None
    seed: int = 0
    rsna_csv: Path | None = None
    images: Path | None = None
    coco_json: Path | None = None
    siim: Path | None = None
    val_fraction: float = 0.2
    limit: int | None = None
    val_phantoms: int = 40
    max_iter: int | None = None
    eval_period: int | None = None
    resume: bool = False
    init_weights: Path | None = None
    export: Path | None = None
    threads: int | None = 2
    device: str = "auto"
    score_threshold: float | None = None  # None: chosen on the validation set (best F1)
    version: str = MODEL_VERSION
    opts: list[str] = field(default_factory=list)

    def source(self) -> str:
        given = [x for x in (self.phantoms, self.rsna_csv, self.coco_json, self.siim) if x is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of --phantoms N, --siim DIR, --rsna-csv CSV (with --images DIR), --coco JSON"
            )
        if self.rsna_csv is not None and self.images is None:
            raise ValueError("--rsna-csv needs --images DIR (the DICOM folder)")
        if self.phantoms is not None:
            return f"phantoms n={self.phantoms} seed={self.seed}"
        if self.siim is not None:
            return f"siim dir={Path(self.siim).name} val_fraction={self.val_fraction} seed={self.seed}"
        if self.rsna_csv is not None:
            return f"rsna csv={Path(self.rsna_csv).name}"
        return f"coco json={Path(self.coco_json or '').name}"


def load_samples(opts: TrainOptions, input_size: int) -> tuple[list[Sample], list[Sample]]:
    """(training set, validation set), preprocessed for the model.

    A SIIM folder is split by study (``val_fraction``, seeded); the other sources are validated on
    ``val_phantoms`` phantoms of another seed.
    """
    if opts.siim is not None:
        samples = siim_samples(Path(opts.siim), input_size, limit=opts.limit)
        return datasets.split_by_group(samples, opts.val_fraction, opts.seed)
    if opts.phantoms is not None:
        train_set = datasets.phantom_samples(opts.phantoms, opts.seed, input_size)
    elif opts.rsna_csv is not None:
        assert opts.images is not None
        train_set = datasets.rsna_samples(Path(opts.rsna_csv), Path(opts.images), input_size)
    else:
        assert opts.coco_json is not None
        train_set = datasets.coco_samples(Path(opts.coco_json), input_size, image_root=opts.images)
    val = datasets.phantom_samples(opts.val_phantoms, opts.seed + 1_000_003, input_size) if opts.val_phantoms else []
    return train_set, val


class _RotateTransform(T.Transform):
    """Rotation about the image centre with Pillow (Detectron2's own needs OpenCV, not installed).

    A box becomes the bounding box of its rotated corners, as in Detectron2's RotationTransform.
    """

    def __init__(self, h: int, w: int, angle: float) -> None:
        super().__init__()
        self.h, self.w, self.angle = h, w, angle

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        from PIL import Image

        squeeze = img.ndim == 3 and img.shape[2] == 1
        arr = img[:, :, 0] if squeeze else img
        out = np.asarray(Image.fromarray(arr).rotate(self.angle, resample=Image.Resampling.BILINEAR))
        return out[:, :, None] if squeeze else out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        # Pillow turns the picture counter-clockwise by ``angle``; with y pointing down that is this map.
        t = np.deg2rad(self.angle)
        cx, cy = self.w / 2.0, self.h / 2.0
        x, y = coords[:, 0] - cx, coords[:, 1] - cy
        out = np.empty_like(coords)
        out[:, 0] = cx + x * np.cos(t) + y * np.sin(t)
        out[:, 1] = cy - x * np.sin(t) + y * np.cos(t)
        return out


class _RandomRotation(T.Augmentation):
    def __init__(self, degrees: float) -> None:
        super().__init__()
        self.degrees = degrees

    def get_transform(self, image: np.ndarray) -> T.Transform:
        h, w = image.shape[:2]
        return _RotateTransform(h, w, float(np.random.uniform(-self.degrees, self.degrees)))


class _FilmNoise(T.Augmentation):
    """Photometric jitter of a real film: a gamma curve (detector response) and Gaussian noise."""

    def __init__(self, gamma: tuple[float, float] = (0.8, 1.25), sigma: tuple[float, float] = (0.0, 6.0)) -> None:
        super().__init__()
        self.gamma = gamma
        self.sigma = sigma

    def get_transform(self, image: np.ndarray) -> T.Transform:
        gamma = float(np.random.uniform(*self.gamma))
        sigma = float(np.random.uniform(*self.sigma))
        seed = int(np.random.randint(0, 2**31 - 1))

        def apply(img: np.ndarray) -> np.ndarray:
            out = 255.0 * (np.clip(img.astype(np.float32), 0, 255) / 255.0) ** gamma
            if sigma > 0:
                out = out + np.random.default_rng(seed).normal(0.0, sigma, img.shape).astype(np.float32)
            return np.clip(out, 0, 255)

        return T.ColorTransform(apply)


def _augmentations(size: int, real: bool) -> T.AugmentationList:
    """Geometric and photometric jitter; real films also get rotation, wider zoom, gamma and noise.

    Phantoms are drawn upright and noise-free; real radiographs come rotated by positioning, at
    varying magnification, exposure and detector noise, so those are what the model must not mind.
    Horizontal flips are safe for opacities (either lung).
    """
    geometric: list[T.Augmentation] = [T.RandomFlip(prob=0.5, horizontal=True)]
    if real:
        geometric += [
            T.RandomApply(_RandomRotation(8.0), prob=0.5),
            T.RandomApply(T.RandomExtent(scale_range=(0.85, 1.2), shift_range=(0.1, 0.1)), prob=0.6),
        ]
    else:
        geometric.append(T.RandomApply(T.RandomExtent(scale_range=(0.9, 1.15), shift_range=(0.08, 0.08)), prob=0.5))
    photometric: list[T.Augmentation] = [T.RandomBrightness(0.85, 1.15), T.RandomContrast(0.8, 1.25)]
    if real:
        photometric.append(T.RandomApply(_FilmNoise(), prob=0.7))
    return T.AugmentationList([*geometric, T.Resize((size, size)), *photometric])


def batches(
    samples: list[Sample], batch_size: int, size: int, channels: int, seed: int, real: bool = False
) -> Iterator[list[dict[str, Any]]]:
    """Endless shuffled batches of Detectron2 input dicts with augmented images and boxes."""
    rng = np.random.default_rng(seed)
    np.random.seed(seed)  # Detectron2's augmentations draw from numpy's global generator
    augs = _augmentations(size, real)
    while True:
        order = rng.permutation(len(samples))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = []
            for idx in order[start : start + batch_size]:
                s = samples[int(idx)]
                inp = T.AugInput(s.prepared.image[:, :, None], boxes=s.boxes_model.copy())
                augs(inp)
                image = np.asarray(inp.image, dtype=np.float32)
                if image.ndim == 2:
                    image = image[:, :, None]
                tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
                tensor = tensor.expand(channels, -1, -1).contiguous()
                boxes = np.asarray(inp.boxes, dtype=np.float32).reshape(-1, 4)
                boxes[:, 0::2] = boxes[:, 0::2].clip(0, size)
                boxes[:, 1::2] = boxes[:, 1::2].clip(0, size)
                ok = (boxes[:, 2] - boxes[:, 0] > 2) & (boxes[:, 3] - boxes[:, 1] > 2)
                inst = Instances((size, size))
                inst.gt_boxes = Boxes(torch.from_numpy(boxes[ok]))
                inst.gt_classes = torch.zeros(int(ok.sum()), dtype=torch.int64)
                batch.append({"image": tensor, "instances": inst, "height": size, "width": size})
            yield batch


class _MetadataCheckpointer(DetectionCheckpointer):
    """Detectron2's checkpointer, writing our config and metadata into every checkpoint."""

    def __init__(self, *args: Any, cfg: CfgNode, metadata: CheckpointMetadata, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cfg = cfg
        self.metadata = metadata
        self.earlier_s = 0.0  # training time of earlier sittings of this run (from the resumed checkpoint)
        self.sitting_t0 = time.perf_counter()

    def save(self, name: str, **kwargs: Any) -> None:
        self.metadata.iterations = int(kwargs.get("iteration", self.metadata.iterations)) + 1
        # Every checkpoint carries the run's training time so far, so a later sitting can add to it.
        self.metadata.extra["train_seconds_total"] = f"{self.earlier_s + time.perf_counter() - self.sitting_t0:.0f}"
        super().save(name, config=self._cfg.dump(), metadata=self.metadata.to_dict(), **kwargs)


class _Progress(HookBase):
    """A rich progress bar on a terminal; one log line every ``every`` iterations otherwise."""

    def __init__(self, max_iter: int, log: Callable[[str], None], every: int = 20) -> None:
        self.max_iter = max_iter
        self.log = log
        self.every = every
        self._progress: Any = None
        self._task: Any = None
        self._t0 = time.perf_counter()
        self._start_iter = 0

    def before_train(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._start_iter = self.trainer.iter
        self._t0 = time.perf_counter()
        console = Console(stderr=True)
        if console.is_terminal:
            self._progress = Progress(
                TextColumn("training"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.max_iter, completed=self.trainer.iter, status="")

    def after_step(self) -> None:
        it = self.trainer.iter + 1
        storage = self.trainer.storage
        loss = storage.history("total_loss").median(20) if "total_loss" in storage.histories() else float("nan")
        lr = storage.history("lr").latest() if "lr" in storage.histories() else float("nan")
        status = f"loss {loss:.3f} lr {lr:.4f}"
        if self._progress is not None:
            self._progress.update(self._task, completed=it, status=status)
        elif it % self.every == 0 or it == self.max_iter:
            done = it - self._start_iter
            rate = (time.perf_counter() - self._t0) / max(done, 1)
            eta = rate * (self.max_iter - it)
            self.log(f"iter {it}/{self.max_iter} {status} {rate:.2f}s/it eta {eta / 60:.1f} min")

    def after_train(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _machine() -> str:
    """What trained it, for the model card: CPU model and the threads torch used (or the GPU)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    return f"{cpu}, {torch.get_num_threads()} threads"


def train(opts: TrainOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train and return a summary (checkpoint paths, metadata, timings, last evaluation)."""
    source = opts.source()
    if opts.threads:
        torch.set_num_threads(int(opts.threads))
    torch.manual_seed(opts.seed)
    cfg = load_config(opts.config, opts.opts)
    cfg.defrost()
    if opts.max_iter is not None:
        cfg.SOLVER.MAX_ITER = int(opts.max_iter)
        # Keep the schedule's shape: LR drops at the same fractions of the run.
        steps = {int(opts.max_iter * f) for f in (0.78, 0.94)}
        cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < opts.max_iter))
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, opts.max_iter // 8))
    if opts.eval_period is not None:
        cfg.TEST.EVAL_PERIOD = int(opts.eval_period)
    cfg.OUTPUT_DIR = str(opts.output_dir)
    device = pick_device(opts.device)
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    size = int(cfg.INPUT.MIN_SIZE_TEST)
    channels = len(cfg.MODEL.PIXEL_MEAN)
    out_dir = Path(opts.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    log(f"preparing training data: {source}")
    samples, val = load_samples(opts, size)
    fp = datasets.fingerprint(samples)
    log(
        f"{len(samples)} training images, {sum(len(s.boxes_source) for s in samples)} boxes, "
        f"{len(val)} validation images, fingerprint {fp[:16]}, prepared in {time.perf_counter() - t0:.0f}s"
    )

    model = build(cfg, device)
    model.train()
    optimizer = build_optimizer(cfg, model)
    loader = batches(samples, cfg.SOLVER.IMS_PER_BATCH, size, channels, opts.seed, real=opts.phantoms is None)
    trainer = SimpleTrainer(model, loader, optimizer)
    scheduler = build_lr_scheduler(cfg, optimizer)
    cascade = cfg.MODEL.ROI_HEADS.NAME == "CascadeROIHeads"
    metadata = CheckpointMetadata(
        name=MODEL_NAME if cascade else MODEL_NAME.replace("Cascade R-CNN", "Faster R-CNN"),
        version=opts.version,
        device_uid=generate_uid(),
        input_size=size,
        score_threshold=0.4 if opts.score_threshold is None else opts.score_threshold,
        data_fingerprint=fp,
        config_name=resolve_config(opts.config).stem,
        trained_on=source,
    )
    if opts.siim is not None:
        metadata.extra["split"] = datasets.split_label(opts.val_fraction, opts.seed)
        metadata.extra["validation_images"] = str(len(val))
    checkpointer = _MetadataCheckpointer(
        model, str(out_dir), cfg=cfg, metadata=metadata, optimizer=optimizer, scheduler=scheduler
    )
    start_iter = 0
    if opts.resume and checkpointer.has_checkpoint():
        ckpt = checkpointer.resume_or_load("", resume=True)
        start_iter = int(ckpt.get("iteration", -1)) + 1
        if isinstance(ckpt.get("metadata"), dict):
            old = CheckpointMetadata.from_dict(ckpt["metadata"])
            if old.data_fingerprint and old.data_fingerprint != fp:
                raise ValueError("--resume: the training data differs from the checkpoint's (fingerprint)")
            checkpointer.metadata.device_uid = old.device_uid  # the same training run
            extra = checkpointer.metadata.extra
            if "init_weights" in old.extra:  # how the run began stays recorded
                extra["init_weights"] = old.extra["init_weights"]
            extra["resumed_from_iteration"] = ", ".join(
                x for x in (old.extra.get("resumed_from_iteration", ""), str(start_iter)) if x
            )
            checkpointer.earlier_s = float(old.extra.get("train_seconds_total", "0"))
        log(f"resuming at iteration {start_iter}")
    elif opts.init_weights is not None:
        checkpointer.resume_or_load(str(opts.init_weights), resume=False)
        checkpointer.metadata.extra["init_weights"] = Path(opts.init_weights).name
        log(f"initialised from {opts.init_weights}")

    evaluations: list[dict[str, Any]] = []
    last_val: dict[str, Any] = {}  # the latest validation detections, kept for the operating point

    def detect_val() -> list[list[Detection]]:
        if last_val.get("iteration") != trainer.iter:
            model.eval()
            det = Detector(model, cfg, checkpointer.metadata, device, checkpointer.metadata.score_threshold)
            last_val.update(iteration=trainer.iter, detections=detect_all(det, val))
            model.train()
        return last_val["detections"]  # type: ignore[no-any-return]

    def run_eval() -> dict[str, float]:
        if not val:
            return {}
        res = evaluate_detections(val, detect_val())
        res_it = {"iteration": trainer.iter + 1, **res}
        evaluations.append(res_it)
        auc = res.get("image_auroc")
        log(
            f"eval @ {trainer.iter + 1}: AP50 {res['AP50']:.3f} AP {res['AP']:.3f} AP@0.4 {res['AP@0.4']:.3f} "
            f"AP@0.7 {res['AP@0.7']:.3f} image AUROC {'n/a' if auc is None else f'{auc:.3f}'}"
        )
        return {f"val/{k}": float(v) for k, v in res.items() if v is not None}

    max_iter = int(cfg.SOLVER.MAX_ITER)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(optimizer=optimizer, scheduler=scheduler),
            hooks.PeriodicCheckpointer(checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD, max_iter=max_iter, max_to_keep=2),
            hooks.EvalHook(cfg.TEST.EVAL_PERIOD, run_eval),
            _Progress(max_iter, log),
        ]
    )
    t_train = time.perf_counter()
    checkpointer.sitting_t0 = t_train  # training time of this sitting counts from here, not from data loading
    if start_iter < max_iter:
        trainer.train(start_iter, max_iter)
    train_s = time.perf_counter() - t_train

    meta = checkpointer.metadata
    if opts.score_threshold is None and val:
        point = operating_point(val, detect_val())  # the final evaluation's detections when there was one
        meta.score_threshold = float(point["threshold"])
        meta.extra["threshold_rule"] = (
            f"best box F1 at IoU {point['iou']} on the validation set: F1 {point['f1']}, "
            f"precision {point['precision']}, recall {point['recall']}"
        )
        log(f"score threshold {meta.score_threshold} ({meta.extra['threshold_rule']})")
    meta.extra["machine"] = _machine()
    meta.extra["train_seconds_this_run"] = f"{train_s:.0f}"
    # Detectron2's own final checkpoint (optimizer, scheduler, iteration: --resume can go on from it),
    # written again so it carries the run's timing too.
    checkpointer.save("model_final", iteration=max_iter - 1)
    final = out_dir / "model_final.pth"
    exported = None
    if opts.export is not None:
        exported = save_checkpoint(Path(opts.export), model, cfg, meta, half=True)
    summary = {
        "config": meta.config_name,
        "source": source,
        "images": len(samples),
        "iterations": max_iter,
        "started_at_iteration": start_iter,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "checkpoint": str(final),
        "exported": str(exported) if exported else None,
        "metadata": meta.to_dict(),
        "evaluations": evaluations,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
