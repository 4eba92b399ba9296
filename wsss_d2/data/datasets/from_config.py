"""Users' own datasets named in the config: ``DATASETS.COCO_TAGS`` and ``DATASETS.FOLDER_TAGS``.

Every tool registers them at set-up, so their names can then be used in ``DATASETS.TRAIN`` /
``DATASETS.TEST`` without writing Python:

- ``COCO_TAGS``: ``(name, json_file, image_root[, classes[, sem_seg_root]])``; ``classes`` keeps
  a subset of the JSON's categories (``;``-separated COCO names, numbered 1..K in that order, or
  ``"voc"`` for the 20 PASCAL VOC classes with VOC's ids and names; ``""``: every category);
  ``sem_seg_root`` is where the semantic masks painted from the instances go (default: a cache
  outside the image folder, :func:`~wsss_d2.data.datasets.coco_sem_seg.default_sem_seg_root`).
- ``FOLDER_TAGS``: ``(name, image_root, tags_file, "cls1;cls2;..."[, mask_folder])``; the
  optional ``mask_folder`` holds ground-truth ``<file stem>.png`` label maps for evaluation.
"""

from __future__ import annotations

from detectron2.data import DatasetCatalog

from .coco import VOC_COCO_NAMES, register_coco_tags
from .coco_sem_seg import set_generated_fallback
from .common import VOC_CLASSES
from .folder import register_folder_tags

__all__ = ["register_datasets_from_config", "coco_class_subset"]


def _names(text: str) -> list[str]:
    return [c.strip() for c in text.split(";") if c.strip()]


def coco_class_subset(spec: str) -> tuple[list[str] | None, list[str] | None]:
    """``DATASETS.COCO_TAGS``' ``classes`` field -> (COCO names kept, metadata class names)."""
    if not spec.strip():
        return None, None
    if spec.strip().lower() == "voc":
        return list(VOC_COCO_NAMES), list(VOC_CLASSES)
    names = _names(spec)
    return names, names


def register_datasets_from_config(cfg) -> list[str]:
    """Register ``DATASETS.COCO_TAGS`` / ``DATASETS.FOLDER_TAGS`` entries not registered yet;
    generated dataset files may fall back to ``OUTPUT_DIR`` (:func:`set_generated_fallback`)."""
    set_generated_fallback(cfg.OUTPUT_DIR)
    done = []
    for entry in cfg.DATASETS.COCO_TAGS:
        if not 3 <= len(entry) <= 5:
            raise ValueError(
                f"DATASETS.COCO_TAGS entry {entry} must be (name, json_file, image_root"
                "[, 'cls1;cls2;...' | 'voc'[, sem_seg_root]])"
            )
        if entry[0] not in DatasetCatalog.list():
            name, json_file, image_root = entry[:3]
            kept, meta = coco_class_subset(entry[3] if len(entry) > 3 else "")
            register_coco_tags(
                name,
                json_file,
                image_root,
                sem_seg_root=(entry[4] or None) if len(entry) > 4 else None,
                class_names=kept,
                metadata_names=meta,
            )
            done.append(name)
    for entry in cfg.DATASETS.FOLDER_TAGS:
        if len(entry) not in (4, 5):
            raise ValueError(
                f"DATASETS.FOLDER_TAGS entry {entry} must be (name, image_root, "
                "tags_file, 'class1;class2;...'[, mask_folder])"
            )
        if entry[0] not in DatasetCatalog.list():
            name, root, tags, classes = entry[:4]
            masks = (entry[4] or None) if len(entry) > 4 else None
            register_folder_tags(name, root, tags, _names(classes), sem_seg_root=masks)
            done.append(name)
    return done
