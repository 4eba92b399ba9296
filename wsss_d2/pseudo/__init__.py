"""Pseudo-label tools: label rounds, CAM inference, refinement, SAM-box labeling."""

from .cam_inference import CAMInferenceEngine, load_cam_file, save_cam_file  # noqa: F401
from .crf import CRFParams, crf_inference_label, map_in_pool  # noqa: F401
from .labels import LabelParams, cams_to_label, make_round  # noqa: F401
from .rounds import (
    RoundWriter,
    attach_round,
    config_hash,
    label_stem,
    latest_complete_round,
    list_complete_rounds,
    read_manifest,
    round_dir,
)
from .sam_labeler import SamBoxLabeler, label_dataset, load_sam  # noqa: F401

__all__ = [
    "RoundWriter",
    "attach_round",
    "config_hash",
    "label_stem",
    "latest_complete_round",
    "list_complete_rounds",
    "read_manifest",
    "round_dir",
]
