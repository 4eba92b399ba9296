"""The bodies of the command-line tools: what ``tools/*.py`` run inside Detectron2's ``launch``.

- :func:`train`: ``tools/train_net.py`` (train, ``--resume``, ``--eval-only``);
- :func:`make_pseudo_labels`: ``tools/make_pseudo_labels.py`` (a label round with a CAM model or
  a segmentor, scored against the ground truth where there is some);
- :func:`make_sam_labels`: ``tools/make_sam_labels.py`` (a SAM-box label round and its scores);
- :func:`run_pipeline`: ``tools/run_pipeline.py`` and ``make demo`` (every stage of a pipeline
  YAML, each an ordinary run of the functions above, then the HTML report);
- :func:`predict`: ``tools/predict.py`` (label PNGs and overlays of images with a trained model);
- :func:`visualize`: ``tools/visualize.py`` (HTML panels of a dataset's images).

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
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from .config import get_wsss_cfg
from .data.datasets import register_datasets_from_config
from .data.datasets.folder import read_tags_file
from .engine.defaults import default_wsss_setup
from .engine.pipeline import load_pipeline, summary_rows
from .engine.predictor import WSSSPredictor, predict_to_folder
from .engine.report import write_pipeline_report, write_visualization
from .engine.trainer import WSSSTrainer, check_weights_exist
from .evaluation.pseudo_eval import evaluate_round
from .evaluation.sam_eval import SamBoxLabelingEvaluator, sam_round_root
from .io.files import atomic_write_bytes
from .io.rounds import MANIFEST, RoundWriter, config_hash, round_dir
from .pseudo.make_round import default_round_root, label_datasets, make_round
from .pseudo.sam.labeler import SamBoxLabeler, label_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "train",
    "make_pseudo_labels",
    "make_sam_labels",
    "run_pipeline",
    "predict",
    "visualize",
    "label_argument_parser",
    "pipeline_argument_parser",
    "tool_config",
]


def label_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's argument parser plus ``--overwrite`` (the label tools')."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write a complete round (and its CAMs) again instead of stopping",
    )
    return parser


def _load_weights(cfg, model) -> None:
    check_weights_exist(cfg.MODEL.WEIGHTS)
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )


# ---------------------------------------------------------------------- train / evaluate
def train(args):
    """Train ``args.config_file`` (``--resume`` continues), or evaluate it with ``--eval-only``."""
    cfg = default_wsss_setup(args)
    if args.eval_only:
        model = WSSSTrainer.build_model(cfg)
        check_weights_exist(cfg.MODEL.WEIGHTS)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = WSSSTrainer.test(cfg, model)
        verify_results(cfg, res)
        return res
    trainer = WSSSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


# ---------------------------------------------------------------------- pseudo labels
def make_pseudo_labels(args):
    """Write round ``WSSS.PSEUDO.ROUND`` of ``WSSS.PSEUDO.DATASETS`` with ``MODEL.WEIGHTS``."""
    cfg = default_wsss_setup(args)
    root = default_round_root(cfg)
    k = cfg.WSSS.PSEUDO.ROUND
    final = round_dir(root, k)
    # fail before any model work when the round is already complete
    if os.path.isfile(os.path.join(final, MANIFEST)) and not args.overwrite:
        raise FileExistsError(
            f"pseudo-label round {final} is already complete; pass --overwrite to write it again"
        )
    model = WSSSTrainer.build_model(cfg)
    _load_weights(cfg, model)
    names = label_datasets(cfg)
    # no consistency check: its class histogram assumes 0-based COCO-style category ids
    dicts = get_detection_dataset_dicts(names, filter_empty=False, check_consistency=False)
    folder = make_round(
        cfg, model, dicts, k, root=root, overwrite=args.overwrite, meta={"datasets": list(names)}
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


def make_sam_labels(args):
    """Write SAM-box round ``WSSS.SAM.ROUND`` of ``DATASETS.TRAIN`` (or score it, ``--eval-only``).

    Images are sharded by rank; each rank writes its labels into the round's partial folder and
    the main process finalizes the round after all ranks meet. An interrupted run resumes where it
    stopped; a complete round is only written again with ``--overwrite``.
    """
    cfg = default_wsss_setup(args)
    name, dicts, classes = _sam_dicts(cfg)
    evaluator = SamBoxLabelingEvaluator(cfg, dataset_name=name, output_dir=cfg.OUTPUT_DIR)
    root = sam_round_root(cfg)
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = dicts[rank::world]
    if args.eval_only:
        evaluator.reset()
        evaluator.process(shard, [{}] * len(shard))  # read the labels back from the round
        return evaluator.evaluate()

    if comm.is_main_process():
        # the main process checks (and, with --overwrite, accepts) a complete round first, so
        # that no rank starts writing into a round that will be refused
        RoundWriter(root, cfg.WSSS.SAM.ROUND, len(classes), overwrite=args.overwrite)
    comm.synchronize()
    writer = RoundWriter(root, cfg.WSSS.SAM.ROUND, len(classes), overwrite=args.overwrite)
    if torch.device(cfg.MODEL.DEVICE).type == "cuda" and world > 1:
        torch.cuda.set_device(comm.get_local_rank())
    labeler = SamBoxLabeler(cfg, classes[1:])
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
    # no rank returns before the round is renamed into place
    comm.synchronize()
    return res


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
    "pseudo_labels": (make_pseudo_labels, ()),
    "sam_labels": (make_sam_labels, ()),
}


def _stage_executor(args):
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
    execute = _stage_executor(args)
    t0 = time.time()
    summaries = pipe.run({kind: execute for kind in STAGE_RUNNERS}, resume=args.resume)
    rows = summary_rows(summaries)
    table = tabulate(rows, headers=["stage", "kind", "metric", "mIoU", "status", "seconds"])
    report = "" if args.no_report else write_pipeline_report(pipe, summaries)
    logger.info("pipeline finished in %.0f s\n%s", time.time() - t0, table)
    if report:
        logger.info("report: %s", report)
    return summaries, table, report
