"""Confusion-matrix metrics shared by every wsss_d2 evaluator."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

__all__ = ["confusion_matrix", "metrics_from_confusion"]


def confusion_matrix(pred, gt, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """Confusion matrix ``conf[gt, pred]`` (num_classes, num_classes) int64.

    Args:
        pred, gt: (H, W) integer label maps (numpy or torch, same shape). Pixels whose ``gt`` is
            ``ignore_label`` (or outside [0, num_classes)) are skipped; a ``pred`` outside the
            range counts as a wrong prediction of no class.
    """
    pred = torch.as_tensor(pred).reshape(-1).long()
    gt = torch.as_tensor(gt).reshape(-1).long()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction has {pred.numel()} pixels but ground truth has {gt.numel()}")
    valid = (gt >= 0) & (gt < num_classes) & (gt != ignore_label)
    pred, gt = pred[valid], gt[valid]
    # predictions outside [0, K) land in an extra column that is dropped: a miss for their gt
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, torch.full_like(pred, num_classes))
    idx = gt * (num_classes + 1) + pred
    conf = torch.bincount(idx, minlength=num_classes * (num_classes + 1))
    return conf.reshape(num_classes, num_classes + 1)[:, :num_classes].numpy().astype(np.int64)


def metrics_from_confusion(conf: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """mIoU, fwIoU, mACC, pACC and per-class IoU (percent) from ``conf[gt, pred]``.

    Classes absent from both ground truth and prediction are left out of the means (NaN IoU),
    as Detectron2's SemSegEvaluator does.
    """
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_count = conf.sum(1)
    pred_count = conf.sum(0)
    union = gt_count + pred_count - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt_count > 0, tp / gt_count, np.nan)
        prec = np.where(pred_count > 0, tp / pred_count, np.nan)
    total = gt_count.sum()
    present = gt_count > 0
    res = {
        "mIoU": 100 * float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "fwIoU": 100 * float(np.nansum(iou[present] * gt_count[present]) / max(total, 1)),
        "mACC": 100 * float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan"),
        "pACC": 100 * float(tp.sum() / max(total, 1)),
    }
    names = class_names or [str(i) for i in range(len(tp))]
    for name, v in zip(names, iou):
        res[f"IoU-{name}"] = 100 * float(v)
    for name, v in zip(names, acc):
        res[f"ACC-{name}"] = 100 * float(v)
    for name, v in zip(names, prec):
        res[f"PREC-{name}"] = 100 * float(v)
    return res
