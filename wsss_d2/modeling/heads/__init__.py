from .domain_classifier import MultiHeadDomainClassifier, balanced_domain_loss  # noqa: F401
