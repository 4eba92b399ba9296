"""The bottom layer: files every other part of wsss_d2 reads and writes.

Atomic writes (a temporary file in the same folder, then a rename, so a crash never leaves a
half-written output), label PNGs (ids 0 background, 1..K classes, :data:`IGNORE_LABEL`), the VOC
colour map, images read with an error that names the file (EXIF orientation applied, 16-bit
images scaled to 8 bits; :func:`image_size` gives the same size from the header), and path
safety: :func:`safe_stem` / :func:`safe_join` keep names taken from users' files (a COCO
``file_name``, a tags file's rows) inside the folder they are written to. Imports nothing else of
wsss_d2.

Label PNGs are written as 8-bit greyscale ("L") whose pixel values are the ids, so that every
Detectron2 tool reads them exactly: ``detectron2.data.detection_utils.read_image(path, "L")``
(used by Detectron2's ``DatasetMapper``, its DeepLab project, Mask2Former) converts a palette
PNG to luminance and would turn ids [0 4 5 255] into [0 15 53 220]. Palette PNGs (VOC's own
ground truth, older rounds) are still read right by :func:`read_label_png` (palette indices);
:func:`save_palette_png` writes a coloured copy for people to look at.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import shutil
import tempfile
import uuid

import numpy as np
from detectron2.data import detection_utils as d2_utils
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps

__all__ = [
    "IGNORE_LABEL",
    "voc_palette",
    "atomic_write_bytes",
    "atomic_directory",
    "save_label_png",
    "save_palette_png",
    "read_label_png",
    "read_image_checked",
    "check_label_ids",
    "image_size",
    "safe_stem",
    "safe_join",
    "file_sha256",
]

IGNORE_LABEL = 255

_INT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # PIL modes of 16/32-bit grey images
_HIGH_BIT_MODES = _INT_MODES + ("F",)
_BINARY_HINT = (
    "a binary or grey image mask (objects 255, or anti-aliased / JPEG edges)? wsss_d2 masks hold "
    "class ids: 0 background, 1..K the classes, 255 ignore"
)
_EXIF_ORIENTATION = 0x0112


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


def read_json(path: str) -> dict | list | None:
    """The JSON document of ``path``; None when there is no such file."""
    if not path or not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


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
    if img.mode not in ("P", "L", "1") + _INT_MODES:
        raise ValueError(f"label file {path} has mode {img.mode}; expected a palette/grey PNG")
    label = np.array(img)
    if label.dtype != np.uint8:
        # 16-bit (or 32-bit) ids: values above 255 would wrap around in uint8 (256 -> 0)
        if label.size and (label.max() > 255 or label.min() < 0):
            big = np.unique(label[(label > 255) | (label < 0)])
            raise ValueError(
                f"label file {path} is a {img.mode} image with ids outside 0..255 "
                f"({big[:8].tolist()}); wsss_d2 labels are 8-bit ids (0 background, 1..K, 255 "
                "ignore)"
            )
        label = label.astype(np.uint8)
    if expected_hw is not None and tuple(label.shape[:2]) != tuple(expected_hw):
        raise ValueError(
            f"label map {path} is {label.shape[1]}x{label.shape[0]} (WxH) but its image "
            f"{image_file or ''} is {expected_hw[1]}x{expected_hw[0]}"
        )
    return label


def _to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit / 32-bit / float grey image as 8-bit "L", scaled (PIL's convert clips at 255)."""
    a = np.asarray(img, dtype=np.float64)
    top = float(a.max()) if a.size else 0.0
    if img.mode == "F":
        scale = 255.0 if top <= 1.0 else 1.0  # floats in [0, 1], else already 0..255
    else:
        scale = 1.0 if top <= 255 else 255.0 / 65535.0  # 16-bit range
    return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8), mode="L")


def check_label_ids(
    label: np.ndarray, num_classes: int, path: str, what: str = "ground-truth mask"
) -> None:
    """``ValueError`` naming ``path`` and the values when ``label`` holds ids outside
    0..``num_classes``-1 other than :data:`IGNORE_LABEL` (``num_classes`` = K + 1)."""
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_LABEL)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise ValueError(
            f"{what} {path} holds ids {shown} outside 0..{num_classes - 1} (255 = ignore): "
            f"{_BINARY_HINT}"
        )


def read_image_checked(file_name: str, fmt: str) -> np.ndarray:
    """Read an image as Detectron2's ``read_image`` does (EXIF orientation applied, ``fmt`` as
    there), with 16-bit and float images scaled to 0..255 instead of clipped, and an error that
    names the file for missing / corrupt images."""
    try:
        with PathManager.open(file_name, "rb") as f:
            img = Image.open(f)
            img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode in _HIGH_BIT_MODES:
            img = _to_8bit(img)
        return d2_utils.convert_PIL_to_numpy(img, fmt)
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {file_name}") from None
    except Exception as e:  # PIL raises several types for truncated / non-image files
        raise OSError(f"cannot read image {file_name}: {type(e).__name__}: {e}") from e


def image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image as :func:`read_image_checked` returns its pixels: from the
    file header (no decoding), swapped when its EXIF orientation turns it by 90 degrees."""
    with PathManager.open(path, "rb") as f:
        img = Image.open(f)
        w, h = img.size
        try:
            orientation = img.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # a damaged EXIF block: Detectron2 ignores it too
            orientation = None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def safe_stem(relpath: str) -> str:
    """``relpath`` without extension, made relative and free of ``..`` so that a file named after
    it stays inside the folder it is written to: ``"a/000.png" -> "a/000"``,
    ``"../../etc/x.jpg" -> "etc/x"``, ``"/abs/y.png" -> "abs/y"``."""
    p = posixpath.normpath(str(relpath).replace(os.sep, "/"))
    parts = [c for c in p.split("/") if c not in ("", ".", "..")]
    if not parts:
        raise ValueError(f"file name {relpath!r} has no usable name")
    stem = "/".join(parts)
    return os.path.splitext(stem)[0] or stem


def safe_join(root: str, relpath: str, what: str = "file") -> str:
    """``root/relpath``, or ``ValueError`` if the result would lie outside ``root`` (an absolute
    ``relpath``, ``..`` components, a symlinked folder pointing elsewhere)."""
    base = os.path.realpath(root)
    path = os.path.realpath(os.path.join(base, relpath))
    if os.path.isabs(relpath) or os.path.commonpath([base, path]) != base:
        raise ValueError(f"{what} {relpath!r} would be written outside {root}")
    return os.path.join(root, relpath)


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes (hex), read in 4 MiB chunks."""
    h = hashlib.sha256()
    with PathManager.open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
