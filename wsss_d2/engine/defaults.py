"""Set-up shared by every command-line tool."""

from __future__ import annotations

from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_wsss_config

__all__ = ["default_wsss_setup", "register_datasets_from_config"]


def default_wsss_setup(args):
    """Config from ``args.config_file`` + ``args.opts`` (frozen), then Detectron2's
    ``default_setup`` (OUTPUT_DIR, config.yaml, log.txt, seeds); wsss_d2's own loggers write to the
    same log.txt."""
    cfg = get_cfg()
    add_wsss_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    register_datasets_from_config(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="wsss_d2")
    return cfg


def register_datasets_from_config(cfg) -> list[str]:
    """Register ``DATASETS.COCO_TAGS`` / ``DATASETS.FOLDER_TAGS`` entries not registered yet."""
    from detectron2.data import DatasetCatalog

    from ..data.datasets import register_coco_tags, register_folder_tags

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
