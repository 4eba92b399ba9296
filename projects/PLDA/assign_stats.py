#!/usr/bin/env python
"""Where PLDA's domains fall, for a trained model (the CAM baseline or PLDA) on a split with
ground truth: how many source and target pixels each image gets, how many of them lie on an
object of their class (precision) or on background, and how much of the objects the source
covers. It answers the issue's question "is the CAM really part-only?" with numbers.

    DETECTRON2_DATASETS=datasets python projects/PLDA/assign_stats.py \
        --run output/plda_stripe/cam_toy_s0 --split toyparts_stripe_val \
        [--num-images 100] [-- MODEL.PLDA.TARGET_OWN_CLASS True]

``--run`` is a training output folder (its ``config.yaml`` and ``model_final.pth``); the model
is rebuilt as PLDA with the config's ``MODEL.PLDA`` keys (plus the overrides), so a baseline
run is assigned exactly as PLDA would assign it. Counts are at the CAM's resolution, ground
truth resized there (nearest).
"""

from __future__ import annotations

import argparse
import os
from collections import Counter

import cv2
import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from tqdm import tqdm

from wsss_d2.config import get_wsss_cfg
from wsss_d2.data import build_mapper
from wsss_d2.io.files import read_label_png


def domain_stats(model, mapper, dicts, ignore_value: int = 255) -> dict[str, float]:
    """Source / target pixel counts, precision and background share, and object coverage."""
    n = Counter()
    for d in tqdm(dicts, desc="assign"):
        inputs = [mapper(d)]
        images = model.preprocess_image(inputs)
        logits = model.cam_logits(model.extract_features(images.tensor))
        valid = model.valid_mask(images, logits.shape[-2:])
        tags = model.tag_targets(inputs)
        _, _, source, target = model.assign_domains(images.tensor, logits, tags, valid)
        rows, cols = valid[0, 0].nonzero().amax(0).tolist()
        source, target = source[0, :, : rows + 1, : cols + 1], target[0, :, : rows + 1, : cols + 1]
        # at image size (a clear error naming both files otherwise), then on the CAM's grid
        gt = read_label_png(d["sem_seg_file_name"], (d["height"], d["width"]), d["file_name"])
        gt = torch.from_numpy(
            cv2.resize(gt, (cols + 1, rows + 1), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        )
        own = gt[None] == torch.arange(1, source.shape[0] + 1)[:, None, None]  # (K, h, w)
        bg = gt == 0
        for name, m in (("src", source), ("tgt", target)):
            n[name] += int(m.sum())
            n[name + "_ok"] += int((m & own).sum())
            n[name + "_bg"] += int((m & bg).sum())
        obj = (gt > 0) & (gt != ignore_value)
        n["obj"] += int(obj.sum())
        n["obj_src"] += int((source & own).any(0).sum())
        n["obj_both"] += int(((source | target) & own).any(0).sum())
    return {
        "images": len(dicts),
        "source px / image": n["src"] / len(dicts),
        "source precision": n["src_ok"] / max(n["src"], 1),
        "source on background": n["src_bg"] / max(n["src"], 1),
        "target px / image": n["tgt"] / len(dicts),
        "target precision": n["tgt_ok"] / max(n["tgt"], 1),
        "target on background": n["tgt_bg"] / max(n["tgt"], 1),
        "object px / image": n["obj"] / len(dicts),
        "objects covered by the source": n["obj_src"] / max(n["obj"], 1),
        "objects covered by source + target": n["obj_both"] / max(n["obj"], 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", required=True, help="training output folder")
    ap.add_argument("--split", required=True, help="a registered split with sem_seg_file_name")
    ap.add_argument("--num-images", type=int, default=100)
    ap.add_argument("opts", nargs="*", help="KEY VALUE overrides (after --)")
    args = ap.parse_args()

    cfg = get_wsss_cfg(
        os.path.join(args.run, "config.yaml"),
        ["MODEL.META_ARCHITECTURE", "PLDA", "MODEL.WEIGHTS", ""] + args.opts,
    )
    model = build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(args.run, "model_final.pth"))
    model.eval()
    mapper = build_mapper(cfg, is_train=False)
    dicts = DatasetCatalog.get(args.split)[: args.num_images]
    with torch.no_grad():
        stats = domain_stats(model, mapper, dicts, cfg.MODEL.IGNORE_VALUE)
    print(f"\n{args.run} on {args.split} (assign {cfg.MODEL.PLDA.ASSIGN}, theta {model.theta})")
    print("| measure | value |\n|---|---|")
    for k, v in stats.items():
        print(f"| {k} | {v:.3f} |" if isinstance(v, float) else f"| {k} | {v} |")


if __name__ == "__main__":
    main()
