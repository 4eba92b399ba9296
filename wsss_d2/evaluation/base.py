"""The base of every wsss_d2 evaluator: class names, reset / gather once, JSON output.

A subclass keeps what it accumulates in ``self._state``, a dict made by :meth:`empty_state` of
numpy arrays, numbers, lists and nested dicts of these, and turns a state into results in
:meth:`summarize`. :meth:`evaluate` merges the states of all ranks on the main process — arrays
and numbers are summed, lists concatenated — and returns ``{}`` elsewhere, as Detectron2's
evaluators do (gather, then ``if not is_main_process(): return``), so that this is written once,
not once per evaluator.

Ground truth is read from each input's ``sem_seg_file_name`` (ids 0 background, 1..K, 255
ignore) by :func:`read_gt` — with the refiners' and mappers' promise that training code never
reads it, this is the only place in the package where ground-truth masks are read. Ids outside
0..K other than 255 are an error naming the mask and the ids (``WSSS.GT_INVALID_IDS "ignore"``
counts them as ignored instead), and so is a 0/255 mask of a tagged image that has no class pixel
at all (objects stored as 255, which means ignore); 16-bit masks are read without wrap-around.
An input without that key (Detectron2's ``DatasetMapper`` pops it) finds its mask through its
``file_name`` in the evaluated dataset's ``DatasetCatalog`` dicts (:meth:`WSSSEvaluator.read_gt`),
as Detectron2's ``SemSegEvaluator`` does.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..io.files import IGNORE_LABEL, atomic_write_bytes, check_label_ids, read_label_png

logger = logging.getLogger(__name__)

__all__ = ["WSSSEvaluator", "read_gt", "tag_evaluator_args"]


def tag_evaluator_args(cfg, dataset_name: str, output_dir: str | None = None) -> dict:
    """The constructor arguments every wsss_d2 evaluator reads from a config."""
    return {
        "dataset_name": dataset_name,
        "num_classes": cfg.INPUT.TAGS.NUM_CLASSES + 1,  # background included
        "ignore_label": cfg.MODEL.IGNORE_VALUE,
        "output_dir": output_dir,
        "invalid_gt": cfg.WSSS.GT_INVALID_IDS,
    }


def _objects_as_ignore(inp: dict, gt: np.ndarray, num_classes: int) -> bool:
    """A tagged image whose mask has no class pixel but a large 255 area: objects saved as 255
    (a binary 0/255 mask). Crowd regions (COCO: 255 by design) are not suspected."""
    tags = inp.get("tags")
    tagged = tags is not None and bool(np.asarray(tags).astype(bool).any())
    if not tagged or any(a.get("iscrowd") for a in inp.get("annotations", ())):
        return False
    has_class = ((gt > 0) & (gt < num_classes)).any()
    return not has_class and float((gt == IGNORE_LABEL).mean()) >= 0.25


def read_gt(
    inp: dict,
    hw: Sequence[int],
    num_classes: int | None = None,
    invalid: str = "error",
    gt_files: dict | None = None,
) -> np.ndarray:
    """The (H, W) uint8 ground truth of an input, checked against the prediction's size ``hw``
    and, given ``num_classes`` (K + 1), its ids (module docstring; ``invalid``: "error" |
    "ignore"). ``gt_files``: ``file_name -> sem_seg_file_name`` for inputs without
    ``sem_seg_file_name``."""
    path = inp.get("sem_seg_file_name") or (gt_files or {}).get(inp.get("file_name"))
    if not path:
        raise KeyError(
            f"input {inp.get('file_name', '?')} has no 'sem_seg_file_name', and its dataset "
            "lists no ground truth for this file_name: there is nothing to evaluate against"
        )
    gt = read_label_png(path, tuple(hw), inp.get("file_name"))
    if num_classes is None:
        return gt
    if invalid == "ignore":
        return np.where((gt >= num_classes) & (gt != IGNORE_LABEL), IGNORE_LABEL, gt).astype(
            np.uint8
        )
    if invalid != "error":
        raise ValueError(f"WSSS.GT_INVALID_IDS must be 'error' or 'ignore', got '{invalid}'")
    check_label_ids(gt, num_classes, path)
    if _objects_as_ignore(inp, gt, num_classes):
        raise ValueError(
            f"ground-truth mask {path} of tagged image {inp.get('file_name')} has no pixel of any "
            f"class but {100 * (gt == 255).mean():.0f}% "
            "255: a binary 0/255 mask? 255 means ignore; store class ids (1..K) for objects, or "
            "set WSSS.GT_INVALID_IDS 'ignore' if this mask is right"
        )
    return gt


def _merge(values: list):
    first = values[0]
    if isinstance(first, dict):
        return {k: _merge([v[k] for v in values]) for k in first}
    if isinstance(first, list):
        return [x for v in values for x in v]
    return sum(values[1:], first)


class WSSSEvaluator(DatasetEvaluator):
    """Shared constructor, state handling, gathering and JSON writing (module docstring)."""

    #: the top-level keys of ``evaluate()``'s results (two evaluators of one run must not share one)
    RESULT_KEYS: tuple[str, ...] = ()

    def __init__(
        self,
        dataset_name: str,
        *,
        num_classes: int | None = None,
        class_names: Sequence[str] | None = None,
        ignore_label: int = IGNORE_LABEL,
        output_dir: str | None = None,
        distributed: bool = True,
        invalid_gt: str = "error",
    ):
        """
        Args:
            dataset_name: its metadata give the class names (``stuff_classes``, background first)
                and the ignore label; "" for none.
            num_classes: K + 1, background included (default: the number of class names).
            class_names: K + 1 names (default: ``stuff_classes``); explicit names that disagree
                with ``num_classes`` are an error, metadata that disagree are not used.
            invalid_gt: ground-truth ids outside 0..K (not 255): "error" | "ignore".
        """
        self.dataset_name = dataset_name
        meta = MetadataCatalog.get(dataset_name) if dataset_name else None
        explicit = class_names is not None
        if not explicit and meta is not None and meta.get("stuff_classes") is not None:
            class_names = list(meta.stuff_classes)
        if num_classes is None:
            if class_names is None:
                raise KeyError(f"dataset {dataset_name} has no stuff_classes; pass num_classes")
            num_classes = len(class_names)
        if class_names is not None and len(class_names) != num_classes:
            if explicit:
                raise ValueError(
                    f"{len(class_names)} class names for {num_classes} classes "
                    f"(dataset {dataset_name})"
                )
            class_names = None
        self.num_classes = int(num_classes)  # background included
        self.class_names = list(class_names) if class_names is not None else None
        self.ignore_label = meta.get("ignore_label", ignore_label) if meta else ignore_label
        self.output_dir = output_dir
        self.distributed = distributed
        self.invalid_gt = invalid_gt
        self._gt_files: dict | None = None
        self.reset()

    def read_gt(self, inp: dict, hw: Sequence[int]) -> np.ndarray:
        """:func:`read_gt` with this evaluator's classes and ``invalid_gt``, looking the mask up
        by ``file_name`` in the dataset when the input lacks ``sem_seg_file_name``."""
        if not inp.get("sem_seg_file_name") and self._gt_files is None:
            registered = self.dataset_name and self.dataset_name in DatasetCatalog.list()
            dicts = DatasetCatalog.get(self.dataset_name) if registered else []
            self._gt_files = {
                d["file_name"]: d["sem_seg_file_name"] for d in dicts if d.get("sem_seg_file_name")
            }
        return read_gt(inp, hw, self.num_classes, self.invalid_gt, self._gt_files)

    def empty_state(self) -> dict:
        raise NotImplementedError

    def summarize(self, state: dict) -> dict:
        """The results of a merged ``state`` (main process only)."""
        raise NotImplementedError

    def evaluate(self):
        state = self.gather_state()
        return {} if state is None else self.summarize(state)

    def reset(self):
        self._state = self.empty_state()

    def gather_state(self) -> dict | None:
        """Every rank's state merged on the main process; None on the others."""
        if not self.distributed or comm.get_world_size() == 1:
            return self._state
        parts = comm.gather(self._state, dst=0)
        if not comm.is_main_process():
            return None
        return _merge(parts)

    def write_confusion(self, prefix: str, conf: np.ndarray, extra_columns=()) -> None:
        """``output_dir/<prefix>_confusion.json``: ``confusion[gt][pred]`` pixel counts with the
        class names (rows: ground truth; columns: prediction, then ``extra_columns``), for the
        report's confusion matrices."""
        names = self.class_names or [str(i) for i in range(conf.shape[0])]
        self.write_json(
            f"{prefix}_confusion.json",
            {
                "classes": list(names),
                "columns": list(names) + list(extra_columns),
                "confusion": np.asarray(conf).astype(np.int64).tolist(),
            },
        )

    def write_json(self, name: str, res) -> None:
        """``res`` as ``output_dir/name`` (atomically), when the evaluator has an output folder."""
        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            atomic_write_bytes(
                os.path.join(self.output_dir, name), json.dumps(res, indent=2).encode()
            )
