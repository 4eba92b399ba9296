"""The bodies of the command-line tools: what ``tools/*.py`` run inside Detectron2's ``launch``.

- :func:`train`: ``tools/train_net.py`` (train, ``--resume``, ``--eval-only``);
- :func:`make_pseudo_labels`: ``tools/make_pseudo_labels.py`` (a label round with a CAM model or
  a segmentor, scored against the ground truth where there is some);
- :func:`make_sam_labels`: ``tools/make_sam_labels.py`` (a SAM-box label round and its scores);
- :func:`run_pipeline`: ``tools/run_pipeline.py`` and ``make demo`` (every stage of a pipeline
  YAML, each an ordinary run of the functions above, then the HTML report).

Each takes the parsed arguments of the tool (Detectron2's ``default_argument_parser``, plus
``--overwrite`` for the label tools: :func:`label_argument_parser`) and returns the results
dict, so that the tools stay argument parsing and ``launch``, and tests can call these directly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from .engine.defaults import default_wsss_setup, output_dir_lock, wsss_cfg_from_args
from .engine.pipeline import load_pipeline, summary_rows
from .engine.report import write_pipeline_report
from .engine.trainer import WSSSTrainer, refuse_overwriting_a_run
from .evaluation.pseudo_eval import evaluate_round
from .evaluation.sam_eval import SamBoxLabelingEvaluator, sam_round_root
from .io.files import atomic_write_bytes
from .io.rounds import MANIFEST, check_unique_stems, config_hash, round_dir
from .modeling.checkpoint import WSSSCheckpointer, load_model_weights, require_weights
from .pseudo.fingerprint import label_fingerprint, weights_fingerprint
from .pseudo.make_round import (
    check_round,
    default_round_root,
    label_datasets,
    make_round,
    open_round,
    round_source,
)
from .pseudo.sam.labeler import SamBoxLabeler, label_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "train",
    "make_pseudo_labels",
    "make_sam_labels",
    "run_pipeline",
    "label_argument_parser",
    "train_argument_parser",
    "pipeline_argument_parser",
]


def train_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's argument parser plus ``--overwrite`` (``tools/train_net.py``'s)."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train anew into an OUTPUT_DIR that holds a finished run (model_final.pth)",
    )
    return parser


def label_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's argument parser plus ``--overwrite`` (the label tools')."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write a complete round (and its CAMs) again, restart a partial one from empty",
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
    ``--resume`` or ``--overwrite``), a folder another training process is writing into.
    """
    cfg = wsss_cfg_from_args(args)
    if args.eval_only:
        model = WSSSTrainer.build_model(cfg)
        load_model_weights(model, _eval_weights(cfg, args.resume))
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


# ---------------------------------------------------------------------- pseudo labels
def make_pseudo_labels(args):
    """Write round ``WSSS.PSEUDO.ROUND`` of ``WSSS.PSEUDO.DATASETS`` with ``MODEL.WEIGHTS``.

    Before anything is written (``config.yaml`` included): a complete round is refused unless
    ``--overwrite`` (write it again) or ``--resume`` with the same fingerprint (reuse it); the
    weights must be given and fit the model; a partial round must have this round's fingerprint
    (settings, weights, dataset); two images must not share a label file.
    """
    cfg = wsss_cfg_from_args(args)
    root = default_round_root(cfg)
    k = cfg.WSSS.PSEUDO.ROUND
    final = round_dir(root, k)
    # fail before any model work when the round is already complete
    if os.path.isfile(os.path.join(final, MANIFEST)) and not (args.overwrite or args.resume):
        raise FileExistsError(
            f"pseudo-label round {final} is already complete; pass --overwrite to write it again "
            "(or --resume to reuse it if it was made with these settings)"
        )
    require_weights(cfg.MODEL.WEIGHTS, purpose="writing pseudo labels")
    names = label_datasets(cfg)
    # no consistency check: its class histogram assumes 0-based COCO-style category ids
    dicts = get_detection_dataset_dicts(names, filter_empty=False, check_consistency=False)
    check_unique_stems(dicts)
    model = WSSSTrainer.build_model(cfg)
    load_model_weights(model, cfg.MODEL.WEIGHTS)
    fingerprint = label_fingerprint(cfg, dicts, round_source(model), names=names)
    folder = check_round(root, k, fingerprint, reuse=args.resume, overwrite=args.overwrite)
    with output_dir_lock(cfg.OUTPUT_DIR, "writing pseudo labels"):
        default_wsss_setup(args, cfg)
        if folder is None:
            meta = {"datasets": list(names)}
            folder = make_round(
                cfg, model, dicts, k, root=root, overwrite=args.overwrite, meta=meta, names=names
            )
        res = evaluate_round(
            dicts,
            folder,
            cfg.INPUT.TAGS.NUM_CLASSES + 1,
            dataset_name=names[0] if len(names) == 1 else "",
            output_dir=cfg.OUTPUT_DIR,
        )
        if comm.is_main_process():
            summary = {"round": k, "folder": folder, "metrics": res}
            atomic_write_bytes(
                os.path.join(cfg.OUTPUT_DIR, f"pseudo_round_{k:02d}.json"),
                json.dumps(summary, indent=2).encode(),
            )
            if res:
                logger.info(
                    "round %d: mIoU %.2f, labeled-pixel mIoU %.2f, %.1f%% unsure",
                    k,
                    res["mIoU"],
                    res["mIoU_labeled"],
                    100 * res["ignored_fraction"],
                )
    return res


