"""SAM-box labeling: boxes of tagged classes -> Segment Anything masks -> a semantic label map.

For each image, SAM's image encoder runs once (several images per call where memory allows);
then **all** the image's boxes go through the prompt encoder and mask decoder in one batch (in
chunks of ``boxes_per_batch``), the best of SAM's three masks is chosen by predicted IoU, and
only that mask is upsampled to the image size. Masks are pasted into a (H, W) label map:

- a pixel covered by several masks takes the class of the highest-scoring mask (score = SAM's
  predicted IoU, times the box score when ``score_by_box``), ties going to the smaller mask —
  not, as in the reference code, the class of whichever box came last;
- pixels no kept mask covers are background (0);
- masks whose predicted IoU is below ``mask_min_score`` are dropped; with ``ignore_low_score``
  the pixels only they covered become 255 (ignored by the segmentation loss) instead of 0.

Each image also yields a JSON-able record (boxes, classes, scores, kept flags, areas, overlap
counts, masks as COCO RLE) that :class:`wsss_d2.evaluation.SamBoxLabelingEvaluator` scores.
:func:`label_dataset` writes labels into a :class:`~wsss_d2.io.rounds.RoundWriter` round
(records under ``<round>/sam_boxes/``), skipping images an interrupted run already finished.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from ...io.files import atomic_write_bytes, read_image_checked, read_label_png
from ...io.rounds import RoundWriter, label_stem
from ...ops.progress import Progress
from .boxes import BoxSource, ImageBoxes, build_box_source
from .model import load_sam
from .paste import masks_to_rle, paste_masks
from .records import RECORDS_DIR, SamLabelResult, read_record

logger = logging.getLogger(__name__)

__all__ = ["SamBoxLabeler", "label_dataset"]


class SamBoxLabeler:
    """Label images with SAM prompted by boxes (see the module docstring).

    Example::

        labeler = SamBoxLabeler(cfg, class_names)      # or SamBoxLabeler(sam=..., box_source=...)
        results = labeler.label(dicts)                 # list[SamLabelResult]
    """

    @configurable
    def __init__(
        self,
        *,
        sam: Sam,
        box_source: BoxSource | Callable[[dict], ImageBoxes],
        num_classes: int,
        multimask: bool = False,
        mask_min_score: float = 0.0,
        ignore_low_score: bool = False,
        score_by_box: bool = True,
        boxes_per_batch: int = 64,
        images_per_batch: int = 1,
        save_masks: bool = True,
    ):
        """
        Args:
            sam: a SAM model (its device is where everything runs).
            box_source: ``d -> ImageBoxes``.
            num_classes: K + 1 (background included).
            multimask: ask for SAM's 3 masks per box and keep the best predicted IoU; else
                SAM's single-mask output (the default, as the study's code).
            mask_min_score, ignore_low_score, score_by_box: see the module docstring.
            boxes_per_batch: boxes per mask-decoder call; images_per_batch: images per
                image-encoder call (both bound memory, not results).
            save_masks: keep every mask as RLE in the records (needed for the evaluator's
                mask-vs-instance IoU).
        """
        self.sam = sam.eval()
        self.box_source = box_source
        self.num_classes = int(num_classes)
        self.multimask = multimask
        self.mask_min_score = float(mask_min_score)
        self.ignore_low_score = ignore_low_score
        self.score_by_box = score_by_box
        self.boxes_per_batch = max(int(boxes_per_batch), 1)
        self.images_per_batch = max(int(images_per_batch), 1)
        self.save_masks = save_masks
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    @classmethod
    def from_config(cls, cfg, class_names: Sequence[str], sam: Sam | None = None):
        s = cfg.WSSS.SAM
        if sam is None:
            sam = load_sam(s.MODEL_TYPE, s.CHECKPOINT, cfg.MODEL.DEVICE)
        return {
            "sam": sam,
            "box_source": build_box_source(cfg, class_names),
            "num_classes": len(class_names) + 1,
            "multimask": s.MULTIMASK,
            "mask_min_score": s.MASK_MIN_SCORE,
            "ignore_low_score": s.IGNORE_LOW_SCORE,
            "score_by_box": s.SCORE_BY_BOX,
            "boxes_per_batch": s.BOXES_PER_BATCH,
            "images_per_batch": s.IMAGES_PER_BATCH,
            "save_masks": s.SAVE_MASKS,
        }

    @property
    def device(self) -> torch.device:
        return self.sam.device

    # ------------------------------------------------------------------ model steps
    @torch.no_grad()
    def encode(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Image embeddings of RGB uint8 (H, W, 3) images in one encoder call.

        Returns:
            features: (B, C, h, w) on the model's device; input_sizes: each image's (H', W')
            after resizing its longest side to the encoder size (before padding).
        """
        batch, sizes = [], []
        for img in images:
            x = self.transform.apply_image(np.ascontiguousarray(img))
            t = torch.as_tensor(x, device=self.device).permute(2, 0, 1).contiguous()[None]
            sizes.append(tuple(t.shape[-2:]))
            batch.append(self.sam.preprocess(t.float()))
        return self.sam.image_encoder(torch.cat(batch)), sizes

    @torch.no_grad()
    def predict(
        self,
        features: torch.Tensor,
        boxes: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks of all boxes of one image, batched through SAM's prompt encoder and decoder.

        The same computation as ``SamPredictor.predict_torch(boxes=...)`` followed by picking the
        mask of highest predicted IoU, except that only the chosen mask is upsampled.

        Args:
            features: (1, C, h, w) embedding of the image.
            boxes: (N, 4) XYXY in original image pixels.
        Returns:
            masks: (N, H, W) bool; scores: (N,) predicted IoU of each chosen mask.
        """
        h, w = original_size
        boxes = self.transform.apply_boxes_torch(boxes.to(self.device, torch.float), (h, w))
        dense_pe = self.sam.prompt_encoder.get_dense_pe()
        masks, scores = [], []
        for i in range(0, len(boxes), self.boxes_per_batch):
            sparse, dense = self.sam.prompt_encoder(
                points=None, boxes=boxes[i : i + self.boxes_per_batch], masks=None
            )
            low_res, iou = self.sam.mask_decoder(
                image_embeddings=features,
                image_pe=dense_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=self.multimask,
            )
            best = iou.argmax(1)
            ar = torch.arange(len(best), device=best.device)
            chosen = low_res[ar, best][:, None]  # (n, 1, h4, w4)
            if chosen.device.type == "cpu":
                masks.append(torch.from_numpy(self._binarize_cpu(chosen, input_size, (h, w))))
            else:
                up = self.sam.postprocess_masks(chosen, input_size, original_size)
                masks.append(up[:, 0] > self.sam.mask_threshold)
            scores.append(iou[ar, best])
        if not masks:
            return (
                torch.zeros((0, h, w), dtype=torch.bool, device=self.device),
                torch.zeros(0, device=self.device),
            )
        return torch.cat(masks), torch.cat(scores)

    def _binarize_cpu(
        self, low_res: torch.Tensor, input_size: tuple[int, int], hw: tuple[int, int]
    ) -> np.ndarray:
        """``Sam.postprocess_masks`` + threshold on CPU with OpenCV: the same two bilinear
        resizes (half-pixel centres, edge clamping: low-res -> encoder size, crop to the resized
        image, -> original size), one mask at a time into a preallocated boolean array. Several
        times faster than torch's CPU upsampling; the logits differ from torch's by float
        rounding (< 1e-4), so only pixels that close to the threshold can differ.

        low_res: (n, 1, h4, w4) chosen mask logits. Returns (n, H, W) bool.
        """
        size = self.sam.image_encoder.img_size
        (ih, iw), (h, w) = input_size, hw
        logits = low_res[:, 0].float().numpy()
        out = np.empty((len(logits), h, w), bool)
        for m, o in zip(logits, out):
            big = cv2.resize(m, (size, size), interpolation=cv2.INTER_LINEAR)[:ih, :iw]
            full = cv2.resize(big, (w, h), interpolation=cv2.INTER_LINEAR)
            np.greater(full, self.sam.mask_threshold, out=o)
        return out

    def _predict_fitting(self, features, boxes: ImageBoxes, input_size, hw):
        """:meth:`predict`, halving ``boxes_per_batch`` on out-of-memory until it fits."""
        while True:
            try:
                return self.predict(features, torch.from_numpy(boxes.boxes), input_size, hw)
            except torch.OutOfMemoryError:
                if self.boxes_per_batch == 1:
                    raise
                self.boxes_per_batch = max(self.boxes_per_batch // 2, 1)
                logger.warning(
                    "out of memory in the mask decoder; boxes_per_batch -> %d", self.boxes_per_batch
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    # ------------------------------------------------------------------ whole images
    def assemble(
        self,
        boxes: ImageBoxes,
        masks: torch.Tensor | None,
        mask_scores: torch.Tensor,
        hw: tuple[int, int],
    ) -> SamLabelResult:
        """Paste one image's masks ((N, H, W) bool, None when N = 0) into its label map."""
        ms = mask_scores.float().cpu().numpy()
        keep = ms >= self.mask_min_score
        paste_scores = ms * boxes.scores if self.score_by_box else ms
        masks = np.zeros((0, *hw), bool) if masks is None else masks.cpu().numpy()
        label, info = paste_masks(
            masks, boxes.classes, paste_scores, keep, ignore_dropped=self.ignore_low_score
        )
        return SamLabelResult(
            label=label,
            boxes=boxes,
            mask_scores=ms,
            kept=keep,
            areas=info["areas"],
            won=info["won"],
            overlap_pixels=info["overlap_pixels"],
            conflict_pixels=info["conflict_pixels"],
            masks_rle=masks_to_rle(masks) if self.save_masks else None,
        )

    def read_image(self, d: dict) -> np.ndarray:
        img = read_image_checked(d["file_name"], "RGB")
        if (img.shape[0], img.shape[1]) != (int(d["height"]), int(d["width"])):
            raise ValueError(
                f"image {d['file_name']} is {img.shape[1]}x{img.shape[0]} but its dataset dict "
                f"says {d['width']}x{d['height']}"
            )
        return img

    def label(
        self, dicts: Sequence[dict], images: Sequence[np.ndarray] | None = None
    ) -> list[SamLabelResult]:
        """Label a batch of images (``images``: their RGB arrays, read from disk if None).

        Images without boxes are labelled all background (and logged) without running SAM;
        the others are encoded ``images_per_batch`` at a time.
        """
        results: list[SamLabelResult | None] = [None] * len(dicts)
        all_boxes, dropped = [], []
        for d in dicts:
            all_boxes.append(self.box_source(d))
            dropped.append(
                (
                    getattr(self.box_source, "last_untagged", 0),
                    getattr(self.box_source, "last_unmatched", 0),
                )
            )
        todo = []
        for i, (d, b) in enumerate(zip(dicts, all_boxes)):
            if len(b):
                todo.append(i)
                continue
            hw = (int(d["height"]), int(d["width"]))
            logger.warning(
                "no boxes for image %s (tags %s): labelled all background",
                d["file_name"],
                list(d.get("tags", ())),
            )
            results[i] = self.assemble(b, None, torch.zeros(0), hw)
        s = 0
        while s < len(todo):
            idx = todo[s : s + self.images_per_batch]
            imgs = [images[i] if images is not None else self.read_image(dicts[i]) for i in idx]
            try:
                feats, sizes = self.encode(imgs)
                for j, i in enumerate(idx):
                    hw = imgs[j].shape[:2]
                    b = all_boxes[i]
                    masks, scores = self._predict_fitting(feats[j : j + 1], b, sizes[j], hw)
                    results[i] = self.assemble(b, masks, scores, hw)
            except torch.OutOfMemoryError:
                if len(idx) == 1:
                    raise
                # keep the largest image batch that fits: halve it and retry
                self.images_per_batch = max(len(idx) // 2, 1)
                logger.warning(
                    "out of memory encoding %d images; images_per_batch -> %d",
                    len(idx),
                    self.images_per_batch,
                )
                feats = None
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            s += len(idx)
        for r, (untagged, unmatched) in zip(results, dropped):
            r.untagged_boxes, r.unmatched_labels = untagged, unmatched
        return results


def label_dataset(
    labeler: SamBoxLabeler,
    dicts: Iterable[dict],
    writer: RoundWriter,
    evaluator=None,
    progress: bool = True,
) -> int:
    """Label ``dicts`` into ``writer``'s round, resumably; feed each image to ``evaluator``.

    An image whose PNG already exists in the (partial) round is not labelled again; its record
    is read back so the evaluator still sees every image. The record is written before the PNG,
    so a finished PNG always has its record.

    Args:
        evaluator: optional ``DatasetEvaluator`` whose ``process([d], [output])`` receives
            ``{"sam_label": (H, W) uint8, "sam_record": dict}``.
    Returns:
        the number of images labelled in this call.
    """
    dicts = list(dicts)
    rec_dir = os.path.join(writer.partial_dir, RECORDS_DIR)
    os.makedirs(rec_dir, exist_ok=True)
    todo = []
    for d in dicts:
        if writer.is_done(d):
            if evaluator is not None:
                rec = read_record(os.path.join(rec_dir, label_stem(d) + ".json"))
                evaluator.process(
                    [d], [{"sam_label": read_label_png(writer.label_path(d)), "sam_record": rec}]
                )
        else:
            todo.append(d)
    if len(todo) < len(dicts):
        logger.info(
            "resuming: %d of %d images already labelled in %s",
            len(dicts) - len(todo),
            len(dicts),
            writer.partial_dir,
        )
    step = labeler.images_per_batch
    bar = Progress(len(todo), "SAM labels", enabled=progress)
    for s in range(0, len(todo), step):
        batch = todo[s : s + step]
        for d, r in zip(batch, labeler.label(batch)):
            rec = r.record(d)
            atomic_write_bytes(
                os.path.join(rec_dir, label_stem(d) + ".json"), json.dumps(rec).encode()
            )
            writer.write(d, r.label)
            if evaluator is not None:
                evaluator.process([d], [{"sam_label": r.label, "sam_record": rec}])
        bar.update(len(batch))
    bar.close()
    return len(todo)
