#!/usr/bin/env python
"""Run every stage of a WSSS pipeline, resumably, then write ``report.html``.

    python tools/run_pipeline.py --config-file configs/pipelines/toy_demo.yaml
    python tools/run_pipeline.py --config-file configs/pipelines/toy_demo.yaml --resume
    python tools/run_pipeline.py --config-file configs/pipelines/voc_plda_cian.yaml --num-gpus 8
    python tools/run_pipeline.py --config-file configs/pipelines/voc_mini_effnet.yaml --jobs 2

Each stage is an ordinary run of tools/train_net.py, make_pseudo_labels.py, make_sam_labels.py or
make_gt_round.py in ``OUTPUT_DIR/<stage>`` (see ``wsss_d2/engine/pipeline.py`` for the stage
format and resume rules; ``--jobs N``: independent stages side by side, each on its share of the
CPU cores). Trailing ``KEY VALUE`` pairs override the pipeline YAML's top level (only
``OUTPUT_DIR``).
"""

import os
import sys

from wsss_d2 import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    args = runs.pipeline_argument_parser().parse_args(argv)
    summaries, table, report = runs.run_pipeline(args, repo_root=REPO)
    print(table)  # the user-facing summary of a command-line tool
    if report:
        print(f"\nreport: {report}")
    return summaries


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
