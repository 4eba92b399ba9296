"""Box sources for SAM-box labeling: where the boxes prompted into SAM come from.

A box source maps a dataset dict to :class:`ImageBoxes` — boxes in absolute XYXY pixels of the
original image, each with a foreground class id in ``1..K`` and a score. Three are provided:

- :class:`GTBoxSource` — ground-truth instance boxes (the upper bound of the method): the dict's
  Detectron2 ``annotations``, or a COCO instances JSON, or a folder of PASCAL VOC XML files.
- :class:`CamBoxSource` — connected components of each tagged class's thresholded CAM.
- :class:`FileBoxSource` — one JSON file per image, e.g. the output of an open-vocabulary
  detector (Grounding-DINO style). Format::

      [{"label": "dog", "box": [x0, y0, x1, y1], "score": 0.81}, ...]

  or ``{"box_format": "xyxy" | "xywh" | "cxcywh_norm", "boxes": [...same entries...]}``.
  ``xyxy``/``xywh`` are absolute pixels of the original image; ``cxcywh_norm`` is
  Grounding-DINO's raw output (centre and size divided by the image width/height). ``label`` is
  a text phrase mapped to a class by name (case, spaces and ``_`` ignored, a trailing
  ``"(0.43)"`` logit suffix dropped), by the class's assist words, or by an explicit name map;
  an integer ``category_id`` (1..K) may be given instead. ``score`` defaults to 1.

Sources are registered in :data:`BOX_SOURCE_REGISTRY` and built with
:func:`build_box_source` from ``cfg.WSSS.SAM.BOX_SOURCE``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
from detectron2.config import configurable
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from detectron2.utils.registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "BOX_SOURCE_REGISTRY",
    "ImageBoxes",
    "BoxSource",
    "GTBoxSource",
    "CamBoxSource",
    "FileBoxSource",
    "ClassNameMapper",
    "boxes_from_cam",
    "sanitize_boxes",
    "build_box_source",
]

BOX_SOURCE_REGISTRY = Registry("WSSS_BOX_SOURCE")
BOX_SOURCE_REGISTRY.__doc__ = "Box sources for SAM-box labeling, built as cls(cfg, class_names)."


@dataclass
class ImageBoxes:
    """The boxes of one image.

    Attributes:
        boxes: (N, 4) float32, absolute XYXY pixels of the original image.
        classes: (N,) int64 foreground class ids in 1..K.
        scores: (N,) float32 box confidence (1 for ground truth).
        instance_ids: (N,) int64 index into the dict's ``annotations`` (-1: no GT instance).
        labels: N text labels as the source gave them (class names for GT / CAM boxes).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    classes: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    scores: np.ndarray | None = None
    instance_ids: np.ndarray | None = None
    labels: list[str] | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.classes = np.asarray(self.classes, np.int64).reshape(n)
        if self.scores is None:
            self.scores = np.ones(n, np.float32)
        self.scores = np.asarray(self.scores, np.float32).reshape(n)
        if self.instance_ids is None:
            self.instance_ids = np.full(n, -1, np.int64)
        self.instance_ids = np.asarray(self.instance_ids, np.int64).reshape(n)
        if self.labels is None or len(self.labels) != n:
            self.labels = [str(int(c)) for c in self.classes]

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> "ImageBoxes":
        keep = np.asarray(keep)
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        return ImageBoxes(
            self.boxes[idx],
            self.classes[idx],
            self.scores[idx],
            self.instance_ids[idx],
            [self.labels[i] for i in idx],
        )


