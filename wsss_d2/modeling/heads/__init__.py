from .cian import CIANHead
from .deeplabv2 import DeepLabASPPHead, DeepLabLargeFOVHead, DeepLabV2Head
from .domain_classifier import MultiHeadDomainClassifier, balanced_domain_loss

__all__ = [
    "CIANHead",
    "DeepLabASPPHead",
    "DeepLabLargeFOVHead",
    "DeepLabV2Head",
    "MultiHeadDomainClassifier",
    "balanced_domain_loss",
]
