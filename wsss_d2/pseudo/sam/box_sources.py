"""Box sources from the data: ground-truth instance boxes and CAM components.

- :class:`GTBoxSource` — ground-truth instance boxes (the upper bound of the method): the dict's
  Detectron2 ``annotations``, or a COCO instances JSON, or a folder of PASCAL VOC XML files.
- :class:`CamBoxSource` — connected components of each tagged class's thresholded CAM.

Both are registered in :data:`~wsss_d2.pseudo.sam.boxes.BOX_SOURCE_REGISTRY`.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Sequence

import cv2
import numpy as np
from detectron2.config import configurable
from detectron2.structures import BoxMode
from detectron2.utils.file_io import PathManager
from pycocotools.coco import COCO

from ...io.cam_files import cam_file_path, load_cam_file
from .boxes import BOX_SOURCE_REGISTRY, BoxSource, ImageBoxes

__all__ = ["GTBoxSource", "CamBoxSource", "boxes_from_cam"]


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
                f"GTBoxSource: image {d['file_name']} has no boxes: its dataset gives none (a VOC "
                "folder without Annotations/ XML, such as voc_mini, has tags from masks only) and "
                "WSSS.SAM.GT_ANNOTATIONS is empty; give a COCO JSON or a VOC Annotations folder "
                "there, or use WSSS.SAM.BOX_SOURCE CamBoxSource"
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
    array), else its file in ``cam_dir``, named like the image's label file
    (:func:`~wsss_d2.io.rounds.label_stem`: sub-folder images of the same name get their own):
    the CAM file our CAM inference writes (``tools/make_pseudo_labels.py``: ``<stem>.npz``, the
    tagged classes only, read by :func:`wsss_d2.io.cam_files.load_cam_file` and checked against
    the image's size), or a (K, H, W) array ``<stem>.npy``. CAMs smaller than the image are fine:
    boxes are rescaled to the image size.
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
        """(K, H, W) CAMs of ``d``, zero for the classes its CAM file does not hold."""
        if "cam" in d:
            return np.asarray(d["cam"])
        npz = cam_file_path(self.cam_dir or ".", d)
        npy = os.path.splitext(npz)[0] + ".npy"
        if self.cam_dir and PathManager.exists(npz):
            cams, keys = load_cam_file(npz, (int(d["height"]), int(d["width"])), d["file_name"])
            if len(keys) and (keys.min() < 1 or keys.max() > self.num_classes):
                raise ValueError(
                    f"CAM file {npz} holds classes {keys.tolist()}, outside 1..{self.num_classes}"
                )
            cam = np.zeros((self.num_classes, *cams.shape[1:]), np.float32)
            cam[keys - 1] = cams
            return cam
        if not self.cam_dir or not PathManager.exists(npy):
            raise FileNotFoundError(
                f"CamBoxSource: no CAM for image {d['file_name']} (looked for {npz} and {npy}; set "
                "WSSS.SAM.CAM_DIR to the CAM folder of tools/make_pseudo_labels.py, or to a "
                "folder of (K, H, W) .npy CAMs)"
            )
        with PathManager.open(npy, "rb") as f:
            cam = np.load(f)
        if cam.ndim != 3 or cam.shape[0] != self.num_classes:
            raise ValueError(
                f"CAM {npy} has shape {cam.shape}; expected ({self.num_classes}, H, W)"
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
