"""Model utilities shared by the training, inference and labeling code."""

from __future__ import annotations

import copy

import torch
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["unwrap_model", "fold_batchnorm"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of ``model`` whose BatchNorms are folded into the preceding convolutions.

    Covers Detectron2's ``Conv2d`` with a ``norm`` (``BatchNorm2d`` or ``FrozenBatchNorm2d``), the
    building block of its ResNets and of the tiny backbone; other modules are copied unchanged.
    In eval mode the copy computes the same function (up to float rounding) with one memory pass
    less per convolution. ``model`` itself is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        bn = getattr(m, "norm", None)
        if not isinstance(m, D2Conv2d) or not isinstance(bn, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            continue
        if isinstance(bn, nn.BatchNorm2d) and not bn.track_running_stats:
            continue  # batch statistics at test time: nothing to fold
        w = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
        b = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        scale = w / torch.sqrt(bn.running_var + bn.eps)
        bias = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
        m.weight.copy_(m.weight * scale.view(-1, 1, 1, 1))
        m.bias = nn.Parameter((bias - bn.running_mean) * scale + b, requires_grad=False)
        m.norm = None
    return folded
