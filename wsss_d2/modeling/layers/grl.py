"""Gradient reversal layer (Ganin & Lempitsky, "Unsupervised Domain Adaptation by
Backpropagation", ICML 2015): identity forward, gradient times ``-coeff`` backward, so that a
domain classifier behind it is trained to separate domains while the features in front of it are
trained to confuse it, in one backward pass.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GradientReversalFunction", "GradientReversal", "grl_schedule", "grad_reverse"]


class GradientReversalFunction(torch.autograd.Function):
    """``y = x``; ``dL/dx = -coeff * dL/dy``. ``coeff`` is a Python float (not differentiated)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = float(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Functional form of :class:`GradientReversal`."""
    return GradientReversalFunction.apply(x, coeff)


def grl_schedule(progress: float, gamma: float = 10.0) -> float:
    """DANN schedule ``2 / (1 + exp(-gamma * p)) - 1``: 0 at p = 0, -> 1 as p -> 1 (for gamma=10).

    Starting at 0 keeps the noisy early domain classifier from disturbing the features.
    """
    p = min(max(float(progress), 0.0), 1.0)
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0


class GradientReversal(nn.Module):
    """Module form with a settable coefficient (``GRLScheduleHook`` updates ``coeff`` each step).

    The coefficient is a buffer so it is saved in checkpoints and follows ``model.to(device)``.
    """

    def __init__(self, coeff: float = 1.0):
        super().__init__()
        self.register_buffer("_coeff", torch.tensor(float(coeff)), persistent=True)

    @property
    def coeff(self) -> float:
        return float(self._coeff)

    @coeff.setter
    def coeff(self, value: float) -> None:
        self._coeff.fill_(float(value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GradientReversalFunction.apply(x, self.coeff)

    def extra_repr(self) -> str:
        return f"coeff={self.coeff:.4f}"
