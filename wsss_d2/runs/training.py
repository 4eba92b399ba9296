"""``tools/train_net.py``'s body: train (``--resume``, ``--overwrite``) or ``--eval-only``."""

from __future__ import annotations

import argparse
import logging
import os

from detectron2.engine import default_argument_parser
from detectron2.evaluation import verify_results

from ..engine.defaults import default_wsss_setup, output_dir_lock, wsss_cfg_from_args
from ..engine.launch import launch
from ..engine.trainer import WSSSTrainer, refuse_overwriting_a_run
from ..modeling.checkpoint import WSSSCheckpointer, load_model_weights, require_weights

logger = logging.getLogger(__name__)

__all__ = ["train_argument_parser", "train"]


def train_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's argument parser plus ``--overwrite`` (``tools/train_net.py``'s)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train anew into an OUTPUT_DIR that holds a finished run (model_final.pth)",
    )
    return parser


# ---------------------------------------------------------------------- train / evaluate
def _eval_weights(cfg, resume: bool) -> str:
    """What ``--eval-only`` evaluates: the last checkpoint of OUTPUT_DIR with ``--resume`` (as
    Detectron2), else ``MODEL.WEIGHTS``, which must then be given."""
    ckpt = WSSSCheckpointer(None, save_dir=cfg.OUTPUT_DIR)
    if resume and ckpt.has_checkpoint():
        path = ckpt.get_checkpoint_file()
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"--resume: {os.path.join(cfg.OUTPUT_DIR, 'last_checkpoint')} names {path}, "
                "which does not exist"
            )
        return path
    require_weights(cfg.MODEL.WEIGHTS, purpose="--eval-only")
    return cfg.MODEL.WEIGHTS


def train(args):
    """Train ``args.config_file`` (``--resume`` continues), or evaluate it with ``--eval-only``.

    Refused before ``OUTPUT_DIR/config.yaml`` is written: ``--eval-only`` without weights or with
    weights that do not fit the model, a new run into a folder holding a finished one (without
    ``--resume`` or ``--overwrite``), a folder another training (or evaluating) process is writing
    into.
    """
    cfg = wsss_cfg_from_args(args)
    if args.eval_only:
        model = WSSSTrainer.build_model(cfg)
        load_model_weights(model, _eval_weights(cfg, args.resume))
        # an evaluation writes config.yaml and inference/ into OUTPUT_DIR: not under a training
        with output_dir_lock(cfg.OUTPUT_DIR, "evaluating"):
            default_wsss_setup(args, cfg)
            res = WSSSTrainer.test(cfg, model)
            verify_results(cfg, res)
        return res
    refuse_overwriting_a_run(cfg.OUTPUT_DIR, args.resume, getattr(args, "overwrite", False))
    with output_dir_lock(cfg.OUTPUT_DIR, "training"):
        default_wsss_setup(args, cfg)
        trainer = WSSSTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
        return trainer.train()


def launch_from_args(main, args):
    """Detectron2's ``launch`` of ``main(args)`` with the process layout of Detectron2's
    arguments (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``); each
    worker closes its process group when ``main`` returns (:mod:`wsss_d2.engine.launch`)."""
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
