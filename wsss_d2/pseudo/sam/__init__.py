"""SAM-box labeling: boxes (ground truth, CAMs, a detector's files) -> Segment Anything masks ->
semantic labels. Importing this package registers the box sources."""

from . import box_sources, file_boxes  # noqa: F401  (register the box sources)
from .boxes import BOX_SOURCE_REGISTRY, BoxSource, ImageBoxes, build_box_source
from .labeler import SamBoxLabeler, label_dataset
from .model import SAM_BUILDERS, build_sam_tiny, load_sam
from .paste import paste_masks
from .records import RECORDS_DIR, SamLabelResult, read_record

__all__ = [
    "BOX_SOURCE_REGISTRY",
    "BoxSource",
    "ImageBoxes",
    "RECORDS_DIR",
    "SAM_BUILDERS",
    "SamBoxLabeler",
    "SamLabelResult",
    "build_box_source",
    "build_sam_tiny",
    "label_dataset",
    "load_sam",
    "paste_masks",
    "read_record",
]
