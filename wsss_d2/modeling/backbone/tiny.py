"""A small residual CNN backbone for CPU tests and the generated toy data."""

from __future__ import annotations

import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

__all__ = ["TinyBackbone", "build_tiny_backbone"]


class _Stage(nn.Module):
    """conv3x3 (stride) -> conv3x3 (dilation) with a 1x1 projected shortcut."""

    def __init__(self, cin, cout, stride, dilation, norm):
        super().__init__()
        self.conv1 = Conv2d(
            cin, cout, 3, stride=stride, padding=1, bias=not norm, norm=get_norm(norm, cout)
        )
        self.conv2 = Conv2d(
            cout,
            cout,
            3,
            padding=dilation,
            dilation=dilation,
            bias=not norm,
            norm=get_norm(norm, cout),
        )
        self.short = Conv2d(cin, cout, 1, stride=stride, bias=not norm, norm=get_norm(norm, cout))

    def forward(self, x):
        y = F.relu(self.conv1(x))
        return F.relu(self.conv2(y) + self.short(x))


class TinyBackbone(Backbone):
    """Stem (stride 2) + three residual stages; features "res2".."res5" (res5 = last stage).

    Output stride 4, 8 or 16: the stages after the stride budget is spent keep their resolution
    and rely on the dilations for context, as a dilated ResNet does.
    """

    def __init__(self, widths=(16, 32, 64, 128), dilations=(1, 2, 4), output_stride=8, norm="BN"):
        super().__init__()
        if output_stride not in (4, 8, 16):
            raise ValueError(f"MODEL.TINY.OUTPUT_STRIDE must be 4, 8 or 16, got {output_stride}")
        self.stem = Conv2d(
            3, widths[0], 3, stride=2, padding=1, bias=not norm, norm=get_norm(norm, widths[0])
        )
        stride = 2
        self.stages = nn.ModuleList()
        self._out_feature_strides = {}
        self._out_feature_channels = {}
        names = ["res3", "res4", "res5"]
        for i, (cin, cout, dil) in enumerate(zip(widths[:-1], widths[1:], dilations)):
            s = 2 if stride < output_stride else 1
            stride *= s
            self.stages.append(_Stage(cin, cout, s, dil, norm))
            self._out_feature_strides[names[i]] = stride
            self._out_feature_channels[names[i]] = cout
        self._out_features = ["res5"]

    def forward(self, x):
        x = F.relu(self.stem(x))
        out = {}
        for name, stage in zip(["res3", "res4", "res5"], self.stages):
            x = stage(x)
            out[name] = x
        return out

    def output_shape(self):
        return {
            n: ShapeSpec(
                channels=self._out_feature_channels[n], stride=self._out_feature_strides[n]
            )
            for n in ["res3", "res4", "res5"]
        }


@BACKBONE_REGISTRY.register()
def build_tiny_backbone(cfg, input_shape):
    t = cfg.MODEL.TINY
    return TinyBackbone(tuple(t.WIDTHS), tuple(t.DILATIONS), t.OUTPUT_STRIDE, t.NORM)
