"""The builtin tag datasets, registered from tables (as Detectron2's ``data/datasets/builtin.py``).

Registration does no I/O. Folders are resolved under ``$DETECTRON2_DATASETS`` when a dataset is
first loaded (``DatasetCatalog.get``), not at import, so the variable may be set after
``import wsss_d2``; a missing folder is then an error that names it and the variable.
"""

from __future__ import annotations

import os

from detectron2.data import DatasetCatalog

from .coco import COCO_TINY_SPLITS, load_coco_tags
from .common import COCO_CLASSES, VOC_CLASSES, datasets_root, require_dir, set_tag_metadata
from .toyparts import register_toyparts
from .voc import find_voc_root, load_voc_tags

__all__ = ["register_all_builtin"]

# name -> VOC 2012 split (ImageSets/Segmentation/<split>.txt; train_aug may be computed from SBD)
_PREDEFINED_SPLITS_VOC = {
    "voc_2012_train_aug_tags": "train_aug",
    "voc_2012_train_tags": "train",
    "voc_2012_val_tags": "val",
}

# name -> (folder under $DETECTRON2_DATASETS, JSON file and image folder inside it,
#          COCO category names kept (None: all), metadata class names)
_PREDEFINED_SPLITS_COCO = {
    "coco_2014_train_tags": (
        "coco", "annotations/instances_train2014.json", "train2014", None, COCO_CLASSES
    ),
    "coco_2014_val_tags": (
        "coco", "annotations/instances_val2014.json", "val2014", None, COCO_CLASSES
    ),
    **{f"coco_tiny_{k}": ("coco_tiny", *v) for k, v in COCO_TINY_SPLITS.items()},
}  # fmt: skip

# name -> toyparts generator arguments (toyparts.py describes the data)
_PREDEFINED_TOYPARTS = {
    "toyparts_train": dict(num_images=600, seed=0),
    "toyparts_val": dict(num_images=150, seed=1),
    "toyparts_mini_train": dict(num_images=24, seed=2),  # for tests
    "toyparts_mini_val": dict(num_images=12, seed=3),
    # the bodies carry a weak, partly reliable class cue (stripe angle, right 60 % of the time):
    # the CAM still relies on the head, but the rest of the object is not class-blind
    "toyparts_cue_train": dict(num_images=600, seed=0, body_cue=0.6),
    "toyparts_cue_val": dict(num_images=150, seed=1, body_cue=0.6),
    # a held-out split for final numbers only: the PLDA toy variants were chosen on _val
    "toyparts_cue_test": dict(num_images=300, seed=4, body_cue=0.6),
    # every body's stripes run at its class's angle (a fully reliable but subtle body cue) and
    # heads are always visible: bodies of different classes always differ (the CIAN pair study)
    "toyparts_stripe_train": dict(num_images=600, seed=0, body_cue=1.0),
    "toyparts_stripe_val": dict(num_images=150, seed=1, body_cue=1.0),
    "toyparts_stripe_test": dict(num_images=300, seed=4, body_cue=1.0),  # held out, as cue_test
    # the body always carries its class's stripe angle and a third of the objects are seen
    # without their head, so the classifier must learn the body too (measured: at output stride
    # 4 its CAM then covers whole bodies, projects/PLDA/README.md)
    "toyparts_occ_train": dict(num_images=600, seed=0, body_cue=1.0, head_drop=0.35),
    "toyparts_occ_val": dict(num_images=150, seed=1, body_cue=1.0, head_drop=0.35),
    # as stripe, with bodies 1.6x larger (heads unchanged): the head is a small part of the
    # object, so a head-only CAM misses most of it even after the CAM's blur
    "toyparts_large_train": dict(num_images=600, seed=0, body_cue=1.0, body_scale=1.6),
    "toyparts_large_val": dict(num_images=150, seed=1, body_cue=1.0, body_scale=1.6),
    "toyparts_large_test": dict(num_images=300, seed=4, body_cue=1.0, body_scale=1.6),
}


def _voc_loader(name: str, split: str):
    def load() -> list[dict]:
        return load_voc_tags(find_voc_root(datasets_root()), split, name)

    return load


def _coco_loader(name: str, sub: str, json_file: str, image_root: str, class_names):
    def load() -> list[dict]:
        root = require_dir(os.path.join(datasets_root(), sub), f"{name}: the {sub}/ folder")
        return load_coco_tags(
            os.path.join(root, json_file), os.path.join(root, image_root), name,
            class_names=class_names,
        )  # fmt: skip

    return load


def register_all_builtin() -> None:
    """Register every table entry not registered yet (idempotent; no I/O)."""
    registered = set(DatasetCatalog.list())
    for name, split in _PREDEFINED_SPLITS_VOC.items():
        if name not in registered:
            DatasetCatalog.register(name, _voc_loader(name, split))
            set_tag_metadata(name, VOC_CLASSES, split=split)
    for name, (sub, json_file, image_root, class_names, meta) in _PREDEFINED_SPLITS_COCO.items():
        if name not in registered:
            DatasetCatalog.register(
                name, _coco_loader(name, sub, json_file, image_root, class_names)
            )
            set_tag_metadata(name, meta)
    for name, kwargs in _PREDEFINED_TOYPARTS.items():
        if name not in registered:
            register_toyparts(name, **kwargs)
