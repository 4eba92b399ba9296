"""Pseudo-label tools: CAM inference, CAM -> label refiners, label rounds, SAM-box labeling."""

from .cam_inference import CAMInferenceEngine
from .irn_round import make_irn_round
from .make_round import make_round, write_cam_round, write_segmentation_round
from .refine import REFINER_REGISTRY, Refiner, build_refiner
from .sam import SamBoxLabeler, label_dataset, load_sam

__all__ = [
    "CAMInferenceEngine",
    "REFINER_REGISTRY",
    "Refiner",
    "SamBoxLabeler",
    "build_refiner",
    "label_dataset",
    "load_sam",
    "make_irn_round",
    "make_round",
    "write_cam_round",
    "write_segmentation_round",
]
