#!/usr/bin/env python
"""``make demo``: the whole pipeline on the generated toy data, on CPU.

Runs ``configs/pipelines/toy_demo.yaml`` through tools/run_pipeline.py (CAM and PLDA → CRF pseudo
labels → DeepLab-v2 and CIAN → CIAN retraining round → COCO-format evaluation) into
``output/demo`` and prints one table (each stage's toyparts_val mIoU) and the report's path.
Run it again to reuse finished stages (it resumes).
"""

import os
import sys
import time

TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TOOLS)

import run_pipeline  # noqa: E402


def main():
    t0 = time.time()
    argv = [
        "--config-file",
        os.path.join(os.path.dirname(TOOLS), "configs", "pipelines", "toy_demo.yaml"),
        "--resume",
        *sys.argv[1:],
    ]
    run_pipeline.main(argv)
    print(f"\ndemo finished in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
