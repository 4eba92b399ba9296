"""COCO-format data (MS COCO 2014, coco_tiny, any COCO JSON) as tag datasets.

Class ids: the JSON's categories sorted by category id become 1..K (0 is background, 255
ignore). With ``class_names`` only those categories are kept, numbered 1..K in the order given
(e.g. :data:`VOC_COCO_NAMES`, the 20 PASCAL VOC classes by their COCO names in VOC order, so the
ids equal the VOC ids); instances of other categories are dropped, and a name that is not a
category of the JSON is an error.

Each dataset dict has ``file_name``, ``image_id``, ``height``, ``width``, ``tags`` (sorted unique
class ids of the image's instances, crowd ones included), ``label_stem`` (the JSON's
``file_name`` without extension, made safe: a ``..`` or absolute ``file_name`` never makes a label
or mask file land outside its folder), ``annotations`` (``bbox`` in ``BoxMode.XYWH_ABS``,
``category_id`` mapped to 1..K, ``iscrowd``, ``segmentation``; used only for ground-truth-box
upper bounds) and ``sem_seg_file_name`` (ground truth, for evaluators only). Images with no tag
are excluded, with a logged count.

Any COCO JSON loads: annotations without ``segmentation`` (boxes only) or without ``bbox``
(image-level categories only, ``{"image_id", "category_id"}``, even without an ``id``) give tags;
an image gets ground truth only when every one of its annotations has a ``segmentation`` (not
``[]``).

Loading a dataset sets its metadata ``json_file``, ``image_root`` and
``stuff_dataset_id_to_contiguous_id`` (COCO category id -> our id, with ``0 -> 0`` for the
background), so that COCO-format results carry COCO category ids — ours
(``COCOSemSegJSONEvaluator``) and Detectron2's ``SemSegEvaluator`` alike.

Semantic ground truth is painted from the instances and cached: see
:mod:`wsss_d2.data.datasets.coco_sem_seg`.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from typing import Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO

from ...io.files import safe_stem
from .coco_sem_seg import default_sem_seg_root, ensure_sem_seg
from .common import (
    COCO_CLASSES,
    VOC_CLASSES,
    keep_images_with_tags,
    require_dir,
    set_tag_metadata,
    update_metadata,
)

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_COCO_NAMES",
    "category_map",
    "load_coco_tags",
    "register_coco_tags",
    "register_coco_tiny",
    "COCO_TINY_SPLITS",
]

# the 20 PASCAL VOC classes by their COCO category names, in VOC_CLASSES order
VOC_COCO_NAMES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch",
    "train", "tv",
)  # fmt: skip


def category_map(coco, json_file: str, class_names: Sequence[str] | None) -> tuple[dict, list]:
    """COCO category id -> our id 1..K, and the K class names in id order."""
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    if class_names is None:
        return {c["id"]: i + 1 for i, c in enumerate(cats)}, [c["name"] for c in cats]
    by_name = {c["name"]: c["id"] for c in cats}
    mapping = {}
    for i, n in enumerate(class_names):
        if n not in by_name:
            raise KeyError(
                f"class '{n}' is not a category of {json_file} "
                f"(categories: {', '.join(sorted(by_name))})"
            )
        mapping[by_name[n]] = i + 1
    return mapping, list(class_names)


def load_coco_tags(
    json_file: str,
    image_root: str,
    name: str = "coco",
    sem_seg_root: str | None = None,
    class_names: Sequence[str] | None = None,
    num_workers: int | None = None,
) -> list[dict]:
    """Load a COCO-format JSON as tag dataset dicts; generate semantic PNGs (module docstring).

    ``num_workers``: processes that paint missing PNGs (default ``min(8, CPUs)``; 1 = serial).
    """
    if not PathManager.isfile(json_file):
        raise FileNotFoundError(f"{name}: COCO annotation file not found: {json_file}")
    require_dir(image_root, f"{name}: image folder")
    coco = _read_coco(json_file)
    cat_map, names = category_map(coco, json_file, class_names)
    if sem_seg_root is None:
        sem_seg_root = default_sem_seg_root(json_file, image_root, len(names), class_names)

    dicts, raw_anns = [], {}
    dropped = 0
    for img_id in sorted(coco.getImgIds()):
        img = coco.imgs[img_id]
        anns_out, raw, tags = [], [], set()
        for a in coco.imgToAnns.get(img_id, []):
            if a["category_id"] not in cat_map:
                dropped += 1
                continue
            cid = cat_map[a["category_id"]]
            raw.append({**a, "category_id": cid})
            tags.add(cid)
            if a.get("bbox") is not None:
                out = {"bbox": list(a["bbox"]), "bbox_mode": BoxMode.XYWH_ABS, "category_id": cid,
                       "iscrowd": int(a.get("iscrowd", 0))}  # fmt: skip
                if _has_mask(a):
                    out["segmentation"] = a["segmentation"]
                anns_out.append(out)
        for key in ("file_name", "height", "width"):
            if key not in img:
                raise KeyError(f"{name}: image {img_id} in {json_file} has no '{key}'")
        stem = safe_stem(img["file_name"])
        rec = {
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": img_id,
            "height": int(img["height"]),
            "width": int(img["width"]),
            "tags": sorted(tags),
            "label_stem": stem,
            "annotations": anns_out,
        }
        if raw and all(_has_mask(a) for a in raw):
            rec["sem_seg_file_name"] = os.path.join(sem_seg_root, stem + ".png")
            raw_anns[img_id] = raw
        dicts.append(rec)
    meta = MetadataCatalog.get(name)
    if meta.get("stuff_classes") is None:
        set_tag_metadata(name, names)
    elif len(meta.stuff_classes) - 1 != len(names):
        raise ValueError(
            f"{name}: metadata names {len(meta.stuff_classes) - 1} classes but {json_file} gives "
            f"{len(names)}"
        )
    update_metadata(
        name,
        json_file=json_file,
        image_root=image_root,
        stuff_dataset_id_to_contiguous_id={0: 0, **cat_map},
    )
    if dropped:
        logger.info("%s: dropped %d instances of categories outside the class list", name, dropped)
    dicts = keep_images_with_tags(dicts, name)
    with_gt = [d for d in dicts if "sem_seg_file_name" in d]
    if len(with_gt) < len(dicts):
        logger.info(
            "%s: %d of %d images have annotations without 'segmentation': no ground truth for them",
            name,
            len(dicts) - len(with_gt),
            len(dicts),
        )
    ensure_sem_seg(with_gt, raw_anns, json_file, name, num_workers)
    return dicts


def _has_mask(ann: dict) -> bool:
    """Whether an annotation has a mask (box-only exports leave ``segmentation`` out or [])."""
    seg = ann.get("segmentation")
    return seg is not None and seg != []


def _read_coco(json_file: str) -> COCO:
    """pycocotools' index of a COCO JSON; annotations without an ``id`` (image-level ones) get
    one, and a JSON without ``annotations`` is an image list."""
    with PathManager.open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"cannot parse COCO JSON {json_file}: {e}") from e
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise ValueError(f"{json_file} is not a COCO JSON (needs 'images' and 'categories')")
    anns = data.setdefault("annotations", [])
    used = {a["id"] for a in anns if "id" in a}
    next_id = max(used, default=0) + 1
    for a in anns:
        if "image_id" not in a or "category_id" not in a:
            raise KeyError(f"{json_file}: an annotation without image_id / category_id: {a}")
        if "id" not in a:
            a["id"], next_id = next_id, next_id + 1
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def register_coco_tags(
    name: str,
    json_file: str,
    image_root: str,
    sem_seg_root: str | None = None,
    class_names: Sequence[str] | None = None,
    metadata_names: Sequence[str] | None = None,
) -> None:
    """Register a COCO-format dataset lazily as tags (nothing is read until it is loaded).

    Args:
        class_names: COCO category names to keep, numbered 1..K in this order (default: all
            categories of the JSON, sorted by category id).
        metadata_names: class names for the metadata (default: ``class_names``). Without
            either, the metadata get the JSON's category names when the dataset is first
            loaded (reading a large JSON at registration would be slow); pass them to have
            them at registration time.
    """
    if metadata_names is None:
        metadata_names = class_names
    DatasetCatalog.register(
        name, lambda: load_coco_tags(json_file, image_root, name, sem_seg_root, class_names)
    )
    extra = dict(json_file=json_file, image_root=image_root)
    if class_names is not None:
        extra["coco_names"] = list(class_names)
    if metadata_names is not None:
        set_tag_metadata(name, metadata_names, **extra)
    else:
        MetadataCatalog.get(name).set(**extra)


def _replace(name: str) -> None:
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# coco_tiny's datasets: name suffix -> (JSON file, image folder under the coco_tiny folder,
# COCO names kept (None: all 80), metadata class names)
COCO_TINY_SPLITS = {
    "train_tags": ("annotations/instances_train2017.json", "images/train2017", None, COCO_CLASSES),
    "val_tags": ("annotations/instances_val2017.json", "images/val2017", None, COCO_CLASSES),
    "voc_train_tags": (
        "annotations/instances_train2017.json", "images/train2017", VOC_COCO_NAMES, VOC_CLASSES
    ),
    "voc_val_tags": (
        "annotations/instances_val2017.json", "images/val2017", VOC_COCO_NAMES, VOC_CLASSES
    ),
}  # fmt: skip


def register_coco_tiny(
    root: str, sem_seg_root: str | None = None, prefix: str = "coco_tiny"
) -> None:
    """Register coco_tiny (COCO 2017 subset, 80 + 80 images) from the folder ``root``.

    Names: ``<prefix>_{train,val}_tags`` (80 classes) and ``<prefix>_voc_{train,val}_tags``
    (the 20 VOC classes by COCO name, ids and metadata names in :data:`VOC_CLASSES` order).
    ``sem_seg_root``: parent folder of the generated masks (one sub-folder per name); default
    as :func:`default_sem_seg_root`. Earlier registrations of these names are replaced.
    """
    require_dir(root, "coco_tiny")
    for suffix, (json_file, image_root, class_names, meta) in COCO_TINY_SPLITS.items():
        name = f"{prefix}_{suffix}"
        _replace(name)
        register_coco_tags(
            name, os.path.join(root, json_file), os.path.join(root, image_root),
            sem_seg_root=os.path.join(sem_seg_root, name) if sem_seg_root else None,
            class_names=class_names, metadata_names=meta,
        )  # fmt: skip
