"""Pseudo-label rounds: a folder of label-id PNGs plus ``manifest.json``.

Layout under a root folder (usually ``OUTPUT_DIR/pseudo_labels``)::

    round_01/              complete round: <stem>.png for every image + manifest.json
    round_02.partial/      a round being written (or interrupted): PNGs finished so far

A round is written into ``round_KK.partial`` (each PNG itself written atomically), and renamed to
``round_KK`` only once every image has its label and the manifest is written. A crash therefore
never leaves a complete-looking round behind, and re-opening the same round resumes: images whose
PNG exists in the partial folder are skipped. A complete round is never overwritten unless asked.

Fingerprints: a writer opened with ``fingerprint=`` (what the labels depend on: the settings that
change a label, the weights' hash, the dataset) stores it as ``round_KK.partial/fingerprint.json``
and in the manifest. A partial round of another fingerprint is refused with an error that names
the differing keys — it is never resumed into a mix of two kinds of labels — and ``overwrite``
empties it first. One process writes a round at a time: ``round_KK.lock`` in the root
(:class:`~wsss_d2.io.locks.FolderLock`).

Label files are named by :func:`label_stem`: the dict's ``label_stem`` (the image's path relative
to its dataset's image folder, without extension, so ``a/000.png`` and ``b/000.png`` get two
files) or else the image's file name without folder; :func:`check_unique_stems` finds two images
that would share a file before any work is done.
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
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .files import (
    IGNORE_LABEL,
    atomic_write_bytes,
    read_json,
    read_label_png,
    safe_join,
    safe_stem,
    save_label_png,
)
from .locks import FolderLock

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
    "check_unique_stems",
    "fingerprint_diff",
    "complete_round_fingerprint",
    "partial_round_problem",
    "FINGERPRINT",
]

MANIFEST = "manifest.json"
FINGERPRINT = "fingerprint.json"
_ROUND_RE = re.compile(r"^round_(\d+)$")


def round_dir(root: str, k: int) -> str:
    """Folder of complete round ``k`` under ``root``."""
    return os.path.join(root, f"round_{k:02d}")


def label_stem(d: dict) -> str:
    """The label file stem of a dataset dict: its ``label_stem`` (a relative path, made safe by
    :func:`~wsss_d2.io.files.safe_stem`), else its image file name without folder and
    extension."""
    if d.get("label_stem"):
        return safe_stem(d["label_stem"])
    return os.path.splitext(os.path.basename(d["file_name"]))[0]


def check_unique_stems(dicts: Iterable[dict]) -> None:
    """``ValueError`` naming both images when two dicts would share a label (or CAM) file."""
    seen: dict[str, str] = {}
    for d in dicts:
        stem = label_stem(d)
        if stem in seen and seen[stem] != d["file_name"]:
            raise ValueError(
                f"images {seen[stem]} and {d['file_name']} would share the label file "
                f"'{stem}.png'; give them different names (or a 'label_stem' each)"
            )
        seen.setdefault(stem, d["file_name"])


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flat(v, key))
        else:
            out[key] = v
    return out


def fingerprint_diff(old: dict | None, new: dict | None) -> list[str]:
    """The (dotted) keys whose values differ between two fingerprints, sorted."""
    a = _flat(json.loads(json.dumps(old or {}, default=str)))
    b = _flat(json.loads(json.dumps(new or {}, default=str)))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def _describe_diff(old: dict | None, new: dict | None, limit: int = 6) -> str:
    a = _flat(json.loads(json.dumps(old or {}, default=str)))
    b = _flat(json.loads(json.dumps(new or {}, default=str)))
    keys = fingerprint_diff(old, new)
    parts = [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys[:limit]]
    more = f" (and {len(keys) - limit} more)" if len(keys) > limit else ""
    return "; ".join(parts) + more


def partial_round_problem(root: str, k: int, fingerprint: dict) -> str | None:
    """Why partial round ``k`` may not be resumed with ``fingerprint`` (None: it may, or there is
    none): labels of another fingerprint, or labels without one."""
    partial = round_dir(root, k) + ".partial"
    if not os.path.isdir(partial):
        return None
    fp_file = os.path.join(partial, FINGERPRINT)
    old = read_json(fp_file)
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    if old is None:
        if any(n.endswith(".png") for _, _, names in os.walk(partial) for n in names):
            return (
                f"partial pseudo-label round {partial} holds labels of unknown settings (no "
                f"{FINGERPRINT}); pass --overwrite to restart it"
            )
        return None
    if fingerprint_diff(old, fingerprint):
        return (
            f"partial pseudo-label round {partial} was written with other settings "
            f"({_describe_diff(old, fingerprint)}); resuming it would mix two kinds of labels. "
            "Pass --overwrite to restart it, or run with the settings it was made with"
        )
    return None


def complete_round_fingerprint(root: str, k: int) -> dict | None:
    """The fingerprint in complete round ``k``'s manifest (None: no such round, or none)."""
    folder = round_dir(root, k)
    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        return None
    return read_manifest(folder).get("fingerprint")


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
    dataset_dicts = list(dataset_dicts)
    check_unique_stems(dataset_dicts)
    out = []
    for d in dataset_dicts:
        path = safe_join(folder, label_stem(d) + ".png", "label file")
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

    Several processes may write into the same round (each its shard): the main process opens it
    (``prepare=True``: checks, lock, fingerprint), the others after a barrier with
    ``prepare=False`` (paths only); only the main process calls :meth:`finalize`.

    Args:
        fingerprint: what the labels depend on (module docstring); None: not checked.
        overwrite: write a complete round again, and restart a partial one from empty.
    """

    def __init__(
        self,
        root: str,
        k: int,
        num_classes: int,
        overwrite: bool = False,
        *,
        fingerprint: dict | None = None,
        prepare: bool = True,
    ):
        self.root = root
        self.k = int(k)
        self.num_classes = int(num_classes)  # K + 1, background included
        self.final_dir = round_dir(root, self.k)
        self.partial_dir = self.final_dir + ".partial"
        self.overwrite = overwrite
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str)) if fingerprint else None
        self.lock = FolderLock(
            root, f"writing pseudo-label round {self.k}", f"round_{self.k:02d}.lock"
        )
        if prepare:
            self._prepare()

    def _prepare(self) -> None:
        if os.path.isfile(os.path.join(self.final_dir, MANIFEST)) and not self.overwrite:
            raise FileExistsError(
                f"pseudo-label round {self.final_dir} is already complete; pass --overwrite "
                "(or overwrite=True) to write it again"
            )
        # the ranks of one run share the round: only the main process locks, empties and
        # records it (use open_round to have the others wait for that)
        main = comm.is_main_process()
        if main:
            self.lock.acquire()
        try:
            if self.overwrite and main and os.path.isdir(self.partial_dir):
                shutil.rmtree(self.partial_dir)
                logger.info("--overwrite: emptied the partial round %s", self.partial_dir)
            elif self.fingerprint is not None and not self.overwrite:
                problem = partial_round_problem(self.root, self.k, self.fingerprint)
                if problem:
                    raise FileExistsError(problem)
            os.makedirs(self.partial_dir, exist_ok=True)
            if self.fingerprint is not None and main:
                atomic_write_bytes(
                    os.path.join(self.partial_dir, FINGERPRINT),
                    json.dumps(self.fingerprint, indent=2).encode(),
                )
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Give up the round's lock (finalize does it too)."""
        self.lock.release()

    def label_path(self, d: dict) -> str:
        return safe_join(self.partial_dir, label_stem(d) + ".png", "label file")

    def is_done(self, d: dict) -> bool:
        """True when this image's label was already written in an earlier (interrupted) run."""
        return os.path.isfile(self.label_path(d))

    def pending(self, dicts: list[dict]) -> list[dict]:
        """This rank's shard of ``dicts`` (``dicts[rank::world_size]``) without the images whose
        labels are already written (logged when an interrupted round resumes)."""
        shard = dicts[comm.get_rank() :: comm.get_world_size()]
        todo = [d for d in shard if not self.is_done(d)]
        if len(todo) < len(shard):
            logger.info(
                "round %d: %d of %d labels already written, resuming",
                self.k,
                len(shard) - len(todo),
                len(shard),
            )
        return todo

    def finish(self, dicts: list[dict], meta: dict | None = None, finalize: bool = True):
        """After every rank wrote its shard: the main process finalizes the round (when
        ``finalize``) and every rank returns its folder (None when not ``finalize``)."""
        comm.synchronize()  # every rank's labels are on disk before the round is checked
        if not finalize:
            return None
        if comm.is_main_process():
            self.finalize(dicts, meta)
        comm.synchronize()
        return self.final_dir

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
        check_unique_stems(expected)
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
        if self.fingerprint is not None:
            manifest["fingerprint"] = self.fingerprint
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
        self.close()
        logger.info(
            "pseudo-label round %d complete: %s (%d images)", self.k, self.final_dir, len(expected)
        )
        return self.final_dir
