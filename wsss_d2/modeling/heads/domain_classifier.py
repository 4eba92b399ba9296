"""Multi-head pixel domain classifier of PLDA (Du et al., "Pixel-Level Domain Adaptation", Sec. III-C).

A shared MLP base maps every selected pixel feature to a small embedding; one binary
(source vs target) head per class then scores only the pixels assigned to that class. Per-class
heads keep the alignment class-conditional (a pixel of class a is never pulled towards the
features of class b), which the paper shows beats one global discriminator (DANN) and MADA.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MultiHeadDomainClassifier", "balanced_domain_loss", "domain_pixel_weights"]


class MultiHeadDomainClassifier(nn.Module):
    """Shared base of 1x1 convolutions (applied as linear layers to the selected pixel vectors,
    which is the same operation) + ``num_classes`` binary heads.

    Only the pixels that take part in the domain loss go through the base, once each even when
    they are assigned to several classes; each (pixel, class) pair then reads the two logits of
    its own class's head, so head ``c`` sees (and gets gradient from) class ``c``'s pixels only.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (1024, 512),
        dropout: float = 0.5,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for d in hidden_dims:
            lin = nn.Linear(c, d)
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c = d
        self.base = nn.Sequential(*layers)
        self.num_classes = num_classes
        self.embed_dim = c
        # all heads as one (K, 2, D) tensor: one product for every head replaces a Python loop
        self.head_weight = nn.Parameter(torch.empty(num_classes, 2, c))
        self.head_bias = nn.Parameter(torch.zeros(num_classes, 2))
        nn.init.xavier_uniform_(self.head_weight.view(num_classes * 2, c))

    def forward(
        self, features: torch.Tensor, pixel_index: torch.Tensor, class_index: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            features: (N, C, h, w) pixel features (usually behind a gradient reversal layer).
            pixel_index: (M,) long, flat indices into the N*h*w pixels (repeats allowed).
            class_index: (M,) long in [0, K): the class head that scores each entry.
        Returns:
            (M, 2) domain logits (0 = source, 1 = target). M may be 0.
        """
        n, c, h, w = features.shape
        flat = features.permute(0, 2, 3, 1).reshape(n * h * w, c)
        uniq, inverse = torch.unique(pixel_index, return_inverse=True)
        emb = self.base(flat[uniq])[inverse]  # (M, D)
        # every head on every entry, then each entry's own head: the gradient reaches the heads
        # through a matrix product, not through an accumulating index (which sums in a thread-
        # dependent order on CPU and made training runs differ); head c still gets gradient from
        # class c's entries only
        logits = torch.einsum("md,kod->mko", emb, self.head_weight) + self.head_bias  # (M, K, 2)
        return logits[torch.arange(len(class_index), device=logits.device), class_index]


DOMAIN_WEIGHTINGS = ("official", "balanced")


def domain_pixel_weights(
    domains: torch.Tensor, groups: torch.Tensor, weighting: str = "official"
) -> torch.Tensor:
    """Per-entry weights of the domain loss, from the source / target counts of each group
    (one image x one class: n_s source and n_t target pixels, T = n_s + n_t).

    - ``"official"`` (usr922/plda, ``balanced_weighted_multi_adv_domain_loss``): a pixel of
      domain d weighs (T - n_d) / (1 + T), i.e. a source pixel n_t / (1 + T) and a target pixel
      n_s / (1 + T). Each domain then weighs n_s n_t / (1 + T) in total, about the smaller
      count; a group with one domain only gets weight 0. With 1 source and 200 target pixels:
      source 200/202 ~ 0.99, target 1/202 ~ 0.005.
    - ``"balanced"`` (ours): T / (2 n_d), so each domain weighs T / 2 in total and the weights
      average 1 over the group; groups missing a domain are skipped (weight 0). With 1 source
      and 200 target pixels: source 100.5, target 0.5025.

    Args:
        domains: (M,) long in {0, 1}; groups: (M,) long group ids (any values).
    Returns:
        (M,) float weights.
    """
    if weighting not in DOMAIN_WEIGHTINGS:
        raise ValueError(
            f"MODEL.PLDA.DOMAIN_WEIGHTING must be one of {DOMAIN_WEIGHTINGS}, got '{weighting}'"
        )
    if domains.numel() == 0:
        return torch.zeros(0, device=domains.device)
    _, g = torch.unique(groups, return_inverse=True)
    num_groups = int(g.max()) + 1
    key = g * 2 + domains  # (group, domain) cells
    counts = torch.bincount(key, minlength=2 * num_groups).float().view(num_groups, 2)
    total = counts.sum(1, keepdim=True)
    if weighting == "official":
        weight = (total - counts) / (1.0 + total)  # (G, 2); 0 for a group's only domain
    else:
        complete = (counts > 0).all(1, keepdim=True).float()
        weight = complete * total / (2.0 * counts.clamp(min=1))
    return weight.flatten()[key]


def balanced_domain_loss(
    logits: torch.Tensor,
    domains: torch.Tensor,
    groups: torch.Tensor,
    num_pixels: int,
    entropy_weight: bool = False,
    weighting: str = "official",
) -> torch.Tensor:
    """Cross-entropy of the domain predictions, each entry weighted by
    :func:`domain_pixel_weights` (source vs target within its group, one image x one class),
    the weighted sum divided by ``num_pixels`` (all N*h*w pixels: the official code takes the
    mean over the whole map for each class and sums the classes, which is the same number).
    Exactly 0 (still attached to the graph) when no group has both domains.

    Args:
        logits: (M, 2); domains: (M,) long in {0, 1}; groups: (M,) long group ids;
        num_pixels: the normaliser, N*h*w.
        entropy_weight: also weight each pixel by ``1 + exp(-H)``, H the entropy of its
            (detached) domain prediction, as the official code: pixels the classifier is sure
            about (not yet aligned) count up to 2x, undecided ones 1.5x.
        weighting: ``"official"`` | ``"balanced"`` (see :func:`domain_pixel_weights`).
    """
    w = domain_pixel_weights(domains, groups, weighting)
    if logits.numel() == 0 or not bool((w > 0).any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.float(), domains, reduction="none")
    if entropy_weight:
        p = logits.detach().float().softmax(1)
        w = w * (1.0 + torch.exp((p * torch.log(p + 1e-10)).sum(1)))
    return (w * ce).sum() / max(int(num_pixels), 1)
