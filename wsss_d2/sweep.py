"""Ablation sweeps: every variant x seed of a study as the stages of one resumable pipeline.

A project's study script (``projects/PLDA/toy_ablation.py``, ``projects/CIAN/toy_ablation.py``)
lists its runs as pipeline stages (train a variant, evaluate it on a held-out split, write a
label round with it, retrain on that round, ...) and :func:`run_stages` runs them with the
pipeline's machinery (:mod:`wsss_d2.engine.pipeline`): each stage is an ordinary run of
``tools/train_net.py`` / ``make_pseudo_labels.py`` in its own folder, a finished stage is
skipped, an interrupted one resumes, and one whose configuration changed runs again. The helpers
below turn the stage summaries into the tables the project READMEs show.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from typing import Sequence

from .engine.pipeline import parse_pipeline
from .runs import STAGE_RUNNERS, stage_executor

logger = logging.getLogger(__name__)

__all__ = ["run_stages", "stage_value", "mean_sd", "markdown_table"]


def run_stages(
    output_dir: str,
    stages: list[dict],
    repo_root: str | None = None,
    collect_only: bool = False,
    num_gpus: int = 1,
) -> dict[str, dict]:
    """Run (or resume) ``stages`` (pipeline stage dicts) under ``output_dir``.

    Returns ``{stage name: summary}`` (summaries as :meth:`Pipeline.run` gives them). With
    ``collect_only`` nothing runs: the summaries of the stages finished so far are read back.
    """
    pipe = parse_pipeline(
        {"OUTPUT_DIR": output_dir, "STAGES": stages}, f"sweep in {output_dir}", repo_root
    )
    if collect_only:
        records = {s.name: pipe.done_record(s.name) for s in pipe.stages}
        return {name: r for name, r in records.items() if r is not None}
    args = argparse.Namespace(num_gpus=num_gpus, num_machines=1, machine_rank=0, dist_url="auto")
    execute = stage_executor(args)
    summaries = pipe.run({kind: execute for kind in STAGE_RUNNERS}, resume=True)
    return {s["name"]: s for s in summaries}


def stage_value(summaries: dict[str, dict], name: str, key: str) -> float | None:
    """Metric ``key`` (e.g. ``"cam/mIoU"``) of stage ``name``, None if it has not finished."""
    s = summaries.get(name)
    return None if s is None else s["results"].get(key)


def mean_sd(values: Sequence[float]) -> str:
    """``"mean ± sd"`` over the values (sd 0 for one value, "-" for none)."""
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines)
