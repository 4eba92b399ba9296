from .tiny import TinyBackbone, build_tiny_backbone

__all__ = ["TinyBackbone", "build_tiny_backbone"]
