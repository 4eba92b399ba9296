"""The one CAM file format, read and written by every part of wsss_d2 that handles CAMs.

A CAM file ``<stem>.npz`` (compressed) holds:

- ``cams``: (k, H, W) float16, each map max-normalised to [0, 1] — only the image's k tags;
- ``keys``: (k,) int64 class ids 1..K of those maps (empty for an image without tags);
- ``hw``: (2,) int64 the image size (H, W); ``version``: file format version.

A folder of CAM files carries ``cams.json``, the fingerprint of the model and settings that made
them (:func:`check_cam_dir`), so that files of another model are never mixed in. Files are named
by :func:`~wsss_d2.io.rounds.label_stem` (a relative path may put them in sub-folders).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from typing import Sequence

import numpy as np
from detectron2.utils.file_io import PathManager

from .files import atomic_write_bytes, read_json, safe_join
from .rounds import fingerprint_diff, label_stem

__all__ = [
    "CAM_FILE_VERSION",
    "CAM_DIR_MANIFEST",
    "cam_file_path",
    "save_cam_file",
    "load_cam_file",
    "cam_file_ok",
    "check_cam_dir",
    "read_cam_manifest",
]

CAM_FILE_VERSION = 1
CAM_DIR_MANIFEST = "cams.json"


def cam_file_path(cam_dir: str, d: dict) -> str:
    """Where the CAM file of dataset dict ``d`` lives in ``cam_dir``."""
    return safe_join(cam_dir, label_stem(d) + ".npz", "CAM file")


def save_cam_file(path: str, cams: np.ndarray, keys: Sequence[int], hw: tuple[int, int]) -> None:
    """Atomically write (k, H, W) normalised CAMs of classes ``keys`` for an image of size ``hw``."""
    cams = np.asarray(cams)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cams.shape != (len(keys), *hw):
        raise ValueError(f"CAMs for {path} are {cams.shape}, expected {(len(keys), *hw)}")
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        cams=cams.astype(np.float16),
        keys=keys,
        hw=np.asarray(hw, dtype=np.int64),
        version=np.asarray(CAM_FILE_VERSION, dtype=np.int64),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_cam_file(
    path: str, expected_hw: tuple[int, int] | None = None, image_file: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CAM file -> ``(cams (k, H, W) float32, keys (k,) int64)``.

    Raises:
        FileNotFoundError: no such file.
        OSError: truncated / corrupt file or missing keys (the message names the file).
        ValueError: its size differs from ``expected_hw`` (names the CAM file and the image).
    """
    if not PathManager.isfile(path):
        raise FileNotFoundError(f"CAM file not found: {path}")
    try:
        with PathManager.open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            cams = z["cams"].astype(np.float32)
            keys = z["keys"].astype(np.int64)
            hw = tuple(int(v) for v in z["hw"])
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as e:
        raise OSError(
            f"cannot read CAM file {path} (truncated or corrupt?): " f"{type(e).__name__}: {e}"
        ) from e
    if cams.shape != (len(keys), *hw):
        raise OSError(
            f"CAM file {path} is inconsistent: cams {cams.shape}, keys {len(keys)}, " f"hw {hw}"
        )
    if expected_hw is not None and hw != tuple(expected_hw):
        raise ValueError(
            f"CAM file {path} is for a {hw[1]}x{hw[0]} (WxH) image but its image "
            f"{image_file or ''} is {expected_hw[1]}x{expected_hw[0]}"
        )
    return cams, keys


def cam_file_ok(path: str) -> bool:
    try:
        load_cam_file(path)
        return True
    except (OSError, ValueError):
        return False


def _cam_files(cam_dir: str) -> list[str]:
    return [
        os.path.join(r, n) for r, _, names in os.walk(cam_dir) for n in names if n.endswith(".npz")
    ]


def read_cam_manifest(cam_dir: str) -> dict | None:
    """The fingerprint ``cams.json`` of a CAM folder (None when the folder has none)."""
    return read_json(os.path.join(cam_dir, CAM_DIR_MANIFEST) if cam_dir else "")


def check_cam_dir(cam_dir: str, fingerprint: dict, overwrite: bool = False) -> None:
    """Make sure ``cam_dir`` holds CAMs of *this* model and settings before reusing its files.

    The first call writes ``cams.json`` with ``fingerprint``; a later call with a different
    fingerprint raises (naming the folder and the differing keys) unless ``overwrite``, which
    empties the folder. CAM files without a ``cams.json`` (of unknown origin) are refused the
    same way. Call it from the main process only.
    """
    os.makedirs(cam_dir, exist_ok=True)
    path = os.path.join(cam_dir, CAM_DIR_MANIFEST)
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    old = None
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
    files = _cam_files(cam_dir)
    if not overwrite and old is None and files:
        raise FileExistsError(
            f"CAM folder {cam_dir} holds {len(files)} CAM files of unknown origin (no "
            f"{CAM_DIR_MANIFEST}); pass --overwrite or another CAM_DIR"
        )
    if not overwrite and old is not None and old != fingerprint:
        keys = fingerprint_diff(old, fingerprint)
        raise FileExistsError(
            f"CAM folder {cam_dir} holds CAMs of another model or setting (differing: "
            f"{', '.join(keys)}; {path}); pass --overwrite or another CAM_DIR"
        )
    if overwrite:
        for name in files:
            os.remove(name)
    atomic_write_bytes(path, json.dumps(fingerprint, indent=2, sort_keys=True).encode())
