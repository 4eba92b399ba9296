"""wsss_d2: weakly-supervised semantic segmentation for Detectron2.

Importing the package registers its datasets, mappers, backbones, meta-architectures, heads,
evaluators and hooks in Detectron2's (and its own) registries; nothing else happens on import.
"""

from . import data, engine, evaluation, modeling, pseudo  # noqa: F401
from .config import add_wsss_config

__version__ = "0.1.0"
__all__ = ["add_wsss_config"]