def sanitize_boxes(boxes: np.ndarray, height: int, width: int, file_name: str) -> np.ndarray:
    """Clip XYXY boxes to the image; reject malformed ones with an error naming the image.

    A box partly outside the image is clipped to ``[0, width] x [0, height]``. A box with a
    non-finite coordinate, an inverted box (x1 < x0 or y1 < y0), or a box lying entirely
    outside the image is an input error (a wrong box format or image size, not a detection to
    keep), so it raises ``ValueError``.

    Args:
        boxes: (N, 4) XYXY absolute pixels.
    Returns:
        (N, 4) float32 clipped boxes.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    for i, b in enumerate(boxes):
        if not np.isfinite(b).all():
            raise ValueError(f"box {i} {b.tolist()} of image {file_name} is not finite")
        if b[2] < b[0] or b[3] < b[1]:
            raise ValueError(
                f"box {i} {b.tolist()} of image {file_name} is inverted (expected XYXY with "
                "x1 >= x0, y1 >= y0)"
            )
        if b[0] >= width or b[1] >= height or b[2] <= 0 or b[3] <= 0:
            raise ValueError(
                f"box {i} {b.tolist()} of image {file_name} lies outside the {width}x{height} "
                "image (wrong box format or image size?)"
            )
    out = boxes.copy()
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    n_clipped = int((np.abs(out - boxes) > 1e-3).any(1).sum())
    if n_clipped:
        logger.debug("%s: clipped %d boxes to the image", file_name, n_clipped)
    return out


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text.strip().lower())


def _parse_word_map(entries: Sequence[str], key: str) -> dict[str, list[str]]:
    """Parse ``("class:word one,word two", ...)`` config entries into ``{class: [words]}``."""
    out: dict[str, list[str]] = {}
    for e in entries:
        if ":" not in e:
            raise ValueError(f"{key} entry '{e}' must look like 'class_name:word,word'")
        cls, words = e.split(":", 1)
        out.setdefault(cls.strip(), []).extend(w.strip() for w in words.split(",") if w.strip())
    return out


class ClassNameMapper:
    """Map a text label of a box (a detector phrase) to a class id in 1..K.

    A class is matched by its own name, by its text name (``CLASS_TEXT``: how the class is
    written in a text prompt, e.g. ``diningtable -> dining table``), or by one of its assist
    words (``ASSIST_WORDS``: extra prompt words whose boxes count as the class, as the study does
    for "horse: halter, saddle" and "diningtable: bowl, plate, food"). Matching ignores case,
    spaces, ``_`` and ``-``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        class_text: Sequence[str] = (),
        assist_words: Sequence[str] = (),
    ):
        self.class_names = list(class_names)
        index = {n: i + 1 for i, n in enumerate(self.class_names)}
        self.text = {n: n for n in self.class_names}
        for cls, words in _parse_word_map(class_text, "WSSS.SAM.CLASS_TEXT").items():
            if cls not in index:
                raise ValueError(f"WSSS.SAM.CLASS_TEXT names unknown class '{cls}'")
            self.text[cls] = words[0]
        self.assist = {n: [] for n in self.class_names}
        for cls, words in _parse_word_map(assist_words, "WSSS.SAM.ASSIST_WORDS").items():
            if cls not in index:
                raise ValueError(f"WSSS.SAM.ASSIST_WORDS names unknown class '{cls}'")
            self.assist[cls].extend(words)
        self._lookup: dict[str, int] = {}
        for n, k in index.items():  # assist words first, so a class name always wins
            for w in self.assist[n]:
                self._lookup.setdefault(_norm(w), k)
        for n, k in index.items():
            self._lookup[_norm(n)] = k
            self._lookup[_norm(self.text[n])] = k
        # words of each multi-word class text, for detector phrases that ground only part of it
        self._words = {k: set(self.text[n].lower().split()) for n, k in index.items()}

    def __call__(self, label: str) -> int | None:
        """Class id of ``label`` or None.

        An exact match (after normalisation) first; otherwise the one class whose text contains
        every word of the label ("potted" -> "potted plant", as the study maps a grounded
        sub-word to its parent class); None when no class, or several, fit.
        """
        label = re.sub(r"\(\s*[-+0-9.eE]+\s*\)\s*$", "", str(label))  # "dog(0.43)" -> "dog"
        k = self._lookup.get(_norm(label))
        if k is not None:
            return k
        words = set(label.lower().split())
        fits = [c for c, ws in self._words.items() if words and words <= ws]
        return fits[0] if len(fits) == 1 else None

    def prompts(self, tags: Sequence[int]) -> list[str]:
        """Text prompts of an image's tags (class text + assist words): what to feed a detector."""
        out = []
        for k in tags:
            name = self.class_names[int(k) - 1]
            out.append(self.text[name])
            out.extend(self.assist[name])
        return out


