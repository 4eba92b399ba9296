"""The training data: a pseudo-label round attached to the dicts, and the train loader.

:func:`build_train_loader` is what ``WSSSTrainer.build_train_loader`` returns: Detectron2's
train loader over :func:`load_train_dicts`, with :class:`~wsss_d2.data.samplers.PairTrainingSampler`
as its sampler when ``DATALOADER.PAIR_SAMPLING`` is set (CIAN's query/reference groups) and
Detectron2's own sampler (``DATALOADER.SAMPLER_TRAIN``) otherwise.

A training config is pointed at a pseudo-label round in two ways, both built on
:func:`wsss_d2.io.rounds.attach_round` (every image must have a label
in the round, or a ``FileNotFoundError`` names the first one that does not):

- config: ``WSSS.PSEUDO.TRAIN_ROUND: <round folder>`` (empty: the latest complete round under
  ``WSSS.PSEUDO.ROOT``, itself ``OUTPUT_DIR/pseudo_labels`` when empty; no round at all: the dicts
  are returned as they are). :func:`load_train_dicts` (used by ``WSSSTrainer.build_train_loader``
  and :func:`build_train_loader`) attaches it to the dicts of
  ``DATASETS.TRAIN``. A hook that writes a new round sets this key and rebuilds the loader.
- registry: ``register_with_round("voc_train_r1", "voc_2012_train_aug", folder)`` registers a
  dataset whose dicts carry the round; name it in ``DATASETS.TRAIN``.
"""

from __future__ import annotations

import logging
import os

from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..io.rounds import attach_round, latest_complete_round
from .mappers import build_mapper
from .samplers import PairTrainingSampler

logger = logging.getLogger(__name__)

__all__ = ["build_train_loader", "load_train_dicts", "register_with_round", "train_round_dir"]


def train_round_dir(cfg) -> str:
    """The round folder training uses: ``WSSS.PSEUDO.TRAIN_ROUND``, else the latest complete round
    under ``WSSS.PSEUDO.ROOT`` (``OUTPUT_DIR/pseudo_labels`` when empty), else ""."""
    p = cfg.WSSS.PSEUDO
    if p.TRAIN_ROUND:
        if not PathManager.isdir(p.TRAIN_ROUND):
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


def build_pair_sampler(cfg, dicts: list[dict]) -> PairTrainingSampler:
    """The :class:`PairTrainingSampler` of ``DATALOADER.PAIR_SAMPLING`` for ``dicts``, after
    checking that every process's batch holds whole query/reference groups."""
    group = 1 + cfg.MODEL.CIAN.NUM_REFS
    per_process = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    if per_process % group != 0:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH per process ({per_process}) must be a multiple of the pair "
            f"group size 1 + MODEL.CIAN.NUM_REFS = {group}"
        )
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        raise ValueError("DATALOADER.ASPECT_RATIO_GROUPING would split the pair groups; set False")
    return PairTrainingSampler(
        [d.get("tags", []) for d in dicts],
        group_size=group,
        mode=cfg.DATALOADER.PAIR_SAMPLING,
        seed=cfg.SEED if cfg.SEED >= 0 else None,
        strict=cfg.DATALOADER.PAIR_STRICT,
        names=[d["file_name"] for d in dicts],
    )


def build_train_loader(cfg, mapper=None):
    """Detectron2's train loader over :func:`load_train_dicts` (module docstring)."""
    mapper = build_mapper(cfg, is_train=True) if mapper is None else mapper
    dicts = load_train_dicts(cfg)
    sampler = build_pair_sampler(cfg, dicts) if cfg.DATALOADER.PAIR_SAMPLING else None
    return build_detection_train_loader(cfg, mapper=mapper, dataset=dicts, sampler=sampler)
