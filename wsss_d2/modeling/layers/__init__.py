from .cross_image_affinity import CrossImageAffinity
from .grl import GradientReversal, GradientReversalFunction, grad_reverse, grl_schedule

__all__ = [
    "CrossImageAffinity",
    "GradientReversal",
    "GradientReversalFunction",
    "grad_reverse",
    "grl_schedule",
]
