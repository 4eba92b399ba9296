from .cam import CAMClassifier, normalize_cams
from .cian import CIANSegmentor  # noqa: F401
from .irn import IRNet  # noqa: F401
from .plda import PLDA  # noqa: F401
from .recam import ReCAM  # noqa: F401
from .segmentor import WSSSSegmentor  # noqa: F401

__all__ = ["CAMClassifier", "normalize_cams"]
