"""A label round made of the ground-truth masks: the fully supervised ceiling of a WSSS run.

The segmentors train on label rounds (``WSSS.PSEUDO.TRAIN_ROUND``) and their mappers never read
ground truth. :func:`write_gt_round` copies each image's ``sem_seg_file_name`` mask into a round
folder (ids 0..K, 255 ignore) through :class:`~wsss_d2.io.rounds.RoundWriter`, so the *same*
segmentor config trained on it gives the fully supervised number a weakly supervised one is
compared with (``tools/make_gt_round.py``). The manifest says ``"source": "ground_truth"``.

Like every round, it carries a fingerprint (:func:`gt_fingerprint`: the number of classes, the
dataset and a hash of the mask files' contents): a partial round of other masks is refused, not
resumed, and a complete one of the same masks is reused with ``reuse`` (``--resume``).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Iterable, Sequence

from ..io.files import file_sha256, read_label_png
from ..io.rounds import RoundWriter, check_unique_stems
from ..ops.progress import Progress
from .fingerprint import dataset_fingerprint
from .make_round import complete_round

logger = logging.getLogger(__name__)

__all__ = ["write_gt_round", "gt_fingerprint"]


def _check_masks(dicts: list[dict]) -> None:
    for d in dicts:
        if not d.get("sem_seg_file_name"):
            raise KeyError(
                f"image {d.get('file_name', '?')} has no ground-truth mask (sem_seg_file_name): "
                "a ground-truth round needs one for every image"
            )


def gt_fingerprint(dicts: Iterable[dict], num_classes: int, names: Sequence[str] = ()) -> dict:
    """What a ground-truth round depends on: ``num_classes`` (K + 1), the dataset (names, images,
    tags) and the SHA-256 of every mask file, in the images' order."""
    dicts = list(dicts)
    _check_masks(dicts)
    rows = sorted((str(d["file_name"]), file_sha256(d["sem_seg_file_name"])) for d in dicts)
    masks = hashlib.sha1(repr(rows).encode()).hexdigest()[:16]
    return {
        "source": "ground_truth",
        "settings": {"num_classes": int(num_classes)},
        "weights": {"masks": masks},
        "dataset": dataset_fingerprint(dicts, names),
    }


def write_gt_round(
    dicts: Iterable[dict],
    root: str,
    k: int,
    num_classes: int,
    overwrite: bool = False,
    names: Sequence[str] = (),
    reuse: bool = False,
    progress: bool = True,
) -> str:
    """Write round ``k`` under ``root`` with the ground-truth mask of every dict.

    Args:
        num_classes: K + 1 (background included); a mask with a larger id is refused.
        overwrite: write a complete round again (a partial one restarts from empty).
        reuse: return a complete round of the same fingerprint as it is (else it is refused).
    Raises:
        KeyError: a dict has no ``sem_seg_file_name`` (names the image).
        FileExistsError: a complete round without ``overwrite`` / ``reuse``, or a partial round
            of another fingerprint.
    Returns the complete round folder. Main process only (a small copy, no model).
    """
    dicts = list(dicts)
    check_unique_stems(dicts)
    fingerprint = gt_fingerprint(dicts, num_classes, names)
    done = complete_round(root, k, fingerprint, reuse, overwrite)
    if done is not None:
        return done
    writer = RoundWriter(root, k, num_classes, overwrite=overwrite, fingerprint=fingerprint)
    bar = Progress(len(dicts), "ground-truth round", enabled=progress)
    try:
        for d in dicts:
            if not writer.is_done(d):
                hw = (d["height"], d["width"]) if "height" in d and "width" in d else None
                writer.write(d, read_label_png(d["sem_seg_file_name"], hw, d["file_name"]))
            bar.update(1)
        return writer.finalize(dicts, meta={"source": "ground_truth", "datasets": list(names)})
    finally:
        bar.close()
        writer.close()  # finalize gave the round's lock up; an error gives it up here
