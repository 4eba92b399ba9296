"""COCO-format semantic results: write them from our models, score anyone's against COCO GT.

The results format is the one Detectron2's ``SemSegEvaluator`` writes as
``sem_seg_predictions.json`` and COCO-Stuff's evaluation reads: a JSON list with one entry per
(image, predicted class)::

    {"image_id": 139, "category_id": 18, "segmentation": {"size": [h, w], "counts": "<RLE>"}}

``category_id`` is the dataset's own category id (the COCO id for COCO-format datasets, from
the metadata ``stuff_dataset_id_to_contiguous_id`` that loading a COCO dataset sets; else our
contiguous id 1..K); background and ignored pixels are not written (a pixel no entry covers is
background). Detectron2's ``SemSegEvaluator`` writes the same list keyed by ``file_name``
instead of ``image_id``, with background entries of ``category_id`` 0: the scorer reads both.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections import OrderedDict, defaultdict
from typing import Sequence

import numpy as np
import pycocotools.mask as mask_util
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO

from ..data.datasets.coco import category_map
from ..data.datasets.coco_sem_seg import instances_to_label
from ..io.files import IGNORE_LABEL, atomic_write_bytes
from .metrics import confusion_matrix, metrics_from_confusion
from .registry import EVALUATOR_REGISTRY
from .sem_seg import WSSSSemSegEvaluator

logger = logging.getLogger(__name__)

__all__ = [
    "COCOSemSegJSONEvaluator",
    "label_to_coco_results",
    "coco_results_to_label",
    "score_coco_semantic_json",
]


def label_to_coco_results(
    label: np.ndarray, image_id, id_map: dict[int, int] | None = None
) -> list[dict]:
    """(H, W) label map (0 bg, 1..K, 255 ignore) -> one RLE result per class present."""
    out = []
    for c in np.unique(label):
        c = int(c)
        if c in (0, IGNORE_LABEL):
            continue
        rle = mask_util.encode(np.asfortranarray((label == c).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        out.append(
            {"image_id": image_id, "category_id": (id_map or {}).get(c, c), "segmentation": rle}
        )
    return out


def coco_results_to_label(
    results: Sequence[dict],
    height: int,
    width: int,
    cat_to_contiguous: dict[int, int],
    where: str = "",
) -> np.ndarray:
    """Paint one image's results into an (H, W) label map (pixels no result covers: 0).

    Entries with a ``score`` are painted in increasing score order (the best one wins an
    overlap); otherwise in file order. Unknown category ids are an error naming them.
    """
    label = np.zeros((height, width), np.uint8)
    order = sorted(range(len(results)), key=lambda i: results[i].get("score", 0.0))
    for i in order:
        r = results[i]
        if r["category_id"] not in cat_to_contiguous:
            raise KeyError(
                f"{where}: category_id {r['category_id']} is not a category of the " "ground truth"
            )
        seg = dict(r["segmentation"])
        if tuple(seg["size"]) != (height, width):
            raise ValueError(
                f"{where}: result mask is {seg['size']} but the image is " f"{[height, width]}"
            )
        if isinstance(seg["counts"], str):
            seg["counts"] = seg["counts"].encode("ascii")
        label[mask_util.decode(seg).astype(bool)] = cat_to_contiguous[r["category_id"]]
    return label


def _contiguous_to_dataset_ids(dataset_name: str) -> dict[int, int] | None:
    """Our id 1..K -> the dataset's category id, from the metadata (loading the dataset first
    when they lack it: COCO-format loaders set it); None for datasets without category ids."""
    meta = MetadataCatalog.get(dataset_name)
    if meta.get("stuff_dataset_id_to_contiguous_id") is None:
        if meta.get("json_file") is None or dataset_name not in DatasetCatalog.list():
            return None
        DatasetCatalog.get(dataset_name)  # sets stuff_dataset_id_to_contiguous_id
    mapping = meta.get("stuff_dataset_id_to_contiguous_id")
    if mapping is None:
        return None
    return {int(v): int(k) for k, v in mapping.items() if int(v) != 0}


@EVALUATOR_REGISTRY.register()
class COCOSemSegJSONEvaluator(WSSSSemSegEvaluator):
    """:class:`WSSSSemSegEvaluator` that also writes ``sem_seg_predictions.json`` (COCO format).

    The JSON goes to ``output_dir`` (atomically); its category ids are the dataset's COCO ids
    when the dataset was registered from a COCO JSON, else the contiguous ids.
    """

    @configurable
    def __init__(self, dataset_name: str, **kwargs):
        super().__init__(dataset_name, **kwargs)
        self._id_map = _contiguous_to_dataset_ids(dataset_name)

    def empty_state(self) -> dict:
        return {**super().empty_state(), "results": []}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "sem_seg" in out:
                pred = out["sem_seg"].argmax(dim=0).cpu()
                self.add_prediction(inp, pred)
                self._state["results"] += label_to_coco_results(
                    pred.numpy().astype(np.uint8), inp["image_id"], self._id_map
                )

    def summarize(self, state: dict) -> dict:
        res = super().summarize(state)
        if self.output_dir:
            path = os.path.join(self.output_dir, "sem_seg_predictions.json")
            atomic_write_bytes(path, json.dumps(state["results"]).encode())
            logger.info("wrote %d COCO-format semantic results to %s", len(state["results"]), path)
        return res


def _image_of_result(coco, results_file: str, instances_json: str):
    """``fn(result) -> COCO image id``: its ``image_id``, or the image whose ``file_name`` ends
    the result's ``file_name`` (Detectron2's SemSegEvaluator writes the full image path)."""
    by_name = defaultdict(list)
    for img in coco.imgs.values():
        by_name[os.path.basename(img["file_name"])].append(img)

    def image_id(r: dict):
        if "image_id" in r:
            if r["image_id"] not in coco.imgs:
                raise KeyError(
                    f"{results_file}: image_id {r['image_id']} is not in {instances_json}"
                )
            return r["image_id"]
        if "file_name" not in r:
            raise KeyError(f"{results_file}: a result has neither 'image_id' nor 'file_name'")
        path = r["file_name"].replace(os.sep, "/")
        found = [
            img["id"]
            for img in by_name.get(os.path.basename(path), [])
            if path == img["file_name"] or path.endswith("/" + img["file_name"])
        ]
        if len(found) != 1:
            what = "no image" if not found else f"{len(found)} images"
            raise KeyError(
                f"{results_file}: file_name {r['file_name']} matches {what} of {instances_json}"
            )
        return found[0]

    return image_id


def score_coco_semantic_json(
    results_file: str,
    instances_json: str,
    class_names: Sequence[str] | None = None,
    image_ids: Sequence | None = None,
) -> OrderedDict:
    """Score a COCO-format semantic results JSON against COCO instance annotations.

    Ground truth is painted from the instances exactly as the dataset code does
    (:func:`wsss_d2.data.datasets.coco.instances_to_label`: larger instances first, crowd-only
    pixels ignored). ``class_names`` restricts the evaluation to those COCO categories (others
    count as background), numbered in that order. Images of the annotation file with no result
    are scored as all background; ``image_ids`` limits the evaluation to those images. Results
    are matched to images by ``image_id``, or by ``file_name`` (Detectron2's SemSegEvaluator
    JSON: the image's path, whose tail must be the JSON's ``file_name``).

    Returns ``{"sem_seg": {...}}`` with the same keys as :class:`WSSSSemSegEvaluator`.
    """
    with PathManager.open(results_file) as f:
        results = json.load(f)
    if not isinstance(results, list):
        raise ValueError(f"{results_file}: expected a JSON list of results")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(PathManager.get_local_path(instances_json))
    cat_map, names = category_map(coco, instances_json, class_names)
    image_of = _image_of_result(coco, results_file, instances_json)
    by_image = defaultdict(list)
    for r in results:
        by_image[image_of(r)].append(r)
    cat_ids = set(coco.getCatIds())
    # Detectron2's SemSegEvaluator writes background too, as dataset id 0 (not a COCO category)
    background = {0} - cat_ids
    bad_cats = {r["category_id"] for r in results} - cat_ids - background
    if bad_cats:
        raise KeyError(
            f"{results_file}: category_id {sorted(bad_cats)[0]} is not a category of "
            f"{instances_json}"
        )
    ids = sorted(coco.imgs) if image_ids is None else list(image_ids)
    n = len(names) + 1
    conf = np.zeros((n, n), np.int64)
    missing = 0
    for img_id in ids:
        img = coco.imgs[img_id]
        h, w = img["height"], img["width"]
        anns = [
            {**a, "category_id": cat_map[a["category_id"]]}
            for a in coco.imgToAnns.get(img_id, [])
            if a["category_id"] in cat_map
        ]
        gt = instances_to_label(anns, h, w, where=f"{instances_json} image {img_id}")
        missing += img_id not in by_image
        # results for categories outside the evaluated classes are background
        rs = [r for r in by_image.get(img_id, []) if r["category_id"] in cat_map]
        pred = coco_results_to_label(rs, h, w, cat_map, where=f"{results_file} image {img_id}")
        conf += confusion_matrix(pred, gt, n)
    if missing:
        logger.warning(
            "%d of %d images have no result and count as all background", missing, len(ids)
        )
    return OrderedDict(sem_seg=metrics_from_confusion(conf, ["background", *names]))
