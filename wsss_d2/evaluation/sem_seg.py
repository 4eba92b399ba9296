"""Semantic-segmentation and CAM evaluators (mIoU, fwIoU, pixel accuracy, per-class IoU).

Ground truth is read from each input's ``sem_seg_file_name`` (ids 0 background, 1..K, 255
ignore) — the only place in the package where ground-truth masks are read.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..io.files import IGNORE_LABEL, atomic_write_bytes, read_label_png
from .metrics import confusion_matrix, metrics_from_confusion
from .registry import EVALUATOR_REGISTRY

logger = logging.getLogger(__name__)

__all__ = ["WSSSSemSegEvaluator", "CAMEvaluator", "sweep_thresholds", "tag_evaluator_args"]


def sweep_thresholds(spec: Sequence[float]) -> np.ndarray:
    """``(start, stop, step)`` -> the thresholds start, start+step, ... <= stop."""
    start, stop, step = spec
    n = int(np.floor((stop - start) / step + 1e-6)) + 1
    return np.round(start + step * np.arange(n), 6)


def tag_evaluator_args(cfg, dataset_name: str, output_dir: str | None = None) -> dict:
    """The constructor arguments every wsss_d2 evaluator reads from a config."""
    return {
        "dataset_name": dataset_name,
        "num_classes": cfg.INPUT.TAGS.NUM_CLASSES + 1,  # background included
        "ignore_label": cfg.MODEL.IGNORE_VALUE,
        "output_dir": output_dir,
    }


def _read_gt(inp: dict, pred_hw) -> np.ndarray:
    if "sem_seg_file_name" not in inp:
        raise KeyError(
            f"input {inp.get('file_name', '?')} has no 'sem_seg_file_name': this dataset has no "
            "ground truth to evaluate against"
        )
    return read_label_png(inp["sem_seg_file_name"], tuple(pred_hw), inp.get("file_name"))


@EVALUATOR_REGISTRY.register()
class WSSSSemSegEvaluator(DatasetEvaluator):
    """Scores ``output["sem_seg"]`` (K+1, H, W) against the ground truth.

    Returns ``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "IoU-<class>", ...}}`` in percent
    from the main process (others return ``{}``), like Detectron2's ``SemSegEvaluator`` (same
    numbers; tested side by side), but with the confusion matrix counted by ``torch.bincount``
    and without re-reading files through extra copies.
    """

    @configurable
    def __init__(
        self,
        dataset_name: str,
        *,
        num_classes: int | None = None,
        ignore_label: int = IGNORE_LABEL,
        output_dir: str | None = None,
        distributed: bool = True,
    ):
        self.dataset_name = dataset_name
        meta = MetadataCatalog.get(dataset_name)
        self.class_names = list(meta.stuff_classes) if hasattr(meta, "stuff_classes") else None
        if num_classes is None:
            if self.class_names is None:
                raise KeyError(
                    f"dataset {dataset_name} has no stuff_classes metadata; " "pass num_classes"
                )
            num_classes = len(self.class_names)
        self.num_classes = num_classes  # background included
        self.ignore_label = getattr(meta, "ignore_label", ignore_label)
        self.output_dir = output_dir
        self.distributed = distributed
        self.reset()

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        return tag_evaluator_args(cfg, dataset_name, output_dir)

    def reset(self):
        self._conf = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "sem_seg" not in out:
                continue
            pred = out["sem_seg"].argmax(dim=0).cpu()
            gt = _read_gt(inp, pred.shape)
            self._conf += confusion_matrix(
                pred, torch.from_numpy(gt), self.num_classes, self.ignore_label
            )

    def _gather_sum(self, arr: np.ndarray) -> np.ndarray | None:
        if not self.distributed or comm.get_world_size() == 1:
            return arr
        parts = comm.gather(arr, dst=0)
        return sum(parts) if comm.is_main_process() else None

    def _write_json(self, name: str, res: dict) -> None:
        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            atomic_write_bytes(
                os.path.join(self.output_dir, name), json.dumps(res, indent=2).encode()
            )

    def evaluate(self):
        conf = self._gather_sum(self._conf)
        if conf is None:
            return {}
        res = metrics_from_confusion(conf, self.class_names)
        self._write_json("sem_seg_evaluation.json", res)
        logger.info("%s: mIoU %.2f over %d pixels", self.dataset_name, res["mIoU"], int(conf.sum()))
        return OrderedDict(sem_seg=res)


@EVALUATOR_REGISTRY.register()
class CAMEvaluator(WSSSSemSegEvaluator):
    """Scores ``output["cam"]`` (K, H, W, in [0, 1]) by sweeping the background threshold.

    The WSSS protocol: a pixel is background when every CAM is <= t, else the arg-max class; the
    report gives mIoU at every t of ``WSSS.CAM_SWEEP`` and the best one. One ``bincount`` per
    image covers all thresholds: pixels are binned by how many thresholds their peak CAM exceeds.

    Returns ``{"cam": {"mIoU" (best), "best_threshold", "mIoU@t"..., "IoU-<class>" at best}}``.
    """

    @configurable
    def __init__(self, dataset_name: str, *, thresholds: Sequence[float], **kwargs):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        super().__init__(dataset_name, **kwargs)

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        ret = super().from_config(cfg, dataset_name, output_dir)
        ret["thresholds"] = sweep_thresholds(cfg.WSSS.CAM_SWEEP)
        return ret

    def reset(self):
        t, c = len(self.thresholds), self.num_classes
        # _hist[b, gt, fg_class]: pixels whose peak CAM exceeds exactly b thresholds
        self._hist = np.zeros((t + 1, c, c), dtype=np.int64)

    def process(self, inputs, outputs):
        thr = torch.as_tensor(self.thresholds, dtype=torch.float32)
        c, nb = self.num_classes, len(self.thresholds) + 1
        for inp, out in zip(inputs, outputs):
            if "cam" not in out:
                continue
            cam = out["cam"].float().cpu()
            peak, arg = cam.max(dim=0)
            fg = arg + 1
            gt = torch.from_numpy(_read_gt(inp, peak.shape).astype(np.int64))
            bins = torch.bucketize(peak, thr, right=False)  # thresholds strictly below peak
            valid = (gt != self.ignore_label) & (gt < c)
            idx = (bins[valid] * c + gt[valid]) * c + fg[valid]
            self._hist += torch.bincount(idx, minlength=nb * c * c).reshape(nb, c, c).numpy()

    def confusions(self, hist: np.ndarray) -> np.ndarray:
        """(T, C, C) confusion at each threshold from the binned histogram."""
        c = self.num_classes
        # pixels with bin b > i are foreground at threshold i; the rest are background
        above = np.cumsum(hist[::-1], axis=0)[::-1]  # above[b] = sum_{b' >= b}
        confs = []
        for i in range(len(self.thresholds)):
            fg = above[i + 1]
            bg = hist[: i + 1].sum(0)
            conf = fg.copy()
            conf[:, 0] += bg.sum(1)
            confs.append(conf[:c, :c])
        return np.stack(confs)

    def evaluate(self):
        hist = self._gather_sum(self._hist)
        if hist is None:
            return {}
        confs = self.confusions(hist)
        per_t = [metrics_from_confusion(cf, self.class_names) for cf in confs]
        best = int(np.nanargmax([r["mIoU"] for r in per_t]))
        res = OrderedDict()
        res["mIoU"] = per_t[best]["mIoU"]
        res["best_threshold"] = float(self.thresholds[best])
        for t, r in zip(self.thresholds, per_t):
            res[f"mIoU@{t:.2f}"] = r["mIoU"]
        for k, v in per_t[best].items():
            if k != "mIoU":
                res[k] = v
        self._write_json("cam_evaluation.json", res)
        logger.info(
            "%s: CAM mIoU %.2f at background threshold %.2f",
            self.dataset_name,
            res["mIoU"],
            res["best_threshold"],
        )
        return OrderedDict(cam=res)
