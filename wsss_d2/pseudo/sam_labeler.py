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
:func:`label_dataset` writes labels into a :class:`~wsss_d2.pseudo.rounds.RoundWriter` round
(records under ``<round>/sam_boxes/``), skipping images an interrupted run already finished.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.utils.file_io import PathManager
from segment_anything import sam_model_registry
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from segment_anything.utils.transforms import ResizeLongestSide
from tqdm import tqdm

from ..io.files import IGNORE_LABEL, atomic_write_bytes, read_label_png
from ..io.rounds import RoundWriter, label_stem
from .box_sources import BoxSource, ImageBoxes, build_box_source

logger = logging.getLogger(__name__)

__all__ = [
    "SAM_BUILDERS",
    "build_sam_tiny",
    "load_sam",
    "paste_masks",
    "SamLabelResult",
    "SamBoxLabeler",
    "label_dataset",
    "RECORDS_DIR",
    "read_record",
]

RECORDS_DIR = "sam_boxes"  # per-image JSON records inside a round folder


def build_sam_tiny(
    checkpoint: str | None = None,
    img_size: int = 256,
    embed_dim: int = 32,
    depth: int = 2,
    prompt_dim: int = 32,
) -> Sam:
    """A tiny randomly initialised SAM for tests and benchmarks (its masks mean nothing).

    Same architecture as SAM (ViT image encoder with windowed + global attention and relative
    positions, prompt encoder, two-way-transformer mask decoder with 3 multimask outputs), only
    narrower, shallower and at ``img_size`` input (embedding ``img_size/16`` squared). Weights
    are seeded, so every process builds the same model. ``checkpoint`` is ignored here
    (:func:`load_sam` loads it).
    """
    grid = img_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size,
                patch_size=16,
                in_chans=3,
                embed_dim=embed_dim,
                depth=depth,
                num_heads=2,
                mlp_ratio=2.0,
                out_chans=prompt_dim,
                qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                use_rel_pos=True,
                window_size=max(grid // 4, 1),
                global_attn_indexes=(depth - 1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim,
                image_embedding_size=(grid, grid),
                input_image_size=(img_size, img_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=2, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim, num_heads=2
                ),
                transformer_dim=prompt_dim,
                iou_head_depth=2,
                iou_head_hidden_dim=prompt_dim,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    return sam.eval()


# every builder takes checkpoint=None and returns an un-loaded model; load_sam loads weights
SAM_BUILDERS: dict[str, Callable[..., Sam]] = {
    "vit_h": sam_model_registry["vit_h"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_b": sam_model_registry["vit_b"],
    "tiny": build_sam_tiny,
}
_KNOWN_ENCODERS = {(1280, 32): "vit_h", (1024, 24): "vit_l", (768, 12): "vit_b", (32, 2): "tiny"}


def _guess_model_type(sd: dict) -> str:
    w = sd.get("image_encoder.patch_embed.proj.weight")
    if w is None:
        return "not a SAM checkpoint (no image_encoder.patch_embed.proj.weight)"
    depth = len({k.split(".")[2] for k in sd if k.startswith("image_encoder.blocks.")})
    name = _KNOWN_ENCODERS.get((int(w.shape[0]), depth))
    return f"{name or 'unknown'} (encoder width {int(w.shape[0])}, depth {depth})"


def load_sam(model_type: str, checkpoint: str, device: str | torch.device = "cpu") -> Sam:
    """Build a SAM of ``model_type`` and load ``checkpoint`` onto ``device``.

    ``model_type`` is one of ``vit_h``, ``vit_l``, ``vit_b`` (the official models, built through
    ``segment_anything.sam_model_registry``) or ``tiny`` (random test model, for which an empty
    checkpoint means the seeded random weights). Raises ``FileNotFoundError`` for a missing
    checkpoint and ``ValueError`` naming the path, the expected type and what the file looks
    like when its weights do not fit.
    """
    if model_type not in SAM_BUILDERS:
        raise ValueError(
            f"WSSS.SAM.MODEL_TYPE '{model_type}' is unknown; expected one of {sorted(SAM_BUILDERS)}"
        )
    if not checkpoint:
        if model_type != "tiny":
            raise FileNotFoundError(
                f"WSSS.SAM.CHECKPOINT is empty; SAM model type '{model_type}' needs its official "
                "weights (e.g. sam_vit_h_4b8939.pth from the segment-anything release)"
            )
        logger.warning("SAM 'tiny' with random weights: a test/benchmark model, masks are noise")
        return build_sam_tiny().to(device).eval()
    local = PathManager.get_local_path(checkpoint)
    if not os.path.isfile(local):
        raise FileNotFoundError(
            f"SAM checkpoint not found: {checkpoint} (WSSS.SAM.CHECKPOINT, expected model type "
            f"'{model_type}')"
        )
    try:
        sd = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, a pickle of something else
        raise ValueError(f"cannot read SAM checkpoint {checkpoint}: {e}") from e
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):  # Detectron2 Checkpointer
        sd = sd["model"]
    if not isinstance(sd, dict):
        raise ValueError(f"SAM checkpoint {checkpoint} holds a {type(sd).__name__}, not weights")
    guess = _guess_model_type(sd)
    if guess.split(" ")[0] in SAM_BUILDERS and not guess.startswith(model_type + " "):
        # a known other type: say so before building a model of the wrong size
        raise ValueError(
            f"SAM checkpoint {checkpoint} does not match WSSS.SAM.MODEL_TYPE '{model_type}': it "
            f"looks like {guess}"
        )
    model = SAM_BUILDERS[model_type](checkpoint=None)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ValueError(
            f"SAM checkpoint {checkpoint} does not match WSSS.SAM.MODEL_TYPE '{model_type}': it "
            f"looks like {_guess_model_type(sd)}. First problem: {first[:300]}"
        ) from None
    return model.to(device).eval()


def _count_into(counter: np.ndarray, mask: np.ndarray, saturate: bool) -> None:
    """``counter += mask`` in place (uint8 counter, bool mask); with ``saturate`` the counts
    stop at 2 (all the callers need is ">= 2"), so 255 or more masks cannot wrap around."""
    np.add(counter, mask.view(np.uint8), out=counter)
    if saturate:
        np.minimum(counter, 2, out=counter)


def paste_masks(
    masks,
    classes: Sequence[int],
    scores: Sequence[float],
    keep: Sequence[bool] | None = None,
    ignore_dropped: bool = False,
    ignore_label: int = IGNORE_LABEL,
) -> tuple[np.ndarray, dict]:
    """Paste binary masks into a semantic label map, resolving overlaps by score then area.

    Runs in numpy: one device-to-host copy per image (the label, the statistics and the RLE
    all need host memory), and numpy's boolean reductions and masked writes are several times
    faster than torch's on CPU.

    Args:
        masks: (N, H, W) bool, numpy or torch.
        classes: (N,) class ids 1..K.
        scores: (N,) overlap scores; where kept masks overlap, the highest score wins, and
            between equal scores the smaller mask (a small object in front of a large one).
        keep: (N,) bool, masks to paste (default all). Dropped masks paste nothing; with
            ``ignore_dropped`` the pixels covered only by dropped masks become ``ignore_label``.
    Returns:
        label: (H, W) uint8, 0 where no kept mask covers the pixel.
        info: ``areas`` (N,) mask pixels, ``won`` (N,) pixels each mask got in the label,
        ``overlap_pixels`` covered by >= 2 kept masks, ``conflict_pixels`` covered by kept
        masks of >= 2 different classes (where the resolution changes the semantics).
    """
    if isinstance(masks, torch.Tensor):
        masks = masks.cpu().numpy()
    masks = np.asarray(masks, bool)
    n, h, w = masks.shape
    classes = np.asarray(classes, np.int64).reshape(n)
    scores = np.asarray(scores, np.float64).reshape(n)
    keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool).reshape(n)
    flat = masks.reshape(n, h * w)
    # one count per mask: numpy's whole-array count is ~10x faster than its axis=1 count
    areas = np.array([np.count_nonzero(m) for m in flat], np.int64)
    info = {"areas": areas, "won": np.zeros(n, np.int64), "overlap_pixels": 0, "conflict_pixels": 0}
    kept = np.flatnonzero(keep)
    # owner: 0 = no kept mask, i + 1 = mask i (the narrowest integer type: cheaper writes);
    # cover: how many kept masks cover the pixel (saturating is harmless: only >= 2 matters)
    small = n < 255
    owner = np.zeros(h * w, np.uint8 if small else np.int32)
    cover = np.zeros(h * w, np.uint8) if len(kept) > 1 else None
    # paint from the weakest to the strongest mask so that the strongest ends on top:
    # lexsort's last key is the primary one (score ascending, then area descending)
    for i in kept[np.lexsort((-areas[kept], scores[kept]))]:
        np.copyto(owner, i + 1, where=flat[i])
        if cover is not None:
            _count_into(cover, flat[i], saturate=len(kept) >= 255)
    lut = np.zeros(256 if small else n + 1, np.uint8)
    lut[1 : n + 1] = classes
    # OpenCV's 8-bit look-up table and histogram: several times numpy's speed
    label = cv2.LUT(owner.reshape(h, w), lut).reshape(h * w) if small else lut[owner]
    if small and h * w < 2**24:  # float32 histogram counts are exact below 2^24
        hist = cv2.calcHist([owner.reshape(h, w)], [0], None, [256], [0, 256])
        info["won"] = hist.ravel()[1 : n + 1].astype(np.int64)
    else:
        info["won"] = np.bincount(owner, minlength=n + 1)[1:]
    if ignore_dropped and len(kept) < n:
        dropped = np.logical_or.reduce(flat[~keep], axis=0)
        label[dropped & (owner == 0)] = ignore_label
    if cover is not None:
        shared = cover >= 2
        info["overlap_pixels"] = overlap = int(np.count_nonzero(shared))
        kc = classes[kept]
        if overlap and len(np.unique(kc)) == len(kc):
            info["conflict_pixels"] = overlap  # every kept mask has a class of its own
        elif overlap and (kc != kc[0]).any():
            # how many classes cover each pixel: one union per class with several masks
            ccover = np.zeros(h * w, np.uint8)
            for c in np.unique(kc):
                of_c = kept[kc == c]
                union = flat[of_c[0]] if len(of_c) == 1 else np.logical_or.reduce(flat[of_c])
                _count_into(ccover, union, saturate=len(kc) >= 255)
            info["conflict_pixels"] = int(np.count_nonzero(ccover >= 2))
    return label.reshape(h, w), info


def _masks_to_rle(masks: np.ndarray) -> list[dict]:
    from pycocotools import mask as mask_util

    if masks.shape[0] == 0:
        return []
    arr = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles = mask_util.encode(arr)
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]


