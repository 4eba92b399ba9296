"""CAM classifier: the baseline every WSSS method in this package builds on.

Backbone -> 1x1 classifier without bias -> (masked) global average pooling -> multi-label
soft-margin loss (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR
2016; the IRN/SEAM protocol of Ahn et al. 2019 and Wang et al. 2020). The CAM of class k is the
ReLU of the classifier applied at every pixel, normalised per image by its maximum.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList
from torch import nn

from ..test_time import multiscale_flip_sum

__all__ = ["CAMClassifier", "CAMStep", "normalize_cams"]


class CAMStep(NamedTuple):
    """What :meth:`CAMClassifier.classification_step` computes, for the losses built on it."""

    images: ImageList  # normalised, padded
    tags: torch.Tensor  # (N, K) multi-hot
    features: torch.Tensor  # (N, C, h, w) of ``in_feature``
    logits: torch.Tensor  # (N, K, h, w) CAM scores before ReLU
    valid: torch.Tensor  # (N, 1, h, w) non-padded region
    loss_cls: torch.Tensor  # the weighted multi-label soft-margin loss


def normalize_cams(cams: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-(image, class) max normalisation of non-negative CAMs (..., H, W) -> [0, 1]."""
    peak = cams.flatten(-2).amax(-1)[..., None, None]
    return cams / (peak + eps)


@META_ARCH_REGISTRY.register()
class CAMClassifier(nn.Module):
    """Multi-label classifier whose class activation maps are the weak localisation.

    Training input: ``list[dict]`` with ``image`` (3, H, W) and ``tags`` (K,) multi-hot.
    Training output: ``{"loss_cls": scalar}``.
    Inference output per image: ``"cam"`` (K, H, W) in [0, 1] at the original image size (zero for
    classes not in ``tags`` when the input has them and ``use_tags_at_test``), and ``"sem_seg"``
    (K+1, H, W) whose channel 0 is the constant background score ``bg_threshold``, so that
    ``argmax`` gives the thresholded-CAM segmentation the WSSS literature evaluates.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        in_feature: str,
        num_classes: int,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        bg_threshold: float = 0.15,
        use_tags_at_test: bool = True,
        test_scales: Sequence[float] = (1.0,),
        test_flip: bool = False,
        loss_weight: float = 1.0,
    ):
        super().__init__()
        self.backbone = backbone
        self.in_feature = in_feature
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(
            backbone.output_shape()[in_feature].channels, num_classes, 1, bias=False
        )
        nn.init.xavier_uniform_(self.classifier.weight)
        self.bg_threshold = bg_threshold
        self.use_tags_at_test = use_tags_at_test
        self.test_scales = tuple(test_scales)
        self.test_flip = test_flip
        self.loss_weight = loss_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.CAM
        return {
            "backbone": build_backbone(cfg),
            "in_feature": c.IN_FEATURE,
            "num_classes": cfg.INPUT.TAGS.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "bg_threshold": c.BG_THRESHOLD,
            "use_tags_at_test": c.USE_TAGS_AT_TEST,
            "test_scales": c.TEST_SCALES,
            "test_flip": c.TEST_FLIP,
            "loss_weight": c.LOSS_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ pieces (reused by PLDA)
    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise and pad (with 0 = the pixel mean) into an ImageList."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised -> (N, C, h, w) features of ``in_feature``."""
        return self.backbone(images)[self.in_feature]

    def cam_logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) -> (N, K, h, w) per-pixel class scores (before ReLU)."""
        return self.classifier(features)

    @staticmethod
    def valid_mask(images: ImageList, hw: tuple[int, int]) -> torch.Tensor:
        """(N, 1, h, w) float mask of the non-padded region at feature resolution ``hw``."""
        n = len(images.image_sizes)
        H, W = images.tensor.shape[-2:]
        mask = torch.zeros(n, 1, H, W, device=images.tensor.device)
        for i, (h, w) in enumerate(images.image_sizes):
            mask[i, :, :h, :w] = 1
        return F.interpolate(mask, size=hw, mode="nearest")

    @staticmethod
    def pool(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(Masked) global average pooling (N, K, h, w) -> (N, K)."""
        if mask is None:
            return logits.mean((2, 3))
        return (logits * mask).sum((2, 3)) / mask.sum((2, 3)).clamp(min=1)

    def tag_targets(self, batched_inputs: list[dict]) -> torch.Tensor:
        """(N, K) multi-hot targets; every training image must carry tags."""
        for x in batched_inputs:
            if "tags" not in x:
                raise KeyError(f"training input {x.get('file_name', '?')} has no 'tags'")
        return torch.stack([x["tags"] for x in batched_inputs]).to(self.device).float()

    def classification_loss(self, scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Multi-label soft-margin loss (N, K) x (N, K) -> scalar."""
        return F.multilabel_soft_margin_loss(scores, targets)

    def classification_step(self, batched_inputs: list[dict]) -> CAMStep:
        """The training forward every CAM model starts with: features, CAM scores, their
        (masked) pooling and the weighted classification loss."""
        images = self.preprocess_image(batched_inputs)
        tags = self.tag_targets(batched_inputs)
        features = self.extract_features(images.tensor)
        logits = self.cam_logits(features)
        valid = self.valid_mask(images, logits.shape[-2:])
        loss = self.loss_weight * self.classification_loss(self.pool(logits, valid), tags)
        return CAMStep(images, tags, features, logits, valid, loss)

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        return {"loss_cls": self.classification_step(batched_inputs).loss_cls}

    @torch.no_grad()
    def multiscale_cams(
        self, images: torch.Tensor, scales: Sequence[float] | None = None, flip: bool | None = None
    ) -> torch.Tensor:
        """Sum of ReLU'd CAMs over scales (and flips), at the input resolution.

        Args:
            images: (N, 3, H, W) normalised batch.
        Returns:
            (N, K, H, W) non-negative, not normalised. Each scale runs once for the whole batch,
            with the flipped copies stacked into the same forward pass.
        """
        scales = self.test_scales if scales is None else tuple(scales)
        flip = self.test_flip if flip is None else flip
        return multiscale_flip_sum(
            images, lambda x: F.relu(self.cam_logits(self.extract_features(x))), scales, flip
        )

    def postprocess_cams(
        self, cams: torch.Tensor, images: ImageList, batched_inputs: list[dict]
    ) -> list[dict]:
        """Crop padding, resize to each image's original size, normalise, mask absent tags."""
        results = []
        for i, x in enumerate(batched_inputs):
            h, w = images.image_sizes[i]
            out_h, out_w = x.get("height", h), x.get("width", w)
            cam = cams[i : i + 1, :, :h, :w]
            keys = None
            if self.use_tags_at_test and "tags" in x:
                # only the tagged classes are resized: the others are zero anyway (80 COCO
                # classes, ~3 tags an image)
                keys = torch.nonzero(x["tags"].to(cam.device) > 0).flatten()
                cam = cam[:, keys]
            if (out_h, out_w) != (h, w) and cam.shape[1] > 0:
                cam = F.interpolate(cam, size=(out_h, out_w), mode="bilinear", align_corners=False)
            cam = normalize_cams(cam[0]).reshape(-1, out_h, out_w)
            if keys is not None:
                full = cam.new_zeros((self.num_classes, out_h, out_w))
                full[keys] = cam
                cam = full
            bg = torch.full_like(cam[:1], self.bg_threshold)
            results.append({"cam": cam, "sem_seg": torch.cat([bg, cam])})
        return results

    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        images = self.preprocess_image(batched_inputs)
        return self.postprocess_cams(self.multiscale_cams(images.tensor), images, batched_inputs)
