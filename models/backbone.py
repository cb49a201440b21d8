"""A narrow ResNet-18/34 + FPN backbone, registered with Detectron2's backbone registry.

Detectron2's stock ResNet insists on 64 channels after the stem for BasicBlock depths (18, 34). For
a CPU-only node that is more network than a one-class opacity detector needs: res5 alone holds 8 M
of ResNet-18's 11 M parameters. This backbone is Detectron2's own ResNet and FPN built from the same
parts (``BasicStem``, ``BasicBlock``, ``ResNet.make_stage``), with ``MODEL.RESNETS.STEM_OUT_CHANNELS``
and ``RES2_OUT_CHANNELS`` honoured for BasicBlock depths too. Select it in a config with
``MODEL.BACKBONE.NAME: build_narrow_resnet_fpn_backbone``.
"""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

_BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def build_narrow_resnet(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """ResNet-18/34 with BasicBlock and configurable widths (stem, then res2 doubling per stage)."""
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _BLOCKS:
        raise ValueError(f"MODEL.RESNETS.DEPTH: 18 or 34 for the narrow ResNet (got {depth})")
    norm = cfg.MODEL.RESNETS.NORM
    stem = BasicStem(in_channels=input_shape.channels, out_channels=cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, norm=norm)
    out_features = cfg.MODEL.RESNETS.OUT_FEATURES
    in_channels = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS
    out_channels = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    stages = []
    max_stage = max({"res2": 2, "res3": 3, "res4": 4, "res5": 5}[f] for f in out_features)
    for idx, stage_idx in enumerate(range(2, max_stage + 1)):
        first_stride = 1 if stage_idx == 2 else 2
        blocks = ResNet.make_stage(
            block_class=BasicBlock,
            num_blocks=_BLOCKS[depth][idx],
            stride_per_block=[first_stride] + [1] * (_BLOCKS[depth][idx] - 1),
            in_channels=in_channels,
            out_channels=out_channels,
            norm=norm,
        )
        stages.append(blocks)
        in_channels = out_channels
        out_channels *= 2
    return ResNet(stem, stages, out_features=out_features).freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_narrow_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> Backbone:
    """The narrow ResNet under Detectron2's FPN (same options as ``build_resnet_fpn_backbone``)."""
    bottom_up = build_narrow_resnet(cfg, input_shape)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