class BoxSource:
    """Base class: ``source(d) -> ImageBoxes`` for a dataset dict ``d``.

    Subclasses implement :meth:`get_boxes`; :meth:`__call__` clips the boxes to the image and,
    when ``only_tagged``, drops boxes of classes not in the dict's ``tags`` (weak supervision
    tells us they are absent) — the number dropped is kept in ``last_untagged`` for statistics.
    """

    def __init__(self, only_tagged: bool = True, min_score: float = 0.0):
        self.only_tagged = only_tagged
        self.min_score = float(min_score)
        self.last_untagged = 0

    def get_boxes(self, d: dict) -> ImageBoxes:
        raise NotImplementedError

    def __call__(self, d: dict) -> ImageBoxes:
        b = self.get_boxes(d)
        h, w = int(d["height"]), int(d["width"])
        b.boxes = sanitize_boxes(b.boxes, h, w, d["file_name"])
        keep = b.scores >= self.min_score
        self.last_untagged = 0
        if self.only_tagged and "tags" in d:
            tagged = np.isin(b.classes, np.asarray(list(d["tags"]), np.int64))
            self.last_untagged = int((keep & ~tagged).sum())
            keep &= tagged
        return b if keep.all() else b.select(keep)


def _boxes_from_annotations(
    annos: Sequence[dict], include_crowd: bool, class_names: Sequence[str]
) -> ImageBoxes:
    boxes, classes, ids = [], [], []
    for i, a in enumerate(annos):
        if a.get("iscrowd", 0) and not include_crowd:
            continue
        mode = a.get("bbox_mode", BoxMode.XYWH_ABS)
        boxes.append(BoxMode.convert(list(a["bbox"]), mode, BoxMode.XYXY_ABS))
        classes.append(int(a["category_id"]))
        ids.append(i)
    labels = [class_names[c - 1] if 0 < c <= len(class_names) else str(c) for c in classes]
    return ImageBoxes(np.asarray(boxes, np.float32), classes, None, ids, labels)


@BOX_SOURCE_REGISTRY.register()
class GTBoxSource(BoxSource):
    """Ground-truth instance boxes (an upper bound: what perfect detection would give SAM).

    Boxes come from, in order: the dict's Detectron2 ``annotations`` (``category_id`` already in
    1..K); else ``annotations_path``: a COCO instances JSON (class id = position of the category
    in the JSON's categories sorted by id, + 1; matched to the dict by ``image_id``) or a folder
    of VOC XML files ``<stem>.xml`` (class by name). Crowd regions are skipped unless
    ``include_crowd``. ``instance_ids`` index the dict's ``annotations`` when it has them.
    """

    @configurable
    def __init__(
        self,
        class_names: Sequence[str],
        annotations_path: str = "",
        include_crowd: bool = False,
        only_tagged: bool = True,
        min_score: float = 0.0,
    ):
        super().__init__(only_tagged=only_tagged, min_score=min_score)
        self.class_names = list(class_names)
        self.annotations_path = annotations_path
        self.include_crowd = include_crowd
        self._coco = None

    @classmethod
    def from_config(cls, cfg, class_names):
        return {
            "class_names": class_names,
            "annotations_path": cfg.WSSS.SAM.GT_ANNOTATIONS,
            "include_crowd": cfg.WSSS.SAM.GT_INCLUDE_CROWD,
            "only_tagged": cfg.WSSS.SAM.ONLY_TAGGED,
            "min_score": cfg.WSSS.SAM.BOX_MIN_SCORE,
        }

    def _coco_api(self):
        if self._coco is None:
            from pycocotools.coco import COCO

            path = PathManager.get_local_path(self.annotations_path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"WSSS.SAM.GT_ANNOTATIONS: no such file {path}")
            self._coco = COCO(path)
            cat_ids = sorted(self._coco.getCatIds())
            self._cat_to_class = {c: i + 1 for i, c in enumerate(cat_ids)}
        return self._coco

    def get_boxes(self, d: dict) -> ImageBoxes:
        if "annotations" in d:
            return _boxes_from_annotations(d["annotations"], self.include_crowd, self.class_names)
        path = self.annotations_path
        if not path:
            raise KeyError(
                f"GTBoxSource: image {d['file_name']} has no 'annotations' and "
                "WSSS.SAM.GT_ANNOTATIONS is empty (give a COCO JSON or a VOC Annotations folder)"
            )
        if path.endswith(".json"):
            coco = self._coco_api()
            annos = coco.loadAnns(coco.getAnnIds(imgIds=[d["image_id"]]))
            annos = [
                {
                    **a,
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "category_id": self._cat_to_class[a["category_id"]],
                }
                for a in annos
            ]
            b = _boxes_from_annotations(annos, self.include_crowd, self.class_names)
            b.instance_ids[:] = -1  # indices into a list the dict does not carry
            return b
        return self._voc_boxes(d, path)

    def _voc_boxes(self, d: dict, folder: str) -> ImageBoxes:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        xml_path = os.path.join(folder, stem + ".xml")
        try:
            with PathManager.open(xml_path) as f:
                root = ET.parse(f).getroot()
        except FileNotFoundError:
            raise FileNotFoundError(f"GTBoxSource: no VOC annotation {xml_path}") from None
        index = {n: i + 1 for i, n in enumerate(self.class_names)}
        boxes, classes, labels = [], [], []
        for obj in root.findall("object"):
            name = obj.findtext("name", "").strip()
            if name not in index:
                raise ValueError(f"{xml_path}: unknown class '{name}'")
            bb = obj.find("bndbox")
            # VOC pixel indices are 1-based and inclusive; convert to 0-based XYXY edges
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            boxes.append([x0 - 1, y0 - 1, x1, y1])
            classes.append(index[name])
            labels.append(name)
        return ImageBoxes(np.asarray(boxes, np.float32), classes, None, None, labels)


