"""Multi-scale + flip test-time augmentation shared by the CAM classifiers and the segmentors."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["multiscale_flip_sum", "rescale"]


def rescale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, C, H, W) resized by ``scale`` (bilinear; the same tensor at scale 1): the test-time
    resize of every multi-scale inference here (IRN's protocol)."""
    if scale == 1.0:
        return images
    return F.interpolate(
        images,
        scale_factor=scale,
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )


def multiscale_flip_sum(
    images: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    scales: Sequence[float],
    flip: bool,
) -> torch.Tensor:
    """Sum of ``fn`` over the batch resized to every scale (and its horizontal flip).

    Each scale is one call of ``fn`` for the whole batch, the flipped copies stacked into it;
    the flipped outputs are flipped back and added to the unflipped ones at ``fn``'s output
    resolution, then resized (bilinear) to the input size unless already there.

    Args:
        images: (N, 3, H, W).
        fn: (B, 3, h, w) -> (B, C, h', w'), e.g. ReLU'd CAMs at feature resolution, or
            probabilities already at (H, W).
    Returns:
        (N, C, H, W): the sum over ``len(scales)`` scales x (2 if ``flip`` else 1) views.
    """
    n, _, H, W = images.shape
    total = None
    for s in scales:
        x = rescale(images, s)
        if flip:
            x = torch.cat([x, x.flip(-1)])
        out = fn(x)
        if flip:
            out = out[:n] + out[n:].flip(-1)
        if out.shape[-2:] != (H, W):
            out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
        total = out if total is None else total + out
    return total
