"""COCO-format data (MS COCO 2014, coco_tiny, any COCO JSON) as tag datasets.

Class ids: the JSON's categories sorted by category id become 1..K (0 is background, 255
ignore). With ``class_names`` only those categories are kept, numbered 1..K in the order given
(e.g. :data:`VOC_COCO_NAMES`, the 20 PASCAL VOC classes by their COCO names in VOC order, so the
ids equal the VOC ids); instances of other categories are dropped, and a name that is not a
category of the JSON is an error.

Each dataset dict has ``file_name``, ``image_id``, ``height``, ``width``, ``tags`` (sorted unique
class ids of the image's instances, crowd ones included), ``annotations`` (``bbox`` in
``BoxMode.XYWH_ABS``, ``category_id`` mapped to 1..K, ``iscrowd``, ``segmentation``; used only for
ground-truth-box upper bounds) and ``sem_seg_file_name`` (ground truth, for evaluators only).
Images with no tag are excluded, with a logged count.

**Semantic ground truth from instances** (the usual WSSS COCO protocol): COCO has no semantic
masks, so one PNG per image is painted from the instance masks and cached on disk
(``<sem_seg_root>/<file stem>.png``; an existing PNG is reused, a new one is written through a
temporary file and renamed). Non-crowd instances are painted from the largest to the smallest,
so a small object lying on a large one stays visible; pixels covered only by crowd annotations
become 255 (ignore). The default ``sem_seg_root`` is ``<image_root>/../sem_seg_tags_<K>/<json
stem>/`` (``sem_seg_tags_<K>_<hash of class_names>`` for a class subset); when that folder cannot
be written (a read-only dataset copy) it falls back to ``$WSSS_D2_CACHE`` (default
``~/.cache/wsss_d2``)``/coco_sem_seg/...``. PNGs are generated when the dataset is first loaded
(``DatasetCatalog.get``), with a progress bar and a process pool for large sets; every process
writes atomically, so concurrent loaders (one per GPU rank) are safe, if redundant. The cache is
keyed by the JSON's name and the class list, not its content: delete the folder after editing
the annotations. A cached PNG whose size differs from its image is an error naming both.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
from typing import Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from PIL import Image
from tqdm import tqdm

from ...io.files import IGNORE_LABEL, save_label_png
from .common import (
    COCO_CLASSES,
    VOC_CLASSES,
    datasets_root,
    keep_images_with_tags,
    require_dir,
    set_tag_metadata,
)

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_COCO_NAMES",
    "register_coco_tags",
    "load_coco_tags",
    "instances_to_label",
    "default_sem_seg_root",
    "register_coco_tiny",
    "register_all_coco_tags",
]

# the 20 PASCAL VOC classes by their COCO category names, in VOC_CLASSES order
VOC_COCO_NAMES = (
    "airplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "dining table", "dog", "horse", "motorcycle", "person", "potted plant", "sheep", "couch",
    "train", "tv",
)  # fmt: skip


_POOL_MIN_IMAGES = 256  # below this a process pool costs more than it saves


def _sha8(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _writable(folder: str) -> bool:
    """Whether ``folder`` may be written to. A folder without any write permission bit counts
    as read-only even for root (for whom ``os.access`` always says yes): a dataset copy marked
    read-only is not to be written into."""
    try:
        mode = os.stat(folder).st_mode
    except OSError:
        return False
    return os.access(folder, os.W_OK) and bool(mode & 0o222)


def default_sem_seg_root(
    json_file: str, image_root: str, num_classes: int, class_names: Sequence[str] | None = None
) -> str:
    """Where generated semantic PNGs go when ``sem_seg_root`` is not given (module docstring)."""
    tag = f"sem_seg_tags_{num_classes}"
    if class_names is not None:
        tag += "_" + _sha8("\n".join(class_names))
    stem = os.path.splitext(os.path.basename(json_file))[0]
    preferred = os.path.join(os.path.dirname(os.path.abspath(image_root)), tag, stem)
    if os.path.isdir(preferred) or _writable(_nearest_existing(preferred)):
        return preferred
    cache = os.path.expanduser(os.getenv("WSSS_D2_CACHE", os.path.join("~", ".cache", "wsss_d2")))
    fallback = os.path.join(
        cache, "coco_sem_seg", tag, f"{stem}_{_sha8(os.path.abspath(json_file))}"
    )
    logger.warning(
        "%s is not writable; generated semantic masks go to %s instead", preferred, fallback
    )
    return fallback


def _segmentation_to_mask(seg, height: int, width: int, where: str) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygons, RLE or uncompressed RLE) to an (H, W) bool mask."""
    from pycocotools import mask as mask_util

    if isinstance(seg, list):
        polys = [p for p in seg if len(p) >= 6]  # a polygon needs >= 3 points
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_util.merge(mask_util.frPyObjects(polys, height, width))
    elif isinstance(seg, dict) and "counts" in seg:
        if list(seg.get("size", [])) != [height, width]:
            raise ValueError(
                f"{where}: RLE size {seg.get('size')} differs from the image size "
                f"[{height}, {width}]"
            )
        rle = mask_util.frPyObjects(seg, height, width) if isinstance(seg["counts"], list) else seg
    else:
        raise ValueError(f"{where}: unsupported segmentation of type {type(seg).__name__}")
    return mask_util.decode(rle).astype(bool)


