from .cam import CAMClassifier, normalize_cams

__all__ = ["CAMClassifier", "normalize_cams"]
