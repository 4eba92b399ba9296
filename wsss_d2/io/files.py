"""The bottom layer: files every other part of wsss_d2 reads and writes.

Atomic writes (a temporary file in the same folder, then a rename, so a crash never leaves a
half-written output), label PNGs (ids 0 background, 1..K classes, :data:`IGNORE_LABEL`), the VOC
colour map, and images read with an error that names the file. Imports nothing else of wsss_d2.

Label PNGs are written as 8-bit greyscale ("L") whose pixel values are the ids, so that every
Detectron2 tool reads them exactly: ``detectron2.data.detection_utils.read_image(path, "L")``
(used by Detectron2's ``DatasetMapper``, its DeepLab project, Mask2Former) converts a palette
PNG to luminance and would turn ids [0 4 5 255] into [0 15 53 220]. Palette PNGs (VOC's own
ground truth, older rounds) are still read right by :func:`read_label_png` (palette indices);
:func:`save_palette_png` writes a coloured copy for people to look at.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import uuid

import numpy as np
from detectron2.data import detection_utils as d2_utils
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = [
    "IGNORE_LABEL",
    "voc_palette",
    "atomic_write_bytes",
    "atomic_directory",
    "save_label_png",
    "save_palette_png",
    "read_label_png",
    "read_image_checked",
]

IGNORE_LABEL = 255


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


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _check_label(path: str, label: np.ndarray) -> np.ndarray:
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be (H, W), got {label.shape}")
    return label.astype(np.uint8)


def save_label_png(path: str, label: np.ndarray) -> None:
    """Save a (H, W) label map as a greyscale PNG of its ids (module docstring), atomically."""
    img = Image.fromarray(_check_label(path, label), mode="L")
    atomic_write_bytes(path, _png_bytes(img))


def save_palette_png(path: str, label: np.ndarray) -> None:
    """Save a (H, W) label map as a VOC-palette PNG (a preview for people), atomically.

    Its palette indices are the ids (:func:`read_label_png` reads them back), but Detectron2's
    ``read_image(path, "L")`` does not: train on :func:`save_label_png` files.
    """
    img = Image.fromarray(_check_label(path, label), mode="P")
    img.putpalette(_PALETTE_FLAT)
    atomic_write_bytes(path, _png_bytes(img))


def read_label_png(
    path: str, expected_hw: tuple[int, int] | None = None, image_file: str | None = None
) -> np.ndarray:
    """Read a label PNG as (H, W) uint8 ids: grey values, or palette indices (not colours) of a
    palette PNG such as VOC's ground truth.

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


def read_image_checked(file_name: str, fmt: str) -> np.ndarray:
    """Detectron2's ``read_image`` with an error that names the file for missing/corrupt images."""
    try:
        return d2_utils.read_image(file_name, format=fmt)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {file_name}") from None
    except Exception as e:  # PIL raises several types for truncated / non-image files
        raise OSError(f"cannot read image {file_name}: {type(e).__name__}: {e}") from e
