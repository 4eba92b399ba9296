#!/usr/bin/env python
"""Score a COCO-format semantic results JSON against a COCO instances file.

    python tools/coco_semantic_eval.py --results out/inference/sem_seg_predictions.json \
        --instances datasets/coco/annotations/instances_val2014.json [--voc-classes] [--output m.json]

The results may come from wsss_d2 (``COCOSemSegJSONEvaluator``), Detectron2's SemSegEvaluator or
any other COCO-Stuff-style writer: one ``{"image_id", "category_id", "segmentation": RLE}`` per
image and class. Ground truth is painted from the instances as wsss_d2's COCO datasets do.
"""

import argparse
import json
import logging

from tabulate import tabulate

from wsss_d2.data.datasets.coco import VOC_COCO_NAMES
from wsss_d2.evaluation.coco_json import score_coco_semantic_json
from wsss_d2.io.files import atomic_write_bytes


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--results", required=True, help="COCO-format semantic results JSON")
    ap.add_argument("--instances", required=True, help="COCO instances JSON (ground truth)")
    ap.add_argument(
        "--voc-classes",
        action="store_true",
        help="evaluate only the 20 PASCAL VOC classes (COCO names)",
    )
    ap.add_argument("--class-names", default="", help="comma-separated COCO names to evaluate")
    ap.add_argument("--output", default="", help="write the metrics here as JSON")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    names = (
        list(VOC_COCO_NAMES)
        if a.voc_classes
        else ([n.strip() for n in a.class_names.split(",") if n.strip()] or None)
    )
    res = score_coco_semantic_json(a.results, a.instances, class_names=names)["sem_seg"]
    rows = [[k, f"{v:.2f}"] for k, v in res.items() if not k.startswith(("ACC-", "PREC-"))]
    logging.getLogger("wsss_d2.coco_semantic_eval").info(
        "\n%s", tabulate(rows, headers=["metric", "%"])
    )
    if a.output:
        atomic_write_bytes(a.output, json.dumps(res, indent=2).encode())
    return res


if __name__ == "__main__":
    main()
