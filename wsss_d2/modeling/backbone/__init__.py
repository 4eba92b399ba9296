from .efficientnet import EfficientNetLite0, build_efficientnet_lite0_backbone
from .resnet_cam import build_resnet_cam_backbone
from .tiny import TinyBackbone, build_tiny_backbone

__all__ = [
    "EfficientNetLite0",
    "TinyBackbone",
    "build_efficientnet_lite0_backbone",
    "build_resnet_cam_backbone",
    "build_tiny_backbone",
]