@dataclass
class SamLabelResult:
    """SAM-box labels of one image.

    Attributes:
        label: (H, W) uint8: 0 background, 1..K, 255 ignored.
        boxes: the prompted boxes.
        mask_scores: (N,) SAM predicted IoU of each box's chosen mask.
        kept: (N,) bool, mask pasted (predicted IoU >= mask_min_score).
        areas / won: (N,) mask pixels / pixels the mask got in the label.
        overlap_pixels / conflict_pixels: see :func:`paste_masks`.
        untagged_boxes / unmatched_labels: boxes the source dropped (class not tagged / text
            label matching no class).
        masks_rle: COCO RLE of each mask (None when not kept in memory).
    """

    label: np.ndarray
    boxes: ImageBoxes
    mask_scores: np.ndarray
    kept: np.ndarray
    areas: np.ndarray
    won: np.ndarray
    overlap_pixels: int = 0
    conflict_pixels: int = 0
    untagged_boxes: int = 0
    unmatched_labels: int = 0
    masks_rle: list[dict] | None = field(default=None)

    def record(self, d: dict) -> dict:
        """A JSON-able record of this image's boxes and masks (no label map)."""
        b = self.boxes
        return {
            "file_name": d["file_name"],
            "image_id": d.get("image_id"),
            "height": int(self.label.shape[0]),
            "width": int(self.label.shape[1]),
            "tags": [int(t) for t in d.get("tags", ())],
            "boxes": np.round(b.boxes.astype(np.float64), 2).tolist(),
            "classes": b.classes.tolist(),
            "box_scores": [float(s) for s in b.scores],
            "labels": list(b.labels),
            "instance_ids": b.instance_ids.tolist(),
            "mask_scores": [float(s) for s in self.mask_scores],
            "kept": [bool(k) for k in self.kept],
            "areas": [int(a) for a in self.areas],
            "won": [int(a) for a in self.won],
            "overlap_pixels": int(self.overlap_pixels),
            "conflict_pixels": int(self.conflict_pixels),
            "untagged_boxes": int(self.untagged_boxes),
            "unmatched_labels": int(self.unmatched_labels),
            "masks_rle": self.masks_rle,
        }


def read_record(path: str) -> dict:
    """A per-image record written by :func:`label_dataset`."""
    with PathManager.open(path) as f:
        return json.load(f)


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
        multimask: bool = True,
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
                SAM's single-mask output.
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
            masks_rle=_masks_to_rle(masks) if self.save_masks else None,
        )

    def read_image(self, d: dict) -> np.ndarray:
        img = utils.read_image(d["file_name"], format="RGB")
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
    for s in tqdm(range(0, len(todo), step), disable=not progress, desc="SAM labels"):
        batch = todo[s : s + step]
        for d, r in zip(batch, labeler.label(batch)):
            rec = r.record(d)
            atomic_write_bytes(
                os.path.join(rec_dir, label_stem(d) + ".json"), json.dumps(rec).encode()
            )
            writer.write(d, r.label)
            if evaluator is not None:
                evaluator.process([d], [{"sam_label": r.label, "sam_record": rec}])
    return len(todo)
