"""Tag datasets; importing this module registers the builtin ones (no I/O happens here).

Builtin names (:mod:`.builtin`): ``voc_2012_{train_aug,train,val}_tags`` (:mod:`.voc`),
``coco_2014_{train,val}_tags`` and ``coco_tiny_{,voc_}{train,val}_tags`` (:mod:`.coco`), all
resolved under ``$DETECTRON2_DATASETS`` when first loaded, and the generated ``toyparts_*``
(:mod:`.toyparts`).
Own data: :func:`register_coco_tags` (any COCO JSON), :func:`register_folder_tags` (a folder
and a CSV/JSON tags file), :func:`register_voc_tags` (a VOC-layout folder), or the config keys
``DATASETS.COCO_TAGS`` / ``DATASETS.FOLDER_TAGS`` (:func:`register_datasets_from_config`).
"""

from .builtin import register_all_builtin
from .coco import VOC_COCO_NAMES, register_coco_tags, register_coco_tiny
from .common import COCO_CLASSES, VOC_CLASSES, datasets_root
from .folder import register_folder_tags
from .from_config import register_datasets_from_config
from .toyparts import TOY_CLASSES, generate_toyparts, register_toyparts
from .voc import register_voc_tags

__all__ = [
    "COCO_CLASSES",
    "VOC_CLASSES",
    "VOC_COCO_NAMES",
    "TOY_CLASSES",
    "datasets_root",
    "generate_toyparts",
    "register_toyparts",
    "register_voc_tags",
    "register_coco_tags",
    "register_coco_tiny",
    "register_folder_tags",
    "register_datasets_from_config",
]

register_all_builtin()
