"""CIAN head: a DeepLab-v2 head with a cross-image affinity module before its classifier.

Fan et al., "CIAN: Cross-Image Affinity Net for Weakly Supervised Semantic Segmentation", AAAI
2020. The module sits on the features right before the classification layer (the backbone's
``res5`` for the ResNet LargeFOV head, fc7 for the VGG-style one); the classifier is shared by the
self- and the cross-affinity augmented features.

Losses (each switchable, so that the paper's ablation runs from configs alone):

- ``loss_ce_self``: CE of the self-affinity prediction on the pseudo labels (the baseline's loss);
- ``loss_ce_cross``: CE of the cross-affinity prediction on the pseudo labels ("+CE");
- ``loss_cp_self`` / ``loss_cp_cross``: the completion loss ("+CP", Eq. 7-8): the arg-max of the
  cross-affinity prediction (detached) labels every non-padded pixel of the query whose arg-max
  is the background or one of the image's tags (the others are ignored), and supervises both
  predictions, as the official code does. The official code applies it at full weight from the
  first step (``completion_warmup_iters`` 0, the default); a linear warm-up of its weight over
  the first iterations is a switch of ours (see :meth:`CIANHead.completion_scale`).
"""

from __future__ import annotations

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.utils.events import get_event_storage

from ..layers.cross_image_affinity import CrossImageAffinity
from .deeplabv2 import DeepLabLargeFOVHead, upsample_to

__all__ = ["CIANHead", "completion_targets"]


@torch.no_grad()
def completion_targets(
    logits: torch.Tensor,
    tags: torch.Tensor,
    size: tuple[int, int],
    valid: torch.Tensor | None = None,
    ignore_value: int = 255,
) -> torch.Tensor:
    """Online pseudo labels of the completion loss (Eq. 7).

    A pixel is labelled with the arg-max of the prediction when that class is the background or
    one of the image's tags, and ignored otherwise (the equation's "matches the prediction and
    the image-level labels"; the official code masks the one-hot arg-max the same way).

    Args:
        logits: (N, K+1, h, w) prediction (the cross-affinity one).
        tags: (N, K) multi-hot image labels; background (class 0) is always allowed.
        size: (H, W) of the labels.
        valid: optional (N, H, W) bool, False on padding (-> ``ignore_value``).
    Returns:
        (N, H, W) long labels in {0} U tags U {ignore_value}.
    """
    target = upsample_to(logits.detach().float(), size).argmax(1)
    allowed = torch.cat([torch.ones_like(tags[:, :1]), tags], 1).bool()  # (N, K+1)
    keep = allowed.gather(1, target.flatten(1)).view_as(target)
    if valid is not None:
        keep &= valid
    return target.masked_fill(~keep, ignore_value)


