"""``tools/run_pipeline.py`` and ``make demo``: every stage of a pipeline YAML, each an ordinary
run of the other tools' bodies, then the HTML report."""

from __future__ import annotations

import argparse
import contextlib
import logging
import time

from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from ..engine.pipeline import load_pipeline, summary_rows
from ..engine.report import write_pipeline_report
from .labeling import label_argument_parser, make_gt_round, make_pseudo_labels, make_sam_labels
from .training import launch_from_args, train

logger = logging.getLogger(__name__)

__all__ = ["pipeline_argument_parser", "STAGE_RUNNERS", "stage_executor", "run_pipeline"]


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
    # the round folder it returns is not a metric: the stage reports nothing
    "gt_labels": (lambda a: make_gt_round(a) and {}, ("{resume}",)),
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
            launch_from_args(main, targs)
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
