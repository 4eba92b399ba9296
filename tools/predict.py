#!/usr/bin/env python
"""Predict images with a trained wsss_d2 model: label PNGs and overlays.

    python tools/predict.py --config-file configs/deeplabv2_toy.yaml \
        --input img1.jpg photos/ --output out/ MODEL.WEIGHTS output/deeplab/model_final.pth
    python tools/predict.py --config-file configs/cam_toy.yaml --input a.png --tags "red;blue" \
        --output out/ MODEL.WEIGHTS output/cam/model_final.pth MODEL.DEVICE cuda

For every image: ``out/<stem>.png`` (label ids 0 background, 1..K: Detectron2's
``read_image(path, "L")`` reads them) and ``out/<stem>_overlay.jpg`` (Detectron2's
``Visualizer``). The test-time preprocessing is the evaluation's (``WSSSPredictor``). Tags (class
names or ids, ``;``-separated, for every image; or ``--tags-file`` in the folder-dataset CSV/JSON
format) restrict a CAM model to the image's classes.
"""

import argparse

from wsss_d2 import runs


def parser():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config-file", required=True, metavar="FILE")
    ap.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    ap.add_argument("--output", required=True, help="folder for the label PNGs and overlays")
    ap.add_argument("--tags", default="", help="'cls1;cls2': the classes of every image")
    ap.add_argument("--tags-file", default="", help="CSV/JSON tags per image (file_name,tags)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return ap


def main(argv=None):
    return runs.predict(parser().parse_args(argv))


if __name__ == "__main__":
    main()
