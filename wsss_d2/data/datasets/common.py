"""Shared pieces of the tag datasets: class lists, dataset roots, metadata, tag filtering."""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager

from ...io.files import IGNORE_LABEL, voc_palette

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES",
    "COCO_CLASSES",
    "datasets_root",
    "require_dir",
    "set_tag_metadata",
    "update_metadata",
    "keep_images_with_tags",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), as Detectron2's builtin datasets use."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_dir(path: str, what: str) -> str:
    """Raise a clear error when a dataset folder is missing."""
    if not PathManager.isdir(path):
        raise FileNotFoundError(
            f"{what} not found at '{path}'. Set DETECTRON2_DATASETS to the folder that holds your "
            f"datasets (now '{datasets_root()}'), or register the dataset with an explicit path."
        )
    return path


def set_tag_metadata(
    name: str, class_names: Sequence[str], evaluator_type: str = "sem_seg", **extra
) -> None:
    """Metadata every tag dataset carries: background + classes, VOC colours, ignore 255.

    No ``thing_classes``: Detectron2 would then check the dicts' ``annotations`` (whose ids are
    1..K here, as everywhere in wsss_d2) against a 0-based thing list and refuse class K.
    """
    classes = ["background", *class_names]
    pal = voc_palette(len(classes))
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        stuff_colors=[list(c) for c in pal],
        ignore_label=IGNORE_LABEL,
        evaluator_type=evaluator_type,
        **extra,
    )


def update_metadata(name: str, **values) -> None:
    """Set metadata values of ``name``, replacing different earlier ones (Detectron2's
    ``Metadata`` refuses to change a value; a dataset resolved under another
    ``$DETECTRON2_DATASETS`` has new paths)."""
    meta = MetadataCatalog.get(name)
    for key, value in values.items():
        if meta.get(key, None) != value:
            if hasattr(meta, key):
                delattr(meta, key)
            setattr(meta, key, value)


def keep_images_with_tags(dicts: Iterable[dict], name: str) -> list[dict]:
    """Drop images with no foreground tag (they carry no weak label); log how many."""
    dicts = list(dicts)
    kept = [d for d in dicts if len(d["tags"]) > 0]
    if len(kept) < len(dicts):
        logger.warning(
            "%s: excluded %d of %d images that have no foreground tag",
            name,
            len(dicts) - len(kept),
            len(dicts),
        )
    return kept