def _sam_dicts(cfg) -> tuple[str, list[dict], list[str]]:
    dicts = [d for n in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(n)]
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("stuff_classes")
    if classes is None or len(classes) != cfg.INPUT.TAGS.NUM_CLASSES + 1:
        raise ValueError(
            f"dataset {name} has {None if classes is None else len(classes) - 1} classes but "
            f"INPUT.TAGS.NUM_CLASSES is {cfg.INPUT.TAGS.NUM_CLASSES}"
        )
    return name, dicts, list(classes)


def _score_sam_round(evaluator, shard: list[dict]) -> dict:
    evaluator.reset()
    evaluator.process(shard, [{}] * len(shard))  # read the labels back from the round
    return evaluator.evaluate()


def make_sam_labels(args):
    """Write SAM-box round ``WSSS.SAM.ROUND`` of ``DATASETS.TRAIN`` (or score it, ``--eval-only``).

    Images are sharded by rank; each rank writes its labels into the round's partial folder and
    the main process finalizes the round after all ranks meet. An interrupted run resumes where it
    stopped when its fingerprint (SAM settings and checkpoint, dataset) matches; a complete round
    is only written again with ``--overwrite`` (``--resume`` reuses one of the same fingerprint).
    The checks, and loading SAM, come before ``OUTPUT_DIR/config.yaml`` is written.
    """
    cfg = wsss_cfg_from_args(args)
    name, dicts, classes = _sam_dicts(cfg)
    root = sam_round_root(cfg)
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = dicts[rank::world]
    if args.eval_only:
        default_wsss_setup(args, cfg)
        evaluator = SamBoxLabelingEvaluator(cfg, dataset_name=name, output_dir=cfg.OUTPUT_DIR)
        return _score_sam_round(evaluator, shard)
    k = cfg.WSSS.SAM.ROUND
    check_unique_stems(dicts)
    weights = weights_fingerprint(cfg.WSSS.SAM.CHECKPOINT)
    fingerprint = label_fingerprint(cfg, dicts, "sam_boxes", weights, cfg.DATASETS.TRAIN)
    done = check_round(root, k, fingerprint, reuse=args.resume, overwrite=args.overwrite)
    if torch.device(cfg.MODEL.DEVICE).type == "cuda" and world > 1:
        torch.cuda.set_device(comm.get_local_rank())
    labeler = None if done else SamBoxLabeler(cfg, classes[1:])  # loads (and checks) SAM
    with output_dir_lock(cfg.OUTPUT_DIR, "writing SAM labels"):
        default_wsss_setup(args, cfg)
        evaluator = SamBoxLabelingEvaluator(cfg, dataset_name=name, output_dir=cfg.OUTPUT_DIR)
        if done:
            return _score_sam_round(evaluator, shard)
        writer = open_round(root, k, len(classes), args.overwrite, fingerprint)
        try:
            n = label_dataset(labeler, shard, writer, evaluator, progress=comm.is_main_process())
            logger.info("rank %d labelled %d images (%d in its shard)", rank, n, len(shard))
            # every rank's labels are in the partial folder before the main process finalizes it
            comm.synchronize()
            res = evaluator.evaluate()
            if comm.is_main_process():
                writer.finalize(
                    dicts,
                    meta={
                        "source": "sam_boxes",
                        "dataset": list(cfg.DATASETS.TRAIN),
                        "sam_model_type": cfg.WSSS.SAM.MODEL_TYPE,
                        "sam_checkpoint": os.path.basename(cfg.WSSS.SAM.CHECKPOINT),
                        "box_source": cfg.WSSS.SAM.BOX_SOURCE,
                        "config_hash": config_hash(cfg),
                        "scores": res,
                    },
                )
                logger.info("SAM-box labels: %s", writer.final_dir)
        finally:
            writer.close()  # finalize gave the lock up; an error gives it up here
        # no rank returns before the round is renamed into place
        comm.synchronize()
    return res


