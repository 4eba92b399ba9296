"""Evaluator registry: ``cfg.WSSS.EVALUATORS`` names the evaluators a trainer builds.

A name is looked up in :data:`EVALUATOR_REGISTRY` first (wsss_d2's evaluators), then among
Detectron2's own evaluators (``detectron2.evaluation``: ``SemSegEvaluator``, ``COCOEvaluator``,
...), which are built as ``cls(dataset_name, output_dir=output_dir)``.
"""

import inspect

import detectron2.evaluation as d2_evaluation
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.utils.registry import Registry

__all__ = ["EVALUATOR_REGISTRY", "build_evaluator", "build_evaluators"]

EVALUATOR_REGISTRY = Registry("WSSS_EVALUATOR")
EVALUATOR_REGISTRY.__doc__ = """
Evaluators, built as ``EVALUATOR_REGISTRY.get(name)(cfg, dataset_name=..., output_dir=...)``
(``@configurable`` classes whose ``from_config(cls, cfg, dataset_name, output_dir)`` reads cfg).
"""


_D2_RESULT_KEYS = {"SemSegEvaluator": ("sem_seg",)}  # Detectron2's evaluators that we know


def _detectron2_evaluator(name: str):
    cls = getattr(d2_evaluation, name, None)
    if inspect.isclass(cls) and issubclass(cls, DatasetEvaluator) and cls is not DatasetEvaluator:
        return cls
    return None


def build_evaluator(cfg, name: str, dataset_name: str, output_dir: str | None = None):
    """The evaluator ``name`` (ours, else Detectron2's) for ``dataset_name``."""
    if name in EVALUATOR_REGISTRY:
        return EVALUATOR_REGISTRY.get(name)(cfg, dataset_name=dataset_name, output_dir=output_dir)
    cls = _detectron2_evaluator(name)
    if cls is None:
        ours = ", ".join(sorted(k for k, _ in EVALUATOR_REGISTRY))
        raise KeyError(
            f"WSSS.EVALUATORS: no evaluator named '{name}' in wsss_d2 ({ours}) or in "
            "detectron2.evaluation"
        )
    return cls(dataset_name, output_dir=output_dir)


def build_evaluators(cfg, dataset_name: str, output_dir: str | None = None) -> DatasetEvaluators:
    """Every evaluator in ``cfg.WSSS.EVALUATORS`` for ``dataset_name``. Two that report under
    the same key (``RESULT_KEYS``: ``COCOSemSegJSONEvaluator``, which scores as
    ``WSSSSemSegEvaluator`` does, and ``WSSSSemSegEvaluator``) are refused before any inference:
    Detectron2 would fail only after the whole dataset ran."""
    evaluators = [build_evaluator(cfg, n, dataset_name, output_dir) for n in cfg.WSSS.EVALUATORS]
    seen = {}
    for e in evaluators:
        keys = getattr(e, "RESULT_KEYS", None) or _D2_RESULT_KEYS.get(type(e).__name__, ())
        for k in keys:
            if k in seen:
                raise ValueError(
                    f"WSSS.EVALUATORS {tuple(cfg.WSSS.EVALUATORS)}: {seen[k]} and "
                    f"{type(e).__name__} both report '{k}' results: list only one (the one that "
                    "does more, e.g. COCOSemSegJSONEvaluator scores as WSSSSemSegEvaluator does)"
                )
            seen[k] = type(e).__name__
    return DatasetEvaluators(evaluators)
