#!/usr/bin/env python
"""Run every stage of a WSSS pipeline, resumably, then write ``report.html``.

    python tools/run_pipeline.py --config-file configs/pipelines/toy_demo.yaml
    python tools/run_pipeline.py --config-file configs/pipelines/toy_demo.yaml --resume
    python tools/run_pipeline.py --config-file configs/pipelines/voc_plda_cian.yaml --num-gpus 8

Each stage is an ordinary run of tools/train_net.py, make_pseudo_labels.py or make_sam_labels.py
in ``OUTPUT_DIR/<stage>`` (see ``wsss_d2/engine/pipeline.py`` for the stage format and resume rules).
Trailing ``KEY VALUE`` pairs override the pipeline YAML's top level (only ``OUTPUT_DIR``).
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import sys

from detectron2.engine import default_argument_parser, launch
from detectron2.utils.logger import setup_logger
from tabulate import tabulate

TOOLS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TOOLS)
logger = logging.getLogger("wsss_d2.run_pipeline")


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(
        f"wsss_d2_tool_{name}", os.path.join(TOOLS, f"{name}.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def make_executors(args):
    """kind -> fn(stage, opts, resume) running the stage's tool through ``launch``."""
    tools = {}

    def tool(name):
        if name not in tools:
            tools[name] = _load_tool(name)
        return tools[name]

    def run(tool_name, stage, opts, flags):
        targs = default_argument_parser().parse_args(
            [
                "--config-file",
                stage.config,
                "--num-gpus",
                str(args.num_gpus),
                "--num-machines",
                str(args.num_machines),
                "--machine-rank",
                str(args.machine_rank),
                "--dist-url",
                args.dist_url,
                *flags,
                *opts,
            ]
        )
        targs.overwrite = False  # label tools: a complete round is never rewritten here
        holder = {}

        def main(a):
            holder["res"] = tool(tool_name).main(a)

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

    return {
        "train": lambda s, o, r: run("train_net", s, o, ["--resume"] if r else []),
        "evaluate": lambda s, o, r: run("train_net", s, o, ["--eval-only"]),
        "pseudo_labels": lambda s, o, r: run("make_pseudo_labels", s, o, []),
        "sam_labels": lambda s, o, r: run("make_sam_labels", s, o, []),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    args = parser.parse_args(argv)

    import wsss_d2  # noqa: F401  (registers everything)
    from wsss_d2.engine.pipeline import load_pipeline, primary_metric

    setup_logger(name="wsss_d2")
    pipe = load_pipeline(args.config_file, repo_root=REPO)
    opts = list(args.opts)
    while opts:
        key, value = opts.pop(0), opts.pop(0) if opts else None
        if key != "OUTPUT_DIR" or value is None:
            raise SystemExit(f"run_pipeline: only 'OUTPUT_DIR <folder>' may follow, got {key}")
        pipe.output_dir = value
    summaries = pipe.run(make_executors(args), resume=args.resume)

    rows = []
    for s in summaries:
        m = primary_metric(s["results"])
        rows.append(
            [
                s["name"],
                s["kind"],
                m[0] if m else "-",
                f"{m[1]:.1f}" if m else "-",
                s["status"],
                s["seconds"],
            ]
        )
    table = tabulate(rows, headers=["stage", "kind", "metric", "mIoU", "status", "seconds"])
    report = ""
    if not args.no_report:
        from wsss_d2.engine.report import write_pipeline_report

        report = write_pipeline_report(pipe, summaries)
    print(table)  # the user-facing summary of a command-line tool
    if report:
        print(f"\nreport: {report}")
    return summaries


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
