"""Dense CRF (pydensecrf) on hard label maps and on soft scores.

A fully-connected CRF with 21 labels on a 500x375 image takes seconds on one core, so a VOC or
COCO label set is a long sequential job. The CRF is run only over the labels that can occur in
the image (its tags plus background, as IRN does); callers spread images over
:func:`wsss_d2.ops.pool.map_in_pool`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels, unary_from_softmax

logger = logging.getLogger(__name__)

__all__ = ["CRFParams", "crf_inference_label", "crf_inference_prob", "crf_from_config", "local_ids"]


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF parameters (defaults: IRN's ``crf_inference_label``)."""

    iterations: int = 10
    gt_prob: float = 0.7  # confidence given to the input label of every pixel
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0

    @classmethod
    def from_config(cls, cfg) -> "CRFParams":
        c = cfg.WSSS.PSEUDO.CRF
        return cls(
            iterations=c.ITERATIONS,
            gt_prob=c.GT_PROB,
            gaussian_sxy=c.GAUSSIAN_SXY,
            gaussian_compat=c.GAUSSIAN_COMPAT,
            bilateral_sxy=c.BILATERAL_SXY,
            bilateral_srgb=c.BILATERAL_SRGB,
            bilateral_compat=c.BILATERAL_COMPAT,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _check_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if image.ndim != 3 or image.shape[2] != 3 or tuple(image.shape[:2]) != tuple(hw):
        raise ValueError(f"CRF image must be (H, W, 3) with (H, W) = {hw}, got {image.shape}")
    # pydensecrf takes a writable C-contiguous uint8 buffer (PIL-backed arrays are read-only)
    return np.require(image, dtype=np.uint8, requirements=["C", "W"])


def _run_crf(image: np.ndarray, unary: np.ndarray, n_labels: int, params: CRFParams) -> np.ndarray:
    h, w = image.shape[:2]
    d = dcrf.DenseCRF2D(w, h, n_labels)
    d.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    d.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    d.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=image,
        compat=params.bilateral_compat,
    )
    q = np.asarray(d.inference(params.iterations), dtype=np.float32)
    return q.reshape(n_labels, h, w)


def crf_inference_label(
    image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams = CRFParams()
) -> np.ndarray:
    """Refine a hard label map with a dense CRF.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) integer map with values in [0, n_labels) — *local* ids (e.g. 0 background,
            1..k the image's tags), not dataset class ids.
        n_labels: number of local labels.
    Returns:
        (H, W) int64 local label ids. With ``n_labels <= 1`` the input is returned unchanged.
    """
    labels = np.asarray(labels)
    image = _check_image(image, labels.shape)
    if n_labels <= 1:
        return labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_labels:
        raise ValueError(
            f"CRF labels must lie in [0, {n_labels}), got [{labels.min()}, " f"{labels.max()}]"
        )
    unary = unary_from_labels(
        labels.astype(np.int64), n_labels, gt_prob=params.gt_prob, zero_unsure=False
    )
    return _run_crf(image, unary, n_labels, params).argmax(0).astype(np.int64)


def crf_inference_prob(
    image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()
) -> np.ndarray:
    """Dense CRF on soft scores: (n, H, W) probabilities -> (n, H, W) refined marginals."""
    probs = np.asarray(probs, dtype=np.float32)
    image = _check_image(image, probs.shape[1:])
    if probs.shape[0] <= 1:
        return probs
    return _run_crf(image, unary_from_softmax(probs), probs.shape[0], params)


def crf_from_config(cfg, iterations: int = -1) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(image (H, W, 3) RGB uint8, probs (C, H, W)) -> (C, H, W)`` refined marginals, with the
    ``WSSS.PSEUDO.CRF`` parameters (``iterations`` >= 0 replaces theirs; picklable: usable in a
    process pool)."""
    params = CRFParams.from_config(cfg)
    if iterations >= 0:
        params = dataclasses.replace(params, iterations=int(iterations))
    return functools.partial(crf_inference_prob, params=params)


def local_ids(keys: Sequence[int]) -> np.ndarray:
    """``[0, *keys]``: maps local CRF label ids (0 = background) back to dataset class ids."""
    return np.concatenate([[0], np.asarray(keys, dtype=np.int64)]).astype(np.int64)
