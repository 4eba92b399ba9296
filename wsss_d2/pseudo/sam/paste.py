"""Pasting SAM's binary masks into one semantic label map, and masks as COCO RLE."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_util

from ...io.files import IGNORE_LABEL

__all__ = ["paste_masks", "masks_to_rle"]


def _count_into(counter: np.ndarray, mask: np.ndarray, saturate: bool) -> None:
    """``counter += mask`` in place (uint8 counter, bool mask); with ``saturate`` the counts
    stop at 2 (all the callers need is ">= 2"), so 255 or more masks cannot wrap around."""
    np.add(counter, mask.view(np.uint8), out=counter)
    if saturate:
        np.minimum(counter, 2, out=counter)


def paste_masks(
    masks,
    classes: Sequence[int],
    scores: Sequence[float],
    keep: Sequence[bool] | None = None,
    ignore_dropped: bool = False,
    ignore_label: int = IGNORE_LABEL,
) -> tuple[np.ndarray, dict]:
    """Paste binary masks into a semantic label map, resolving overlaps by score then area.

    Runs in numpy: one device-to-host copy per image (the label, the statistics and the RLE
    all need host memory), and numpy's boolean reductions and masked writes are several times
    faster than torch's on CPU.

    Args:
        masks: (N, H, W) bool, numpy or torch.
        classes: (N,) class ids 1..K.
        scores: (N,) overlap scores; where kept masks overlap, the highest score wins, and
            between equal scores the smaller mask (a small object in front of a large one).
        keep: (N,) bool, masks to paste (default all). Dropped masks paste nothing; with
            ``ignore_dropped`` the pixels covered only by dropped masks become ``ignore_label``.
    Returns:
        label: (H, W) uint8, 0 where no kept mask covers the pixel.
        info: ``areas`` (N,) mask pixels, ``won`` (N,) pixels each mask got in the label,
        ``overlap_pixels`` covered by >= 2 kept masks, ``conflict_pixels`` covered by kept
        masks of >= 2 different classes (where the resolution changes the semantics).
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.cpu().numpy()
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    classes = np.asarray(classes, np.int64).reshape(n)
    scores = np.asarray(scores, np.float64).reshape(n)
    keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool).reshape(n)
    flat = masks.reshape(n, h * w)
    # one count per mask: numpy's whole-array count is ~10x faster than its axis=1 count
    areas = np.array([np.count_nonzero(m) for m in flat], np.int64)
    info = {"areas": areas, "won": np.zeros(n, np.int64), "overlap_pixels": 0, "conflict_pixels": 0}
    kept = np.flatnonzero(keep)
    # owner: 0 = no kept mask, i + 1 = mask i (the narrowest integer type: cheaper writes);
    # cover: how many kept masks cover the pixel (saturating is harmless: only >= 2 matters)
    small = n < 255
    owner = np.zeros(h * w, np.uint8 if small else np.int32)
    cover = np.zeros(h * w, np.uint8) if len(kept) > 1 else None
    # paint from the weakest to the strongest mask so that the strongest ends on top:
    # lexsort's last key is the primary one (score ascending, then area descending)
    for i in kept[np.lexsort((-areas[kept], scores[kept]))]:
        np.copyto(owner, i + 1, where=flat[i])
        if cover is not None:
            _count_into(cover, flat[i], saturate=len(kept) >= 255)
    lut = np.zeros(256 if small else n + 1, np.uint8)
    lut[1 : n + 1] = classes
    # OpenCV's 8-bit look-up table and histogram: several times numpy's speed
    label = cv2.LUT(owner.reshape(h, w), lut).reshape(h * w) if small else lut[owner]
    if small and h * w < 2**24:  # float32 histogram counts are exact below 2^24
        hist = cv2.calcHist([owner.reshape(h, w)], [0], None, [256], [0, 256])
        info["won"] = hist.ravel()[1 : n + 1].astype(np.int64)
    else:
        info["won"] = np.bincount(owner, minlength=n + 1)[1:]
    if ignore_dropped and len(kept) < n:
        dropped = np.logical_or.reduce(flat[~keep], axis=0)
        label[dropped & (owner == 0)] = ignore_label
    if cover is not None:
        shared = cover >= 2
        info["overlap_pixels"] = overlap = int(np.count_nonzero(shared))
        kc = classes[kept]
        if overlap and len(np.unique(kc)) == len(kc):
            info["conflict_pixels"] = overlap  # every kept mask has a class of its own
        elif overlap and (kc != kc[0]).any():
            # how many classes cover each pixel: one union per class with several masks
            ccover = np.zeros(h * w, np.uint8)
            for c in np.unique(kc):
                of_c = kept[kc == c]
                union = flat[of_c[0]] if len(of_c) == 1 else np.logical_or.reduce(flat[of_c])
                _count_into(ccover, union, saturate=len(kc) >= 255)
            info["conflict_pixels"] = int(np.count_nonzero(ccover >= 2))
    return label.reshape(h, w), info


def masks_to_rle(masks: np.ndarray) -> list[dict]:
    if masks.shape[0] == 0:
        return []
    arr = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_util.encode(arr)
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]
