"""IRNet's two branches on multi-level backbone features (Ahn, Cho & Kwak, CVPR 2019).

Both branches read every level named in ``in_features`` and predict at the finest of their strides
(stride 4 for a ResNet's ``stem``/``res2``). As in the paper's network:

- **class-boundary branch** (:class:`IRNBoundaryHead`): each level -> 1x1 conv (no bias) ->
  GroupNorm -> upsampled to the finest stride -> ReLU; the levels are concatenated and a 1x1 conv
  with bias gives one boundary logit per pixel. Ours, off by default (``context_convs``, the
  key ``MODEL.IRN.EDGE_CONTEXT_CONVS``): that many 3x3 conv (no bias) -> GroupNorm -> ReLU layers
  on the concatenated levels before the 1x1 predictor, so that the branch compares neighbouring
  cells (the official branch sees each cell alone, through 1x1 convolutions).
- **displacement branch** (:class:`IRNDisplacementHead`): each level -> 1x1 conv -> GroupNorm ->
  ReLU; the coarse levels (stride above the finest) are first brought to the finest *coarse*
  stride and fused by a 1x1 conv + GroupNorm, upsampled to the finest stride, ReLU; that and the
  fine levels are concatenated -> 1x1 conv -> GroupNorm -> ReLU -> 1x1 conv (no bias) -> the 2
  channels (dy, dx) of the displacement to the instance centroid, in units of output pixels.
  At inference the mean displacement ``dp_mean`` (a buffer, zero unless set after training as the
  official code does) is subtracted.

Upsampling is bilinear by the integer stride ratio, then cropped to the target size (the
backbones here give ``ceil(H / stride)`` maps, so the upsampled map is never smaller).
GroupNorm groups: ``min(16, channels // 8)`` (the paper's network: 4 for 32 channels, 8 for 64, 16
for 128 and 256), reduced until it divides the channels.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from torch import nn

__all__ = ["IRNBoundaryHead", "IRNDisplacementHead", "gn_groups", "resize_to"]


def gn_groups(channels: int) -> int:
    """GroupNorm groups for ``channels`` (see the module docstring)."""
    g = max(1, min(16, channels // 8))
    while channels % g:
        g -= 1
    return g


def resize_to(x: torch.Tensor, factor: int, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling by an integer ``factor``, cropped (or, if short, resized) to ``size``."""
    if factor > 1:
        x = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    if x.shape[-2] < size[0] or x.shape[-1] < size[1]:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[..., : size[0], : size[1]]


class _Project(nn.Module):
    """1x1 conv (no bias) -> GroupNorm -> [bilinear x factor + crop] -> ReLU."""

    def __init__(self, cin: int, cout: int, factor: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.norm = nn.GroupNorm(gn_groups(cout), cout)
        self.factor = int(factor)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if size is not None:
            x = resize_to(x, self.factor, size)
        return F.relu(x)


def _strides(input_shape: dict[str, ShapeSpec], in_features: Sequence[str]) -> list[int]:
    missing = [f for f in in_features if f not in input_shape]
    if missing:
        raise KeyError(
            f"MODEL.IRN.IN_FEATURES {list(in_features)}: the backbone has no {missing} "
            f"(it gives {sorted(input_shape)})"
        )
    strides = [int(input_shape[f].stride) for f in in_features]
    for f, s in zip(in_features, strides):
        if s % min(strides):
            raise ValueError(
                f"IRN feature {f} has stride {s}, not a multiple of the finest ({min(strides)})"
            )
    return strides


class IRNBoundaryHead(nn.Module):
    """Class-boundary logits (N, 1, h, w) at the finest input stride."""

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        in_features: Sequence[str],
        dim: int = 32,
        context_convs: int = 0,
    ):
        super().__init__()
        self.in_features = tuple(in_features)
        strides = _strides(input_shape, self.in_features)
        self.stride = min(strides)
        self.levels = nn.ModuleList(
            _Project(input_shape[f].channels, dim, s // self.stride)
            for f, s in zip(self.in_features, strides)
        )
        width = dim * len(self.in_features)
        self.context = nn.Sequential(
            *(
                layer
                for _ in range(int(context_convs))
                for layer in (
                    nn.Conv2d(width, width, 3, padding=1, bias=False),
                    nn.GroupNorm(gn_groups(width), width),
                    nn.ReLU(inplace=True),
                )
            )
        )
        self.predictor = nn.Conv2d(width, 1, 1, bias=True)

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        size = self._size(features)
        x = [m(features[f], size) for m, f in zip(self.levels, self.in_features)]
        return self.predictor(self.context(torch.cat(x, dim=1)))

    def _size(self, features) -> tuple[int, int]:
        fine = [f for f, m in zip(self.in_features, self.levels) if m.factor == 1]
        return tuple(features[fine[0]].shape[-2:])


class IRNDisplacementHead(nn.Module):
    """Displacement field (N, 2, h, w) (dy, dx in output pixels) at the finest input stride."""

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        in_features: Sequence[str],
        dims: Sequence[int] = (64, 128, 256, 256, 256),
        merge_dim: int = 256,
        hidden_dim: int = 256,
    ):
        super().__init__()
        self.in_features = tuple(in_features)
        if len(dims) != len(self.in_features):
            raise ValueError(
                f"MODEL.IRN.DP_DIMS {list(dims)} must give one width per IN_FEATURES entry "
                f"{list(self.in_features)}"
            )
        strides = _strides(input_shape, self.in_features)
        self.stride = min(strides)
        self.fine = [i for i, s in enumerate(strides) if s == self.stride]
        self.coarse = [i for i, s in enumerate(strides) if s > self.stride]
        self.coarse_stride = min((strides[i] for i in self.coarse), default=self.stride)
        # the level whose map size the coarse levels are fused at
        self.coarse_ref = next((i for i in self.coarse if strides[i] == self.coarse_stride), None)
        self.levels = nn.ModuleList(
            _Project(
                input_shape[f].channels,
                d,
                (s // self.coarse_stride) if s > self.stride else 1,
            )
            for f, s, d in zip(self.in_features, strides, dims)
        )
        fused = 0
        if self.coarse:
            self.merge = _Project(
                sum(dims[i] for i in self.coarse), merge_dim, self.coarse_stride // self.stride
            )
            fused = merge_dim
        self.hidden = _Project(sum(dims[i] for i in self.fine) + fused, hidden_dim)
        self.predictor = nn.Conv2d(hidden_dim, 2, 1, bias=False)
        self.register_buffer("dp_mean", torch.zeros(2))

    def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = [features[f] for f in self.in_features]
        size = tuple(feats[self.fine[0]].shape[-2:])
        parts = [self.levels[i](feats[i], size) for i in self.fine]
        if self.coarse:
            csize = tuple(feats[self.coarse_ref].shape[-2:])
            coarse = [self.levels[i](feats[i], csize) for i in self.coarse]
            parts.append(self.merge(torch.cat(coarse, dim=1), size))
        dp = self.predictor(self.hidden(torch.cat(parts, dim=1), size))
        if not self.training:
            dp = dp - self.dp_mean.view(1, 2, 1, 1)
        return dp