def boxes_from_cam(
    cam: np.ndarray,
    tags: Sequence[int],
    threshold: float = 0.3,
    min_area: float = 0.001,
    max_boxes_per_class: int = 3,
    image_hw: tuple[int, int] | None = None,
) -> ImageBoxes:
    """Boxes around the connected components of each tagged class's thresholded CAM.

    Args:
        cam: (K, h, w) float CAMs, max-normalised per class (zero for absent classes).
        tags: class ids 1..K of the image.
        threshold: a pixel belongs to class k when ``cam[k-1] >= threshold``.
        min_area: components smaller than this fraction of the CAM area are dropped (noise).
        max_boxes_per_class: keep the highest-scoring components of each class (0 = all).
        image_hw: (H, W) of the image when the CAM has another size: boxes are rescaled.
    Returns:
        boxes scored by the component's peak CAM value; a tag with no component gets no box.
    """
    cam = np.asarray(cam, np.float32)
    if cam.ndim != 3:
        raise ValueError(f"CAM must be (K, H, W), got shape {cam.shape}")
    h, w = cam.shape[1:]
    sy, sx = (1.0, 1.0) if image_hw is None else (image_hw[0] / h, image_hw[1] / w)
    boxes, classes, scores = [], [], []
    for k in tags:
        c = cam[int(k) - 1]
        fg = (c >= threshold).astype(np.uint8)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
        cand = []
        for j in range(1, n):
            x, y, bw, bh, area = stats[j]
            if area < min_area * h * w:
                continue
            cand.append((float(c[lab == j].max()), [x, y, x + bw, y + bh]))
        cand.sort(key=lambda t: -t[0])
        if max_boxes_per_class > 0:
            cand = cand[:max_boxes_per_class]
        for s, b in cand:
            boxes.append([b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
            classes.append(int(k))
            scores.append(s)
    return ImageBoxes(np.asarray(boxes, np.float32), classes, scores)


@BOX_SOURCE_REGISTRY.register()
class CamBoxSource(BoxSource):
    """Boxes from CAMs: connected components of each tagged class's thresholded CAM.

    The CAM of an image is the dict's ``"cam"`` entry when present (an in-memory (K, h, w)
    array), else ``<cam_dir>/<stem>.npy``. CAMs smaller than the image are fine: boxes are
    rescaled to the image size.
    """

    @configurable
    def __init__(
        self,
        class_names: Sequence[str],
        cam_dir: str = "",
        threshold: float = 0.3,
        min_area: float = 0.001,
        max_boxes_per_class: int = 3,
        only_tagged: bool = True,
        min_score: float = 0.0,
    ):
        super().__init__(only_tagged=only_tagged, min_score=min_score)
        self.num_classes = len(class_names)
        self.class_names = list(class_names)
        self.cam_dir = cam_dir
        self.threshold = threshold
        self.min_area = min_area
        self.max_boxes_per_class = max_boxes_per_class

    @classmethod
    def from_config(cls, cfg, class_names):
        s = cfg.WSSS.SAM
        return {
            "class_names": class_names,
            "cam_dir": s.CAM_DIR,
            "threshold": s.CAM_THRESHOLD,
            "min_area": s.CAM_MIN_AREA,
            "max_boxes_per_class": s.CAM_MAX_BOXES_PER_CLASS,
            "only_tagged": s.ONLY_TAGGED,
            "min_score": s.BOX_MIN_SCORE,
        }

    def load_cam(self, d: dict) -> np.ndarray:
        if "cam" in d:
            return np.asarray(d["cam"])
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(self.cam_dir, stem + ".npy")
        if not self.cam_dir or not PathManager.exists(path):
            raise FileNotFoundError(
                f"CamBoxSource: no CAM for image {d['file_name']} (looked for {path}; set "
                "WSSS.SAM.CAM_DIR to the folder of (K, H, W) .npy CAMs)"
            )
        with PathManager.open(path, "rb") as f:
            cam = np.load(f)
        if cam.ndim != 3 or cam.shape[0] != self.num_classes:
            raise ValueError(
                f"CAM {path} has shape {cam.shape}; expected ({self.num_classes}, H, W)"
            )
        return cam

    def get_boxes(self, d: dict) -> ImageBoxes:
        b = boxes_from_cam(
            self.load_cam(d),
            d.get("tags", ()),
            self.threshold,
            self.min_area,
            self.max_boxes_per_class,
            (int(d["height"]), int(d["width"])),
        )
        b.labels = [self.class_names[c - 1] for c in b.classes]
        return b


_BOX_FORMATS = ("xyxy", "xywh", "cxcywh_norm")


@BOX_SOURCE_REGISTRY.register()
class FileBoxSource(BoxSource):
    """Boxes from ``<box_dir>/<stem>.json`` files (see the module docstring for the format).

    A label that maps to no class is skipped and logged (counted in ``last_unmatched``). An
    image without a file is an error: write ``[]`` for an image where the detector found
    nothing.
    """

    @configurable
    def __init__(
        self,
        class_names: Sequence[str],
        box_dir: str,
        class_text: Sequence[str] = (),
        assist_words: Sequence[str] = (),
        min_score: float = 0.0,
        only_tagged: bool = True,
    ):
        super().__init__(only_tagged=only_tagged, min_score=min_score)
        self.box_dir = box_dir
        self.mapper = ClassNameMapper(class_names, class_text, assist_words)
        self.last_unmatched = 0

    @classmethod
    def from_config(cls, cfg, class_names):
        s = cfg.WSSS.SAM
        return {
            "class_names": class_names,
            "box_dir": s.BOX_DIR,
            "class_text": s.CLASS_TEXT,
            "assist_words": s.ASSIST_WORDS,
            "min_score": s.BOX_MIN_SCORE,
            "only_tagged": s.ONLY_TAGGED,
        }

    def get_boxes(self, d: dict) -> ImageBoxes:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        path = os.path.join(self.box_dir, stem + ".json")
        try:
            with PathManager.open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"FileBoxSource: no box file {path} for image {d['file_name']} (write [] for an "
                "image without detections)"
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(f"FileBoxSource: {path} is not valid JSON: {e}") from e
        fmt = "xyxy"
        if isinstance(data, dict):
            fmt = data.get("box_format", "xyxy")
            data = data.get("boxes", [])
        if fmt not in _BOX_FORMATS or not isinstance(data, list):
            raise ValueError(f"{path}: box_format must be one of {_BOX_FORMATS} and boxes a list")
        h, w = float(d["height"]), float(d["width"])
        boxes, classes, scores, labels = [], [], [], []
        self.last_unmatched = 0
        for i, e in enumerate(data):
            try:
                b = [float(v) for v in e["box"]]
                if len(b) != 4:
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: entry {i} needs 'box': [4 numbers], got {e}") from None
            if "category_id" in e:
                k = int(e["category_id"])
                label = str(e.get("label", k))
            else:
                label = str(e.get("label", ""))
                k = self.mapper(label)
            if k is None or not 0 < k <= len(self.mapper.class_names):
                self.last_unmatched += 1
                logger.info("%s: label '%s' matches no class; box skipped", path, label)
                continue
            if fmt == "xywh":
                b = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
            elif fmt == "cxcywh_norm":
                cx, cy, bw, bh = b[0] * w, b[1] * h, b[2] * w, b[3] * h
                b = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
            boxes.append(b)
            classes.append(k)
            scores.append(float(e.get("score", 1.0)))
            labels.append(label)
        return ImageBoxes(np.asarray(boxes, np.float32), classes, scores, None, labels)


def build_box_source(cfg, class_names: Sequence[str]) -> BoxSource:
    """The box source named by ``cfg.WSSS.SAM.BOX_SOURCE`` (a BOX_SOURCE_REGISTRY name)."""
    return BOX_SOURCE_REGISTRY.get(cfg.WSSS.SAM.BOX_SOURCE)(cfg, class_names)
