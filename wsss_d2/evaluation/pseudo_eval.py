"""Score a pseudo-label round against the ground truth.

Pseudo labels may leave pixels unsure (255). Two views are reported:

- ``mIoU``: every ground-truth pixel counts; an unsure prediction is a miss (a false negative of
  its ground-truth class), so leaving pixels out is not free;
- ``mIoU_labeled``: only the pixels the round labels (what the segmentor is trained on);

plus ``ignored_fraction`` (pixels the round leaves unsure, among ground-truth-valid pixels), and
per class IoU / precision / recall (recall counts unsure pixels as misses).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Iterable

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.utils import comm

from ..io.files import read_label_png
from ..io.rounds import attach_round
from .base import WSSSEvaluator, tag_evaluator_args
from .metrics import metrics_from_confusion
from .registry import EVALUATOR_REGISTRY

logger = logging.getLogger(__name__)

__all__ = ["PseudoLabelEvaluator", "pseudo_label_metrics", "evaluate_round"]


def pseudo_label_metrics(conf: np.ndarray, class_names: list[str] | None = None) -> dict:
    """Metrics (percent) from ``conf[gt, pred]`` of shape (C, C+1); the last column: unsure."""
    c = conf.shape[0]
    conf = conf.astype(np.float64)
    tp = np.diag(conf[:, :c])
    gt_all = conf.sum(1)  # unsure predictions included: they are misses
    pred = conf[:, :c].sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        union = gt_all + pred - tp
        iou = np.where(union > 0, tp / union, np.nan)
        prec = np.where(pred > 0, tp / pred, np.nan)
        rec = np.where(gt_all > 0, tp / gt_all, np.nan)
    labeled = metrics_from_confusion(conf[:, :c].astype(np.int64), class_names)
    total = conf.sum()
    res = OrderedDict()
    res["mIoU"] = 100 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    res["mIoU_labeled"] = labeled["mIoU"]
    res["ignored_fraction"] = float(conf[:, c].sum() / max(total, 1))
    res["pACC_labeled"] = labeled["pACC"]
    res["mPrecision"] = 100 * float(np.nanmean(prec)) if np.isfinite(prec).any() else float("nan")
    res["mRecall"] = 100 * float(np.nanmean(rec)) if np.isfinite(rec).any() else float("nan")
    names = class_names or [str(i) for i in range(c)]
    for name, a, p, r in zip(names, iou, prec, rec):
        res[f"IoU-{name}"] = 100 * float(a)
        res[f"PREC-{name}"] = 100 * float(p)
        res[f"REC-{name}"] = 100 * float(r)
    return res


def _confusion_with_unsure(pred: np.ndarray, gt: np.ndarray, c: int, ignore: int) -> np.ndarray:
    pred = torch.as_tensor(np.asarray(pred)).reshape(-1).long()
    gt = torch.as_tensor(np.asarray(gt)).reshape(-1).long()
    valid = (gt >= 0) & (gt < c) & (gt != ignore)
    pred, gt = pred[valid], gt[valid]
    # ignore (255) or any id outside [0, C) -> the "unsure" column c
    pred = torch.where((pred >= 0) & (pred < c), pred, torch.full_like(pred, c))
    conf = torch.bincount(gt * (c + 1) + pred, minlength=c * (c + 1))
    return conf.reshape(c, c + 1).numpy().astype(np.int64)


@EVALUATOR_REGISTRY.register()
class PseudoLabelEvaluator(WSSSEvaluator):
    """mIoU / per-class IoU / precision / recall of pseudo labels vs GT, and the unsure fraction.

    ``process(inputs, outputs)``: the prediction is ``output["pseudo_seg"]`` ((H, W) label ids)
    when present, else the label file ``input["pseudo_seg_file_name"]`` (a round attached with
    :func:`wsss_d2.pseudo.attach_round`); the ground truth is ``input["sem_seg_file_name"]``.
    Returns ``{"pseudo_seg": {...}}`` from the main process (after a gather over ranks).
    """

    RESULT_KEYS = ("pseudo_seg",)

    @configurable
    def __init__(self, dataset_name: str, *, num_classes: int, **kwargs):
        """``kwargs``: ``ignore_label``, ``output_dir``, ``distributed`` (see
        :class:`WSSSEvaluator`); ``dataset_name`` may be "" (no class names)."""
        super().__init__(dataset_name, num_classes=num_classes, **kwargs)

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        return tag_evaluator_args(cfg, dataset_name, output_dir)

    def empty_state(self) -> dict:
        return {"conf": np.zeros((self.num_classes, self.num_classes + 1), np.int64), "count": 0}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if out is not None and "pseudo_seg" in out:
                pred = np.asarray(torch.as_tensor(out["pseudo_seg"]).cpu())
            elif inp.get("pseudo_seg_file_name"):
                hw = (inp["height"], inp["width"]) if "height" in inp else None
                pred = read_label_png(inp["pseudo_seg_file_name"], hw, inp.get("file_name"))
            else:
                continue
            gt = self.read_gt(inp, pred.shape)
            conf = _confusion_with_unsure(pred, gt, self.num_classes, self.ignore_label)
            self._state["conf"] += conf
            self._state["count"] += 1

    def summarize(self, state: dict) -> dict:
        conf, count = state["conf"], state["count"]
        if count == 0:
            logger.warning("PseudoLabelEvaluator: no pseudo labels were scored")
            return {}
        res = pseudo_label_metrics(conf, self.class_names)
        res["num_images"] = count
        self.write_json("pseudo_label_evaluation.json", res)
        self.write_confusion("pseudo_label", conf, extra_columns=("unsure",))
        logger.info(
            "%s pseudo labels: mIoU %.2f (labeled pixels %.2f, %.1f%% unsure)",
            self.dataset_name,
            res["mIoU"],
            res["mIoU_labeled"],
            100 * res["ignored_fraction"],
        )
        return OrderedDict(pseudo_seg=res)


def evaluate_round(
    dicts: Iterable[dict],
    folder: str,
    num_classes: int,
    dataset_name: str = "",
    output_dir: str | None = None,
) -> dict:
    """Score round ``folder`` on the dicts that have ground truth (sharded over ranks).

    Returns the metrics dict on the main process (``{}`` elsewhere, or when no image has GT).
    """

    dicts = [d for d in dicts if d.get("sem_seg_file_name")]
    if not dicts:
        return {}
    ev = PseudoLabelEvaluator(dataset_name, num_classes=num_classes, output_dir=output_dir)
    shard = attach_round(dicts[comm.get_rank() :: comm.get_world_size()], folder)
    for d in shard:
        ev.process([d], [None])
    return ev.evaluate().get("pseudo_seg", {})
