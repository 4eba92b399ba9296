"""The boxes SAM is prompted with: :class:`ImageBoxes`, the :class:`BoxSource` base and its registry.

A box source maps a dataset dict to :class:`ImageBoxes` — boxes in absolute XYXY pixels of the
original image, each with a foreground class id in ``1..K`` and a score. The sources
(:mod:`.box_sources`: ground-truth and CAM boxes; :mod:`.file_boxes`: a detector's files) are
registered in :data:`BOX_SOURCE_REGISTRY` and built with :func:`build_box_source` from
``cfg.WSSS.SAM.BOX_SOURCE``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from detectron2.utils.registry import Registry

logger = logging.getLogger(__name__)

__all__ = ["BOX_SOURCE_REGISTRY", "ImageBoxes", "BoxSource", "sanitize_boxes", "build_box_source"]

BOX_SOURCE_REGISTRY = Registry("WSSS_BOX_SOURCE")
BOX_SOURCE_REGISTRY.__doc__ = "Box sources for SAM-box labeling, built as cls(cfg, class_names)."


@dataclass
class ImageBoxes:
    """The boxes of one image.

    Attributes:
        boxes: (N, 4) float32, absolute XYXY pixels of the original image.
        classes: (N,) int64 foreground class ids in 1..K.
        scores: (N,) float32 box confidence (1 for ground truth).
        instance_ids: (N,) int64 index into the dict's ``annotations`` (-1: no GT instance).
        labels: N text labels as the source gave them (class names for GT / CAM boxes).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    scores: np.ndarray | None = None
    instance_ids: np.ndarray | None = None
    labels: list[str] | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.classes = np.asarray(self.classes, np.int64).reshape(n)
        if self.scores is None:
            self.scores = np.ones(n, np.float32)
        self.scores = np.asarray(self.scores, np.float32).reshape(n)
        if self.instance_ids is None:
            self.instance_ids = np.full(n, -1, np.int64)
        self.instance_ids = np.asarray(self.instance_ids, np.int64).reshape(n)
        if self.labels is None or len(self.labels) != n:
            self.labels = [str(int(c)) for c in self.classes]

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> "ImageBoxes":
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return ImageBoxes(
            self.boxes[idx],
            self.classes[idx],
            self.scores[idx],
            self.instance_ids[idx],
            [self.labels[i] for i in idx],
        )


def sanitize_boxes(boxes: np.ndarray, height: int, width: int, file_name: str) -> np.ndarray:
    """Clip XYXY boxes to the image; reject malformed ones with an error naming the image.

    A box partly outside the image is clipped to ``[0, width] x [0, height]``. A box with a
    non-finite coordinate, an inverted box (x1 < x0 or y1 < y0), or a box lying entirely
    outside the image is an input error (a wrong box format or image size, not a detection to
    keep), so it raises ``ValueError``.

    Args:
        boxes: (N, 4) XYXY absolute pixels.
    Returns:
        (N, 4) float32 clipped boxes.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    for i, b in enumerate(boxes):
        if not np.isfinite(b).all():
            raise ValueError(f"box {i} {b.tolist()} of image {file_name} is not finite")
        if b[2] < b[0] or b[3] < b[1]:
            raise ValueError(
                f"box {i} {b.tolist()} of image {file_name} is inverted (expected XYXY with "
                "x1 >= x0, y1 >= y0)"
            )
        if b[0] >= width or b[1] >= height or b[2] <= 0 or b[3] <= 0:
            raise ValueError(
                f"box {i} {b.tolist()} of image {file_name} lies outside the {width}x{height} "
                "image (wrong box format or image size?)"
            )
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    n_clipped = int((np.abs(out - boxes) > 1e-3).any(1).sum())
    if n_clipped:
        logger.debug("%s: clipped %d boxes to the image", file_name, n_clipped)
    return out


class BoxSource:
    """Base class: ``source(d) -> ImageBoxes`` for a dataset dict ``d``.

    Subclasses implement :meth:`get_boxes`; :meth:`__call__` clips the boxes to the image and,
    when ``only_tagged``, drops boxes of classes not in the dict's ``tags`` (weak supervision
    tells us they are absent) — the number dropped is kept in ``last_untagged`` for statistics.
    """

    def __init__(self, only_tagged: bool = True, min_score: float = 0.0):
        self.only_tagged = only_tagged
        self.min_score = float(min_score)
        self.last_untagged = 0

    def get_boxes(self, d: dict) -> ImageBoxes:
        raise NotImplementedError

    def __call__(self, d: dict) -> ImageBoxes:
        b = self.get_boxes(d)
        h, w = int(d["height"]), int(d["width"])
        b.boxes = sanitize_boxes(b.boxes, h, w, d["file_name"])
        keep = b.scores >= self.min_score
        self.last_untagged = 0
        if self.only_tagged and "tags" in d:
            tagged = np.isin(b.classes, np.asarray(list(d["tags"]), np.int64))
            self.last_untagged = int((keep & ~tagged).sum())
            keep &= tagged
        return b if keep.all() else b.select(keep)


def build_box_source(cfg, class_names: Sequence[str]) -> BoxSource:
    """The box source named by ``cfg.WSSS.SAM.BOX_SOURCE`` (a BOX_SOURCE_REGISTRY name)."""
    return BOX_SOURCE_REGISTRY.get(cfg.WSSS.SAM.BOX_SOURCE)(cfg, class_names)
