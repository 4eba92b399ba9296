"""Semantic-segmentation and CAM evaluators (mIoU, fwIoU, pixel accuracy, per-class IoU)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from detectron2.config import configurable

from .base import WSSSEvaluator, tag_evaluator_args
from .metrics import confusion_matrix, metrics_from_confusion
from .registry import EVALUATOR_REGISTRY

logger = logging.getLogger(__name__)

__all__ = ["WSSSSemSegEvaluator", "CAMEvaluator", "sweep_thresholds", "image_scores"]


def sweep_thresholds(spec: Sequence[float]) -> np.ndarray:
    """``(start, stop, step)`` -> the thresholds start, start+step, ... <= stop."""
    start, stop, step = spec
    n = int(np.floor((stop - start) / step + 1e-6)) + 1
    return np.round(start + step * np.arange(n), 6)


def image_scores(conf: np.ndarray) -> tuple[float, float]:
    """One image's (mIoU over the classes in its ground truth or prediction, pixel accuracy), in
    percent; NaN when it has no valid pixel."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    total = conf.sum()
    if not present.any() or total == 0:
        return float("nan"), float("nan")
    return 100 * float((tp[present] / union[present]).mean()), 100 * float(tp.sum() / total)


@EVALUATOR_REGISTRY.register()
class WSSSSemSegEvaluator(WSSSEvaluator):
    """Scores ``output["sem_seg"]`` (K+1, H, W) against the ground truth.

    Returns ``{"sem_seg": {"mIoU", "fwIoU", "mACC", "pACC", "IoU-<class>", ...}}`` in percent
    from the main process (others return ``{}``), like Detectron2's ``SemSegEvaluator`` (same
    numbers; tested side by side), but with the confusion matrix counted by ``torch.bincount``
    and without re-reading files through extra copies.
    """

    RESULT_KEYS = ("sem_seg",)

    @configurable
    def __init__(self, dataset_name: str, **kwargs):
        """``kwargs``: ``num_classes``, ``ignore_label``, ``output_dir``, ``distributed`` (see
        :class:`WSSSEvaluator`)."""
        super().__init__(dataset_name, **kwargs)

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        return tag_evaluator_args(cfg, dataset_name, output_dir)

    def empty_state(self) -> dict:
        # images: [file_name, mIoU, pixel accuracy] per image, for the report's worst images
        return {
            "conf": np.zeros((self.num_classes, self.num_classes), dtype=np.int64),
            "images": [],
        }

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "sem_seg" in out:
                self.add_prediction(inp, out["sem_seg"].argmax(dim=0).cpu())

    def add_prediction(self, inp: dict, pred: torch.Tensor) -> None:
        """Count one (H, W) label map against the input's ground truth."""
        gt = self.read_gt(inp, pred.shape)
        conf = confusion_matrix(pred, torch.from_numpy(gt), self.num_classes, self.ignore_label)
        self._state["conf"] += conf
        self._state["images"].append([inp.get("file_name", ""), *image_scores(conf)])

    def summarize(self, state: dict) -> dict:
        conf = state["conf"]
        res = metrics_from_confusion(conf, self.class_names)
        self.write_json("sem_seg_evaluation.json", res)
        self.write_confusion("sem_seg", conf)
        self.write_json(
            "sem_seg_per_image.json",
            [{"file_name": f, "mIoU": m, "pACC": a} for f, m, a in state["images"]],
        )
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

    RESULT_KEYS = ("cam",)

    @configurable
    def __init__(self, dataset_name: str, *, thresholds: Sequence[float], **kwargs):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        super().__init__(dataset_name, **kwargs)

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        ret = super().from_config(cfg, dataset_name, output_dir)
        ret["thresholds"] = sweep_thresholds(cfg.WSSS.CAM_SWEEP)
        return ret

    def empty_state(self) -> dict:
        t, c = len(self.thresholds), self.num_classes
        # hist[b, gt, fg_class]: pixels whose peak CAM exceeds exactly b thresholds
        return {"hist": np.zeros((t + 1, c, c), dtype=np.int64)}

    def process(self, inputs, outputs):
        thr = torch.as_tensor(self.thresholds, dtype=torch.float32)
        c, nb = self.num_classes, len(self.thresholds) + 1
        for inp, out in zip(inputs, outputs):
            if "cam" not in out:
                continue
            cam = out["cam"].float().cpu()
            peak, arg = cam.max(dim=0)
            fg = arg + 1
            gt = torch.from_numpy(self.read_gt(inp, peak.shape).astype(np.int64))
            bins = torch.bucketize(peak, thr, right=False)  # thresholds strictly below peak
            valid = (gt != self.ignore_label) & (gt < c)
            idx = (bins[valid] * c + gt[valid]) * c + fg[valid]
            hist = torch.bincount(idx, minlength=nb * c * c).reshape(nb, c, c).numpy()
            self._state["hist"] += hist

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

    def summarize(self, state: dict) -> dict:
        confs = self.confusions(state["hist"])
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
        self.write_json("cam_evaluation.json", res)
        self.write_confusion("cam", confs[best])
        logger.info(
            "%s: CAM mIoU %.2f at background threshold %.2f",
            self.dataset_name,
            res["mIoU"],
            res["best_threshold"],
        )
        return OrderedDict(cam=res)
