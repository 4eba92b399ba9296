from .grl import GradientReversal, GradientReversalFunction, grad_reverse, grl_schedule  # noqa: F401
from .pamr import PAMR  # noqa: F401
from .cross_image_affinity import CrossImageAffinity  # noqa: F401
