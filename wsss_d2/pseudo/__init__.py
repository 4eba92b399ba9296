"""Pseudo-label tools: label rounds, CAM inference, refinement, SAM-box labeling."""

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
