"""PLDA: Pixel-Level Domain Adaptation for WSSS (Du et al., "Pixel-Level Domain Adaptation: A New
Perspective for Enhancing Weakly Supervised Semantic Segmentation"; official code usr922/plda).

The most discriminative pixels of a class (its CAM peak: the *source* domain) and its other pixels
(the *target* domain) have different features, so the CAM covers only the former. PLDA adds, on top
of a CAM classifier:

- a domain assignment: **MaskAssign** (source = normalised CAM > theta; erase the source pixels,
  run the network again; target = pixels whose masked CAM is still > theta) or **SimpleAssign**
  (two thresholds on one CAM);
- an **adversarial loss**: a multi-head (one head per class) domain classifier on the features,
  behind a gradient reversal layer, so the features become source/target invariant (Eq. 5);
- **confident pseudo-supervision** (CPS, Eq. 7-8): the CAM (and the masked CAM) refined by PAMR
  gives a pseudo-label distribution; source (target) pixels whose confidence exceeds
  ``alpha x`` the image's maximum are supervised with a class-balanced cross-entropy, on the
  CAM's logits (the paper) or on a separate pixel classifier over the same features
  (``MODEL.PLDA.CPS_HEAD "pixel"``, ours: see projects/PLDA/README.md).

Inference is the CAM classifier's, unchanged (``"cam"`` and ``"sem_seg"``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ...ops.pamr import PAMR
from ..heads.cps import (
    CPS_AMBIGUITIES,
    CPS_DISTRIBUTIONS,
    CPS_TARGET_AFFINITIES,
    CPS_WEIGHTINGS,
    balanced_cps_loss,
    cps_pseudo_labels,
)
from ..heads.domain_classifier import (
    DOMAIN_WEIGHTINGS,
    MultiHeadDomainClassifier,
    balanced_domain_loss,
)
from ..layers.domain_assign import (
    erase_mask,
    frozen_norm_stats,
    mask_assign,
    own_class_target,
    simple_assign,
    strongest_class_only,
)
from ..layers.grl import GradientReversal
from .cam import CAMClassifier, normalize_cams

__all__ = ["PLDA"]

# MODEL.PLDA keys that are PLDA's keyword arguments of the same name, lower-cased
_CONFIG_KEYS = (
    "adv_on", "cps_on", "cps_tgt_on", "assign", "theta", "target_norm", "argmax_assign",
    "target_own_class", "domain_entropy_weight", "domain_weighting", "simple_high", "simple_low",
    "adv_loss_weight", "cps_src_loss_weight", "cps_tgt_loss_weight", "cps_alpha",
    "cps_min_confidence", "cps_background", "cps_head", "cps_upsample", "cps_weighting",
    "cps_distribution", "cps_ambiguity", "cps_bg_alpha", "cps_target_affinity", "pamr_iters",
    "pamr_dilations", "domain_hidden_dims", "domain_dropout", "grl_coeff",
)  # fmt: skip


@META_ARCH_REGISTRY.register()
class PLDA(CAMClassifier):
    """CAM classifier + pixel-level domain adaptation (training only; inference is inherited).

    Training input as :class:`CAMClassifier`; output: ``loss_cls`` plus, when switched on,
    ``loss_adv``, ``loss_cps_src`` and ``loss_cps_tgt``. With everything off it *is* the CAM
    baseline, so the ablation runs from configs alone.
    """

    @configurable
    def __init__(
        self,
        *,
        adv_on: bool = True,
        cps_on: bool = True,
        cps_tgt_on: bool = True,
        assign: str = "mask",
        theta: float = 0.6,
        target_theta: float | None = None,
        target_norm: str = "masked",
        argmax_assign: bool = True,
        target_own_class: bool = False,
        domain_entropy_weight: bool = True,
        domain_weighting: str = "official",
        simple_high: float = 0.6,
        simple_low: float = 0.2,
        adv_loss_weight: float = 1.0,
        cps_src_loss_weight: float = 1.0,
        cps_tgt_loss_weight: float = 1.0,
        cps_alpha: float = 0.6,
        cps_min_confidence: float = 0.2,
        cps_background: str = "zero",
        cps_head: str = "cam",
        cps_upsample: int = 1,
        cps_weighting: str = "official",
        cps_distribution: str = "softmax",
        cps_ambiguity: str = "all",
        cps_bg_alpha: float = 0.7,
        cps_target_affinity: str = "masked",
        pamr_iters: int = 10,
        pamr_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        domain_hidden_dims: Sequence[int] = (1024, 512),
        domain_dropout: float = 0.5,
        grl_coeff: float = 1.0,
        ignore_value: int = 255,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.adv_on, self.cps_on, self.cps_tgt_on = adv_on, cps_on, cps_tgt_on
        self.assign = assign
        self.target_norm = target_norm
        self.argmax_assign, self.target_own_class = argmax_assign, target_own_class
        self.domain_entropy_weight = domain_entropy_weight
        for key, value, allowed in (
            ("ASSIGN", assign, ("mask", "simple")),
            ("TARGET_NORM", target_norm, ("masked", "original")),
            ("CPS_BACKGROUND", cps_background, ("zero", "learned")),
            ("CPS_HEAD", cps_head, ("cam", "pixel")),
            ("DOMAIN_WEIGHTING", domain_weighting, DOMAIN_WEIGHTINGS),
            ("CPS_WEIGHTING", cps_weighting, CPS_WEIGHTINGS),
            ("CPS_DISTRIBUTION", cps_distribution, CPS_DISTRIBUTIONS),
            ("CPS_AMBIGUITY", cps_ambiguity, CPS_AMBIGUITIES),
            ("CPS_TARGET_AFFINITY", cps_target_affinity, CPS_TARGET_AFFINITIES),
        ):
            if value not in allowed:
                raise ValueError(f"MODEL.PLDA.{key} must be one of {allowed}, got '{value}'")
        self.domain_weighting, self.cps_weighting = domain_weighting, cps_weighting
        self.cps_distribution, self.cps_ambiguity = cps_distribution, cps_ambiguity
        self.cps_bg_alpha, self.cps_target_affinity = cps_bg_alpha, cps_target_affinity
        self.theta, self.simple_high, self.simple_low = theta, simple_high, simple_low
        self.target_theta = target_theta
        self.adv_loss_weight = adv_loss_weight
        self.cps_src_loss_weight = cps_src_loss_weight
        self.cps_tgt_loss_weight = cps_tgt_loss_weight
        self.cps_alpha, self.cps_min_confidence = cps_alpha, cps_min_confidence
        self.cps_upsample = int(cps_upsample)
        self.ignore_value = ignore_value
        self.pamr = PAMR(pamr_iters, pamr_dilations)
        self.grl = GradientReversal(grl_coeff)
        channels = self.backbone.output_shape()[self.in_feature].channels
        # the learned background logit and the pixel classifier exist only with CPS, their only
        # loss (DDP: see below)
        self.cps_background = self.cps_head = None
        if cps_on and cps_head == "pixel":
            self.cps_head = torch.nn.Conv2d(channels, self.num_classes + 1, 1)
            torch.nn.init.xavier_uniform_(self.cps_head.weight)
            torch.nn.init.zeros_(self.cps_head.bias)
        elif cps_on and cps_background == "learned":
            self.cps_background = torch.nn.Conv2d(channels, 1, 1, bias=False)
            torch.nn.init.xavier_uniform_(self.cps_background.weight)
        # only with the adversarial loss: parameters without gradients would stop
        # DistributedDataParallel (find_unused_parameters is off in Detectron2's trainer)
        self.domain_classifier = (
            MultiHeadDomainClassifier(
                channels, self.num_classes, domain_hidden_dims, domain_dropout
            )
            if adv_on
            else None
        )

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        p = cfg.MODEL.PLDA
        ret.update({k: getattr(p, k.upper()) for k in _CONFIG_KEYS})
        ret["target_theta"] = p.TARGET_THETA if p.TARGET_THETA >= 0 else None
        ret["ignore_value"] = cfg.MODEL.IGNORE_VALUE
        return ret

    # ------------------------------------------------------------------ pieces
    def normalized_cam(
        self, logits: torch.Tensor, tags: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        """(N, K, h, w) logits -> max-normalised, detached CAMs, zero off-tag and in padding."""
        cam = F.relu(logits.detach()) * tags[:, :, None, None] * valid
        return normalize_cams(cam)

    def assignment_cam(self, cam: torch.Tensor) -> torch.Tensor:
        """The CAM that domains are assigned on (:func:`strongest_class_only` with
        ``argmax_assign``, as in the official code)."""
        return strongest_class_only(cam) if self.argmax_assign else cam

    def pseudo_scores(self, logits: torch.Tensor | None, cam: torch.Tensor | None) -> torch.Tensor:
        """(N, K+1, h, w) pseudo-label scores (channel 0 = background) before PAMR, from the
        detached (N, K, h, w) CAM logits or their normalised CAM:

        - ``CPS_DISTRIBUTION "softmax"`` (the official code): softmax over ``[1, raw logits]``,
          every class's logit in it (absent classes are dropped after PAMR);
        - ``"normalized"`` (ours): ``[1 - max_k CAM_k, CAM_1..K]`` divided by its sum.
        """
        if self.cps_distribution == "softmax":
            return torch.cat([torch.ones_like(logits[:, :1]), logits], 1).softmax(1)
        s = torch.cat([1.0 - cam.amax(1, keepdim=True), cam], 1)
        return s / s.sum(1, keepdim=True).clamp(min=1e-5)

    def pseudo_distribution(
        self, affinity: torch.Tensor, scores: Sequence[torch.Tensor], tags: torch.Tensor
    ) -> list[torch.Tensor]:
        """PAMR-refined (N, K+1, h, w) distributions from :meth:`pseudo_scores` maps.

        The maps are refined by PAMR with ``affinity`` (``self.pamr.affinity`` of the image
        resized to the maps' resolution), then restricted to bg + the image's tags. Maps that
        share the affinity are refined in one PAMR pass (channels are independent in PAMR).
        """
        refined = self.pamr.refine(torch.cat(list(scores), 1), affinity)
        keep = torch.cat([torch.ones_like(tags[:, :1]), tags], 1)[:, :, None, None]
        return [p * keep for p in refined.split(scores[0].shape[1], dim=1)]

    def cps_logits(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) features and (N, K, h, w) class logits -> (N, K+1, h, w) CPS logits with
        the background logit in front: the constant 0 (``CPS_BACKGROUND "zero"``: a supervised
        pixel of class k must have logit_k > 0, the CAM fires there, and above *every* other
        class) or a learned 1x1 conv of the features (``"learned"``, as the background channel of
        the official code's classifier, which only CPS trains: it can fall where classes are
        labelled, and the CE then mostly separates the classes). Absent classes are deliberately
        not masked out (as in the official code): with them masked, the cross-entropy could be
        satisfied by raising every class logit everywhere, against the classification loss.
        With ``CPS_HEAD "pixel"``: the separate pixel classifier's (N, K+1, h, w) logits."""
        if self.cps_head is not None:
            return self.cps_head(features)
        if self.cps_background is None:
            bg = torch.zeros_like(logits[:, :1])
        else:
            bg = self.cps_background(features)
        return torch.cat([bg, logits], 1)

    def _upsample(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        if self.cps_upsample == 1:
            return x
        if mode == "nearest":
            return F.interpolate(x.float(), scale_factor=self.cps_upsample, mode="nearest")
        return F.interpolate(
            x, scale_factor=self.cps_upsample, mode="bilinear", align_corners=False
        )

    def adversarial_loss(
        self, features: torch.Tensor, source: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        """Per-class source (0) vs target (1) domain loss on GRL'd features (Eq. 5).

        features: (N, C, h, w); source, target: (N, K, h, w) bool.
        """
        n, k, h, w = source.shape
        feats = self.grl(features)
        idx_s = source.permute(0, 2, 3, 1).reshape(-1, k).nonzero()  # (Ms, 2): pixel, class
        idx_t = target.permute(0, 2, 3, 1).reshape(-1, k).nonzero()
        pix = torch.cat([idx_s[:, 0], idx_t[:, 0]])
        cls = torch.cat([idx_s[:, 1], idx_t[:, 1]])
        dom = torch.cat([torch.zeros_like(idx_s[:, 0]), torch.ones_like(idx_t[:, 0])])
        logits = self.domain_classifier(feats, pix, cls)
        groups = (pix // (h * w)) * k + cls  # one group per (image, class)
        return balanced_domain_loss(
            logits, dom, groups, n * h * w, self.domain_entropy_weight, self.domain_weighting
        )

    def assign_domains(
        self, x: torch.Tensor, logits: torch.Tensor, tags: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """Source and target pixels of each class (MaskAssign or SimpleAssign, Eq. 6).

        Args:
            x: (N, 3, H, W) normalised images; logits: (N, K, h, w) their CAM logits;
            tags: (N, K) multi-hot; valid: (N, 1, h, w) non-padded region.
        Returns:
            the normalised CAM, the masked image's normalised CAM (None with SimpleAssign) and
            the (N, K, h, w) bool source and target masks.
        """
        return self._assign(x, logits, tags, valid)[:4]

    def _assign(self, x, logits, tags, valid):
        """:meth:`assign_domains` plus the masked image and its CAM logits (None, None with
        SimpleAssign), which CPS needs for the target's pseudo labels."""
        cam = self.normalized_cam(logits, tags, valid)
        assign_cam = self.assignment_cam(cam)
        masked_cam = x_masked = masked_logits = None
        if self.assign == "mask":
            # erased pixels take the pixel mean, i.e. 0 after normalisation (Eq. 6); the second
            # pass only assigns domains and makes pseudo labels, so it needs no graph
            with torch.no_grad(), frozen_norm_stats(self.backbone):
                x_masked = x * (1.0 - erase_mask(assign_cam > self.theta, x.shape[-2:]))
                masked_logits = self.cam_logits(self.extract_features(x_masked))
            if self.target_norm == "original":
                # relative to the unmasked image's peak: a target needs residual evidence
                # comparable to the source's, not just the arg-max of what is left
                peak = (F.relu(logits.detach()) * valid).flatten(2).amax(-1)[..., None, None]
                masked_cam = F.relu(masked_logits) * tags[:, :, None, None] * valid
                masked_cam = (masked_cam / (peak + 1e-5)).clamp(max=1.0)
            else:
                masked_cam = self.normalized_cam(masked_logits, tags, valid)
            source, target = mask_assign(
                assign_cam, self.assignment_cam(masked_cam), self.theta, self.target_theta
            )
        else:
            source, target = simple_assign(assign_cam, self.simple_high, self.simple_low)
        if self.target_own_class:
            target = own_class_target(cam, target)
        return cam, masked_cam, source, target, x_masked, masked_logits

    @torch.no_grad()
    def cps_labels(
        self,
        parts: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
        tags: torch.Tensor,
        valid: torch.Tensor,
        size: tuple[int, int],
    ) -> list[torch.Tensor]:
        """Confident pseudo labels (N, h', w') at the CPS resolution ``size``, one map per part.

        Each part is ``(image, logits, cam, region)``: the (N, 3, H, W) image whose PAMR
        affinity refines it, the detached (N, K, h, w) CAM logits and normalised CAM that
        :meth:`pseudo_scores` turns into scores, and the (N, K, h, w) bool region (source or
        target). Parts with the same image share one affinity and one PAMR pass. With the
        softmax distribution the refined scores are zeroed in the batch padding, so that its
        (unnormalised) logits set no image maximum.
        """
        probs: list[torch.Tensor | None] = [None] * len(parts)
        groups: dict[int, list[int]] = {}
        for i, (image, _, _, _) in enumerate(parts):
            groups.setdefault(id(image), []).append(i)
        for idx in groups.values():
            small = F.interpolate(parts[idx[0]][0], size=size, mode="bilinear", align_corners=False)
            if self.cps_distribution == "softmax":  # only the logits are read
                scores = [self.pseudo_scores(self._upsample(parts[i][1]), None) for i in idx]
            else:  # only the CAM
                scores = [self.pseudo_scores(None, self._upsample(parts[i][2])) for i in idx]
            for i, p in zip(idx, self.pseudo_distribution(self.pamr.affinity(small), scores, tags)):
                probs[i] = p
        if self.cps_distribution == "softmax":
            inside = self._upsample(valid, "nearest")
            probs = [p * inside for p in probs]
        return [
            cps_pseudo_labels(
                p,
                self._upsample(region, "nearest") > 0.5,
                self.cps_alpha,
                self.cps_min_confidence,
                self.ignore_value,
                self.cps_ambiguity,
                self.cps_bg_alpha,
            )
            for p, (_, _, _, region) in zip(probs, parts)
        ]

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        if not self.training:
            return self.inference(batched_inputs)
        images, tags, features, logits, valid, loss_cls = self.classification_step(batched_inputs)
        x = images.tensor
        losses = {"loss_cls": loss_cls}
        if not (self.adv_on or self.cps_on):
            return losses

        cam, masked_cam, source, target, x_masked, masked_logits = self._assign(
            x, logits, tags, valid
        )

        if self.adv_on:
            losses["loss_adv"] = self.adv_loss_weight * self.adversarial_loss(
                features, source, target
            )

        if self.cps_on:
            up_logits = self._upsample(self.cps_logits(features, logits))
            # source pixels get the CAM's pseudo labels; target pixels (symmetric, Eq. 8) the
            # masked CAM's, refined with the masked image's affinity (CPS_TARGET_AFFINITY
            # "masked", the official code) or the image's ("image"); SimpleAssign: the CAM's
            parts = [(x, logits.detach(), cam, source)]
            names = [("src", self.cps_src_loss_weight)]
            if self.cps_tgt_on:
                if masked_cam is None:
                    parts.append((x, logits.detach(), cam, target))
                else:
                    image = x_masked if self.cps_target_affinity == "masked" else x
                    parts.append((image, masked_logits, masked_cam, target))
                names.append(("tgt", self.cps_tgt_loss_weight))
            labels = self.cps_labels(parts, tags, valid, up_logits.shape[-2:])
            for (name, weight), lab in zip(names, labels):
                losses[f"loss_cps_{name}"] = weight * balanced_cps_loss(
                    up_logits, lab, self.ignore_value, self.cps_weighting
                )
        return losses
