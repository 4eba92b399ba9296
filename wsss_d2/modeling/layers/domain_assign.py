"""PLDA's domain assignment (Sec. III-D): which pixels of a class are its *source* (the CAM's
discriminative peak) and which its *target* (the rest of the object), on normalised CAMs.

MaskAssign erases the source pixels (:func:`erase_mask`) and runs the network again on the masked
image (with :func:`frozen_norm_stats`); SimpleAssign thresholds one CAM twice.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = [
    "frozen_norm_stats",
    "mask_assign",
    "simple_assign",
    "strongest_class_only",
    "own_class_target",
    "erase_mask",
]


@contextlib.contextmanager
def frozen_norm_stats(module: torch.nn.Module) -> Iterator[None]:
    """Batch norms keep normalising with batch statistics but do not update their running
    statistics inside the block (momentum 0). The masked images of MaskAssign, half erased to
    0, would otherwise pull the running mean/var away from real images and spoil inference."""
    bns = [
        m
        for m in module.modules()
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        and m.training
        and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (mom, nbt) in zip(bns, saved):
            m.momentum = mom
            m.num_batches_tracked.copy_(nbt)


def mask_assign(
    cam: torch.Tensor, masked_cam: torch.Tensor, theta: float, target_theta: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """MaskAssign (Sec. III-D).

    Args:
        cam, masked_cam: (N, K, h, w) max-normalised CAMs of the image and of the image with its
            source pixels erased, zero for classes not in the tags.
        theta: source threshold (and the target's, unless ``target_theta`` is given).
    Returns:
        source, target: (N, K, h, w) bool; target excludes source pixels (they were erased).
    """
    source = cam > theta
    target = (masked_cam > (theta if target_theta is None else target_theta)) & ~source
    return source, target


def simple_assign(cam: torch.Tensor, high: float, low: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SimpleAssign: source = CAM > high, target = low < CAM <= high. Shapes as :func:`mask_assign`."""
    source = cam > high
    return source, (cam > low) & ~source


def strongest_class_only(cam: torch.Tensor) -> torch.Tensor:
    """(N, K, h, w) CAM with every pixel's non-maximal classes zeroed: a pixel then joins the
    domains of one class at most (the official code's assignment)."""
    return cam * (cam >= cam.amax(1, keepdim=True))


def own_class_target(cam: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Target pixels of class k that are also class k's in the unmasked image's CAM (k is their
    arg-max there, with a positive score). Ours, not the paper's: once every class's source is
    erased, class k's masked CAM can fire on an object of another class that shares its
    non-discriminative parts (measured on toyparts_cue: 42 % of the target's CPS labels were
    another object's class), and CPS would then teach the wrong class there.

    cam: (N, K, h, w) normalised CAM; target: (N, K, h, w) bool. Returns the filtered target.
    """
    return target & (strongest_class_only(cam) > 0)


def erase_mask(source: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixels to erase (Eq. 6): (N, K, h, w) bool source pixels -> (N, 1, H, W) float, 1 where
    any class's source covers the pixel (nearest upsampling: whole output-stride cells are
    erased, so no sliver of the discriminative part survives at the cell borders)."""
    return F.interpolate(source.any(1, keepdim=True).float(), size=size, mode="nearest")
