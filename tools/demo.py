#!/usr/bin/env python
"""``make demo``: the whole pipeline on the generated toy data, on CPU.

Runs ``configs/pipelines/toy_demo.yaml`` on the generated toyparts_large data (CAM and PLDA ->
PLDA's CRF band -> IRNet and its random walk -> DeepLab-v2 and CIAN on the IRN labels -> CIAN
retraining round -> COCO-format evaluation) into ``output/demo`` and prints one table (each
stage's mIoU: CAMs and segmentors on toyparts_large_val, pseudo labels on toyparts_large_train)
and the report's path. Run it again to reuse finished stages (it resumes). Extra arguments are
those of tools/run_pipeline.py.
"""

import os
import sys
import time

from wsss_d2 import runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    t0 = time.time()
    config = os.path.join(REPO, "configs", "pipelines", "toy_demo.yaml")
    argv = ["--config-file", config, "--resume", *(sys.argv[1:] if argv is None else argv)]
    _, table, report = runs.run_pipeline(runs.pipeline_argument_parser().parse_args(argv), REPO)
    print(table)
    if report:
        print(f"\nreport: {report}")
    print(f"\ndemo finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
