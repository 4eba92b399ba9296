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

import cv2
from detectron2.data import DatasetCatalog, MetadataCatalog

import wsss_d2  # noqa: F401  (registers datasets)
from wsss_d2.data.mappers import build_mapper
from wsss_d2.engine.report import _CSS, load_model, panels_html, sample_panels
from wsss_d2.io.files import atomic_write_bytes

logger = logging.getLogger("wsss_d2.visualize")


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
    cam_model = seg_model = None
    mapper = None
    if a.cam_config:
        cfg, cam_model = load_model(a.cam_config, ["MODEL.DEVICE", "cpu"], a.cam_weights)
        mapper = build_mapper(cfg, False)
    if a.seg_config:
        cfg, seg_model = load_model(a.seg_config, ["MODEL.DEVICE", "cpu"], a.seg_weights)
        mapper = mapper or build_mapper(cfg, False)
    dicts = DatasetCatalog.get(a.dataset)[: a.num]
    panels = sample_panels(dicts, cam_model, seg_model, mapper, a.round or None)
    files = os.path.splitext(a.output)[0] + "_files"
    os.makedirs(files, exist_ok=True)
    for i, p in enumerate(panels):
        for key in ("image", "cam", "pseudo", "pred", "gt"):
            if p[key] is not None:
                ok, buf = cv2.imencode(".png", cv2.cvtColor(p[key], cv2.COLOR_RGB2BGR))
                atomic_write_bytes(os.path.join(files, f"{i:03d}_{key}.png"), buf.tobytes())
    body = panels_html(panels, getattr(MetadataCatalog.get(a.dataset), "stuff_classes", None))
    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{a.dataset}</title>"
        f"<style>{_CSS}</style></head><body><h1>{a.dataset}</h1>{body}</body></html>"
    )
    atomic_write_bytes(a.output, doc.encode())
    logger.info("wrote %s and %s", a.output, files)
    return a.output


if __name__ == "__main__":
    main()
