"""Configs build with Detectron2's builders; checkpoints keep weights and metadata; training resumes."""

from __future__ import annotations

import pickle

import numpy as np
import pydicom
import pytest
import torch
from detectron2.modeling.roi_heads import CascadeROIHeads, StandardROIHeads
from siim_support import make_siim

from models import phantoms
from models.detector import Detector
from models.modeling import CheckpointMetadata, build, load_checkpoint, load_config, save_checkpoint
from models.train import TrainOptions, train


@pytest.mark.parametrize(
    "name,heads,depth",
    [
        ("cascade_rcnn_R18n_FPN_compact", CascadeROIHeads, 18),
        ("faster_rcnn_R18n_FPN_compact", StandardROIHeads, 18),
        ("cascade_rcnn_R18n_FPN_cxr256", CascadeROIHeads, 18),
        ("faster_rcnn_R18n_FPN_cxr256", StandardROIHeads, 18),
        ("cascade_rcnn_R_101_FPN", CascadeROIHeads, 101),
    ],
)
def test_configs_build_with_detectron2(name, heads, depth):
    cfg = load_config(name)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1 and not cfg.MODEL.MASK_ON
    assert cfg.MODEL.RESNETS.DEPTH == depth
    model = build(cfg)
    assert type(model.roi_heads) is heads
    if heads is CascadeROIHeads:
        assert tuple(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS) == (0.5, 0.6, 0.7)
        assert model.roi_heads.num_cascade_stages == 3
    if depth == 18:
        assert sum(p.numel() for p in model.parameters()) < 10_000_000


def _metadata() -> CheckpointMetadata:
    return CheckpointMetadata(version="9.9.9", input_size=384, score_threshold=0.3, data_fingerprint="ab" * 32)


def _phantom_ds() -> pydicom.Dataset:
    return phantoms.to_dataset(phantoms.generate(2, 0, size=512), phantoms.device_fleet(1, 2)[0])


def test_checkpoint_round_trip_keeps_weights_config_and_metadata(tmp_path):
    cfg = load_config("faster_rcnn_R18n_FPN_compact")
    torch.manual_seed(0)
    model = build(cfg)
    meta = _metadata()
    path = save_checkpoint(tmp_path / "m.pth", model, cfg, meta, half=True)
    loaded, cfg2, meta2 = load_checkpoint(path)
    assert meta2 == meta and meta2.device_uid.startswith("2.25.") or meta2.device_uid == meta.device_uid
    assert cfg2.MODEL.ROI_HEADS.NAME == "StandardROIHeads"  # the architecture travels with the weights
    for k, v in model.state_dict().items():
        w = loaded.state_dict()[k]
        assert w.dtype == v.dtype
        assert torch.allclose(w.float(), v.float(), atol=1e-3, rtol=1e-3)
    det = Detector(loaded, cfg2, meta2, "cpu", meta2.score_threshold)
    info = det.info
    assert (info.version, info.device_uid, info.score_threshold) == ("9.9.9", meta.device_uid, 0.3)
    assert info.classes == ("opacity",) and info.extra["data_fingerprint"] == "ab" * 32


def test_foreign_detectron2_pth_and_model_zoo_pkl_load(tmp_path):
    cfg = load_config(None)
    torch.manual_seed(1)
    model = build(cfg).eval()
    plain = tmp_path / "other.pth"
    torch.save({"model": model.state_dict()}, plain)
    zoo = tmp_path / "zoo.pkl"
    with open(zoo, "wb") as fh:
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, fh)
    ds = _phantom_ds()
    outputs = []
    for path in (plain, zoo):
        det = Detector.load(path, device="cpu", score_threshold=0.0)
        assert det.info.version == "unknown" and det.info.name == path.stem
        # The same file always reports the same Device UID (derived from its sha256).
        assert Detector.load(path, device="cpu").info.device_uid == det.info.device_uid
        for k, v in model.state_dict().items():
            assert torch.equal(det.model.state_dict()[k], v), k
        outputs.append(det.predict([ds]))
    assert outputs[0] == outputs[1]


