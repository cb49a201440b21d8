"""Detectron2 configs loaded by path, models built with Detectron2's builders, checkpoints with metadata.

A checkpoint written here is a ``torch.save`` dict that Detectron2's own ``DetectionCheckpointer``
reads (``model`` holds the state dict) plus two keys of ours: ``config`` (the full config as YAML, so
the weights carry their architecture) and ``metadata`` (:class:`CheckpointMetadata`).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from pydicom.uid import generate_uid

import models.backbone  # noqa: F401  (registers build_narrow_resnet_fpn_backbone)
from models import SHIPPED_WEIGHTS
from models.detection import ModelInfo

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "cascade_rcnn_R18n_FPN_compact.yaml"
MODEL_NAME = "dicom-node opacity Cascade R-CNN"
CLASSES = ("opacity",)

__all__ = [
    "CheckpointMetadata",
    "DEFAULT_CONFIG",
    "SHIPPED_WEIGHTS",
    "build",
    "load_config",
    "load_checkpoint",
    "save_checkpoint",
    "resolve_config",
]


def resolve_config(name_or_path: str | Path | None) -> Path:
    """A config file: a path, or the name of one in ``models/configs`` (with or without ``.yaml``)."""
    if name_or_path is None:
        return DEFAULT_CONFIG
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / path.name, CONFIG_DIR / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base_opacity"))
    raise FileNotFoundError(f"model config {name_or_path!s} not found; known: {known}")


def load_config(name_or_path: str | Path | None = None, opts: list[str] | None = None) -> CfgNode:
    """Detectron2 config from a YAML file by path (``_BASE_`` resolved next to it), plus overrides."""
    cfg = get_cfg()
    cfg.merge_from_file(str(resolve_config(name_or_path)))
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg


def config_from_yaml(text: str) -> CfgNode:
    """A config stored inside a checkpoint."""
    cfg = get_cfg()
    cfg.merge_from_other_cfg(CfgNode.load_cfg(text))
    return cfg


def build(cfg: CfgNode, device: str = "cpu") -> torch.nn.Module:
    """The model, with Detectron2's ``build_model`` (META_ARCHITECTURE registry)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return build_model(cfg)


@dataclass
class CheckpointMetadata:
    """What a checkpoint says about the algorithm it holds (TID 4019 Algorithm Identification)."""

    name: str = MODEL_NAME
    version: str = "0.0.0"
    device_uid: str = field(default_factory=generate_uid)
    classes: tuple[str, ...] = CLASSES
    input_size: int = 384
    score_threshold: float = 0.4
    data_fingerprint: str = ""
    config_name: str = ""
    iterations: int = 0
    trained_on: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMetadata:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "classes" in known:
            known["classes"] = tuple(known["classes"])
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (str, not pydicom's UID): checkpoints must load with weights_only."""
        d = asdict(self)
        d["device_uid"] = str(self.device_uid)
        d["classes"] = list(self.classes)
        return d

    def model_info(self, score_threshold: float | None = None) -> ModelInfo:
        extra = {"data_fingerprint": self.data_fingerprint, "config": self.config_name, **self.extra}
        return ModelInfo(
            name=self.name,
            version=self.version,
            device_uid=self.device_uid,
            classes=tuple(self.classes),
            input_size=self.input_size,
            score_threshold=self.score_threshold if score_threshold is None else score_threshold,
            extra={k: str(v) for k, v in extra.items() if v != ""},
        )


def save_checkpoint(
    path: Path,
    model: torch.nn.Module | dict[str, torch.Tensor],
    cfg: CfgNode,
    metadata: CheckpointMetadata,
    *,
    half: bool = False,
) -> Path:
    """Write weights + config + metadata; ``half`` stores float tensors as float16 (shipping size)."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else dict(model)
    if half:
        state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    state = {k: v.detach().cpu() for k, v in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": state, "config": cfg.dump(), "metadata": metadata.to_dict()}, tmp)
    tmp.replace(path)
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_checkpoint_header(path: Path) -> tuple[CfgNode | None, CheckpointMetadata | None]:
    """Config and metadata stored in one of our checkpoints; (None, None) for foreign files."""
    path = Path(path)
    if path.suffix == ".pkl":
        return None, None
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict):
        return None, None
    cfg = config_from_yaml(data["config"]) if isinstance(data.get("config"), str) else None
    meta = CheckpointMetadata.from_dict(data["metadata"]) if isinstance(data.get("metadata"), dict) else None
    return cfg, meta


def load_checkpoint(
    path: Path, config: str | Path | None = None, device: str = "cpu"
) -> tuple[torch.nn.Module, CfgNode, CheckpointMetadata]:
    """Build the model a checkpoint needs and load its weights with Detectron2's checkpointer.

    Our checkpoints carry their config. A foreign Detectron2 checkpoint (``.pth``, or a model-zoo
    ``.pkl`` with its Caffe2-style names) is loaded into ``config`` (default: the compact config);
    tensors whose shapes do not match are skipped with Detectron2's warning. Its metadata gets a
    Device UID derived from the file's sha256, so the same file always reports the same UID.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    cfg, meta = read_checkpoint_header(path)
    if cfg is None or config is not None:
        cfg = load_config(config)
    if meta is None:
        digest = file_sha256(path)
        meta = CheckpointMetadata(
            name=path.stem,
            version="unknown",
            device_uid=generate_uid(entropy_srcs=[digest]),
            input_size=int(cfg.INPUT.MIN_SIZE_TEST),
            config_name=Path(str(config or DEFAULT_CONFIG)).stem,
            extra={"weights_sha256": digest},
        )
    model = build(cfg, device)
    DetectionCheckpointer(model).load(str(path))
    model.float()
    model.eval()
    return model, cfg, meta
