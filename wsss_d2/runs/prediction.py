"""``tools/predict.py`` and ``tools/visualize.py``: a trained model on images, a dataset's panels."""

from __future__ import annotations

import logging

from detectron2.utils.logger import setup_logger

from ..config import get_wsss_cfg
from ..data.datasets import register_datasets_from_config
from ..data.datasets.folder import read_tags_file
from ..engine.predictor import WSSSPredictor, predict_to_folder
from ..engine.report import write_visualization

logger = logging.getLogger(__name__)

__all__ = ["tool_config", "predict", "visualize"]


# ---------------------------------------------------------------------- predict / visualize
def tool_config(args):
    """A single-process tool's config: ``--config-file`` + ``KEY VALUE`` opts (frozen), the
    config's own datasets registered, wsss_d2's log on the console (no OUTPUT_DIR is made)."""
    cfg = get_wsss_cfg(args.config_file, args.opts)
    cfg.freeze()
    setup_logger(name="wsss_d2")
    register_datasets_from_config(cfg)
    return cfg


def predict(args):
    """Label PNGs + overlays of ``args.input`` (files, folders) into ``args.output``."""
    cfg = tool_config(args)
    predictor = WSSSPredictor(cfg)
    tags = [t for t in args.tags.split(";") if t.strip()] if args.tags else None
    tags_of = None
    if args.tags_file:
        rows = read_tags_file(args.tags_file, predictor.class_names or [])
        tags_of = {name: ids for name, ids, _ in rows}
    return predict_to_folder(predictor, args.input, args.output, tags, tags_of)


def visualize(args):
    """``tools/visualize.py``: panels of ``args.num`` images of a dataset into one HTML file."""
    cfg = tool_config(args)
    seg = None
    if args.seg_config:
        seg = get_wsss_cfg(args.seg_config, ["MODEL.DEVICE", cfg.MODEL.DEVICE])
        seg.MODEL.WEIGHTS = args.seg_weights
    return write_visualization(
        args.dataset or cfg.DATASETS.TEST[0],
        args.output,
        args.num,
        model_cfg=cfg if cfg.MODEL.WEIGHTS else None,
        seg_cfg=seg,
        round_dir=args.round or None,
    )
