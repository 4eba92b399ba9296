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
def _fold_into(conv: nn.Conv2d, bn: nn.Module) -> bool:
    """Fold an eval-mode ``bn`` (``BatchNorm2d`` with running statistics or
    ``FrozenBatchNorm2d``) into ``conv``'s weight and bias in place; False if it cannot be."""
    if not isinstance(bn, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        return False
    if isinstance(bn, nn.BatchNorm2d) and not bn.track_running_stats:
        return False  # batch statistics at test time: nothing to fold
    w = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    b = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = w / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + b, requires_grad=False)
    return True


@torch.no_grad()
def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of ``model`` whose BatchNorms are folded into the preceding convolutions.

    Covers Detectron2's ``Conv2d`` with a ``norm`` (``BatchNorm2d`` or ``FrozenBatchNorm2d``), the
    building block of its ResNets and of the tiny backbone, and the (convolution, norm) attribute
    pairs a module lists in ``FOLDABLE_CONV_BN`` (the EfficientNet blocks, whose norms are
    separate modules); the folded norms become ``nn.Identity``. Other modules are copied
    unchanged. In eval mode the copy computes the same function (up to float rounding) with one
    memory pass less per convolution. ``model`` itself is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, D2Conv2d) and getattr(m, "norm", None) is not None:
            if _fold_into(m, m.norm):
                m.norm = None
        for conv_name, bn_name in getattr(m, "FOLDABLE_CONV_BN", ()):
            conv, bn = getattr(m, conv_name, None), getattr(m, bn_name, None)
            if isinstance(conv, nn.Conv2d) and bn is not None and _fold_into(conv, bn):
                setattr(m, bn_name, nn.Identity())
    return folded
