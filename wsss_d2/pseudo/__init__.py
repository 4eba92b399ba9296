"""Pseudo-label tools: CAM inference, refinement, label rounds, SAM-box labeling."""

from .cam_inference import CAMInferenceEngine
from .labels import LabelParams, cams_to_label, make_round
from .sam_labeler import SamBoxLabeler, label_dataset, load_sam

__all__ = [
    "CAMInferenceEngine",
    "LabelParams",
    "SamBoxLabeler",
    "cams_to_label",
    "label_dataset",
    "load_sam",
    "make_round",
]
