"""Set-up shared by every command-line tool."""

from __future__ import annotations

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import get_wsss_cfg
from ..data.datasets import register_datasets_from_config

__all__ = ["default_wsss_setup"]


def default_wsss_setup(args):
    """Config from ``args.config_file`` + ``args.opts`` (frozen), then Detectron2's
    ``default_setup`` (OUTPUT_DIR, config.yaml, log.txt, seeds); wsss_d2's own loggers write to the
    same log.txt."""
    cfg = get_wsss_cfg(args.config_file, args.opts)
    cfg.freeze()
    register_datasets_from_config(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="wsss_d2")
    return cfg
