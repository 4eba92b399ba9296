"""Pseudo-label rounds: a folder of label-id PNGs plus ``manifest.json``.

Layout under a root folder (usually ``OUTPUT_DIR/pseudo_labels``)::

    round_01/              complete round: <stem>.png for every image + manifest.json
    round_02.partial/      a round being written (or interrupted): PNGs finished so far

A round is written into ``round_KK.partial`` (each PNG itself written atomically), and renamed to
``round_KK`` only once every image has its label and the manifest is written. A crash therefore
never leaves a complete-looking round behind, and re-opening the same round resumes: images whose
PNG exists in the partial folder are skipped. A complete round is never overwritten unless asked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from typing import Iterable

import numpy as np
from detectron2.utils.file_io import PathManager

from .files import IGNORE_LABEL, atomic_write_bytes, read_label_png, save_label_png

logger = logging.getLogger(__name__)

__all__ = [
    "RoundWriter",
    "round_dir",
    "list_complete_rounds",
    "latest_complete_round",
    "label_stem",
    "attach_round",
    "read_manifest",
    "config_hash",
]

MANIFEST = "manifest.json"
_ROUND_RE = re.compile(r"^round_(\d+)$")


def round_dir(root: str, k: int) -> str:
    """Folder of complete round ``k`` under ``root``."""
    return os.path.join(root, f"round_{k:02d}")


def label_stem(d: dict) -> str:
    """The label file stem of a dataset dict: its image file name without folder and extension."""
    return os.path.splitext(os.path.basename(d["file_name"]))[0]


def config_hash(cfg) -> str:
    """A short stable hash of a config (CfgNode or dict), stored in manifests and done-markers."""
    text = cfg.dump() if hasattr(cfg, "dump") else json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def read_manifest(path: str) -> dict:
    """The manifest of a complete round folder."""
    with PathManager.open(os.path.join(path, MANIFEST)) as f:
        return json.load(f)


def list_complete_rounds(root: str) -> list[tuple[int, str]]:
    """``[(k, folder)]`` of the complete rounds under ``root``, by round number."""
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _ROUND_RE.match(name)
        if m and os.path.isfile(os.path.join(root, name, MANIFEST)):
            out.append((int(m.group(1)), os.path.join(root, name)))
    return sorted(out)


def latest_complete_round(root: str) -> tuple[int, str] | None:
    """The highest complete round under ``root``, or None."""
    rounds = list_complete_rounds(root)
    return rounds[-1] if rounds else None


def attach_round(dataset_dicts: Iterable[dict], folder: str) -> list[dict]:
    """Copies of ``dataset_dicts`` whose ``pseudo_seg_file_name`` points into round ``folder``.

    Raises ``FileNotFoundError`` naming the first image that has no label in the round.
    """
    out = []
    for d in dataset_dicts:
        path = os.path.join(folder, label_stem(d) + ".png")
        if not PathManager.isfile(path):
            raise FileNotFoundError(
                f"pseudo-label round {folder} has no label for image {d['file_name']} "
                f"(expected {path})"
            )
        out.append({**d, "pseudo_seg_file_name": path})
    return out


class RoundWriter:
    """Write one pseudo-label round atomically and resumably.

    Example::

        w = RoundWriter(root, k=1, num_classes=21)
        for d in dicts:
            if not w.is_done(d):
                w.write(d, label)          # (H, W) uint8, 0 bg, 1..K, 255 ignore
        w.finalize(expected=dicts, meta={"source": "cam", "weights": ...})

    Several processes may write into the same round (each its shard); only one (the main
    process) calls :meth:`finalize`, after a barrier.
    """

    def __init__(self, root: str, k: int, num_classes: int, overwrite: bool = False):
        self.root = root
        self.k = int(k)
        self.num_classes = int(num_classes)  # K + 1, background included
        self.final_dir = round_dir(root, self.k)
        self.partial_dir = self.final_dir + ".partial"
        if os.path.isfile(os.path.join(self.final_dir, MANIFEST)) and not overwrite:
            raise FileExistsError(
                f"pseudo-label round {self.final_dir} is already complete; pass --overwrite "
                "(or overwrite=True) to write it again"
            )
        self.overwrite = overwrite
        os.makedirs(self.partial_dir, exist_ok=True)

    def label_path(self, d: dict) -> str:
        return os.path.join(self.partial_dir, label_stem(d) + ".png")

    def is_done(self, d: dict) -> bool:
        """True when this image's label was already written in an earlier (interrupted) run."""
        return os.path.isfile(self.label_path(d))

    def write(self, d: dict, label: np.ndarray) -> str:
        """Write an image's label map; checks its size against the dict's height/width."""
        label = np.asarray(label)
        hw = (d.get("height"), d.get("width"))
        if None not in hw and tuple(label.shape) != tuple(hw):
            raise ValueError(
                f"pseudo label for {d['file_name']} is {label.shape} but the image is {hw}"
            )
        if label.size and label[label != IGNORE_LABEL].max(initial=0) >= self.num_classes:
            raise ValueError(
                f"pseudo label for {d['file_name']} has class id "
                f"{int(label[label != IGNORE_LABEL].max())} >= {self.num_classes}"
            )
        path = self.label_path(d)
        save_label_png(path, label.astype(np.uint8))
        return path

    def finalize(self, expected: Iterable[dict], meta: dict | None = None) -> str:
        """Check that every expected image has a label, write the manifest, rename into place."""
        expected = list(expected)
        stems = [label_stem(d) for d in expected]
        if len(set(stems)) != len(stems):
            raise ValueError("two images share a file stem; label files would collide")
        missing = [d["file_name"] for d in expected if not self.is_done(d)]
        if missing:
            raise RuntimeError(
                f"round {self.partial_dir} is incomplete: {len(missing)} images have no label, "
                f"first {missing[0]}"
            )
        counts = np.zeros(self.num_classes + 1, dtype=np.int64)  # last bin: ignore
        for d in expected:
            lab = read_label_png(self.label_path(d)).ravel()
            lab = np.where(lab == IGNORE_LABEL, self.num_classes, lab)
            counts += np.bincount(lab, minlength=self.num_classes + 1)[: self.num_classes + 1]
        total = int(counts.sum())
        manifest = {
            "round": self.k,
            "num_images": len(expected),
            "num_classes": self.num_classes,
            "pixels_per_class": counts[:-1].tolist(),
            "ignored_fraction": float(counts[-1] / max(total, 1)),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            **(meta or {}),
        }
        atomic_write_bytes(
            os.path.join(self.partial_dir, MANIFEST), json.dumps(manifest, indent=2).encode()
        )
        if os.path.isdir(self.final_dir):  # only reachable with overwrite=True
            trash = self.final_dir + f".old_{int(time.time())}"
            os.rename(self.final_dir, trash)
            os.rename(self.partial_dir, self.final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(self.partial_dir, self.final_dir)
        logger.info(
            "pseudo-label round %d complete: %s (%d images)", self.k, self.final_dir, len(expected)
        )
        return self.final_dir
