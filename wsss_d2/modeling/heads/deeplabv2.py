"""DeepLab-v2 segmentation head (LargeFOV and ASPP), for Detectron2's ``SemanticSegmentor``.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2018. The WSSS literature trains this head on
pseudo labels with a cross-entropy that ignores unlabelled pixels (255).

Variants (``MODEL.SEG_HEAD.TYPE``):

- ``"LargeFOV"`` with ``CONV_DIMS > 0``: fc6 (3x3, dilation ``FOV_DILATION`` = 12) -> ReLU ->
  dropout -> fc7 (1x1) -> ReLU -> dropout -> 1x1 classifier, as DeepLab-v1/v2 LargeFOV on VGG-16.
- ``"LargeFOV"`` with ``CONV_DIMS == 0``: the classifier itself is one 3x3 conv with dilation 12
  on the backbone features: the ResNet-101 LargeFOV used by CIAN and most WSSS segmentors.
- ``"ASPP"``: parallel branches with dilations ``DILATIONS`` (6, 12, 18, 24) whose logits are
  summed; each branch is a 3x3 dilated classifier (``CONV_DIMS == 0``, DeepLab-v2 ResNet-101) or
  fc6/fc7/classifier (``CONV_DIMS > 0``, DeepLab-v2 VGG-16).

The head is split into :meth:`embed` (features right before the classifier; identity for ASPP and
for the ResNet LargeFOV), :meth:`predict` (the classifier), :meth:`layers` (both) and
:meth:`losses`, so heads that insert a module before the classifier (CIAN) reuse every piece.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

__all__ = ["DeepLabV2Head"]


def _init_new_layer(m: nn.Module) -> None:
    # the papers' init for the newly added layers: N(0, 0.01), zero bias
    for c in m.modules():
        if isinstance(c, nn.Conv2d):
            nn.init.normal_(c.weight, std=0.01)
            if c.bias is not None:
                nn.init.zeros_(c.bias)


def _fc67(cin: int, dims: int, dilation: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, dims, 3, padding=dilation, dilation=dilation),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Conv2d(dims, dims, 1),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
    )


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV2Head(nn.Module):
    """DeepLab-v2 LargeFOV / ASPP head.

    Input: ``features[in_feature]`` (N, C, h, w) at stride ``common_stride``.
    Training output: ``(None, {"loss_sem_seg": scalar})``: the logits are upsampled bilinearly to
    the target size (N, H, W) and scored with cross-entropy ignoring ``ignore_value``.
    Inference output: ``(logits (N, K+1, h * common_stride, w * common_stride), {})``, which
    ``SemanticSegmentor`` crops to each image and resizes to its original size.
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        in_feature: str,
        num_classes: int,
        head_type: str = "LargeFOV",
        conv_dims: int = 1024,
        fov_dilation: int = 12,
        aspp_dilations: Sequence[int] = (6, 12, 18, 24),
        dropout: float = 0.5,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        common_stride: int = 8,
    ):
        """
        Args:
            input_shape: backbone output shapes; ``input_shape[in_feature]`` is read.
            num_classes: K+1 (background included).
            head_type: "LargeFOV" or "ASPP".
            conv_dims: width of fc6/fc7; 0 = the classifier is the dilated 3x3 conv itself.
        """
        super().__init__()
        if in_feature not in input_shape:
            raise KeyError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES: '{in_feature}' is not a backbone "
                f"output; available: {sorted(input_shape)}"
            )
        if head_type not in ("LargeFOV", "ASPP"):
            raise ValueError(f"MODEL.SEG_HEAD.TYPE must be 'LargeFOV' or 'ASPP', got '{head_type}'")
        cin = input_shape[in_feature].channels
        self.in_feature = in_feature
        self.num_classes = num_classes
        self.head_type = head_type
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.common_stride = common_stride

        if head_type == "LargeFOV" and conv_dims > 0:
            self.fc67 = _fc67(cin, conv_dims, fov_dilation, dropout)
            self.classifier = nn.Conv2d(conv_dims, num_classes, 1)
            self.embed_channels = conv_dims
        elif head_type == "LargeFOV":
            self.fc67 = None
            self.classifier = nn.Conv2d(
                cin, num_classes, 3, padding=fov_dilation, dilation=fov_dilation
            )
            self.embed_channels = cin
        else:
            self.fc67 = None
            self.embed_channels = cin
            if conv_dims > 0:
                branches = [
                    nn.Sequential(
                        _fc67(cin, conv_dims, d, dropout), nn.Conv2d(conv_dims, num_classes, 1)
                    )
                    for d in aspp_dilations
                ]
            else:
                branches = [
                    nn.Conv2d(cin, num_classes, 3, padding=d, dilation=d) for d in aspp_dilations
                ]
            self.classifier = nn.ModuleList(branches)
        _init_new_layer(self)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        s, h = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.SEG_HEAD
        if len(s.IN_FEATURES) != 1:
            raise ValueError(
                "DeepLabV2Head reads one feature; MODEL.SEM_SEG_HEAD.IN_FEATURES="
                f"{list(s.IN_FEATURES)}"
            )
        return {
            "input_shape": input_shape,
            "in_feature": s.IN_FEATURES[0],
            "num_classes": s.NUM_CLASSES,
            "head_type": h.TYPE,
            "conv_dims": h.CONV_DIMS,
            "fov_dilation": h.FOV_DILATION,
            "aspp_dilations": tuple(h.DILATIONS),
            "dropout": h.DROPOUT,
            "ignore_value": s.IGNORE_VALUE,
            "loss_weight": s.LOSS_WEIGHT,
            "common_stride": s.COMMON_STRIDE,
        }

    # ------------------------------------------------------------------ pieces
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) backbone feature -> (N, embed_channels, h, w) right before the classifier."""
        return x if self.fc67 is None else self.fc67(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(N, embed_channels, h, w) -> (N, K+1, h, w) logits."""
        if isinstance(self.classifier, nn.ModuleList):
            return sum(b(x) for b in self.classifier)
        return self.classifier(x)

    def layers(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """Backbone features -> (N, K+1, h, w) logits at feature resolution."""
        return self.predict(self.embed(features[self.in_feature]))

    def losses(
        self,
        predictions: torch.Tensor,
        targets: torch.Tensor,
        weight: float | None = None,
        name: str = "loss_sem_seg",
    ) -> dict:
        """Cross-entropy of (N, K+1, h, w) logits against (N, H, W) labels (``ignore_value``).

        The logits are upsampled to the label size first, so no label is lost to downsampling.
        A batch whose labels are all ignored gives a zero loss (with a graph), never NaN.
        """
        predictions = upsample_to(predictions, targets.shape[-2:])
        valid = targets != self.ignore_value
        if not bool(valid.any()):
            loss = predictions.sum() * 0.0
        else:
            loss = F.cross_entropy(predictions, targets, ignore_index=self.ignore_value)
        return {name: loss * (self.loss_weight if weight is None else weight)}

    def forward(self, features: dict[str, torch.Tensor], targets: torch.Tensor | None = None):
        x = self.layers(features)
        if self.training:
            if targets is None:
                raise ValueError(
                    "DeepLabV2Head needs 'sem_seg' targets in training: does the "
                    "training dataset have pseudo labels (WSSS.PSEUDO_ROUND)?"
                )
            return None, self.losses(x, targets)
        x = F.interpolate(x, scale_factor=self.common_stride, mode="bilinear", align_corners=False)
        return x, {}


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size``; a no-op when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
