"""Evaluator registry: ``cfg.WSSS.EVALUATORS`` names the evaluators a trainer builds."""

from detectron2.evaluation import DatasetEvaluators
from detectron2.utils.registry import Registry

__all__ = ["EVALUATOR_REGISTRY", "build_evaluators"]

EVALUATOR_REGISTRY = Registry("WSSS_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Evaluators, built as ``EVALUATOR_REGISTRY.get(name)(cfg, dataset_name=..., output_dir=...)``
(``@configurable`` classes whose ``from_config(cls, cfg, dataset_name, output_dir)`` reads cfg).
"""


def build_evaluators(cfg, dataset_name: str, output_dir: str | None = None) -> DatasetEvaluators:
    """Every evaluator in ``cfg.WSSS.EVALUATORS`` for ``dataset_name``."""
    evs = [
        EVALUATOR_REGISTRY.get(n)(cfg, dataset_name=dataset_name, output_dir=output_dir)
        for n in cfg.WSSS.EVALUATORS
    ]
    return DatasetEvaluators(evs)
