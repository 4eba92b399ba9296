"""``WSSSPredictor``: Detectron2's ``DefaultPredictor`` for tag-supervised models.

One image (+ its tags, when known) in; the model's CAMs (CAM models) and semantic map out, with
the very test-time preprocessing of the evaluation path — the test mapper's
(``INPUT.TAGS.TEST_LONG`` resize, or none) and the model's own multi-scale / flip protocol —
where Detectron2's ``DefaultPredictor`` would resize to ``INPUT.MIN_SIZE_TEST`` and disagree with
``--eval-only`` on many pixels. :func:`predict_to_folder` is ``tools/predict.py``: label-id PNGs
and overlays drawn by Detectron2's ``Visualizer``.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.utils.visualizer import Visualizer

from ..data.mappers import build_mapper
from ..io.files import IGNORE_LABEL, atomic_write_bytes, read_image_checked, save_label_png
from ..modeling.checkpoint import load_model_weights
from ..ops.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["WSSSPredictor", "predict_to_folder", "list_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class WSSSPredictor:
    """``predictor(image_bgr, tags=None) -> outputs`` for any wsss_d2 model (``MODEL.WEIGHTS``).

    Attributes:
        class_names: the K foreground class names (from the metadata of ``DATASETS.TEST[0]``, else
            ``DATASETS.TRAIN[0]``), or None; tags may be given by these names.
        metadata: that dataset's metadata (``stuff_classes``, ``stuff_colors``), for drawing.
    """

    def __init__(self, cfg):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg).eval()
        load_model_weights(self.model, cfg.MODEL.WEIGHTS)  # strict and safe: they must fit
        self.mapper = build_mapper(self.cfg, is_train=False)
        self.input_format = cfg.INPUT.FORMAT
        self.num_classes = cfg.INPUT.TAGS.NUM_CLASSES
        names = [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
        self.metadata = MetadataCatalog.get(names[0]) if names else Metadata()
        classes = self.metadata.get("stuff_classes")
        if classes is not None and len(classes) == self.num_classes + 1:
            self.class_names = list(classes[1:])
        else:
            self.class_names = None
            self.metadata = Metadata(
                stuff_classes=["background", *[str(i) for i in range(1, self.num_classes + 1)]]
            )

    def tag_ids(self, tags: Iterable) -> list[int]:
        """Class ids 1..K of ``tags`` given as ids or class names."""
        out = set()
        for t in tags:
            if isinstance(t, str) and not t.strip().isdigit():
                if not self.class_names or t.strip() not in self.class_names:
                    known = ", ".join(self.class_names or [])
                    raise ValueError(f"unknown class '{t}'; known classes: {known or 'none'}")
                out.add(self.class_names.index(t.strip()) + 1)
            else:
                out.add(int(t))
        return sorted(out)

    @torch.no_grad()
    def __call__(self, original_image: np.ndarray, tags: Sequence | None = None) -> dict:
        """
        Args:
            original_image: (H, W, 3) uint8 in BGR order (``cv2.imread``, or Detectron2's
                ``read_image(path, "BGR")``), as ``DefaultPredictor`` takes it.
            tags: the image's classes (ids 1..K or names). CAM models keep only the CAMs of the
                tags (``MODEL.CAM.USE_TAGS_AT_TEST``); None: every class competes.
        Returns:
            the model's output for the image at its original size — ``"sem_seg"`` (K+1, H, W)
            and, for CAM models, ``"cam"`` (K, H, W) — plus ``"labels"``: (H, W) uint8 arg-max.
        """
        image = original_image[:, :, ::-1] if self.input_format == "RGB" else original_image
        h, w = image.shape[:2]
        d = {"height": h, "width": w, "tags": self.tag_ids(tags) if tags is not None else []}
        inp = self.mapper.map_image(d, np.ascontiguousarray(image))
        if tags is None:
            inp.pop("tags")
        out = self.model([inp])[0]
        out["labels"] = out["sem_seg"].argmax(0).to(torch.uint8).cpu().numpy()
        return out


def list_images(inputs: Iterable[str]) -> list[str]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += [
                os.path.join(path, f)
                for f in sorted(os.listdir(path))
                if f.lower().endswith(IMAGE_EXTENSIONS)
            ]
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
    if len(set(stems)) != len(stems):
        dup = next(s for s in stems if stems.count(s) > 1)
        raise ValueError(f"two inputs are named '{dup}': their outputs would collide")
    return files


def overlay(predictor: WSSSPredictor, image_bgr: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB: the classes (not the background) drawn over the image by Detectron2's
    ``Visualizer`` in the dataset's colours, with their names."""
    shown = np.where(labels == 0, IGNORE_LABEL, labels)  # the Visualizer skips ids >= K + 1
    vis = Visualizer(image_bgr[:, :, ::-1], predictor.metadata)
    return vis.draw_sem_seg(shown, alpha=0.5).get_image()


def predict_to_folder(
    predictor: WSSSPredictor,
    inputs: Iterable[str],
    output: str,
    tags: Sequence | None = None,
    tags_of: dict | None = None,
) -> list[str]:
    """Predict every image of ``inputs``; write ``output/<stem>.png`` (label ids, readable by
    Detectron2's ``read_image(path, "L")``) and ``output/<stem>_overlay.jpg``.

    ``tags`` apply to every image; ``tags_of`` maps an image's file name (as listed) or
    basename to its own tags. Returns the label files.
    """
    files = list_images(inputs)
    os.makedirs(output, exist_ok=True)
    written = []
    with Progress(len(files), "predict") as bar:
        for f in files:
            own = (tags_of or {}).get(f, (tags_of or {}).get(os.path.basename(f), tags))
            image = read_image_checked(f, "BGR")
            out = predictor(image, own)
            stem = os.path.splitext(os.path.basename(f))[0]
            label_file = os.path.join(output, stem + ".png")
            save_label_png(label_file, out["labels"])
            rgb = overlay(predictor, image, out["labels"])
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"JPEG encoding failed for the overlay of {f}")
            atomic_write_bytes(os.path.join(output, stem + "_overlay.jpg"), buf.tobytes())
            written.append(label_file)
            bar.update()
    logger.info("wrote %d label maps and overlays to %s", len(written), output)
    return written
