#!/usr/bin/env python
"""Side-by-side panels (image, CAM, pseudo label, prediction, GT) for a few images of a dataset.

    python tools/visualize.py --dataset toyparts_train --num 8 \
        --cam-config configs/cam_toy.yaml --cam-weights output/demo/cam/model_final.pth \
        --round output/demo/labels/pseudo_labels/round_01 \
        --seg-config configs/deeplabv2_toy.yaml --seg-weights output/demo/deeplab/model_final.pth \
        --output output/vis.html

Every source is optional; the result is one self-contained HTML file (images inlined) plus one
PNG per image and column next to it (``<output stem>_files/``).
"""

import argparse
import logging
import os

from wsss_d2.engine.report import write_visualization


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dataset", required=True, help="registered dataset name")
    ap.add_argument("--num", type=int, default=8, help="first N images of the dataset")
    ap.add_argument("--cam-config", default="")
    ap.add_argument("--cam-weights", default="")
    ap.add_argument("--seg-config", default="")
    ap.add_argument("--seg-weights", default="")
    ap.add_argument("--round", default="", help="pseudo-label round folder")
    ap.add_argument("--output", default="visualization.html")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for cfg_file, weights in ((a.cam_config, a.cam_weights), (a.seg_config, a.seg_weights)):
        if bool(cfg_file) != bool(weights):
            ap.error("give a model's config and weights together")
        if weights and not os.path.isfile(weights):
            ap.error(f"weights file not found: {weights}")
    return write_visualization(
        a.dataset,
        a.output,
        a.num,
        cam=(a.cam_config, a.cam_weights) if a.cam_config else None,
        seg=(a.seg_config, a.seg_weights) if a.seg_config else None,
        round_dir=a.round or None,
    )


if __name__ == "__main__":
    main()
