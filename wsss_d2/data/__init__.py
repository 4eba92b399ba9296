"""Datasets (registered on import) and mappers."""

from . import datasets  # noqa: F401
from .mappers import MAPPER_REGISTRY, TagDatasetMapper, build_mapper

__all__ = ["MAPPER_REGISTRY", "TagDatasetMapper", "build_mapper"]
