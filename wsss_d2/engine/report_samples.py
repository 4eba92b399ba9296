"""Sample panels of the reports: models run on a few images, every label round, ground truth,
and each image's own score (from the evaluation's ``sem_seg_per_image.json`` when it exists)."""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from detectron2.modeling import META_ARCH_REGISTRY, SemanticSegmentor, build_model

from ..evaluation.metrics import confusion_matrix
from ..evaluation.sem_seg import image_scores
from ..io.files import read_image_checked, read_json, read_label_png
from ..io.rounds import label_stem
from ..modeling.checkpoint import load_model_weights
from ..modeling.meta_arch.cam import CAMClassifier
from .report_html import cam_overlay, colorize_label

__all__ = [
    "is_cam_model",
    "is_seg_model",
    "load_model",
    "sample_panels",
    "read_per_image",
    "pick_samples",
]


def is_cam_model(cfg) -> bool:
    """Whether the config's meta-architecture is a CAM model (CAMClassifier or a subclass)."""
    return issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), CAMClassifier)


def is_seg_model(cfg) -> bool:
    """Whether the config's meta-architecture is a segmentor (``SemanticSegmentor`` or a subclass;
    an IRNet predicts boundaries, not classes, and has no samples of its own)."""
    return issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), SemanticSegmentor)


def load_model(cfg, weights: str | None = None):
    """The config's model with ``weights`` (default ``MODEL.WEIGHTS``) on ``MODEL.DEVICE``, in
    eval mode; the weights are loaded strictly and safely (they must fit the model)."""
    model = build_model(cfg)
    load_model_weights(model, weights or cfg.MODEL.WEIGHTS)
    return model.eval()


def read_per_image(path: str) -> dict[str, tuple[float, float]]:
    """``file_name -> (mIoU, pACC)`` of an evaluator's ``sem_seg_per_image.json`` ({} if none)."""
    return {r["file_name"]: (r["mIoU"], r["pACC"]) for r in read_json(path) or []}


def pick_samples(dicts: Sequence[dict], scores: dict, first: int, worst: int):
    """(the first ``first`` dicts, the ``worst`` lowest-mIoU others among those with a score)."""
    head = list(dicts[:first])
    shown = {d["file_name"] for d in head}
    scored = [
        d
        for d in dicts
        if d["file_name"] not in shown
        and not math.isnan(scores.get(d["file_name"], (math.nan,))[0])
    ]
    scored.sort(key=lambda d: scores[d["file_name"]][0])
    return head, scored[:worst]


@torch.no_grad()
def sample_panels(
    dicts: Sequence[dict],
    cam_model=None,
    seg_model=None,
    mapper=None,
    rounds: Sequence[tuple[str, str]] = (),
    num_classes: int | None = None,
    scores: dict | None = None,
) -> list[dict]:
    """One panel per dict: ``{"file_name", "tags", "columns": {title: RGB | None}, "note"}``.

    Columns: image, CAM (``cam_model``), one per label round (``rounds``: (title, folder)),
    prediction (``seg_model``, else the CAM model's thresholded CAMs), ground truth. ``note``:
    the image's mIoU / pixel accuracy from ``scores`` (the evaluation's own numbers), else
    computed here from the shown prediction when the image has ground truth and
    ``num_classes`` (K + 1) is given.
    """
    out = []
    for d in dicts:
        rgb = read_image_checked(d["file_name"], "RGB")
        hw = rgb.shape[:2]
        cols: OrderedDict = OrderedDict(image=rgb)
        inp = mapper(d) if mapper is not None and (cam_model or seg_model) else None
        pred = None
        if cam_model is not None:
            res = cam_model([inp])[0]
            cam = res["cam"].float().cpu().numpy()
            cols["CAM"] = cam_overlay(rgb, cam.max(0) if len(cam) else np.zeros(hw))
            pred = res["sem_seg"].argmax(0).cpu().numpy()
        for title, folder in rounds:
            p = os.path.join(folder, label_stem(d) + ".png")
            ok = os.path.isfile(p)
            cols[title] = colorize_label(read_label_png(p, hw, d["file_name"])) if ok else None
        if seg_model is not None:
            pred = seg_model([inp])[0]["sem_seg"].argmax(0).cpu().numpy()
        cols["prediction"] = colorize_label(pred) if pred is not None else None
        gt = (
            read_label_png(d["sem_seg_file_name"], hw, d["file_name"])
            if d.get("sem_seg_file_name")
            else None
        )
        cols["ground truth"] = colorize_label(gt) if gt is not None else None
        score = (scores or {}).get(d["file_name"])
        if score is None and gt is not None and pred is not None and num_classes:
            score = image_scores(confusion_matrix(pred, gt, num_classes))
        note = ""
        if score is not None and not math.isnan(score[0]):
            note = f"image mIoU {score[0]:.1f} %, pixel accuracy {score[1]:.1f} %"
        out.append({"file_name": d["file_name"], "tags": d.get("tags", []), "columns": cols,
                    "note": note})  # fmt: skip
    return out
