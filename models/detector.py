"""The opacity detector the node runs: load once, predict on batches of DICOM images.

Boxes come back in the SOURCE image's pixel grid (PS3.3 C.10.5.1.2 convention), undoing the
letterbox of :mod:`models.preprocess` exactly, so result objects can draw them on the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from detectron2.config import CfgNode
from pydicom.dataset import Dataset

from models.detection import Detection, ImageAnalysis, ModelInfo, image_probability
from models.modeling import SHIPPED_WEIGHTS, CheckpointMetadata, load_checkpoint
from models.preprocess import Prepared, prepare

__all__ = ["Detector", "pick_device"]


def pick_device(device: str = "auto") -> str:
    """``auto`` is CUDA when a GPU is usable, else CPU; ``cpu``, ``cuda``, ``cuda:N`` pass through."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"model device {device!r} requested but no CUDA device is available")
    return device


class Detector:
    """A loaded model plus what it needs to turn DICOM into detections and back."""

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: CfgNode,
        metadata: CheckpointMetadata,
        device: str,
        score_threshold: float,
    ) -> None:
        self.model = model
        self.cfg = cfg
        self.metadata = metadata
        self.device = device
        self.score_threshold = score_threshold
        self.input_size = int(cfg.INPUT.MIN_SIZE_TEST)
        self.channels = len(cfg.MODEL.PIXEL_MEAN)

    @classmethod
    def load(
        cls,
        weights: Path | None = None,
        device: str = "auto",
        threads: int | None = None,
        score_threshold: float | None = None,
        config: str | Path | None = None,
    ) -> Detector:
        """Load weights (None: the shipped demo model) onto ``device``; ``threads`` caps CPU threads.

        ``weights`` may also be any Detectron2 checkpoint (``.pth``, or a model-zoo ``.pkl``); such a
        file carries no config, so ``config`` names the architecture (default: the compact config).
        """
        if threads is not None:
            torch.set_num_threads(int(threads))
        dev = pick_device(device)
        path = Path(weights) if weights is not None else SHIPPED_WEIGHTS
        model, cfg, meta = load_checkpoint(path, config=config, device=dev)
        threshold = meta.score_threshold if score_threshold is None else float(score_threshold)
        return cls(model, cfg, meta, dev, threshold)

    @property
    def info(self) -> ModelInfo:
        return self.metadata.model_info(self.score_threshold)

    def prepare(self, images: Sequence[Dataset]) -> list[Prepared]:
        return [prepare(ds, self.input_size) for ds in images]

    def predict(self, images: Sequence[Dataset]) -> list[list[Detection]]:
        """Detections for each image, best first, at or above the score threshold."""
        return self.predict_prepared(self.prepare(images))

    def predict_prepared(
        self, prepared: Sequence[Prepared], score_threshold: float | None = None
    ) -> list[list[Detection]]:
        """Detections for already preprocessed images (one forward pass for the whole batch)."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        return [[d for d in dets if d.score >= threshold] for dets in self._forward(prepared)]

    def analyse_prepared(self, prepared: Sequence[Prepared]) -> list[ImageAnalysis]:
        """Findings at the threshold plus the image-level opacity probability, from one forward pass."""
        out = []
        for dets in self._forward(prepared):
            kept = tuple(d for d in dets if d.score >= self.score_threshold)
            out.append(ImageAnalysis(detections=kept, opacity_probability=image_probability(dets)))
        return out

    def _forward(self, prepared: Sequence[Prepared]) -> list[list[Detection]]:
        """Every detection the model keeps (its own SCORE_THRESH_TEST), in source pixels, best first."""
        if not prepared:
            return []
        inputs = []
        for p in prepared:
            t = torch.from_numpy(np.ascontiguousarray(p.image)).to(torch.float32)
            inputs.append(
                {
                    "image": t.unsqueeze(0).expand(self.channels, -1, -1),
                    "height": p.image.shape[0],
                    "width": p.image.shape[1],
                }
            )
        with torch.inference_mode():
            outputs = self.model(inputs)
        results = []
        for p, out in zip(prepared, outputs, strict=True):
            inst = out["instances"].to("cpu")
            scores = inst.scores.numpy()
            boxes = p.letterbox.to_source(inst.pred_boxes.tensor.numpy())
            dets = [
                Detection(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])), score=float(s))
                for b, s in zip(boxes, scores, strict=True)
                if b[2] > b[0] and b[3] > b[1]
            ]
            dets.sort(key=lambda d: -d.score)
            results.append(dets)
        return results
