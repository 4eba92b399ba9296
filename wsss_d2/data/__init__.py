"""Datasets (registered on import) and mappers."""

from . import datasets  # noqa: F401
from .mappers import MAPPER_REGISTRY, TagDatasetMapper, build_mapper
from .pseudo_round import load_train_dicts, register_with_round  # noqa: F401
from .samplers import PairTrainingSampler, build_pair_train_loader  # noqa: F401

__all__ = ["MAPPER_REGISTRY", "TagDatasetMapper", "build_mapper"]