def test_training_writes_metadata_and_resumes_the_same_run(tmp_path):
    common = dict(
        phantoms=4,
        seed=3,
        val_phantoms=0,
        threads=2,
        device="cpu",
        opts=["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "1"],
    )
    first = train(TrainOptions(output_dir=tmp_path / "a", max_iter=2, **common), log=lambda s: None)
    meta = first["metadata"]
    assert meta["iterations"] == 2 and meta["classes"] == ["opacity"] and meta["input_size"] == 384
    assert len(meta["data_fingerprint"]) == 64 and meta["trained_on"] == "phantoms n=4 seed=3"
    resumed = train(TrainOptions(output_dir=tmp_path / "a", max_iter=4, resume=True, **common), log=lambda s: None)
    assert resumed["started_at_iteration"] == 2 and resumed["iterations"] == 4
    assert resumed["metadata"]["device_uid"] == meta["device_uid"]  # same training run
    # a later sitting adds to the run's training time and says where it took over
    assert float(resumed["metadata"]["extra"]["train_seconds_total"]) >= float(meta["extra"]["train_seconds_total"])
    assert resumed["metadata"]["extra"]["resumed_from_iteration"] == "2"
    assert resumed["metadata"]["data_fingerprint"] == meta["data_fingerprint"]
    other = train(TrainOptions(output_dir=tmp_path / "b", max_iter=1, **common), log=lambda s: None)
    assert other["metadata"]["device_uid"] != meta["device_uid"]  # a new run is a new device
    assert other["metadata"]["data_fingerprint"] == meta["data_fingerprint"]  # same seed, same data
    # The final checkpoint loads as a Detector that reports the run's metadata.
    det = Detector.load(tmp_path / "a" / "model_final.pth", device="cpu")
    assert det.info.device_uid == meta["device_uid"]
    result = det.predict([_phantom_ds()])
    assert len(result) == 1 and all(d.score >= 0.4 for d in result[0])
    assert np.isfinite([d.box for d in result[0]]).all() if result[0] else True


def test_siim_training_chooses_its_threshold_and_the_checkpoint_carries_it(tmp_path):
    images = []
    for k in range(12):
        box = [(300.0 + 40 * k, 400.0, 600.0, 900.0)] if k % 3 else []
        images.append((f"im{k:02d}", f"st{k // 2:02d}", 2400, 2000, box))
    root = make_siim(tmp_path / "siim", images)
    summary = train(
        TrainOptions(output_dir=tmp_path / "run", siim=root, val_fraction=0.34, seed=2, max_iter=3, threads=2,
                     device="cpu", config="cascade_rcnn_R18n_FPN_cxr256",
                     opts=["SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "0"]),
        log=lambda s: None,
    )
    meta = summary["metadata"]
    assert meta["input_size"] == 256 and meta["trained_on"] == "siim dir=siim val_fraction=0.34 seed=2"
    assert meta["extra"]["split"] == "by study, val_fraction=0.34, seed=2"
    rule = meta["extra"]["threshold_rule"]
    assert rule.startswith("best box F1 at IoU 0.5 on the validation set")
    # The node's default (model.score_threshold null) is the checkpoint's own threshold; a config value wins.
    final = tmp_path / "run" / "model_final.pth"
    assert Detector.load(final, device="cpu").score_threshold == meta["score_threshold"]
    assert Detector.load(final, device="cpu", score_threshold=0.77).info.score_threshold == 0.77
    # Fixed by the caller: no choosing, the value is kept.
    fixed = train(
        TrainOptions(output_dir=tmp_path / "fixed", siim=root, val_fraction=0.34, seed=2, max_iter=1, threads=2,
                     device="cpu", config="cascade_rcnn_R18n_FPN_cxr256", score_threshold=0.35,
                     opts=["SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0"]),
        log=lambda s: None,
    )
    assert fixed["metadata"]["score_threshold"] == 0.35 and "threshold_rule" not in fixed["metadata"]["extra"]
