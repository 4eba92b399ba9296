"""What SAM-box labeling keeps of each image: :class:`SamLabelResult` and its JSON record, which
:class:`wsss_d2.evaluation.SamBoxLabelingEvaluator` scores."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
from detectron2.utils.file_io import PathManager

from .boxes import ImageBoxes

__all__ = ["RECORDS_DIR", "SamLabelResult", "read_record"]

RECORDS_DIR = "sam_boxes"  # per-image JSON records inside a round folder


@dataclass
class SamLabelResult:
    """SAM-box labels of one image.

    Attributes:
        label: (H, W) uint8: 0 background, 1..K, 255 ignored.
        boxes: the prompted boxes.
        mask_scores: (N,) SAM predicted IoU of each box's chosen mask.
        kept: (N,) bool, mask pasted (predicted IoU >= mask_min_score).
        areas / won: (N,) mask pixels / pixels the mask got in the label.
        overlap_pixels / conflict_pixels: see :func:`paste_masks`.
        untagged_boxes / unmatched_labels: boxes the source dropped (class not tagged / text
            label matching no class).
        masks_rle: COCO RLE of each mask (None when not kept in memory).
    """

    label: np.ndarray
    boxes: ImageBoxes
    mask_scores: np.ndarray
    kept: np.ndarray
    areas: np.ndarray
    won: np.ndarray
    overlap_pixels: int = 0
    conflict_pixels: int = 0
    untagged_boxes: int = 0
    unmatched_labels: int = 0
    masks_rle: list[dict] | None = field(default=None)

    def record(self, d: dict) -> dict:
        """A JSON-able record of this image's boxes and masks (no label map)."""
        b = self.boxes
        return {
            "file_name": d["file_name"],
            "image_id": d.get("image_id"),
            "height": int(self.label.shape[0]),
            "width": int(self.label.shape[1]),
            "tags": [int(t) for t in d.get("tags", ())],
            "boxes": np.round(b.boxes.astype(np.float64), 2).tolist(),
            "classes": b.classes.tolist(),
            "box_scores": [float(s) for s in b.scores],
            "labels": list(b.labels),
            "instance_ids": b.instance_ids.tolist(),
            "mask_scores": [float(s) for s in self.mask_scores],
            "kept": [bool(k) for k in self.kept],
            "areas": [int(a) for a in self.areas],
            "won": [int(a) for a in self.won],
            "overlap_pixels": int(self.overlap_pixels),
            "conflict_pixels": int(self.conflict_pixels),
            "untagged_boxes": int(self.untagged_boxes),
            "unmatched_labels": int(self.unmatched_labels),
            "masks_rle": self.masks_rle,
        }


def read_record(path: str) -> dict:
    """A per-image record written by :func:`wsss_d2.pseudo.sam.labeler.label_dataset`."""
    with PathManager.open(path) as f:
        return json.load(f)
