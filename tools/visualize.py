#!/usr/bin/env python
"""Side-by-side panels (image, CAM, pseudo label, prediction, GT) for a few images of a dataset.

    python tools/visualize.py --config-file configs/cam_toy.yaml --num 8 \
        --round output/demo/labels/pseudo_labels/round_01 \
        --seg-config configs/deeplabv2_toy.yaml --seg-weights output/demo/deeplab/model_final.pth \
        --output output/vis.html MODEL.WEIGHTS output/demo/cam/model_final.pth

The standard set-up: ``--config-file`` and trailing ``KEY VALUE`` overrides (``MODEL.WEIGHTS``,
``MODEL.DEVICE``, datasets of ``DATASETS.COCO_TAGS`` / ``FOLDER_TAGS``) make the config; its model
(a CAM model or a segmentor, with ``MODEL.WEIGHTS``) fills the CAM or prediction column;
``--seg-config``/``--seg-weights`` add a segmentor on the same device. The dataset is
``--dataset`` (default ``DATASETS.TEST[0]``). The result is one self-contained HTML file (images
inlined) plus one PNG per image and column next to it (``<output stem>_files/``).
"""

import argparse
import os

from wsss_d2 import runs


def parser():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True, metavar="FILE")
    ap.add_argument("--dataset", default="", help="registered dataset (default DATASETS.TEST[0])")
    ap.add_argument("--num", type=int, default=8, help="first N images of the dataset")
    ap.add_argument("--seg-config", default="", help="a segmentor's config, shown as well")
    ap.add_argument("--seg-weights", default="")
    ap.add_argument("--round", default="", help="pseudo-label round folder")
    ap.add_argument("--output", default="visualization.html")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return ap


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    if bool(a.seg_config) != bool(a.seg_weights):
        ap.error("give the segmentor's config and weights together")
    if a.seg_weights and not os.path.isfile(a.seg_weights):
        ap.error(f"weights file not found: {a.seg_weights}")
    return runs.visualize(a)


if __name__ == "__main__":
    main()
