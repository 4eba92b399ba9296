"""Point a training config at a pseudo-label round.

Two ways, both built on :func:`wsss_d2.pseudo.rounds.attach_round` (every image must have a label
in the round, or a ``FileNotFoundError`` names the first one that does not):

- config: ``WSSS.PSEUDO.TRAIN_ROUND: <round folder>`` (empty: the latest complete round under
  ``WSSS.PSEUDO.ROOT``, itself ``OUTPUT_DIR/pseudo_labels`` when empty; no round at all: the dicts
  are returned as they are). :func:`load_train_dicts` (used by ``WSSSTrainer.build_train_loader``
  and the pair loaders of ``wsss_d2.data.samplers``) attaches it to the dicts of
  ``DATASETS.TRAIN``. A hook that writes a new round sets this key and rebuilds the loader.
- registry: ``register_with_round("voc_train_r1", "voc_2012_train_aug", folder)`` registers a
  dataset whose dicts carry the round; name it in ``DATASETS.TRAIN``.
"""

from __future__ import annotations

import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts

from ..io.rounds import attach_round, latest_complete_round

logger = logging.getLogger(__name__)

__all__ = ["load_train_dicts", "register_with_round", "train_round_dir"]


def train_round_dir(cfg) -> str:
    """The round folder training uses: ``WSSS.PSEUDO.TRAIN_ROUND``, else the latest complete round
    under ``WSSS.PSEUDO.ROOT`` (``OUTPUT_DIR/pseudo_labels`` when empty), else ""."""
    p = cfg.WSSS.PSEUDO
    if p.TRAIN_ROUND:
        if not os.path.isdir(p.TRAIN_ROUND):
            raise FileNotFoundError(f"WSSS.PSEUDO.TRAIN_ROUND folder not found: {p.TRAIN_ROUND}")
        return p.TRAIN_ROUND
    latest = latest_complete_round(p.ROOT or os.path.join(cfg.OUTPUT_DIR, "pseudo_labels"))
    return latest[1] if latest else ""


def load_train_dicts(cfg) -> list[dict]:
    """The dicts of ``cfg.DATASETS.TRAIN`` with the training round (:func:`train_round_dir`)."""
    dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    folder = train_round_dir(cfg)
    if folder:
        dicts = attach_round(dicts, folder)
        logger.info("training on pseudo-label round %s (%d images)", folder, len(dicts))
    return dicts


def register_with_round(name: str, base_name: str, round_dir: str) -> None:
    """Register ``name``: the dicts of dataset ``base_name`` with the labels of ``round_dir``.

    The metadata of ``base_name`` is copied (class names, colours, ignore label, evaluator type).
    Loading is lazy, as for every Detectron2 dataset.
    """
    if base_name not in DatasetCatalog.list():
        raise KeyError(f"register_with_round: base dataset '{base_name}' is not registered")
    DatasetCatalog.register(name, lambda: attach_round(DatasetCatalog.get(base_name), round_dir))
    meta = {k: v for k, v in MetadataCatalog.get(base_name).as_dict().items() if k != "name"}
    MetadataCatalog.get(name).set(**meta, pseudo_round=round_dir)
