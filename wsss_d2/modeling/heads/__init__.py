from .cian import CIANHead  # noqa: F401
from .deeplabv2 import DeepLabV2Head  # noqa: F401
from .domain_classifier import MultiHeadDomainClassifier, balanced_domain_loss  # noqa: F401
