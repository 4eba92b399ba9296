"""``SamBoxLabelingEvaluator``: score SAM-box pseudo labels and the boxes that made them.

Per image it needs the label map and the labeler's record (see
:meth:`wsss_d2.pseudo.sam.records.SamLabelResult.record`): either in the model/labeler output
(``{"sam_label": (H, W) uint8, "sam_record": dict}``, as :func:`~wsss_d2.pseudo.label_dataset`
passes them), or read back from the round folder (``<round>/<stem>.png`` and
``<round>/sam_boxes/<stem>.json``) when the output lacks them — so the evaluator also scores an
existing round, whatever produced the outputs.

Reports (percent where a rate):

- ``sem_seg``: mIoU, fwIoU, mACC, pACC and per-class IoU of the labels against
  ``sem_seg_file_name``. Pixels labelled 255 (ignored) count as background here: the
  segmentation model gets no supervision there, so they are not credited as correct;
  ``sam_boxes/ignored_pixel_fraction`` says how many there were.
- ``sam_boxes``: boxes per image, masks kept / dropped for a low predicted IoU, images without
  boxes, pixels covered by several masks (``overlap_pixels``) and by masks of different classes
  (``conflict_pixels``, where the score resolution decided the class), tags with no box
  (``missed_tags``, and ``missed-<class>`` per class), boxes dropped for an untagged class or an
  unknown text label, and ``mask_instance_mIoU``: the mean IoU of each mask with its ground-truth
  instance (the box's own annotation for ground-truth boxes; otherwise the same-class instance
  whose box overlaps the prompt box most, if its box IoU >= ``match_iou``).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util

from ..data.datasets.coco_sem_seg import segmentation_to_mask
from ..io.files import read_label_png
from ..io.rounds import label_stem
from ..io.rounds import round_dir as round_folder
from ..pseudo.sam.records import RECORDS_DIR, read_record
from .base import WSSSEvaluator, tag_evaluator_args
from .metrics import confusion_matrix, metrics_from_confusion
from .registry import EVALUATOR_REGISTRY

logger = logging.getLogger(__name__)

__all__ = ["SamBoxLabelingEvaluator", "sam_round_root"]

_COUNTERS = (
    "images", "boxes", "masks_kept", "masks_dropped_low_score", "images_without_boxes",
    "pixels", "ignored_pixels", "overlap_pixels", "conflict_pixels", "tags", "missed_tags",
    "untagged_boxes_dropped", "unmatched_labels", "instance_matched_masks",
)  # fmt: skip


def sam_round_root(cfg) -> str:
    """Folder holding the SAM label rounds: ``WSSS.SAM.OUTPUT_ROOT`` or OUTPUT_DIR/pseudo_labels."""
    return cfg.WSSS.SAM.OUTPUT_ROOT or os.path.join(cfg.OUTPUT_DIR, "pseudo_labels")


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of XYXY boxes a (N, 4) and b (M, 4) -> (N, M)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _decode_rle(rle: dict) -> np.ndarray:
    return mask_util.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}) > 0


@EVALUATOR_REGISTRY.register()
class SamBoxLabelingEvaluator(WSSSEvaluator):
    """Per-class IoU of SAM-box labels + box / mask statistics (see the module docstring)."""

    RESULT_KEYS = ("sem_seg", "sam_boxes")

    @configurable
    def __init__(
        self,
        dataset_name: str,
        *,
        round_dir: str | None = None,
        match_iou: float = 0.5,
        **kwargs,
    ):
        """
        Args:
            dataset_name: used for the class names (``stuff_classes`` metadata) and logs.
            round_dir: round folder to read labels from when outputs do not carry them
                (a complete round, or its ``.partial`` folder while it is being written).
            match_iou: box IoU needed to match a non-GT box with a GT instance.
            kwargs: ``num_classes``, ``class_names``, ``ignore_label``, ``output_dir``,
                ``distributed`` (see :class:`WSSSEvaluator`).
        """
        self.round_dir = round_dir
        self.match_iou = match_iou
        super().__init__(dataset_name, **kwargs)
        if self.class_names is None:
            self.class_names = [str(i) for i in range(self.num_classes)]

    @classmethod
    def from_config(cls, cfg, dataset_name, output_dir=None):
        return {
            **tag_evaluator_args(cfg, dataset_name, output_dir),
            "round_dir": round_folder(sam_round_root(cfg), cfg.WSSS.SAM.ROUND),
        }

    def empty_state(self) -> dict:
        return {
            "conf": np.zeros((self.num_classes, self.num_classes), np.int64),
            "count": {k: 0 for k in _COUNTERS},
            "missed": np.zeros(self.num_classes, np.int64),
            "score_sum": 0.0,
            "inst_iou_sum": 0.0,
        }

    # ------------------------------------------------------------------ reading a round
    def _load(self, inp: dict) -> tuple[np.ndarray, dict]:
        if not self.round_dir:
            raise KeyError(
                f"output for {inp['file_name']} has no 'sam_label' and the evaluator "
                "has no round_dir to read it from"
            )
        folder = self.round_dir
        if not os.path.isdir(folder) and os.path.isdir(folder + ".partial"):
            folder += ".partial"
        stem = label_stem(inp)
        png = os.path.join(folder, stem + ".png")
        rec = os.path.join(folder, RECORDS_DIR, stem + ".json")
        if not os.path.isfile(png) or not os.path.isfile(rec):
            raise FileNotFoundError(
                f"SAM label round {folder} has no label/record for image {inp['file_name']} "
                f"(expected {png} and {rec}); run tools/make_sam_labels.py first"
            )
        return read_label_png(png), read_record(rec)

    # ------------------------------------------------------------------ accumulation
    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            if "sam_label" in out and "sam_record" in out:
                label, rec = np.asarray(out["sam_label"]), out["sam_record"]
            else:
                label, rec = self._load(inp)
            self._process_one(inp, label, rec)

    def _process_one(self, inp: dict, label: np.ndarray, rec: dict) -> None:
        st = self._state
        c = st["count"]
        h, w = label.shape
        c["images"] += 1
        c["pixels"] += h * w
        ignored = label == self.ignore_label
        c["ignored_pixels"] += int(ignored.sum())
        if "sem_seg_file_name" in inp:
            gt = self.read_gt(inp, (h, w))
            pred = np.where(ignored, 0, label)  # see the module docstring
            st["conf"] += confusion_matrix(
                torch.from_numpy(pred), torch.from_numpy(gt), self.num_classes, self.ignore_label
            )
        classes = np.asarray(rec["classes"], np.int64)
        kept = np.asarray(rec["kept"], bool)
        n = len(classes)
        c["boxes"] += n
        c["masks_kept"] += int(kept.sum())
        c["masks_dropped_low_score"] += int(n - kept.sum())
        c["images_without_boxes"] += int(n == 0)
        c["overlap_pixels"] += int(rec.get("overlap_pixels", 0))
        c["conflict_pixels"] += int(rec.get("conflict_pixels", 0))
        c["untagged_boxes_dropped"] += int(rec.get("untagged_boxes", 0))
        c["unmatched_labels"] += int(rec.get("unmatched_labels", 0))
        st["score_sum"] += float(np.sum(rec.get("mask_scores", [])))
        tags = [int(t) for t in inp.get("tags", rec.get("tags", ()))]
        c["tags"] += len(tags)
        for t in tags:
            if t not in set(classes.tolist()):
                c["missed_tags"] += 1
                if 0 < t < self.num_classes:
                    st["missed"][t] += 1
        if "annotations" in inp and rec.get("masks_rle") and n:
            self._instance_ious(inp, rec, classes, h, w)

    def _instance_ious(self, inp: dict, rec: dict, classes: np.ndarray, h: int, w: int) -> None:
        annos = inp["annotations"]
        inst = np.asarray(rec.get("instance_ids", [-1] * len(classes)), np.int64)
        boxes = np.asarray(rec["boxes"], np.float64).reshape(-1, 4)
        if (inst < 0).any() and annos:
            gt_boxes = np.asarray(
                [
                    BoxMode.convert(
                        list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYXY_ABS
                    )
                    for a in annos
                ]
            )
            gt_cls = np.asarray([a["category_id"] for a in annos])
            crowd = np.asarray([a.get("iscrowd", 0) for a in annos], bool)
            ious = _box_iou(boxes, gt_boxes)
            ious[(classes[:, None] != gt_cls[None]) | crowd[None]] = 0
            best = ious.argmax(1)
            ok = (inst < 0) & (ious[np.arange(len(boxes)), best] >= self.match_iou)
            inst = np.where(ok, best, inst)
        for i in np.flatnonzero((inst >= 0) & (inst < len(annos))):
            a = annos[inst[i]]
            if "segmentation" not in a:
                continue
            gt = segmentation_to_mask(a["segmentation"], h, w, inp["file_name"])
            pred = _decode_rle(rec["masks_rle"][i])
            union = np.logical_or(gt, pred).sum()
            iou = float(np.logical_and(gt, pred).sum() / union) if union else 0.0
            self._state["inst_iou_sum"] += iou
            self._state["count"]["instance_matched_masks"] += 1

    # ------------------------------------------------------------------ results
    def summarize(self, state: dict) -> OrderedDict:
        """Turn gathered counts into the reported numbers (also written as JSON)."""
        c = state["count"]
        div = lambda a, b: float(a) / b if b else float("nan")  # noqa: E731
        box = OrderedDict(
            images=c["images"],
            boxes=c["boxes"],
            boxes_per_image=div(c["boxes"], c["images"]),
            masks_kept=c["masks_kept"],
            masks_dropped_low_score=c["masks_dropped_low_score"],
            images_without_boxes=c["images_without_boxes"],
            mean_mask_score=div(state["score_sum"], c["boxes"]),
            overlap_pixels=c["overlap_pixels"],
            conflict_pixels=c["conflict_pixels"],
            overlap_pixel_fraction=100 * div(c["overlap_pixels"], c["pixels"]),
            ignored_pixel_fraction=100 * div(c["ignored_pixels"], c["pixels"]),
            tags=c["tags"],
            missed_tags=c["missed_tags"],
            missed_tag_rate=100 * div(c["missed_tags"], c["tags"]),
            untagged_boxes_dropped=c["untagged_boxes_dropped"],
            unmatched_labels=c["unmatched_labels"],
            instance_matched_masks=c["instance_matched_masks"],
            mask_instance_mIoU=100 * div(state["inst_iou_sum"], c["instance_matched_masks"]),
        )
        for k in np.flatnonzero(state["missed"]):
            box[f"missed-{self.class_names[k]}"] = int(state["missed"][k])
        res = OrderedDict()
        if state["conf"].sum() > 0:
            res["sem_seg"] = metrics_from_confusion(state["conf"], self.class_names)
        else:
            logger.warning(
                "%s: no ground truth (sem_seg_file_name) seen; only box statistics",
                self.dataset_name,
            )
        res["sam_boxes"] = box
        self.write_json("sam_box_labeling.json", res)
        logger.info(
            "%s: SAM-box labels mIoU %s | %d images, %.2f boxes/image, %d masks kept, %d dropped "
            "(low score), %d/%d tags without a box, mask-vs-instance mIoU %.2f over %d masks",
            self.dataset_name,
            f"{res['sem_seg']['mIoU']:.2f}" if "sem_seg" in res else "n/a",
            box["images"],
            box["boxes_per_image"],
            box["masks_kept"],
            box["masks_dropped_low_score"],
            box["missed_tags"],
            box["tags"],
            box["mask_instance_mIoU"],
            box["instance_matched_masks"],
        )
        return res
