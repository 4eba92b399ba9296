"""Detectron2's ResNet with the res5 of IRN's and SIPE's CAM networks.

IRN (Ahn et al., CVPR 2019; jiwoon-ahn/irn ``net/resnet50_cam.py``) and SIPE (Chen et al., CVPR
2022; chenqi1126/SIPE ``network/resnet50_SIPE.py``) reach output stride 16 by building the
torchvision ResNet-50 with strides (2, 2, 2, 1): res5 keeps res4's resolution but its 3x3 convs
are *not* dilated. Detectron2's ``RES5_DILATION 2`` gives the same resolution with dilation 2.
``MODEL.RESNETS.RES5_CONV_DILATION`` sets the dilation of res5's 3x3 convs of a stride-1 res5
(``RES5_DILATION 2``): 1 is IRN's / SIPE's network, 0 keeps Detectron2's (= 2).
"""

from __future__ import annotations

from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import build_resnet_backbone

__all__ = ["build_resnet_cam_backbone"]


@BACKBONE_REGISTRY.register()
def build_resnet_cam_backbone(cfg, input_shape):
    """``build_resnet_backbone`` (every ``MODEL.RESNETS`` key as Detectron2's), then res5's 3x3
    convs set to ``MODEL.RESNETS.RES5_CONV_DILATION`` (padding = dilation, so the size is
    kept). The pretrained weights are the same tensors either way (a dilation has none)."""
    dilation = int(cfg.MODEL.RESNETS.RES5_CONV_DILATION)
    if dilation == 0:
        return build_resnet_backbone(cfg, input_shape)
    if dilation < 0:
        raise ValueError(f"MODEL.RESNETS.RES5_CONV_DILATION must be >= 0, got {dilation}")
    if cfg.MODEL.RESNETS.RES5_DILATION != 2:
        raise ValueError(
            "MODEL.RESNETS.RES5_CONV_DILATION applies to a stride-1 res5: set "
            f"MODEL.RESNETS.RES5_DILATION 2 (got {cfg.MODEL.RESNETS.RES5_DILATION})"
        )
    backbone = build_resnet_backbone(cfg, input_shape)
    if not hasattr(backbone, "res5"):
        raise ValueError("MODEL.RESNETS.RES5_CONV_DILATION needs a backbone with res5")
    for block in backbone.res5:
        block.conv2.dilation = (dilation, dilation)
        block.conv2.padding = (dilation, dilation)
    return backbone
