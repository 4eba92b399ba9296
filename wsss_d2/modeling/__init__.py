"""Backbones, meta-architectures, heads and layers (registered on import)."""

from . import backbone, heads, layers, meta_arch  # noqa: F401
from .meta_arch import CAMClassifier

__all__ = ["CAMClassifier"]
