from .cian import CIANHead
from .deeplabv2 import DeepLabASPPHead, DeepLabLargeFOVHead, DeepLabV2Head
from .domain_classifier import MultiHeadDomainClassifier, balanced_domain_loss
from .irn import IRNBoundaryHead, IRNDisplacementHead

__all__ = [
    "CIANHead",
    "DeepLabASPPHead",
    "DeepLabLargeFOVHead",
    "DeepLabV2Head",
    "IRNBoundaryHead",
    "IRNDisplacementHead",
    "MultiHeadDomainClassifier",
    "balanced_domain_loss",
]
