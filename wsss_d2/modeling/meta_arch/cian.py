"""``CIANSegmentor``: pairs the images of a training batch for the CIAN head.

The pair loaders of :mod:`wsss_d2.data.samplers` deliver each process's batch as consecutive
groups of ``1 + NUM_REFS`` images (a query and its sampled references); inside a group every image
is a query whose references are the other members (as the paper's official code rolls a group).
With common-class sampling a reference that shares no tag with its query is dropped (that image
falls back to its self pair): the sampler only guarantees that each reference shares a tag with
the group's first image.

A batch in which no pair can be formed (a single image, a size not divisible by the group size,
no shared tags) trains on self-pairs: logged, never a crash.
Inference is :class:`WSSSSegmentor`'s (self-affinity only, one image at a time in effect).
"""

from __future__ import annotations

import logging

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from detectron2.utils.logger import log_every_n_seconds

from .segmentor import WSSSSegmentor

logger = logging.getLogger(__name__)

__all__ = ["CIANSegmentor", "group_references"]


def group_references(
    n: int, group_size: int, tags: torch.Tensor | None = None
) -> tuple[torch.Tensor, int]:
    """References of each image from the batch's group structure.

    Args:
        n: batch size.
        group_size: 1 + references per query.
        tags: optional (N, K) multi-hot: references that share no tag with their query are
            replaced by the query itself (common-class pairs); None keeps every reference.
    Returns:
        ref_index (N, max(group_size - 1, 1)) long (an image's own index where it has no usable
        reference), and the number of images left with no cross reference at all.
    """
    r = group_size - 1
    own = torch.arange(n)[:, None]
    if r < 1 or n < 2 or n % group_size != 0:
        return own.repeat(1, max(r, 1)), n
    idx = torch.arange(n).view(-1, group_size)  # (groups, G)
    # member i of a group uses members i+1, ..., i+G-1 (mod G): every other member once
    pos = (torch.arange(group_size)[:, None] + torch.arange(1, group_size)[None]) % group_size
    ref = idx[:, pos].reshape(n, r)
    if tags is not None:
        tags = tags.float().cpu()
        share = (tags[:, None, :] * tags[ref]).sum(-1) > 0  # (N, R)
        ref = torch.where(share, ref, own.expand_as(ref))
    lonely = int((ref == own).all(1).sum())
    return ref, lonely


@META_ARCH_REGISTRY.register()
class CIANSegmentor(WSSSSegmentor):
    """Backbone + :class:`CIANHead`; training pairs the batch, inference is self-affinity only.

    Training input: the pair loader's ``list[dict]`` with ``image``, ``sem_seg`` (pseudo labels)
    and ``tags``. Output: the head's ``loss_*`` dict.
    """

    @configurable
    def __init__(self, *, num_refs: int = 1, require_common_class: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.group_size = 1 + int(num_refs)
        self.require_common_class = require_common_class

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(
            num_refs=cfg.MODEL.CIAN.NUM_REFS,
            # random pairs (the ablation) keep references that share no tag
            require_common_class=cfg.DATALOADER.PAIR_SAMPLING != "random",
        )
        return ret

    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images = self.preprocess_image(batched_inputs)
        if "sem_seg" not in batched_inputs[0]:
            raise ValueError(
                "CIANSegmentor needs 'sem_seg' pseudo labels in training: does the training "
                "dataset have them (WSSS.PSEUDO.TRAIN_ROUND)?"
            )
        ignore = self.sem_seg_head.ignore_value
        targets = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs],
            self.backbone.size_divisibility,
            ignore,
            self.backbone.padding_constraints,
        ).tensor
        tags = None
        if all("tags" in x for x in batched_inputs):
            tags = torch.stack([x["tags"] for x in batched_inputs]).to(self.device).float()
        valid = torch.zeros(targets.shape, dtype=torch.bool, device=self.device)
        for i, (h, w) in enumerate(images.image_sizes):
            valid[i, :h, :w] = True

        ref_index, lonely = None, 0
        if self.sem_seg_head.cross:
            n = len(batched_inputs)
            if tags is None and self.require_common_class:
                ref_index, lonely = group_references(n, 1)  # cannot check: self-pairs
            else:
                ref_index, lonely = group_references(
                    n, self.group_size, tags if self.require_common_class else None
                )
            if lonely:
                log_every_n_seconds(
                    logging.WARNING,
                    f"CIAN: {lonely} of {len(batched_inputs)} images in the batch have no "
                    f"cross-image reference (batch not made of groups of {self.group_size} "
                    "sharing a tag); they train on self-pairs",
                    n=60,
                    name=__name__,
                )
            ref_index = ref_index.to(self.device)
        features = self.backbone(images.tensor)
        _, losses = self.sem_seg_head(features, targets, ref_index, tags, valid)
        if self.sem_seg_head.cross:
            _log_self_paired(lonely / max(len(batched_inputs), 1))
        return losses


def _log_self_paired(lonely_fraction: float) -> None:
    """Log the fraction of self-paired images to the training storage when there is one."""
    try:
        get_event_storage().put_scalar("cian/self_paired_fraction", lonely_fraction)
    except AssertionError:  # no EventStorage outside a trainer
        pass
