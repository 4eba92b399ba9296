"""Shared pieces of the tag datasets: class lists, palette, roots, metadata, atomic writes."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from typing import Iterable, Sequence

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.utils.file_io import PathManager
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "VOC_CLASSES",
    "COCO_CLASSES",
    "IGNORE_LABEL",
    "voc_palette",
    "datasets_root",
    "require_dir",
    "set_tag_metadata",
    "save_label_png",
    "read_label_png",
    "atomic_write_bytes",
    "atomic_directory",
    "keep_images_with_tags",
]

IGNORE_LABEL = 255

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map (bit-interleaved), ``n`` RGB triples; id 255 is near-white."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


_PALETTE_FLAT = [v for rgb in voc_palette(256) for v in rgb]


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS`` (default ``datasets``), as Detectron2's builtin datasets use."""
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_dir(path: str, what: str) -> str:
    """Raise a clear error when a dataset folder is missing."""
    if not PathManager.isdir(path):
        raise FileNotFoundError(
            f"{what} not found at '{path}'. Set DETECTRON2_DATASETS to the folder that holds your "
            f"datasets (now '{datasets_root()}'), or register the dataset with an explicit path."
        )
    return path


def set_tag_metadata(
    name: str, class_names: Sequence[str], evaluator_type: str = "sem_seg", **extra
) -> None:
    """Metadata every tag dataset carries: background + classes, VOC colours, ignore 255.

    No ``thing_classes``: Detectron2 would then check the dicts' ``annotations`` (whose ids are
    1..K here, as everywhere in wsss_d2) against a 0-based thing list and refuse class K.
    """
    classes = ["background", *class_names]
    pal = voc_palette(len(classes))
    MetadataCatalog.get(name).set(
        stuff_classes=classes,
        stuff_colors=[list(c) for c in pal],
        ignore_label=IGNORE_LABEL,
        evaluator_type=evaluator_type,
        **extra,
    )


def keep_images_with_tags(dicts: Iterable[dict], name: str) -> list[dict]:
    """Drop images with no foreground tag (they carry no weak label); log how many."""
    dicts = list(dicts)
    kept = [d for d in dicts if len(d["tags"]) > 0]
    if len(kept) < len(dicts):
        logger.warning(
            "%s: excluded %d of %d images that have no foreground tag",
            name,
            len(dicts) - len(kept),
            len(dicts),
        )
    return kept


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder + rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_label_png(path: str, label: np.ndarray) -> None:
    """Save a (H, W) uint8 label map as a VOC-palette PNG, atomically."""
    import io

    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be (H, W), got {label.shape}")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(_PALETTE_FLAT)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def read_label_png(
    path: str, expected_hw: tuple[int, int] | None = None, image_file: str | None = None
) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 ids (palette indices, not colours).

    Raises ``ValueError`` naming both files when its size differs from ``expected_hw``.
    """
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    except Exception as e:  # PIL raises several types for corrupt files
        raise OSError(f"cannot read label file {path}: {e}") from e
    if img.mode not in ("P", "L", "I", "I;16"):
        raise ValueError(f"label file {path} has mode {img.mode}; expected a palette/grey PNG")
    label = np.array(img, dtype=np.uint8)
    if expected_hw is not None and tuple(label.shape[:2]) != tuple(expected_hw):
        raise ValueError(
            f"label map {path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
            f"{image_file or ''} is {expected_hw[1]}x{expected_hw[0]}"
        )
    return label


class atomic_directory:
    """Context manager: build a folder under a temporary sibling name, rename it into place.

    ``with atomic_directory(final) as tmp: write files into tmp`` — on success ``tmp`` becomes
    ``final``; on an exception ``tmp`` is removed and ``final`` is untouched.
    """

    def __init__(self, final: str):
        self.final = os.path.abspath(final)
        parent = os.path.dirname(self.final)
        os.makedirs(parent, exist_ok=True)
        self.tmp = os.path.join(parent, f".tmp_{os.path.basename(self.final)}_{uuid.uuid4().hex}")

    def __enter__(self) -> str:
        os.makedirs(self.tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        if os.path.exists(self.final):  # another process finished first: keep theirs
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            os.rename(self.tmp, self.final)
        return False
