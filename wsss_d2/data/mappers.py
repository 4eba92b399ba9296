"""Dataset mappers for image-level tag datasets."""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.utils.registry import Registry
from fvcore.transforms.transform import NoOpTransform
from PIL import Image

from ..io.files import read_image_checked, read_label_png

logger = logging.getLogger(__name__)

__all__ = [
    "MAPPER_REGISTRY",
    "TagDatasetMapper",
    "ResizeLongestEdgeRange",
    "RandomScaleChoice",
    "build_mapper",
    "tags_to_multi_hot",
]

MAPPER_REGISTRY = Registry("WSSS_MAPPER")
MAPPER_REGISTRY.__doc__ = "Dataset mappers, built as ``MAPPER_REGISTRY.get(name)(cfg, is_train)``."


def build_mapper(cfg, is_train: bool):
    """The mapper named by ``cfg.INPUT.MAPPER``."""
    return MAPPER_REGISTRY.get(cfg.INPUT.MAPPER)(cfg, is_train)


class ResizeLongestEdgeRange(T.Augmentation):
    """Resize so that the longest edge is a random integer in ``[min_long, max_long]``.

    The IRN/SEAM protocol for classification training. ``min_long == max_long`` gives a fixed
    size; ``0`` disables resizing.
    """

    def __init__(self, min_long: int, max_long: int, interp=None):
        super().__init__()
        self.min_long, self.max_long = int(min_long), int(max_long)
        self.interp = Image.BILINEAR if interp is None else interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        if self.max_long <= 0:
            return NoOpTransform()
        target = np.random.randint(self.min_long, self.max_long + 1)
        scale = target / max(h, w)
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (nh, nw) == (h, w):
            return NoOpTransform()
        return T.ResizeTransform(h, w, nh, nw, self.interp)


class RandomScaleChoice(T.Augmentation):
    """Resize by a factor drawn uniformly from ``scales`` (CIAN's 0.5, 0.75, 1, 1.25, 1.5 of the
    original size, its official loader's ``scale_pool``)."""

    def __init__(self, scales: Sequence[float], interp=None):
        super().__init__()
        if not scales or min(scales) <= 0:
            raise ValueError(f"INPUT.TAGS.RESIZE_SCALES must be positive factors, got {scales}")
        self.scales = tuple(float(s) for s in scales)
        self.interp = Image.BILINEAR if interp is None else interp

    def get_transform(self, image):
        h, w = image.shape[:2]
        scale = self.scales[np.random.randint(len(self.scales))]
        nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
        if (nh, nw) == (h, w):
            return NoOpTransform()
        return T.ResizeTransform(h, w, nh, nw, self.interp)


def tags_to_multi_hot(tags: Sequence[int], num_classes: int, file_name: str = "") -> torch.Tensor:
    """Sorted class ids 1..K -> (K,) float multi-hot."""
    out = torch.zeros(num_classes, dtype=torch.float32)
    for t in tags:
        if not 1 <= int(t) <= num_classes:
            raise ValueError(f"tag {t} of {file_name} is outside 1..{num_classes}")
        out[int(t) - 1] = 1.0
    return out


@MAPPER_REGISTRY.register()
class TagDatasetMapper:
    """Map a tag-dataset dict to the model's input.

    Returns a dict with ``image`` (3, H, W) uint8 tensor in ``image_format``, ``tags`` (K,) float
    multi-hot, ``height``/``width`` (the original size, for post-processing), ``file_name``,
    ``image_id``; in training also ``sem_seg`` (H, W) long from ``pseudo_seg_file_name`` when the
    dict has one. Images in a batch may differ in size: models pad them (``ImageList``).

    Ground truth (``sem_seg_file_name``) is never read: only evaluators read it.
    """

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: list,
        image_format: str,
        num_classes: int,
        load_pseudo: bool = True,
    ):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.num_classes = num_classes
        self.load_pseudo = load_pseudo
        mode = "training" if is_train else "inference"
        logger.info(f"[TagDatasetMapper] augmentations in {mode}: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        tc = cfg.INPUT.TAGS
        if is_train:
            augs = [
                (
                    RandomScaleChoice(tc.RESIZE_SCALES)
                    if tc.RESIZE_SCALES
                    else ResizeLongestEdgeRange(*tc.RESIZE_LONG)
                )
            ]
            if tc.COLOR_JITTER > 0:
                j = tc.COLOR_JITTER
                augs += [
                    T.RandomBrightness(1 - j, 1 + j),
                    T.RandomContrast(1 - j, 1 + j),
                    T.RandomSaturation(1 - j, 1 + j),
                ]
            if tc.FLIP:
                augs.append(T.RandomFlip(horizontal=True))
            if tc.CROP_SIZE > 0:
                # crops are never larger than the image; the model pads the batch (images
                # with the pixel mean, labels with the ignore value)
                augs.append(T.RandomCrop("absolute", (tc.CROP_SIZE, tc.CROP_SIZE)))
        else:
            augs = [ResizeLongestEdgeRange(tc.TEST_LONG, tc.TEST_LONG)] if tc.TEST_LONG else []
        return {
            "is_train": is_train,
            "augmentations": augs,
            "image_format": cfg.INPUT.FORMAT,
            "num_classes": tc.NUM_CLASSES,
            "load_pseudo": tc.LOAD_PSEUDO,
        }

    def __call__(self, dataset_dict: dict) -> dict:
        d = copy.deepcopy(dataset_dict)
        image = read_image_checked(d["file_name"], self.image_format)
        utils.check_image_size(d, image)
        sem_seg = None
        if self.is_train and self.load_pseudo and d.get("pseudo_seg_file_name"):
            sem_seg = read_label_png(d["pseudo_seg_file_name"], image.shape[:2], d["file_name"])
        return self.map_image(d, image, sem_seg)

    def map_image(self, d: dict, image: np.ndarray, sem_seg: np.ndarray | None = None) -> dict:
        """The mapping after the files are read: augmentations, tensors, tags (in place on ``d``,
        a copy the caller owns). ``image``: (H, W, 3) uint8 in ``image_format``. Also the entry
        of :class:`wsss_d2.engine.predictor.WSSSPredictor`, so that a predicted image goes
        through exactly the evaluation's test-time preprocessing."""
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg

        image_t = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            sem_seg_t = torch.from_numpy(np.array(sem_seg, dtype=np.int64))  # writable copy
        d["image"] = image_t
        if sem_seg is not None:
            d["sem_seg"] = sem_seg_t
        d["tags"] = tags_to_multi_hot(d.get("tags", []), self.num_classes, d.get("file_name", ""))
        return d
