"""Evaluators (registered in ``EVALUATOR_REGISTRY``)."""

from .metrics import confusion_matrix, metrics_from_confusion
from .pseudo_eval import PseudoLabelEvaluator, evaluate_round  # noqa: F401
from .registry import EVALUATOR_REGISTRY, build_evaluators
from .sam_eval import SamBoxLabelingEvaluator  # noqa: F401  (registers it)
from .sem_seg import CAMEvaluator, WSSSSemSegEvaluator, sweep_thresholds

__all__ = [
    "EVALUATOR_REGISTRY",
    "build_evaluators",
    "confusion_matrix",
    "metrics_from_confusion",
    "WSSSSemSegEvaluator",
    "CAMEvaluator",
    "sweep_thresholds",
]