def instances_to_label(
    anns: Sequence[dict], height: int, width: int, where: str = ""
) -> np.ndarray:
    """Paint instances into an (H, W) uint8 semantic label map.

    Args:
        anns: dicts with ``category_id`` (already mapped to 1..K), ``iscrowd`` and
            ``segmentation`` (COCO polygons or RLE).
        where: names the image in error messages.

    Returns:
        (H, W) uint8: 0 background, 1..K classes, 255 where only crowd annotations cover a pixel.
        Non-crowd instances are painted largest first, so smaller ones stay visible on top.
    """
    label = np.zeros((height, width), dtype=np.uint8)
    crowd = np.zeros((height, width), dtype=bool)
    things = []
    for a in anns:
        m = _segmentation_to_mask(
            a["segmentation"], height, width, f"{where} annotation " f"{a.get('id', '?')}"
        )
        if a.get("iscrowd", 0):
            crowd |= m
        else:
            things.append((int(m.sum()), a["category_id"], m))
    # sorted() is stable: equal areas keep the JSON order
    for _, cid, m in sorted(things, key=lambda t: -t[0]):
        label[m] = cid
    label[crowd & (label == 0)] = IGNORE_LABEL
    return label


def _category_map(coco, json_file: str, class_names: Sequence[str] | None) -> tuple[dict, list]:
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


def _image_size(path: str) -> tuple[int, int]:
    with PathManager.open(path, "rb") as f:
        w, h = Image.open(f).size  # header only
    return h, w


def _ensure_sem_seg(
    dicts: list[dict], raw_anns: dict, json_file: str, name: str, num_workers: int | None = None
) -> None:
    """Generate the missing semantic PNGs of ``dicts`` and check the cached ones' sizes.

    Large sets are painted by a process pool of ``num_workers`` (default ``min(8, CPUs)``).
    """
    todo = []
    for d in dicts:
        png = d["sem_seg_file_name"]
        if os.path.isfile(png):
            with Image.open(png) as im:
                w, h = im.size
            if (h, w) != (d["height"], d["width"]):
                raise ValueError(
                    f"{name}: semantic mask {png} is {w}x{h} (WxH) but its image {d['file_name']} "
                    f"is {d['width']}x{d['height']} in {json_file}; delete the stale mask"
                )
        else:
            todo.append(d)
    if not todo:
        return
    logger.info(
        "%s: painting %d semantic masks from instances into %s",
        name,
        len(todo),
        os.path.dirname(todo[0]["sem_seg_file_name"]),
    )
    jobs = [
        (d["file_name"], d["sem_seg_file_name"], d["height"], d["width"], raw_anns[d["image_id"]],
         json_file, name)
        for d in todo
    ]  # fmt: skip
    workers = min(num_workers if num_workers is not None else 8, os.cpu_count() or 1, len(jobs))
    desc = f"{name}: semantic GT from instances"
    if workers <= 1 or len(jobs) < _POOL_MIN_IMAGES:
        for job in tqdm(jobs, desc=desc):
            _paint_one(job)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers) as pool:
        for _ in tqdm(pool.imap_unordered(_paint_one, jobs, chunksize=16), total=len(jobs),
                      desc=desc):  # fmt: skip
            pass


