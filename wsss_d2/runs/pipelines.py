"""``tools/run_pipeline.py`` and ``make demo``: every stage of a pipeline YAML, each an ordinary
run of the other tools' bodies, then the HTML report."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time

from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

from ..engine.pipeline import load_pipeline, summary_rows
from ..engine.report import write_pipeline_report
from ..io.files import atomic_write_bytes
from .labeling import label_argument_parser, make_gt_round, make_pseudo_labels, make_sam_labels
from .training import launch_from_args, train

logger = logging.getLogger(__name__)

__all__ = [
    "pipeline_argument_parser",
    "STAGE_RUNNERS",
    "StageExecutor",
    "stage_executor",
    "run_pipeline",
]

RESULT_FILE = "stage_results.json"  # a stage's results, from its main process


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
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="stages run side by side, each in its own process on its share of the CPU cores "
        "(a stage starts when the stages it reads from are done); 1: one after another",
    )
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


class _StageMain:
    """What ``launch`` runs for a stage: the tool's body; the main process writes its results
    to ``result_path`` (the stage's process may be a spawned rank, not the pipeline's)."""

    def __init__(self, kind: str, result_path: str):
        self.kind, self.result_path = kind, result_path

    def __call__(self, args):
        results = STAGE_RUNNERS[self.kind][0](args) or {}
        if comm.is_main_process():
            text = json.dumps(results, default=lambda o: o.item() if hasattr(o, "item") else str(o))
            atomic_write_bytes(self.result_path, text.encode())


class StageExecutor:
    """``executor(stage, opts, resume) -> results``: the stage's run through ``launch``, with
    the pipeline's process layout (``--num-gpus`` ...). It pickles, so that side-by-side stages
    (``--jobs``) run it in their own processes."""

    def __init__(self, args):
        self.num_gpus, self.num_machines = args.num_gpus, args.num_machines
        self.machine_rank, self.dist_url = args.machine_rank, args.dist_url

    def __call__(self, stage, opts, resume):
        flags = STAGE_RUNNERS[stage.kind][1]
        flags = [f for f in flags if f != "{resume}"] + (
            ["--resume"] if resume and "{resume}" in flags else []
        )
        targs = label_argument_parser().parse_args(
            [
                "--config-file", stage.config,
                "--num-gpus", str(self.num_gpus),
                "--num-machines", str(self.num_machines),
                "--machine-rank", str(self.machine_rank),
                "--dist-url", self.dist_url,
                *flags, *opts,
            ]
        )  # fmt: skip
        last = len(opts) - 1 - opts[::-1].index("OUTPUT_DIR")  # the pipeline's, after the stage's
        result_path = os.path.join(opts[last + 1], RESULT_FILE)
        if os.path.exists(result_path):
            os.remove(result_path)  # an interrupted earlier run's, not this one's
        with _stage_logging():
            launch_from_args(_StageMain(stage.kind, result_path), targs)
        if not os.path.isfile(result_path):
            return {}  # another machine's ranks: its main process has the results
        with open(result_path) as f:
            return json.load(f)


def stage_executor(args) -> StageExecutor:
    """The executor of every stage kind for the tool's arguments (:class:`StageExecutor`)."""
    return StageExecutor(args)


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
    if args.jobs > 1 and (args.num_gpus > 1 or args.num_machines > 1):
        raise SystemExit(
            "run_pipeline: --jobs > 1 runs stages side by side in one process each; "
            "it does not combine with --num-gpus / --num-machines > 1"
        )
    execute = stage_executor(args)
    t0 = time.time()
    summaries = pipe.run(
        {kind: execute for kind in STAGE_RUNNERS}, resume=args.resume, jobs=args.jobs
    )
    rows = summary_rows(summaries)
    table = tabulate(rows, headers=["stage", "kind", "metric", "mIoU", "status", "seconds"])
    report = "" if args.no_report else write_pipeline_report(pipe, summaries)
    logger.info("pipeline finished in %.0f s\n%s", time.time() - t0, table)
    if report:
        logger.info("report: %s", report)
    return summaries, table, report
