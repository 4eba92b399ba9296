"""DeepLab-v2 segmentation head (LargeFOV and ASPP), for Detectron2's ``SemanticSegmentor``.

Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
Convolution, and Fully Connected CRFs", TPAMI 2018. The WSSS literature trains this head on
pseudo labels with a cross-entropy that ignores unlabelled pixels (255).

Two heads, registered in ``SEM_SEG_HEADS_REGISTRY`` (``MODEL.SEM_SEG_HEAD.NAME``):

- ``DeepLabLargeFOVHead``: with ``MODEL.SEG_HEAD.CONV_DIMS > 0`` fc6 (3x3, dilation
  ``FOV_DILATION`` = 12) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> 1x1 classifier, as
  DeepLab-v1/v2 LargeFOV on VGG-16; with ``CONV_DIMS == 0`` the classifier itself is one 3x3
  conv with dilation 12 on the backbone features: the ResNet-101 LargeFOV used by CIAN and most
  WSSS segmentors.
- ``DeepLabASPPHead``: parallel branches with dilations ``DILATIONS`` (6, 12, 18, 24) whose
  logits are summed; each branch is a 3x3 dilated classifier (``CONV_DIMS == 0``, DeepLab-v2
  ResNet-101) or fc6/fc7/classifier (``CONV_DIMS > 0``, DeepLab-v2 VGG-16).

Both share :class:`DeepLabV2Head`, split into :meth:`embed` (features right before the
classifier; identity for ASPP and for the ResNet LargeFOV), :meth:`predict` (the classifier),
:meth:`layers` (both) and :meth:`losses`, so heads that insert a module before the classifier
(CIAN) reuse every piece.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

__all__ = ["DeepLabV2Head", "DeepLabLargeFOVHead", "DeepLabASPPHead", "upsample_to"]


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


class DeepLabV2Head(nn.Module):
    """The pieces every DeepLab-v2 head shares; :class:`DeepLabLargeFOVHead` and
    :class:`DeepLabASPPHead` (both registered in ``SEM_SEG_HEADS_REGISTRY``) build the layers.

    Input: ``features[in_feature]`` (N, C, h, w) at stride ``common_stride``.
    Training output: ``(None, {"loss_sem_seg": scalar})``: the logits are upsampled bilinearly to
    the target size (N, H, W) and scored with cross-entropy ignoring ``ignore_value``.
    Inference output: ``(logits (N, K+1, h * common_stride, w * common_stride), {})``, which
    ``SemanticSegmentor`` crops to each image and resizes to its original size.
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        in_feature: str,
        num_classes: int,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        common_stride: int = 8,
    ):
        """
        Args:
            input_shape: backbone output shapes; ``input_shape[in_feature]`` is read.
            num_classes: K+1 (background included).
        """
        super().__init__()
        if in_feature not in input_shape:
            raise KeyError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES: '{in_feature}' is not a backbone "
                f"output; available: {sorted(input_shape)}"
            )
        self.in_channels = input_shape[in_feature].channels
        self.in_feature = in_feature
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.common_stride = common_stride
        self.fc67 = None  # the layers :meth:`embed` applies (None: identity)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        s, h = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.SEG_HEAD
        if len(s.IN_FEATURES) != 1:
            raise ValueError(
                f"{cls.__name__} reads one feature; MODEL.SEM_SEG_HEAD.IN_FEATURES="
                f"{list(s.IN_FEATURES)}"
            )
        return {
            "input_shape": input_shape,
            "in_feature": s.IN_FEATURES[0],
            "num_classes": s.NUM_CLASSES,
            "conv_dims": h.CONV_DIMS,
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


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabLargeFOVHead(DeepLabV2Head):
    """DeepLab-v1/v2 LargeFOV: with ``conv_dims > 0`` fc6 (3x3, dilation ``fov_dilation``) ->
    ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout (:meth:`embed`) -> 1x1 classifier, as on
    VGG-16; with ``conv_dims == 0`` the classifier itself is one 3x3 conv with dilation
    ``fov_dilation`` on the backbone features: the ResNet-101 LargeFOV of CIAN and most WSSS
    segmentors."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        conv_dims: int = 1024,
        fov_dilation: int = 12,
        dropout: float = 0.5,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        cin, k = self.in_channels, self.num_classes
        if conv_dims > 0:
            self.fc67 = _fc67(cin, conv_dims, fov_dilation, dropout)
            self.classifier = nn.Conv2d(conv_dims, k, 1)
            self.embed_channels = conv_dims
        else:
            self.classifier = nn.Conv2d(cin, k, 3, padding=fov_dilation, dilation=fov_dilation)
            self.embed_channels = cin
        _init_new_layer(self)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        return {
            **super().from_config(cfg, input_shape),
            "fov_dilation": cfg.MODEL.SEG_HEAD.FOV_DILATION,
        }


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabASPPHead(DeepLabV2Head):
    """DeepLab-v2 ASPP: parallel branches with dilations ``aspp_dilations`` (6, 12, 18, 24) whose
    logits are summed; each branch is a 3x3 dilated classifier (``conv_dims == 0``, DeepLab-v2
    ResNet-101) or fc6/fc7/classifier (``conv_dims > 0``, DeepLab-v2 VGG-16). :meth:`embed` is
    the identity."""

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        conv_dims: int = 0,
        aspp_dilations: Sequence[int] = (6, 12, 18, 24),
        dropout: float = 0.5,
        **kwargs,
    ):
        super().__init__(input_shape, **kwargs)
        cin, k = self.in_channels, self.num_classes
        self.embed_channels = cin
        if conv_dims > 0:
            branches = [
                nn.Sequential(_fc67(cin, conv_dims, d, dropout), nn.Conv2d(conv_dims, k, 1))
                for d in aspp_dilations
            ]
        else:
            branches = [nn.Conv2d(cin, k, 3, padding=d, dilation=d) for d in aspp_dilations]
        self.classifier = nn.ModuleList(branches)
        _init_new_layer(self)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of the branches' (N, K+1, h, w) logits."""
        return sum(b(x) for b in self.classifier)

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        return {
            **super().from_config(cfg, input_shape),
            "aspp_dilations": tuple(cfg.MODEL.SEG_HEAD.DILATIONS),
        }


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size``; a no-op when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
