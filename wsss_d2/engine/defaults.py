"""Set-up shared by every command-line tool.

:func:`wsss_cfg_from_args` reads the config (safe YAML) and registers the config's datasets
without writing anything, so that a tool can check its inputs first; :func:`default_wsss_setup`
then writes ``OUTPUT_DIR/config.yaml`` and ``log.txt`` (Detectron2's ``default_setup``). A run
that is refused (a complete round, missing weights, a busy folder) therefore leaves the previous
run's ``config.yaml`` as it was.
"""

from __future__ import annotations

import contextlib

from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import get_wsss_cfg
from ..data.datasets import register_datasets_from_config
from ..io.locks import FolderLock

__all__ = ["default_wsss_setup", "wsss_cfg_from_args", "output_dir_lock"]


def wsss_cfg_from_args(args):
    """Config from ``args.config_file`` + ``args.opts`` (frozen), its datasets registered; no
    file is written."""
    cfg = get_wsss_cfg(args.config_file, args.opts)
    cfg.freeze()
    register_datasets_from_config(cfg)
    return cfg


def default_wsss_setup(args, cfg=None):
    """Config (``cfg``, or read from ``args``), then Detectron2's ``default_setup`` (OUTPUT_DIR,
    config.yaml, log.txt, seeds); wsss_d2's own loggers write to the same log.txt."""
    if cfg is None:
        cfg = wsss_cfg_from_args(args)
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="wsss_d2")
    return cfg


def output_dir_lock(folder: str, what: str):
    """The lock of ``folder`` (:class:`~wsss_d2.io.locks.FolderLock`) on the main process; the
    other ranks of the same run write there too and take no lock."""
    if not folder or not comm.is_main_process():
        return contextlib.nullcontext()
    return FolderLock(folder, what)
