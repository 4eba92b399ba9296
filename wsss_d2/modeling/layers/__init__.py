from .cross_image_affinity import CrossImageAffinity  # noqa: F401
from .grl import (  # noqa: F401
    GradientReversal,
    GradientReversalFunction,
    grad_reverse,
    grl_schedule,
)
from .pamr import PAMR  # noqa: F401
