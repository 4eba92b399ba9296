"""Evaluators (registered in ``EVALUATOR_REGISTRY``)."""

from .coco_json import COCOSemSegJSONEvaluator, score_coco_semantic_json
from .metrics import confusion_matrix, metrics_from_confusion
from .pseudo_eval import PseudoLabelEvaluator, evaluate_round
from .registry import EVALUATOR_REGISTRY, build_evaluator, build_evaluators
from .sam_eval import SamBoxLabelingEvaluator
from .sem_seg import CAMEvaluator, WSSSSemSegEvaluator, sweep_thresholds

__all__ = [
    "EVALUATOR_REGISTRY",
    "build_evaluator",
    "build_evaluators",
    "confusion_matrix",
    "metrics_from_confusion",
    "WSSSSemSegEvaluator",
    "CAMEvaluator",
    "COCOSemSegJSONEvaluator",
    "PseudoLabelEvaluator",
    "SamBoxLabelingEvaluator",
    "evaluate_round",
    "score_coco_semantic_json",
    "sweep_thresholds",
]