@SEM_SEG_HEADS_REGISTRY.register()
class CIANHead(DeepLabLargeFOVHead):
    """DeepLab-v2 LargeFOV head + :class:`CrossImageAffinity` before the classifier.

    Training: ``forward(features, targets, ref_index=(N, R), tags=(N, K), valid=(N, H, W))`` ->
    ``(None, losses)``; without ``ref_index`` (or with ``cross=False``) only the self-affinity
    branch runs: the paper's self-affinity baseline.
    Inference: ``forward(features)`` -> ``(logits (N, K+1, h*stride, w*stride), {})`` from the
    self-affinity branch only, one image at a time in effect (no image attends to another).
    """

    @configurable
    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        *,
        cross: bool = True,
        hidden_dims: int = 0,
        downsample: bool = True,
        merge: str = "max",
        chunk_size: int = 0,
        self_ce_weight: float = 1.0,
        cross_ce_weight: float = 1.0,
        completion_weight: float = 1.0,
        completion_on_self: bool = True,
        completion_warmup_iters: int = 0,
        **kwargs,
    ):
        """
        Args:
            cross: use the references' messages in training (False: self-affinity baseline).
            cross_ce_weight: weight of ``loss_ce_cross`` (0 switches it off).
            completion_weight: weight of the completion losses (0 switches them off).
            completion_on_self: the completion labels also supervise the self prediction.
            completion_warmup_iters: ramp the completion weight linearly from 0 over this many
                training iterations (0: full weight from the start, the official behaviour).
            Others: see :class:`DeepLabLargeFOVHead` and :class:`CrossImageAffinity`.
        """
        super().__init__(input_shape, **kwargs)
        self.affinity = CrossImageAffinity(
            self.embed_channels, hidden_dims, downsample, merge, chunk_size
        )
        self.cross = cross
        self.self_ce_weight = self_ce_weight
        self.cross_ce_weight = cross_ce_weight
        self.completion_weight = completion_weight
        self.completion_on_self = completion_on_self
        self.completion_warmup_iters = int(completion_warmup_iters)
        if self.completion_warmup_iters < 0:
            raise ValueError(
                f"MODEL.CIAN.COMPLETION_WARMUP_ITERS must be >= 0, got {completion_warmup_iters}"
            )

    @classmethod
    def from_config(cls, cfg, input_shape: dict[str, ShapeSpec]):
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.CIAN
        ret.update(
            cross=c.CROSS,
            hidden_dims=c.HIDDEN_DIMS,
            downsample=c.DOWNSAMPLE,
            merge=c.MERGE,
            chunk_size=c.CHUNK_SIZE,
            self_ce_weight=c.SELF_CE_WEIGHT,
            cross_ce_weight=c.CROSS_CE_WEIGHT if c.CROSS_CE else 0.0,
            completion_weight=c.COMPLETION_WEIGHT if c.COMPLETION else 0.0,
            completion_on_self=c.COMPLETION_ON_SELF,
            completion_warmup_iters=c.COMPLETION_WARMUP_ITERS,
        )
        return ret

    # ------------------------------------------------------------------ pieces
    def completion_scale(self) -> float:
        """Factor on the completion weight at the current training iteration.

        ``min(1, iter / completion_warmup_iters)`` from the trainer's event storage (logged as
        ``cian/completion_scale``); 1 without a warm-up or outside a trainer (no storage). Why a
        warm-up: at the start the prediction's arg-max is mostly background, and the completion
        loss (every pixel labelled with it) then holds the network there; on voc_mini one of
        three seeds of the 240-iteration recipe stayed at a cross-entropy of 1.3 and predicted
        almost only background (projects/CIAN/README.md).
        """
        if self.completion_warmup_iters <= 0:
            return 1.0
        try:
            storage = get_event_storage()
        except AssertionError:  # not inside a trainer's EventStorage
            return 1.0
        scale = min(1.0, storage.iter / self.completion_warmup_iters)
        storage.put_scalar("cian/completion_scale", scale)
        return scale

    def layers(
        self,
        features: dict[str, torch.Tensor],
        ref_index: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Backbone features -> self logits (N, K+1, h, w) and cross logits (or None).

        ``valid``: optional (N, 1, h, w) bool at feature resolution (padded keys get no weight).
        """
        x_self, x_cross = self.affinity(self.embed(features[self.in_feature]), ref_index, valid)
        return self.predict(x_self), (None if x_cross is None else self.predict(x_cross))

    def cian_losses(
        self,
        logits_self: torch.Tensor,
        logits_cross: torch.Tensor | None,
        targets: torch.Tensor,
        tags: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The switchable CIAN losses; ``targets`` (N, H, W) pseudo labels, ``tags`` (N, K)."""
        # upsample each prediction once; every loss below reuses it
        size = targets.shape[-2:]
        logits_self = upsample_to(logits_self, size)
        if logits_cross is not None:
            logits_cross = upsample_to(logits_cross, size)
        losses = self.losses(logits_self, targets, self.self_ce_weight, "loss_ce_self")
        if logits_cross is not None and self.cross_ce_weight > 0:
            losses.update(self.losses(logits_cross, targets, self.cross_ce_weight, "loss_ce_cross"))
        if self.completion_weight > 0:
            if tags is None:
                raise ValueError("the completion loss needs the images' 'tags'")
            weight = self.completion_weight * self.completion_scale()
            source = logits_self if logits_cross is None else logits_cross
            online = completion_targets(source, tags, size, valid, self.ignore_value)
            if logits_cross is not None:
                losses.update(self.losses(logits_cross, online, weight, "loss_cp_cross"))
            if self.completion_on_self or logits_cross is None:
                losses.update(self.losses(logits_self, online, weight, "loss_cp_self"))
        return losses

    def forward(
        self,
        features: dict[str, torch.Tensor],
        targets: torch.Tensor | None = None,
        ref_index: torch.Tensor | None = None,
        tags: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ):
        """``valid``: optional (N, H, W) bool at the label size (False on padding)."""
        if not self.training:
            logits, _ = self.layers(features)
            return upsample_to(logits, [s * self.common_stride for s in logits.shape[-2:]]), {}
        if targets is None:
            raise ValueError(
                "CIANHead needs 'sem_seg' targets in training: does the training dataset have "
                "pseudo labels (WSSS.PSEUDO.TRAIN_ROUND)?"
            )
        feat_valid = None
        if valid is not None:
            h, w = features[self.in_feature].shape[-2:]
            feat_valid = upsample_to(valid[:, None].float(), (h, w)) > 0
        logits_self, logits_cross = self.layers(
            features, ref_index if self.cross else None, feat_valid
        )
        return None, self.cian_losses(logits_self, logits_cross, targets, tags, valid)
