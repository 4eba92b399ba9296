"""Gradient clipping of the whole model's norm (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"``).

Detectron2's ``"norm"`` clips every parameter's gradient on its own. SIPE (chenqi1126/SIPE,
``train_resnet50_SIPE.py``), whose training setting PLDA's ResNet-50 row follows, clips the norm
of all gradients together to 1 before each step; ``"full_model"`` does that with
``CLIP_VALUE`` as the maximum norm and ``NORM_TYPE`` as the norm.
"""

from __future__ import annotations

import itertools

import torch

__all__ = ["add_full_model_gradient_clipping"]


def add_full_model_gradient_clipping(
    optimizer: torch.optim.Optimizer, max_norm: float, norm_type: float = 2.0
) -> torch.optim.Optimizer:
    """Make ``optimizer.step`` first scale all its parameters' gradients so that their joint
    ``norm_type``-norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_``). The
    optimizer's class is replaced by a subclass, so its state dict and ``isinstance`` checks
    are unchanged. Returns the same optimizer."""
    if max_norm <= 0:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_VALUE must be > 0, got {max_norm}")
    base = type(optimizer)

    def step(self, closure=None):
        params = [p for p in itertools.chain(*(g["params"] for g in self.param_groups))]
        torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
        return base.step(self, closure)

    optimizer.__class__ = type(base.__name__ + "FullModelClip", (base,), {"step": step})
    return optimizer
