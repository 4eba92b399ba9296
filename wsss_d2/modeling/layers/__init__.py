from .cross_image_affinity import CrossImageAffinity
from .domain_assign import (
    erase_mask,
    frozen_norm_stats,
    mask_assign,
    own_class_target,
    simple_assign,
    strongest_class_only,
)
from .grl import GradientReversal, GradientReversalFunction, grad_reverse, grl_schedule
from .pixel_pairs import PairPaths, pair_offsets, path_points

__all__ = [
    "CrossImageAffinity",
    "GradientReversal",
    "GradientReversalFunction",
    "PairPaths",
    "erase_mask",
    "frozen_norm_stats",
    "grad_reverse",
    "grl_schedule",
    "mask_assign",
    "own_class_target",
    "pair_offsets",
    "path_points",
    "simple_assign",
    "strongest_class_only",
]