def _paint_one(job: tuple) -> None:
    """Paint and save one image's semantic PNG (a pool task: plain arguments, no COCO object)."""
    file_name, png, height, width, anns, json_file, name = job
    if not PathManager.isfile(file_name):
        raise FileNotFoundError(f"{name}: image {file_name} listed in {json_file} is missing")
    hw = _image_size(file_name)
    if hw != (height, width):
        raise ValueError(
            f"{name}: image {file_name} is {hw[1]}x{hw[0]} (WxH) but {json_file} says "
            f"{width}x{height}"
        )
    save_label_png(png, instances_to_label(anns, height, width, where=file_name))


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
    from pycocotools.coco import COCO

    if not PathManager.isfile(json_file):
        raise FileNotFoundError(f"{name}: COCO annotation file not found: {json_file}")
    require_dir(image_root, f"{name}: image folder")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO(PathManager.get_local_path(json_file))
    cat_map, names = _category_map(coco, json_file, class_names)
    if sem_seg_root is None:
        sem_seg_root = default_sem_seg_root(json_file, image_root, len(names), class_names)

    dicts, raw_anns = [], {}
    dropped = 0
    for img_id in sorted(coco.getImgIds()):
        img = coco.imgs[img_id]
        anns_out, raw = [], []
        for a in coco.imgToAnns.get(img_id, []):
            if a["category_id"] not in cat_map:
                dropped += 1
                continue
            cid = cat_map[a["category_id"]]
            raw.append({**a, "category_id": cid})
            anns_out.append({
                "bbox": list(a["bbox"]),
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": cid,
                "iscrowd": int(a.get("iscrowd", 0)),
                "segmentation": a["segmentation"],
            })  # fmt: skip
        stem = os.path.splitext(img["file_name"])[0]
        dicts.append({
            "file_name": os.path.join(image_root, img["file_name"]),
            "image_id": img_id,
            "height": int(img["height"]),
            "width": int(img["width"]),
            "tags": sorted({a["category_id"] for a in anns_out}),
            "annotations": anns_out,
            "sem_seg_file_name": os.path.join(sem_seg_root, stem + ".png"),
        })  # fmt: skip
        raw_anns[img_id] = raw
    meta = MetadataCatalog.get(name)
    if meta.get("stuff_classes") is None:
        set_tag_metadata(name, names)
    elif len(meta.stuff_classes) - 1 != len(names):
        raise ValueError(
            f"{name}: metadata names {len(meta.stuff_classes) - 1} classes but {json_file} gives "
            f"{len(names)}"
        )
    if dropped:
        logger.info("%s: dropped %d instances of categories outside the class list", name, dropped)
    dicts = keep_images_with_tags(dicts, name)
    _ensure_sem_seg(dicts, raw_anns, json_file, name, num_workers)
    return dicts


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


def _coco_tiny_specs(prefix: str):
    """(name, split, class_names, metadata names) of the four coco_tiny datasets."""
    for split in ("train", "val"):
        yield f"{prefix}_{split}_tags", split, None, COCO_CLASSES  # all 80 categories
        yield f"{prefix}_voc_{split}_tags", split, VOC_COCO_NAMES, VOC_CLASSES


def _coco_tiny_paths(root: str, split: str) -> tuple[str, str]:
    return (
        os.path.join(root, "annotations", f"instances_{split}2017.json"),
        os.path.join(root, "images", f"{split}2017"),
    )


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
    for name, split, class_names, meta in _coco_tiny_specs(prefix):
        json_file, image_root = _coco_tiny_paths(root, split)
        _replace(name)
        register_coco_tags(
            name, json_file, image_root,
            sem_seg_root=os.path.join(sem_seg_root, name) if sem_seg_root else None,
            class_names=class_names, metadata_names=meta,
        )  # fmt: skip


def register_all_coco_tags() -> None:
    """Builtin ``coco_2014_{train,val}_tags`` and ``coco_tiny_*`` (registration only).

    Their folders (``$DETECTRON2_DATASETS/coco`` and ``$DETECTRON2_DATASETS/coco_tiny``) are
    resolved when a dataset is loaded, so the variable may be set after import.
    """

    def builtin(name, sub, what, paths, class_names, meta):
        def load() -> list[dict]:
            root = require_dir(os.path.join(datasets_root(), sub), what)
            json_file, image_root = paths(root)
            return load_coco_tags(json_file, image_root, name, class_names=class_names)

        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, load)
            set_tag_metadata(name, meta)

    for split in ("train", "val"):
        builtin(
            f"coco_2014_{split}_tags", "coco", "MS COCO 2014 (coco/)",
            lambda root, s=split: (
                os.path.join(root, "annotations", f"instances_{s}2014.json"),
                os.path.join(root, f"{s}2014"),
            ),
            None, COCO_CLASSES,
        )  # fmt: skip
    for name, split, class_names, meta in _coco_tiny_specs("coco_tiny"):
        builtin(
            name, "coco_tiny", "coco_tiny",
            lambda root, s=split: _coco_tiny_paths(root, s), class_names, meta,
        )  # fmt: skip
