"""The bottom layer: files, label rounds and the CAM file format (imports nothing else of wsss_d2)."""

from .cam_files import cam_file_path, check_cam_dir, load_cam_file, save_cam_file
from .files import (
    IGNORE_LABEL,
    atomic_directory,
    atomic_write_bytes,
    read_image_checked,
    read_label_png,
    save_label_png,
    save_palette_png,
    voc_palette,
)
from .rounds import (
    MANIFEST,
    RoundWriter,
    attach_round,
    config_hash,
    label_stem,
    latest_complete_round,
    list_complete_rounds,
    read_manifest,
    round_dir,
)

__all__ = [
    "IGNORE_LABEL",
    "MANIFEST",
    "RoundWriter",
    "atomic_directory",
    "atomic_write_bytes",
    "attach_round",
    "cam_file_path",
    "check_cam_dir",
    "config_hash",
    "label_stem",
    "latest_complete_round",
    "list_complete_rounds",
    "load_cam_file",
    "read_image_checked",
    "read_label_png",
    "read_manifest",
    "round_dir",
    "save_cam_file",
    "save_label_png",
    "save_palette_png",
    "voc_palette",
]
