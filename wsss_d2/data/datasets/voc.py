"""PASCAL VOC 2012 with image-level tags (and SBD's extra training images).

Expected layout (``$DETECTRON2_DATASETS`` is the datasets folder; ``VOCdevkit/VOC2012`` is
accepted in place of ``VOC2012``)::

    $DETECTRON2_DATASETS/
      VOC2012/
        JPEGImages/<id>.jpg
        Annotations/<id>.xml                # tags + boxes (all object names, difficult too)
        SegmentationClass/<id>.png          # GT masks of the official segmentation splits
        SegmentationClassAug/<id>.png       # optional: SBD-augmented GT masks (10,582 + val)
        ImageSets/Segmentation/{train,val}.txt
        ImageSets/Segmentation/train_aug.txt   # optional, see below
      SBD/                                  # optional (only for train_aug without train_aug.txt)
        train.txt, val.txt                  # also found under SBD/dataset/ or
                                            # SBD/benchmark_RELEASE/dataset/

Splits: any ``ImageSets/Segmentation/<split>.txt`` list, plus ``train_aug``, the usual WSSS
training set (10,582 images on the real data). When ``train_aug.txt`` exists it is used as is;
otherwise it is computed from the folders on disk as ``(SBD train ∪ SBD val ∪ VOC train) − VOC
val``. SBD is looked for at ``<voc_root>/SBD`` and ``<voc_root>/../SBD`` (which is
``$DETECTRON2_DATASETS/SBD`` for the layout above), unless an explicit ``sbd_root`` is given.

Each dataset dict has ``file_name``, ``image_id`` (the VOC id string), ``height``, ``width``,
``tags`` (sorted class ids 1..20 in :data:`VOC_CLASSES` order, from the XML object names, or from
the unique ids of the ``SegmentationClassAug`` PNG when an image has no XML),
``sem_seg_file_name`` when a GT mask exists (``SegmentationClassAug`` preferred, then
``SegmentationClass``; ground truth, for evaluators only), and ``annotations`` (Detectron2 style:
``bbox`` in ``BoxMode.XYXY_ABS`` 0-based, ``category_id`` 1..20, ``iscrowd`` 0, ``difficult``)
from the XML, used only for ground-truth-box upper bounds.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET

import numpy as np
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from tqdm import tqdm

from ...io.files import check_label_ids, image_size, read_label_png
from .common import VOC_CLASSES, keep_images_with_tags, require_dir, set_tag_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "register_voc_tags",
    "load_voc_tags",
    "voc_split_ids",
    "find_voc_root",
]

_CLASS_TO_ID = {c: i + 1 for i, c in enumerate(VOC_CLASSES)}
_SBD_SUBDIRS = ("", "dataset", os.path.join("benchmark_RELEASE", "dataset"))


def find_voc_root(base: str) -> str:
    """The VOC2012 folder under ``base``: ``base/VOC2012`` or ``base/VOCdevkit/VOC2012``.

    Raises the :func:`require_dir` error (which mentions ``DETECTRON2_DATASETS``) if neither
    exists.
    """
    candidates = [os.path.join(base, "VOC2012"), os.path.join(base, "VOCdevkit", "VOC2012")]
    for c in candidates:
        if PathManager.isdir(c):
            return c
    return require_dir(candidates[0], "PASCAL VOC 2012 (VOC2012/ or VOCdevkit/VOC2012/)")


def _read_id_list(path: str) -> list[str]:
    with PathManager.open(path, "r") as f:
        # SBD lists and VOC lists hold one id per line; tolerate "id label" style lines too
        return [line.split()[0] for line in f if line.strip()]


def _find_sbd_list(sbd_roots: list[str], split: str) -> str | None:
    for root in sbd_roots:
        for sub in _SBD_SUBDIRS:
            p = os.path.join(root, sub, f"{split}.txt")
            if PathManager.isfile(p):
                return p
    return None


def voc_split_ids(voc_root: str, split: str, sbd_root: str | None = None) -> list[str]:
    """Image ids of ``split``, sorted.

    ``train_aug`` without ``ImageSets/Segmentation/train_aug.txt`` is computed as
    ``(SBD train ∪ SBD val ∪ VOC train) − VOC val``; the SBD lists are looked for in
    ``sbd_root`` if given, else in ``<voc_root>/SBD`` and ``<voc_root>/../SBD``.
    """
    seg_sets = os.path.join(voc_root, "ImageSets", "Segmentation")
    listed = os.path.join(seg_sets, f"{split}.txt")
    if PathManager.isfile(listed):
        return sorted(set(_read_id_list(listed)))
    if split != "train_aug":
        raise FileNotFoundError(f"VOC split list not found: {listed}")

    for s in ("train", "val"):
        if not PathManager.isfile(os.path.join(seg_sets, f"{s}.txt")):
            raise FileNotFoundError(
                f"cannot build train_aug: VOC list {os.path.join(seg_sets, s + '.txt')} is missing"
            )
    voc_train = set(_read_id_list(os.path.join(seg_sets, "train.txt")))
    voc_val = set(_read_id_list(os.path.join(seg_sets, "val.txt")))
    sbd_roots = (
        [sbd_root]
        if sbd_root
        else [os.path.join(voc_root, "SBD"), os.path.join(os.path.dirname(voc_root), "SBD")]
    )
    sbd = set()
    for s in ("train", "val"):
        p = _find_sbd_list(sbd_roots, s)
        if p is None:
            raise FileNotFoundError(
                f"cannot build train_aug: neither {listed} nor the SBD list '{s}.txt' was found "
                f"(looked in {', '.join(sbd_roots)} and their dataset/ and "
                f"benchmark_RELEASE/dataset/ subfolders)"
            )
        sbd.update(_read_id_list(p))
    ids = sorted((sbd | voc_train) - voc_val)
    logger.info(
        "train_aug from disk: %d SBD ∪ %d VOC train − %d VOC val = %d images",
        len(sbd),
        len(voc_train),
        len(voc_val),
        len(ids),
    )
    return ids


def _parse_xml(path: str) -> tuple[tuple[int, int] | None, list[dict]]:
    """(height, width) from ``<size>`` (None if absent) and the objects of a VOC XML file."""
    with PathManager.open(path, "r") as f:
        try:
            tree = ET.parse(f)
        except ET.ParseError as e:
            raise ValueError(f"cannot parse VOC annotation {path}: {e}") from e
    root = tree.getroot()
    hw = None
    size = root.find("size")
    if size is not None and size.find("height") is not None and size.find("width") is not None:
        h, w = int(float(size.find("height").text)), int(float(size.find("width").text))
        if h > 0 and w > 0:
            hw = (h, w)
    objs = []
    for obj in root.findall("object"):
        cls = (obj.find("name").text or "").strip()
        if cls not in _CLASS_TO_ID:
            raise ValueError(
                f"unknown class '{cls}' in VOC annotation {path}; expected one of {VOC_CLASSES}"
            )
        difficult = obj.find("difficult")
        rec = {
            "category_id": _CLASS_TO_ID[cls],
            "iscrowd": 0,
            "difficult": int(difficult.text) if difficult is not None else 0,
        }
        bb = obj.find("bndbox")
        if bb is not None:
            # VOC boxes are 1-based inclusive pixel indices; XYXY_ABS uses 0-based pixel edges
            x1, y1, x2, y2 = (float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
            rec["bbox"] = [x1 - 1.0, y1 - 1.0, x2, y2]
            rec["bbox_mode"] = BoxMode.XYXY_ABS
        objs.append(rec)
    return hw, objs


def _tags_from_mask(path: str) -> list[int]:
    label = read_label_png(path)
    check_label_ids(label, len(VOC_CLASSES) + 1, path, "VOC mask")  # no id silently dropped
    ids = np.unique(label)
    return sorted(int(i) for i in ids if 0 < i <= len(VOC_CLASSES))


def load_voc_tags(
    voc_root: str, split: str, name: str = "voc", sbd_root: str | None = None
) -> list[dict]:
    """Load a VOC 2012 split as tag dataset dicts (see the module docstring for the fields)."""
    require_dir(voc_root, "PASCAL VOC 2012 folder")
    img_dir = require_dir(os.path.join(voc_root, "JPEGImages"), "VOC JPEGImages folder")
    ids = voc_split_ids(voc_root, split, sbd_root)
    xml_dir = os.path.join(voc_root, "Annotations")
    mask_dirs = [
        d
        for d in (
            os.path.join(voc_root, "SegmentationClassAug"),
            os.path.join(voc_root, "SegmentationClass"),
        )
        if PathManager.isdir(d)
    ]
    if not mask_dirs and not PathManager.isdir(xml_dir):
        raise FileNotFoundError(
            f"{name}: VOC folder {voc_root} has JPEGImages but neither Annotations/ (XML) nor "
            "SegmentationClass/ or SegmentationClassAug/ (masks): no tags can be read"
        )
    listed = os.path.join(voc_root, "ImageSets", "Segmentation", f"{split}.txt")
    id_source = listed if PathManager.isfile(listed) else "the SBD + VOC lists of train_aug"

    dicts = []
    for img_id in tqdm(ids, desc=f"{name}: reading annotations", disable=len(ids) < 2000):
        file_name = os.path.join(img_dir, img_id + ".jpg")
        mask = next(
            (
                p
                for p in (os.path.join(d, img_id + ".png") for d in mask_dirs)
                if PathManager.isfile(p)
            ),
            None,
        )
        if not PathManager.isfile(file_name):
            raise FileNotFoundError(
                f"{name}: id '{img_id}' of {id_source} has no image {file_name}"
            )
        xml = os.path.join(xml_dir, img_id + ".xml")
        hw, objs = None, None
        if PathManager.isfile(xml):
            hw, objs = _parse_xml(xml)
            tags = sorted({o["category_id"] for o in objs})
        elif mask is not None:
            tags = _tags_from_mask(mask)
        else:
            raise FileNotFoundError(
                f"{name}: image '{img_id}' has neither an annotation {xml} nor a "
                f"SegmentationClassAug/SegmentationClass mask to take its tags from"
            )
        if hw is None:
            hw = image_size(file_name)  # header only; EXIF orientation as the pixels are read
        rec = {
            "file_name": file_name,
            "image_id": img_id,
            "height": hw[0],
            "width": hw[1],
            "tags": tags,
        }
        if mask is not None:
            rec["sem_seg_file_name"] = mask
        if objs is not None:
            rec["annotations"] = [o for o in objs if "bbox" in o]
        dicts.append(rec)
    return keep_images_with_tags(dicts, name)


def register_voc_tags(name: str, root: str, split: str, sbd_root: str | None = None) -> None:
    """Register VOC 2012 ``split`` of the VOC2012 folder ``root`` lazily as ``name``.

    Nothing is read until ``DatasetCatalog.get(name)``; a missing folder then raises an error
    that says to set ``DETECTRON2_DATASETS``.
    """
    DatasetCatalog.register(name, lambda: load_voc_tags(root, split, name, sbd_root))
    set_tag_metadata(name, VOC_CLASSES, dirname=root, split=split)
