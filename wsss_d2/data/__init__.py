"""Tag datasets (registered on import), mappers, the pair sampler and the train loader."""

from . import datasets  # noqa: F401  (registers the builtin datasets)
from .build import build_train_loader, load_train_dicts, register_with_round, train_round_dir
from .mappers import MAPPER_REGISTRY, TagDatasetMapper, build_mapper
from .samplers import PairTrainingSampler

__all__ = [
    "MAPPER_REGISTRY",
    "PairTrainingSampler",
    "TagDatasetMapper",
    "build_mapper",
    "build_train_loader",
    "load_train_dicts",
    "register_with_round",
    "train_round_dir",
]