# ---------------------------------------------------------------------- pipeline
def pipeline_argument_parser() -> argparse.ArgumentParser:
    """The arguments of ``tools/run_pipeline.py`` (and ``make demo``)."""
    parser = argparse.ArgumentParser(description="Run every stage of a WSSS pipeline, resumably.")
    parser.add_argument("--config-file", required=True, help="pipeline YAML")
    parser.add_argument(
        "--resume", action="store_true", help="skip complete stages, resume an interrupted one"
    )
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("--no-report", action="store_true", help="skip report.html")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="OUTPUT_DIR <folder>")
    return parser


@contextlib.contextmanager
def _stage_logging():
    """Detectron2's ``setup_logger`` adds a file handler per OUTPUT_DIR and caches the call; undo
    both after a stage so that its log.txt receives only its own records."""
    names = ["detectron2", "fvcore", "wsss_d2", "d2", ""]
    before = {n: list(logging.getLogger(n).handlers) for n in names}
    try:
        yield
    finally:
        for n in names:
            lg = logging.getLogger(n)
            for h in list(lg.handlers):
                if h not in before[n]:
                    lg.removeHandler(h)
                    h.close()
        setup_logger.cache_clear()


# pipeline stage kind -> (the function a stage runs, flags it gets; "{resume}": --resume if asked)
STAGE_RUNNERS = {
    "train": (train, ("{resume}",)),
    "evaluate": (train, ("--eval-only",)),
    # label stages get --resume too: a complete round of the same fingerprint (a kill between
    # the round's rename and stage_done.json) is reused, not refused
    "pseudo_labels": (make_pseudo_labels, ("{resume}",)),
    "sam_labels": (make_sam_labels, ("{resume}",)),
}


def stage_executor(args):
    """``fn(stage, opts, resume) -> results``: the stage's run through ``launch``."""

    def execute(stage, opts, resume):
        fn, flags = STAGE_RUNNERS[stage.kind]
        flags = [f for f in flags if f != "{resume}"] + (
            ["--resume"] if resume and "{resume}" in flags else []
        )
        targs = label_argument_parser().parse_args(
            [
                "--config-file", stage.config,
                "--num-gpus", str(args.num_gpus),
                "--num-machines", str(args.num_machines),
                "--machine-rank", str(args.machine_rank),
                "--dist-url", args.dist_url,
                *flags, *opts,
            ]
        )  # fmt: skip
        holder = {}  # launch returns nothing: the main process's results come back through here

        def main(a):
            holder["res"] = fn(a)

        with _stage_logging():
            launch(
                main,
                targs.num_gpus,
                num_machines=targs.num_machines,
                machine_rank=targs.machine_rank,
                dist_url=targs.dist_url,
                args=(targs,),
            )
        return holder.get("res") or {}

    return execute


def run_pipeline(args, repo_root: str | None = None):
    """Run (or ``--resume``) a pipeline YAML; print the stage table, write the report.

    Stage config paths are relative to ``repo_root`` (default: the working directory). Trailing
    ``opts`` may only be ``OUTPUT_DIR <folder>``. Returns the stage summaries.
    """
    setup_logger(name="wsss_d2")
    pipe = load_pipeline(args.config_file, repo_root=repo_root)
    opts = list(args.opts)
    while opts:
        key, value = opts.pop(0), opts.pop(0) if opts else None
        if key != "OUTPUT_DIR" or value is None:
            raise SystemExit(f"run_pipeline: only 'OUTPUT_DIR <folder>' may follow, got {key}")
        pipe.output_dir = value
    execute = stage_executor(args)
    t0 = time.time()
    summaries = pipe.run({kind: execute for kind in STAGE_RUNNERS}, resume=args.resume)
    rows = summary_rows(summaries)
    table = tabulate(rows, headers=["stage", "kind", "metric", "mIoU", "status", "seconds"])
    report = "" if args.no_report else write_pipeline_report(pipe, summaries)
    logger.info("pipeline finished in %.0f s\n%s", time.time() - t0, table)
    if report:
        logger.info("report: %s", report)
    return summaries, table, report
