"""ReCAM: class re-activation maps, a softmax cross-entropy on CAM-pooled features.

Chen, Wang, Wang & Sun, "Class Re-Activation Maps for Weakly-Supervised Semantic Segmentation",
CVPR 2022 (official code: zhaozhengChen/ReCAM). The paper's argument: the multi-label
soft-margin loss of the CAM classifier makes every class a separate binary problem, so nothing
keeps the CAMs of co-occurring classes and of their context apart. ReCAM keeps the trained CAM network
and adds, for every class ``k`` an image is tagged with, a *single-label* problem: the backbone
features pooled under the image's normalised CAM of ``k``,

    f_k = mean_{x,y} CAM_k(x, y) F(x, y)                      (C,)

must be classified as ``k`` among all classes by a second 1x1 classifier ``W_re`` with the
softmax cross-entropy. The maps are then re-activated with the element-wise product of the two
classifiers' weights, ``ReLU((W_re * W) F)``, in place of ``ReLU(W F)``.

Recipe of the official ``step/train_recam.py`` (the defaults of ``configs/recam_r50_voc.yaml``):
start from the trained CAM model, 4 epochs at batch 16 (crop 512), loss = soft margin +
1.0 x cross-entropy (``MODEL.RECAM.LOSS_WEIGHT``), SGD poly with the backbone and the CAM
classifier at 0.1x ReCAM's learning rate 0.0005 and ``W_re`` at 1x (``SOLVER.BASE_LR 5e-5`` and
``SOLVER.PARAM_LR_MULTS (("recam_classifier", 10.0),)``), ``W_re`` initialised as PyTorch's
default for a convolution. Each image's cross-entropy is the mean over its tagged classes, and the
batch's loss the sum over images divided by the batch size (an image without tags adds 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from .cam import CAMClassifier, normalize_cams

__all__ = ["ReCAM", "recam_cross_entropy"]


def recam_cross_entropy(
    features: torch.Tensor,
    logits: torch.Tensor,
    mask: torch.Tensor | None,
    targets: torch.Tensor,
    weight: torch.Tensor,
) -> torch.Tensor:
    """ReCAM's loss.

    Args:
        features: (N, C, h, w) backbone features.
        logits: (N, K, h, w) CAM classifier scores on them (before ReLU).
        mask: (N, 1, h, w) valid (non-padded) region, or None for all pixels.
        targets: (N, K) multi-hot tags.
        weight: (K, C) the ReCAM classifier.
    Returns:
        scalar: sum over images of the mean cross-entropy over the image's tagged classes,
        divided by N.
    """
    n, k = targets.shape
    cams = F.relu(logits)
    if mask is not None:
        cams = cams * mask
    cams = normalize_cams(cams)
    if mask is None:
        area = cams.new_full((n, 1), float(cams.shape[-2] * cams.shape[-1]))
    else:
        area = mask.flatten(1).sum(1, keepdim=True).clamp(min=1)
    pooled = torch.einsum("nkhw,nchw->nkc", cams, features) / area[..., None]  # (N, K, C)
    scores = pooled @ weight.t()  # (N, K tagged-or-not, K classes)
    labels = torch.arange(k, device=scores.device).repeat(n)
    ce = F.cross_entropy(scores.reshape(n * k, k), labels, reduction="none").view(n, k)
    tagged = (targets > 0).to(ce.dtype)
    per_image = (ce * tagged).sum(1) / tagged.sum(1).clamp(min=1)
    return per_image.sum() / n


@META_ARCH_REGISTRY.register()
class ReCAM(CAMClassifier):
    """CAM classifier trained with ReCAM's extra cross-entropy; its CAMs are the re-activated
    maps ``ReLU((W_re * W) F)`` (module docstring).

    Training output: ``{"loss_cls", "loss_recam"}``. Inference: as :class:`CAMClassifier`, with
    :meth:`cam_logits` using the product weight; ``MODEL.RECAM.TEST_CAMS "cam"`` gives the plain
    CAMs of the same network instead.
    """

    # training refuses to start without MODEL.WEIGHTS (WSSSTrainer.resume_or_load)
    REQUIRES_WEIGHTS = "a trained CAM model"

    @configurable
    def __init__(self, *, recam_loss_weight: float = 1.0, test_recam: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.recam_classifier = nn.Conv2d(
            self.classifier.in_channels, self.num_classes, 1, bias=False
        )  # PyTorch's default initialisation, as the official Class_Predictor
        self.recam_loss_weight = recam_loss_weight
        self.test_recam = test_recam

    @classmethod
    def from_config(cls, cfg):
        test_cams = cfg.MODEL.RECAM.TEST_CAMS
        if test_cams not in ("recam", "cam"):
            raise ValueError(f"MODEL.RECAM.TEST_CAMS must be 'recam' or 'cam', got {test_cams!r}")
        ret = super().from_config(cfg)
        ret.update(recam_loss_weight=cfg.MODEL.RECAM.LOSS_WEIGHT, test_recam=test_cams == "recam")
        return ret

    def recam_weight(self) -> torch.Tensor:
        """(K, C, 1, 1): the element-wise product of the ReCAM and CAM classifiers' weights."""
        return self.recam_classifier.weight * self.classifier.weight

    def cam_settings(self) -> dict:
        """Part of a CAM folder's fingerprint: which maps the files hold."""
        return {"recam_test_cams": "recam" if self.test_recam else "cam"}

    def cam_logits(self, features: torch.Tensor) -> torch.Tensor:
        """In training the CAM classifier's scores (the soft-margin loss pools them); in
        inference the re-activated scores ``(W_re * W) F`` (or the plain ones with
        ``test_recam=False``)."""
        if self.training or not self.test_recam:
            return super().cam_logits(features)
        return F.conv2d(features, self.recam_weight())

    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        _, tags, features, logits, valid, loss_cls = self.classification_step(batched_inputs)
        w_re = self.recam_classifier.weight.flatten(1)
        loss_re = recam_cross_entropy(features, logits, valid, tags, w_re)
        return {"loss_cls": loss_cls, "loss_recam": self.recam_loss_weight * loss_re}
