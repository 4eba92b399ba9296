"""Pixel-Adaptive Mask Refinement (PAMR), batched.

Araslanov & Roth, "Single-Stage Semantic Segmentation from Image Labels", CVPR 2020, Sec. 3.3.
Each pixel's mask value is replaced, ``num_iter`` times, by an affinity-weighted average of its 8
neighbours at several dilations. The affinity of a neighbour j of pixel i is a softmax over all
neighbours of ``-mean_c |I_i - I_j| / (0.1 * std_i)``, where ``std_i`` is the per-channel standard
deviation of the image over i's neighbourhood, so that it adapts to the local contrast: labels
flow along regions of similar colour and stop at colour edges.

Used by PLDA's confident pseudo-supervision and by the pseudo-label refinement tools.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PAMR"]

# the 8 neighbour offsets (dy, dx) of a 3x3 window, centre excluded
_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


class PAMR(nn.Module):
    """Refine soft masks with image-adaptive local affinities (no learnable parameters).

    Example::

        pamr = PAMR(num_iter=10, dilations=(1, 2, 4, 8, 12, 24))
        refined = pamr(image, masks)  # image (N,3,H,W) any scale, masks (N,C,h,w) -> (N,C,h,w)

    The image is resized (bilinear) to the masks' resolution first, as in the paper, so the cost
    is that of the masks' size. The affinities are computed without gradient; the output is
    differentiable w.r.t. ``masks`` (callers that build pseudo labels pass detached masks).
    """

    def __init__(self, num_iter: int = 10, dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)):
        super().__init__()
        if num_iter < 0:
            raise ValueError(f"PAMR num_iter must be >= 0, got {num_iter}")
        if not dilations or min(dilations) < 1:
            raise ValueError(f"PAMR dilations must be positive integers, got {dilations}")
        self.num_iter = int(num_iter)
        self.dilations = tuple(int(d) for d in dilations)

    @torch.no_grad()
    def affinity(self, image: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) image at mask resolution -> (N, P, h, w) weights summing to 1 over P."""
        image = image.float()
        h, w = image.shape[-2:]
        pad = max(self.dilations)
        xp = F.pad(image, (pad, pad, pad, pad), mode="replicate")
        shifts = [
            xp[..., pad + dy * d : pad + dy * d + h, pad + dx * d : pad + dx * d + w]
            for d in self.dilations
            for dy, dx in _OFFSETS
        ]
        # local contrast: per-channel std over the neighbourhood (from running sums, so no
        # (N, 3, P, h, w) tensor is built); eps keeps flat regions finite
        num = len(shifts)
        s1 = sum(shifts)
        s2 = sum(t * t for t in shifts)
        var = (s2 - s1 * s1 / num) / max(num - 1, 1)
        scale = 1.0 / (1e-8 + 0.1 * var.clamp(min=0).sqrt())
        aff = torch.stack([-((t - image).abs() * scale).mean(1) for t in shifts], 1)
        return F.softmax(aff, dim=1)

    def refine(self, masks: torch.Tensor, aff: torch.Tensor) -> torch.Tensor:
        """``num_iter`` propagation steps with precomputed :meth:`affinity` (N, P, h, w), so that
        several masks of the same image share one affinity computation."""
        aff = aff.to(masks.dtype)
        for _ in range(self.num_iter):
            masks = self.propagate(masks, aff)
        return masks

    def propagate(self, masks: torch.Tensor, aff: torch.Tensor) -> torch.Tensor:
        """One step: (N, C, h, w) masks, (N, P, h, w) affinities -> sum_p aff_p * neighbour_p.

        Accumulates neighbour by neighbour instead of stacking a (N, C, P, h, w) tensor: P times
        less memory, and much faster on CPU where the stack dominates.
        """
        h, w = masks.shape[-2:]
        pad = max(self.dilations)
        mp = F.pad(masks, (pad, pad, pad, pad), mode="replicate")
        out = torch.zeros_like(masks)
        p = 0
        for d in self.dilations:
            for dy, dx in _OFFSETS:
                y0, x0 = pad + dy * d, pad + dx * d
                out.addcmul_(mp[..., y0 : y0 + h, x0 : x0 + w], aff[:, p : p + 1])
                p += 1
        return out

    def forward(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: (N, 3, H, W) float, any normalisation (the affinity is contrast-normalised).
            masks: (N, C, h, w) float, e.g. class probabilities.
        Returns:
            (N, C, h, w) refined masks (convex combinations of the inputs: probabilities stay
            probabilities).
        """
        if image.dim() != 4 or masks.dim() != 4 or image.shape[0] != masks.shape[0]:
            raise ValueError(
                f"PAMR expects image (N,3,H,W) and masks (N,C,h,w), got "
                f"{tuple(image.shape)} and {tuple(masks.shape)}"
            )
        h, w = masks.shape[-2:]
        if image.shape[-2:] != (h, w):
            image = F.interpolate(image.float(), size=(h, w), mode="bilinear", align_corners=False)
        return self.refine(masks, self.affinity(image))

    def extra_repr(self) -> str:
        return f"num_iter={self.num_iter}, dilations={self.dilations}"
