"""Users' own datasets named in the config: ``DATASETS.COCO_TAGS`` and ``DATASETS.FOLDER_TAGS``.

Every tool registers them at set-up, so their names can then be used in ``DATASETS.TRAIN`` /
``DATASETS.TEST`` without writing Python.
"""

from __future__ import annotations

from detectron2.data import DatasetCatalog

from .coco import register_coco_tags
from .folder import register_folder_tags

__all__ = ["register_datasets_from_config"]


def register_datasets_from_config(cfg) -> list[str]:
    """Register ``DATASETS.COCO_TAGS`` / ``DATASETS.FOLDER_TAGS`` entries not registered yet."""
    done = []
    for entry in cfg.DATASETS.COCO_TAGS:
        if len(entry) != 3:
            raise ValueError(
                f"DATASETS.COCO_TAGS entry {entry} must be (name, json_file, " "image_root)"
            )
        if entry[0] not in DatasetCatalog.list():
            register_coco_tags(*entry)
            done.append(entry[0])
    for entry in cfg.DATASETS.FOLDER_TAGS:
        if len(entry) != 4:
            raise ValueError(
                f"DATASETS.FOLDER_TAGS entry {entry} must be (name, image_root, "
                "tags_file, 'class1;class2;...')"
            )
        if entry[0] not in DatasetCatalog.list():
            name, root, tags, classes = entry
            register_folder_tags(name, root, tags, [c.strip() for c in classes.split(";")])
            done.append(name)
    return done
