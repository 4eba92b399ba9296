"""IRNet: the inter-pixel relation network of IRN (Ahn, Cho & Kwak, "Weakly Supervised Learning
of Instance Segmentation with Inter-pixel Relations", CVPR 2019; official code jiwoon-ahn/irn).

A backbone's multi-level features feed two branches (``wsss_d2.modeling.heads.irn``): a
class-boundary map B and a displacement field D, both at stride 4. They are trained from the
confident CAM labels ("ir labels": class ids where the CAM is confident, 0 for confident background,
255 unsure) through relations of pixel pairs within ``train_radius`` at stride 4:

- a pair is *positive* when both ends have the same label (split into background-background and
  foreground-foreground pairs), *negative* when the labels differ; pairs with an unsure end are
  skipped;
- affinity ``a = 1 - max_{k on the path} B_k`` (B = sigmoid of the boundary logits); losses
  ``-log(a)`` on positive and ``-log(1 - a)`` on negative pairs (both with the official ``1e-5``),
  averaged per kind over the batch, ``(bg_pos / 2 + fg_pos / 2 + neg) / 2`` as the official code;
- displacement: same-instance foreground pairs must point to one centroid,
  ``|D(p) - D(p + d) - d|``, background pairs must agree, ``|D(p) - D(p + d)|``, each summed over the
  two channels and averaged over pairs (the official ``/ (2 * count)``), weight 1/2 each.

The official network detaches the backbone (ImageNet weights, never updated): ``detach_backbone``
(default True) runs the backbone without gradients and keeps it in eval mode; False trains it
through both branches. Pairs: the official code takes sources only from the window that keeps every
offset's far end inside the map (rows ``< h - r + 1``, columns ``r - 1 .. w - r``);
``full_pairs`` uses every pair whose two ends are inside.

Training input: ``list[dict]`` with ``image`` (3, H, W) and ``sem_seg`` (H, W) the ir labels
(a pseudo-label round, ``WSSS.PSEUDO.TRAIN_ROUND``). Output ``loss_aff_bg_pos``,
``loss_aff_fg_pos``, ``loss_aff_neg``, ``loss_dp_fg``, ``loss_dp_bg`` (their sum is the official
total loss). Inference output per image: ``"edge"`` (h, w) boundary probability and ``"dp"``
(2, h, w) displacement (dy, dx in stride-4 pixels), with ``h = ceil(H / 4)`` of the input image,
the boundary averaged over the image and its flip (as the official ``EdgeDisplacement``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..heads.irn import IRNBoundaryHead, IRNDisplacementHead
from ..layers.pixel_pairs import PairPaths

__all__ = ["IRNet", "downsample_labels", "pair_label_masks", "irn_losses"]

_EPS = 1e-5  # the official code's guard in the logs and the pair counts


def downsample_labels(labels: torch.Tensor, size: tuple[int, int], stride: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, h, w): the pixel ``stride * i + stride // 2`` of each output cell
    (nearest-neighbour resize by ``1 / stride``, as the official ``pil_rescale(label, 0.25, 0)``),
    clamped to the map."""
    H, W = labels.shape[-2:]
    ys = (torch.arange(size[0], device=labels.device) * stride + stride // 2).clamp(max=H - 1)
    xs = (torch.arange(size[1], device=labels.device) * stride + stride // 2).clamp(max=W - 1)
    return labels[:, ys][:, :, xs]


def pair_label_masks(
    labels: torch.Tensor, paths: PairPaths, ignore_value: int = 255, full_pairs: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Affinity labels of every pair: ``(bg_pos, fg_pos, neg)``, each (B, D, h, w) float 0/1.

    Args:
        labels: (B, h, w) long ir labels at the pairs' resolution (0 bg, classes, ``ignore_value``
            unsure or padding).
        full_pairs: every pair with both ends inside; False: the official source window.
    """
    src = labels[:, None]
    dst = paths.at_far_end(labels[:, None], fill=ignore_value)[:, 0]
    valid = (src != ignore_value) & (dst != ignore_value)
    if not full_pairs:
        h, w = labels.shape[-2:]
        r = paths.pad
        win = torch.zeros(h, w, dtype=torch.bool, device=labels.device)
        win[: max(h - r, 0), r : max(w - r, r)] = True
        valid = valid & win
    same = src == dst
    pos = valid & same
    return (
        (pos & (src == 0)).float(),
        (pos & (src > 0)).float(),
        (valid & ~same).float(),
    )


def irn_losses(
    edge_logits: torch.Tensor,
    dp: torch.Tensor,
    masks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    paths: PairPaths,
) -> dict[str, torch.Tensor]:
    """IRN's affinity and displacement losses (unweighted terms, see the module docstring).

    Args:
        edge_logits: (B, 1, h, w) boundary logits; dp: (B, 2, h, w) displacements (dy, dx).
        masks: :func:`pair_label_masks` of the same (h, w).
    Returns:
        ``aff_bg_pos``, ``aff_fg_pos``, ``aff_neg``, ``dp_fg``, ``dp_bg`` scalars; the official
        total is ``(aff_bg_pos / 2 + aff_fg_pos / 2 + aff_neg) / 2 + (dp_fg + dp_bg) / 2``.
    """
    bg_pos, fg_pos, neg = masks
    aff = 1 - paths.path_max(torch.sigmoid(edge_logits[:, 0]))
    pos_loss = -torch.log(aff + _EPS)
    neg_loss = -torch.log(1 + _EPS - aff)
    out = {
        "aff_bg_pos": (bg_pos * pos_loss).sum() / (bg_pos.sum() + _EPS),
        "aff_fg_pos": (fg_pos * pos_loss).sum() / (fg_pos.sum() + _EPS),
        "aff_neg": (neg * neg_loss).sum() / (neg.sum() + _EPS),
    }
    pair = dp[:, :, None] - paths.at_far_end(dp)  # (B, 2, D, h, w): D(p) - D(p + d)
    target = paths.offsets.to(dp).t()[None, :, :, None, None]  # (1, 2, D, 1, 1): d = (dy, dx)
    out["dp_fg"] = ((pair - target).abs() * fg_pos[:, None]).sum() / (2 * fg_pos.sum() + _EPS)
    out["dp_bg"] = (pair.abs() * bg_pos[:, None]).sum() / (2 * bg_pos.sum() + _EPS)
    return out


@META_ARCH_REGISTRY.register()
class IRNet(nn.Module):
    """Backbone + class-boundary and displacement branches; IRN's pair losses (module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_features: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        edge_dim: int = 32,
        edge_context_convs: int = 0,
        dp_dims: Sequence[int] = (64, 128, 256, 256, 256),
        dp_merge_dim: int = 256,
        dp_hidden_dim: int = 256,
        detach_backbone: bool = True,
        train_radius: int = 10,
        full_pairs: bool = False,
        aff_loss_weight: float = 1.0,
        dp_loss_weight: float = 1.0,
        test_flip: bool = True,
        test_pad_size: int = 512,
        test_scales: Sequence[float] = (1.0,),
        ignore_value: int = 255,
    ):
        super().__init__()
        self.backbone = backbone
        shapes = backbone.output_shape()
        self.in_features = tuple(in_features)
        self.edge_head = IRNBoundaryHead(shapes, self.in_features, edge_dim, edge_context_convs)
        self.dp_head = IRNDisplacementHead(
            shapes, self.in_features, dp_dims, dp_merge_dim, dp_hidden_dim
        )
        self.stride = self.edge_head.stride
        self.detach_backbone = bool(detach_backbone)
        self.paths = PairPaths(train_radius)
        self.full_pairs = bool(full_pairs)
        self.aff_loss_weight = float(aff_loss_weight)
        self.dp_loss_weight = float(dp_loss_weight)
        self.test_flip = bool(test_flip)
        self.test_pad_size = int(test_pad_size)
        self.test_scales = tuple(float(t) for t in test_scales)
        if not self.test_scales or min(self.test_scales) <= 0:
            raise ValueError(f"MODEL.IRN.TEST_SCALES must be positive scales, got {test_scales}")
        self.ignore_value = int(ignore_value)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        if self.detach_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.IRN
        return {
            "backbone": build_backbone(cfg),
            "in_features": c.IN_FEATURES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "edge_dim": c.EDGE_DIM,
            "edge_context_convs": c.EDGE_CONTEXT_CONVS,
            "dp_dims": c.DP_DIMS,
            "dp_merge_dim": c.DP_MERGE_DIM,
            "dp_hidden_dim": c.DP_HIDDEN_DIM,
            "detach_backbone": c.DETACH_BACKBONE,
            "train_radius": c.TRAIN_RADIUS,
            "full_pairs": c.FULL_PAIRS,
            "aff_loss_weight": c.AFF_LOSS_WEIGHT,
            "dp_loss_weight": c.DP_LOSS_WEIGHT,
            "test_flip": c.TEST_FLIP,
            "test_pad_size": c.TEST_PAD_SIZE,
            "test_scales": c.TEST_SCALES,
            "ignore_value": cfg.MODEL.IGNORE_VALUE,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True):
        super().train(mode)
        if self.detach_backbone:
            self.backbone.eval()  # frozen: fixed BatchNorm statistics, as the official network
        return self

    # ------------------------------------------------------------------ pieces
    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise and pad (with 0 = the pixel mean) into an ImageList."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) normalised -> boundary logits (N, 1, h, w), displacements (N, 2, h, w)."""
        if self.detach_backbone:
            with torch.no_grad():
                feats = self.backbone(images)
            feats = {k: v.detach() for k, v in feats.items()}
        else:
            feats = self.backbone(images)
        return self.edge_head(feats), self.dp_head(feats)

    def _labels(self, batched_inputs: list[dict], images: ImageList) -> torch.Tensor:
        H, W = images.tensor.shape[-2:]
        out = torch.full(
            (len(batched_inputs), H, W), self.ignore_value, dtype=torch.long, device=self.device
        )
        for i, x in enumerate(batched_inputs):
            if "sem_seg" not in x:
                raise KeyError(
                    f"IRNet training input {x.get('file_name', '?')} has no 'sem_seg': train on a "
                    "round of confident CAM labels (WSSS.PSEUDO.TRAIN_ROUND)"
                )
            s = x["sem_seg"].to(self.device)
            out[i, : s.shape[0], : s.shape[1]] = s
        return out

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        edge, dp = self.predict(images.tensor)
        labels = downsample_labels(
            self._labels(batched_inputs, images), tuple(edge.shape[-2:]), self.stride
        )
        masks = pair_label_masks(labels, self.paths, self.ignore_value, self.full_pairs)
        t = irn_losses(edge, dp, masks, self.paths)
        a, d = self.aff_loss_weight, self.dp_loss_weight
        return {
            "loss_aff_bg_pos": a * t["aff_bg_pos"] / 4,
            "loss_aff_fg_pos": a * t["aff_fg_pos"] / 4,
            "loss_aff_neg": a * t["aff_neg"] / 2,
            "loss_dp_fg": d * t["dp_fg"] / 2,
            "loss_dp_bg": d * t["dp_bg"] / 2,
        }

    def _edge_logits_at(
        self, images: list[torch.Tensor], scale: float, grids: list[tuple[int, int]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Boundary logits of normalised ``images`` resized by ``scale`` (flip-averaged with
        ``test_flip``), each resampled to its ``grids`` cell (the stride grid of the unscaled
        image); the displacements on those grids too at scale 1 (None otherwise)."""
        if scale != 1.0:
            images = [
                F.interpolate(
                    im[None],
                    size=(max(1, round(im.shape[-2] * scale)), max(1, round(im.shape[-1] * scale))),
                    mode="bilinear",
                    align_corners=False,
                )[0]
                for im in images
            ]
        sizes = [tuple(im.shape[-2:]) for im in images]
        if self.test_flip:
            images = images + [im.flip(-1) for im in images]
        H = max(max(s[0] for s in sizes), self.test_pad_size)
        W = max(max(s[1] for s in sizes), self.test_pad_size)
        x = ImageList.from_tensors(images, self.backbone.size_divisibility).tensor
        x = F.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2]))
        edge, dp = self.predict(x)
        n = len(sizes)
        out = []
        for i, ((h, w), grid) in enumerate(zip(sizes, grids)):
            fh, fw = (h - 1) // self.stride + 1, (w - 1) // self.stride + 1
            e = edge[i, 0, :fh, :fw]
            if self.test_flip:
                e = (e + edge[n + i, 0, :fh, :fw].flip(-1)) / 2
            if (fh, fw) != grid:
                e = F.interpolate(e[None, None], size=grid, mode="bilinear", align_corners=False)
                e = e[0, 0]
            out.append(e)
        if scale != 1.0:
            return out, None
        return out, [dp[i, :, :fh, :fw] for i, (fh, fw) in enumerate(grids)]

    @torch.no_grad()
    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        """``[{"edge": (h, w), "dp": (2, h, w)}]`` at stride ``self.stride`` of each input image.

        Every image is padded (with the mean) to ``test_pad_size`` (or its own size if larger),
        as the official inference pads to the training crop; with ``test_flip`` the flipped image
        (flipped before padding) is run in the same pass and its boundary logits, flipped back,
        are averaged with the image's; the displacement is the unflipped image's. With several
        ``test_scales`` (ours; the official network runs scale 1 only) the boundary logits of
        every scale, resampled to the stride grid of the image, are averaged too; the
        displacement is scale 1's (a scale-1 pass of its own when 1 is not among them).
        """
        sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        grids = [((h - 1) // self.stride + 1, (w - 1) // self.stride + 1) for h, w in sizes]
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        edges, dp = None, None
        for scale in self.test_scales:
            e, d = self._edge_logits_at(images, scale, grids)
            edges = e if edges is None else [a + b for a, b in zip(edges, e)]
            dp = dp if dp is not None else d
        if dp is None:  # no scale 1: the displacements of a scale-1 pass
            dp = self._edge_logits_at(images, 1.0, grids)[1]
        k = len(self.test_scales)
        return [{"edge": torch.sigmoid(e / k), "dp": d} for e, d in zip(edges, dp)]
