"""Semantic ground truth from COCO instances (the usual WSSS COCO protocol): COCO has no semantic
masks, so one PNG per image is painted from the instance masks and cached on disk
(``<sem_seg_root>/<file stem>.png``; an existing PNG is reused, a new one is written through a
temporary file and renamed). Non-crowd instances are painted from the largest to the smallest,
so a small object lying on a large one stays visible; pixels covered only by crowd annotations
become 255 (ignore). The masks are a generated cache, never written next to the user's images
unless asked (an explicit ``sem_seg_root``): by default (:func:`default_sem_seg_root`) they go to
``$WSSS_D2_CACHE`` when set, else ``$DETECTRON2_DATASETS/wsss_d2_generated/`` (Detectron2's
datasets root, default ``datasets/``), else — that folder not writable, e.g. a read-only dataset
copy — the running tool's ``OUTPUT_DIR/wsss_d2_generated/`` (:func:`set_generated_fallback`),
else ``~/.cache/wsss_d2``; below it ``coco_sem_seg/sem_seg_tags_<K>[_<hash of class_names>]/<json
stem>_<hash of the JSON path>/<file stem>.png``. PNGs are generated when the dataset is first
loaded (``DatasetCatalog.get``), with a progress bar (and rate / ETA lines in the log) and a
process pool for large sets; every process writes atomically, so concurrent loaders (one per GPU
rank) are safe, if redundant. The cache is keyed by the JSON's path and the class list, not its
content: delete the folder after editing the annotations. A cached PNG whose size differs from
its image is an error naming both.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Sequence

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image
from pycocotools import mask as mask_util

from ...io.files import IGNORE_LABEL, image_size, save_label_png
from ...ops.pool import map_in_pool
from .common import datasets_root

logger = logging.getLogger(__name__)

__all__ = [
    "default_sem_seg_root",
    "set_generated_fallback",
    "segmentation_to_mask",
    "instances_to_label",
    "ensure_sem_seg",
]

_POOL_MIN_IMAGES = 256  # below this a process pool costs more than it saves
GENERATED_DIR = "wsss_d2_generated"  # generated dataset files, under a datasets or output root
_OUTPUT_FALLBACK: list[str] = []  # the running tool's OUTPUT_DIR (set_generated_fallback)


def set_generated_fallback(output_dir: str | None) -> None:
    """Use ``output_dir/wsss_d2_generated`` when ``$DETECTRON2_DATASETS`` cannot be written
    (every tool calls this at set-up with its ``OUTPUT_DIR``; None: no such fallback)."""
    _OUTPUT_FALLBACK[:] = [os.path.join(output_dir, GENERATED_DIR)] if output_dir else []


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
    """Where generated semantic PNGs go when ``sem_seg_root`` is not given (module docstring).

    ``image_root`` is not used: the user's image folder is never written unless asked.
    """
    tag = f"sem_seg_tags_{num_classes}"
    if class_names is not None:
        tag += "_" + _sha8("\n".join(class_names))
    stem = os.path.splitext(os.path.basename(json_file))[0]
    sub = os.path.join("coco_sem_seg", tag, f"{stem}_{_sha8(os.path.abspath(json_file))}")
    if os.getenv("WSSS_D2_CACHE"):
        return os.path.join(os.path.expanduser(os.environ["WSSS_D2_CACHE"]), sub)
    preferred = os.path.join(os.path.abspath(datasets_root()), GENERATED_DIR, sub)
    if os.path.isdir(preferred) or _writable(_nearest_existing(preferred)):
        return preferred
    fallback = os.path.join(
        _OUTPUT_FALLBACK[0] if _OUTPUT_FALLBACK else os.path.expanduser("~/.cache/wsss_d2"), sub
    )
    logger.warning(
        "%s is not writable; generated semantic masks go to %s instead", preferred, fallback
    )
    return fallback


def segmentation_to_mask(seg, height: int, width: int, where: str) -> np.ndarray:
    """Decode a COCO ``segmentation`` (polygons, RLE or uncompressed RLE) to an (H, W) bool mask."""
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
        m = segmentation_to_mask(
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


def _image_size(path: str) -> tuple[int, int]:
    with PathManager.open(path, "rb") as f:
        w, h = Image.open(f).size  # header only
    return h, w


def ensure_sem_seg(
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
    # spawn, not fork: the parent may hold torch/OpenMP threads, unsafe in a forked child
    for _ in map_in_pool(
        _paint_one,
        jobs,
        workers if len(jobs) >= _POOL_MIN_IMAGES else 1,
        desc=f"{name}: semantic GT from instances",
        start_method="spawn",
    ):
        pass


def _paint_one(job: tuple) -> None:
    """Paint and save one image's semantic PNG (a pool task: plain arguments, no COCO object)."""
    file_name, png, height, width, anns, json_file, name = job
    if not PathManager.isfile(file_name):
        raise FileNotFoundError(f"{name}: image {file_name} listed in {json_file} is missing")
    hw = image_size(file_name)  # as its pixels are read: EXIF orientation applied
    if hw != (height, width):
        turned = " (its EXIF orientation turns it)" if _image_size(file_name) != hw else ""
        raise ValueError(
            f"{name}: image {file_name} is {hw[1]}x{hw[0]} (WxH){turned} but {json_file} says "
            f"{width}x{height}"
        )
    save_label_png(png, instances_to_label(anns, height, width, where=file_name))
