"""PLDA's confident pseudo-supervision (CPS, Eq. 7-8): confident pseudo labels from a refined
pseudo-label distribution, and the class-weighted cross-entropy on them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "CPS_AMBIGUITIES",
    "CPS_WEIGHTINGS",
    "CPS_DISTRIBUTIONS",
    "CPS_TARGET_AFFINITIES",
    "cps_pseudo_labels",
    "cps_pixel_weights",
    "balanced_cps_loss",
]


CPS_AMBIGUITIES = ("all", "region")


def cps_pseudo_labels(
    probs: torch.Tensor,
    region: torch.Tensor,
    alpha: float,
    min_confidence: float,
    ignore_value: int = 255,
    ambiguity: str = "region",
    bg_alpha: float = 0.7,
) -> torch.Tensor:
    """Confident pseudo labels of the pixels in ``region`` (Eq. 7-8).

    A channel is confident at a pixel where its probability exceeds
    ``max(alpha x its image maximum, min_confidence)`` (the background's: ``bg_alpha`` instead
    of ``alpha``). A pixel gets class k when k is confident there, the pixel is in k's region
    and the pixel is not ambiguous:

    - ``ambiguity "all"`` (the official code's ``pseudo_gtmask``, ``cutoff_top`` 0.6,
      ``cutoff_top_bg`` 0.7, ``cutoff_low`` 0.2): exactly one channel of all K + 1, the
      background included, is confident, whatever the regions (the official code tests
      ambiguity before it multiplies by the domain masks);
    - ``ambiguity "region"`` (ours): exactly one foreground class is both confident and in
      its region there; the background is not compared.

    Args:
        probs: (N, K+1, h, w) refined pseudo-label distribution (channel 0 = background), zero
            for absent classes.
        region: (N, K, h, w) bool, the source (or target) pixels of each class.
    Returns:
        (N, h, w) long: class id in 1..K, ``ignore_value`` elsewhere. The background itself
        is never a label (the official code zeroes its channel).
    """
    if ambiguity not in CPS_AMBIGUITIES:
        raise ValueError(
            f"MODEL.PLDA.CPS_AMBIGUITY must be one of {CPS_AMBIGUITIES}, got '{ambiguity}'"
        )
    fg = probs[:, 1:]
    thr = (alpha * fg.flatten(2).amax(-1)).clamp(min=min_confidence)[..., None, None]
    confident = fg > thr
    labelled = confident & region
    if ambiguity == "all":
        bg = probs[:, :1]
        bg_thr = (bg_alpha * bg.flatten(2).amax(-1)).clamp(min=min_confidence)[..., None, None]
        unique = (confident.sum(1) + (bg > bg_thr)[:, 0].long() == 1) & labelled.any(1)
    else:
        unique = labelled.sum(1) == 1
    labels = labelled.float().argmax(1) + 1
    return torch.where(unique, labels, torch.full_like(labels, ignore_value))


CPS_WEIGHTINGS = ("official", "balanced")
CPS_DISTRIBUTIONS = ("softmax", "normalized")
CPS_TARGET_AFFINITIES = ("masked", "image")


def cps_pixel_weights(
    labels: torch.Tensor, num_channels: int, ignore_value: int = 255, weighting: str = "official"
) -> torch.Tensor:
    """Per-pixel weights of the CPS cross-entropy, from each image's pseudo-label counts (n_c
    pixels of class c, T = sum_c n_c labelled pixels in the image).

    - ``"official"`` (usr922/plda, ``balanced_mask_loss_ce``): a pixel of class c weighs
      (T - n_c) / (1 + T). An image whose labels are all one class (T = n_c) contributes
      exactly 0; with two classes of 3 and 1 pixels: 1/5 and 3/5.
    - ``"balanced"`` (ours): each class present weighs the same in total, the weights
      averaging 1 over the labelled pixels: T / (P n_c), P the number of classes present
      (a single-class image is supervised with weight 1; 3 and 1 pixels: 2/3 and 2).

    Args:
        labels: (N, h, w) long with ``ignore_value``; num_channels: K + 1.
    Returns:
        (N, h, w) float, 0 on ignored pixels.
    """
    if weighting not in CPS_WEIGHTINGS:
        raise ValueError(
            f"MODEL.PLDA.CPS_WEIGHTING must be one of {CPS_WEIGHTINGS}, got '{weighting}'"
        )
    valid = labels != ignore_value
    safe = labels.masked_fill(~valid, 0)
    onehot = F.one_hot(safe, num_channels).permute(0, 3, 1, 2).float() * valid[:, None].float()
    counts = onehot.flatten(2).sum(-1)  # (N, C)
    total = counts.sum(1, keepdim=True)  # (N, 1)
    if weighting == "official":
        class_w = (total - counts) / (1.0 + total)
    else:
        present = (counts > 0).sum(1, keepdim=True).clamp(min=1)  # (N, 1)
        class_w = total / (present * counts.clamp(min=1))
    return (onehot * class_w[:, :, None, None]).sum(1)


def balanced_cps_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_value: int = 255,
    weighting: str = "official",
) -> torch.Tensor:
    """Class-weighted cross-entropy (the weighted multi-class CE of Eq. 7-8): every labelled
    pixel weighted by :func:`cps_pixel_weights`, the weighted sum divided by all N*h*w pixels,
    as the official code averages over the whole map (ignored pixels count as 0), which keeps
    the per-pixel gradient on the scale of the classification loss's.
    Exactly 0 (attached to the graph) when no pixel is labelled (or, with the official
    weighting, when every image's labels are a single class).

    Args:
        logits: (N, K+1, h, w); labels: (N, h, w) long with ``ignore_value``;
        weighting: ``"official"`` | ``"balanced"``.
    """
    w = cps_pixel_weights(labels, logits.shape[1], ignore_value, weighting)
    if not bool((w > 0).any()):
        return logits.sum() * 0.0
    safe = labels.masked_fill(labels == ignore_value, 0)
    ce = F.cross_entropy(logits.float(), safe, reduction="none")  # (N, h, w)
    return (w * ce).sum() / ce.numel()
