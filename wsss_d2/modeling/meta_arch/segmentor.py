"""``WSSSSegmentor``: Detectron2's ``SemanticSegmentor`` with the WSSS test-time protocol.

Training is ``SemanticSegmentor``'s own (backbone -> head -> ``head.losses`` on the ``sem_seg``
pseudo labels). Inference adds what the WSSS literature evaluates with: softmax probabilities
averaged over several input scales and horizontal flips, and optionally a dense CRF on the
averaged probabilities. Outputs stay ``[{"sem_seg": (K+1, H, W)}]`` (probabilities), so every
Detectron2 evaluator and our pseudo-label tools consume them unchanged.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ...ops.crf import crf_from_config
from ..test_time import multiscale_flip_sum

logger = logging.getLogger(__name__)

__all__ = ["WSSSSegmentor", "build_test_crf"]


def build_test_crf(cfg) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """The dense-CRF post-processing of :mod:`wsss_d2.ops.crf` when ``MODEL.SEG_HEAD.TEST_CRF``.

    Returns ``fn(image_rgb (H, W, 3) uint8, probs (C, H, W) float32) -> probs (C, H, W)`` or
    None. The CRF's parameters are the pseudo-label stage's (``WSSS.PSEUDO.CRF``), its iterations
    ``MODEL.SEG_HEAD.TEST_CRF_ITERATIONS`` when set (CIAN's official test CRF runs 5, its
    retraining labels' CRF 10).
    """
    if not cfg.MODEL.SEG_HEAD.TEST_CRF:
        return None
    return crf_from_config(cfg, cfg.MODEL.SEG_HEAD.TEST_CRF_ITERATIONS)


@META_ARCH_REGISTRY.register()
class WSSSSegmentor(SemanticSegmentor):
    """``SemanticSegmentor`` whose inference is multi-scale + flip (+ dense CRF).

    Inference output per image: ``"sem_seg"`` (K+1, H, W) float probabilities at the original
    image size (``height`` x ``width`` of the input dict).
    """

    @configurable
    def __init__(
        self,
        *,
        test_scales: Sequence[float] = (1.0,),
        test_flip: bool = False,
        test_crf: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
        input_format: str = "BGR",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.test_scales = tuple(float(s) for s in test_scales)
        if not self.test_scales:
            raise ValueError("MODEL.SEG_HEAD.TEST_SCALES must name at least one scale")
        self.test_flip = test_flip
        self.test_crf = test_crf
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret.update(
            test_scales=cfg.MODEL.SEG_HEAD.TEST_SCALES,
            test_flip=cfg.MODEL.SEG_HEAD.TEST_FLIP,
            test_crf=build_test_crf(cfg),
            input_format=cfg.INPUT.FORMAT,
        )
        return ret

    # ------------------------------------------------------------------ pieces
    def preprocess_image(self, batched_inputs: list[dict]) -> ImageList:
        """Normalise and pad (with 0 = the pixel mean) into an ImageList."""
        images = [
            (x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs
        ]
        return ImageList.from_tensors(
            images,
            self.backbone.size_divisibility,
            padding_constraints=self.backbone.padding_constraints,
        )

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised -> (N, K+1, H, W) inference logits at the input size."""
        logits = self.sem_seg_head(self.backbone(images))[0]
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def multiscale_probs(self, images: torch.Tensor) -> torch.Tensor:
        """Mean softmax over ``test_scales`` (x flips): (N, 3, H, W) -> (N, K+1, H, W).

        Each scale runs the whole batch at once, its flipped copy stacked into the same pass.
        """
        size = images.shape[-2:]

        def probs(x: torch.Tensor) -> torch.Tensor:  # softmax after resizing, as at one scale
            return F.interpolate(
                self.segment(x), size=size, mode="bilinear", align_corners=False
            ).softmax(1)

        views = len(self.test_scales) * (2 if self.test_flip else 1)
        return multiscale_flip_sum(images, probs, self.test_scales, self.test_flip) / views

    def _rgb(self, image: torch.Tensor) -> np.ndarray:
        """(3, H, W) uint8 in ``input_format`` -> (H, W, 3) uint8 RGB for the CRF."""
        img = image.permute(1, 2, 0).cpu().numpy()
        if self.input_format == "BGR":
            img = img[:, :, ::-1]
        return np.ascontiguousarray(img.astype(np.uint8))

    def postprocess(
        self, probs: torch.Tensor, images: ImageList, batched_inputs: list[dict]
    ) -> list[dict]:
        results = []
        for i, x in enumerate(batched_inputs):
            h, w = images.image_sizes[i]
            p = probs[i]
            if self.test_crf is not None:
                q = self.test_crf(
                    self._rgb(x["image"][:, :h, :w]), p[:, :h, :w].float().cpu().numpy()
                )
                p = torch.as_tensor(np.asarray(q, dtype=np.float32), device=p.device)
            out_h, out_w = x.get("height", h), x.get("width", w)
            results.append({"sem_seg": sem_seg_postprocess(p, (h, w), out_h, out_w)})
        return results

    # ------------------------------------------------------------------ forward
    def forward(self, batched_inputs: list[dict]):
        if self.training:
            return super().forward(batched_inputs)
        return self.inference(batched_inputs)

    def inference(self, batched_inputs: list[dict]) -> list[dict]:
        images = self.preprocess_image(batched_inputs)
        return self.postprocess(self.multiscale_probs(images.tensor), images, batched_inputs)
