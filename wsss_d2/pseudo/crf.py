"""Dense CRF (pydensecrf) on hard label maps, and a process pool that runs it image by image.

A fully-connected CRF with 21 labels on a 500x375 image takes seconds on one core, so a VOC or
COCO label set is a long sequential job. The CRF is run only over the labels that can occur in
the image (its tags plus background, as IRN does) and images are spread over a process pool.
Each image's CRF is an independent, deterministic computation, and results come back in input
order, so the output is the same for any number of workers.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing as mp
import os
from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "CRFParams",
    "crf_inference_label",
    "crf_inference_prob",
    "crf_from_config",
    "map_in_pool",
    "default_num_workers",
    "local_ids",
]


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
    import pydensecrf.densecrf as dcrf

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
    from pydensecrf.utils import unary_from_labels

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
    from pydensecrf.utils import unary_from_softmax

    probs = np.asarray(probs, dtype=np.float32)
    image = _check_image(image, probs.shape[1:])
    if probs.shape[0] <= 1:
        return probs
    return _run_crf(image, unary_from_softmax(probs), probs.shape[0], params)


def crf_from_config(cfg) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``fn(image (H, W, 3) RGB uint8, probs (C, H, W)) -> (C, H, W)`` refined marginals, with the
    ``WSSS.PSEUDO.CRF`` parameters (picklable: usable in a process pool)."""
    return functools.partial(crf_inference_prob, params=CRFParams.from_config(cfg))


def default_num_workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init() -> None:
    # one CRF per core: keep any BLAS/OpenMP inside a worker single-threaded
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def map_in_pool(
    fn: Callable,
    items: Iterable,
    num_workers: int = 0,
    total: int | None = None,
    desc: str = "crf",
    start_method: str | None = None,
    progress: bool = True,
) -> Iterator:
    """``fn(item)`` for every item, in input order, over a process pool.

    Args:
        fn: a picklable (module-level) function.
        num_workers: pool size; 0 = every core (:func:`default_num_workers`), 1 = run inline in
            this process (no pool), which is also the reference the pool is tested against.
        start_method: multiprocessing start method (default: "fork" where available — workers
            then inherit the imported modules instead of importing them again).
    Yields:
        the results, in the order of ``items``.
    """
    items = list(items)
    total = len(items) if total is None else total
    n = default_num_workers() if num_workers <= 0 else num_workers
    n = max(1, min(n, len(items)))
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    try:
        if n == 1:
            for it in items:
                yield fn(it)
                bar.update(1)
            return
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        with ctx.Pool(n, initializer=_worker_init) as pool:
            # chunksize 1: one CRF is seconds of work, far above the messaging cost
            for res in pool.imap(fn, items, chunksize=1):
                yield res
                bar.update(1)
    finally:
        bar.close()


def local_ids(keys: Sequence[int]) -> np.ndarray:
    """``[0, *keys]``: maps local CRF label ids (0 = background) back to dataset class ids."""
    return np.concatenate([[0], np.asarray(keys, dtype=np.int64)]).astype(np.int64)
