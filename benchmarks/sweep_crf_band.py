#!/usr/bin/env python
"""Choose the CRF band (``WSSS.PSEUDO.CONF_FG`` / ``CONF_BG``) on the training masks.

IRN's pseudo labels are confident foreground from a CRF of the CAMs thresholded at a high
background score (``CONF_FG``), confident background where a CRF at a low score (``CONF_BG``)
also says background, and unsure (255) in between. The best pair depends on how the CAMs are
scaled, so this script scores every pair of a threshold grid against the ground truth of the
images the tags train on (the WSSS protocol: never the validation set). One CRF per image and
threshold covers all pairs (a pair only combines two of them).

    python benchmarks/sweep_crf_band.py --config-file configs/voc_mini/labels.yaml \
        --cam-dir output/voc_mini/labels/pseudo_labels/cams/round_01 \
        --thresholds 0.05 0.10 0.15 0.20 0.25 0.30 0.40 --workers 2

``--no-crf`` scores only the thresholded CAMs (the CAM evaluator's background sweep, from the
files). The CAM folder is one written by ``tools/make_pseudo_labels.py`` (or the CAM engine) for the
config's label datasets. Printed per pair, best first: mIoU with unsure pixels counted as errors
(the ``PseudoLabelEvaluator`` "mIoU"), mIoU on the labelled pixels, the unsure share, the
background share of the labelled pixels against the ground truth's, and background precision /
recall (recall counts unsure ground-truth background as missed). Also the plain thresholded CAMs
(no CRF) for reference. ``--output`` writes every row as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

logger = logging.getLogger("wsss_d2.sweep_crf_band")


def _band_job(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    """One image: (pairs, C, C+1) confusions of every (fg, bg) pair, (T, C, C+1) of raw CAMs."""
    from wsss_d2.evaluation.pseudo_eval import _confusion_with_unsure
    from wsss_d2.io.cam_files import load_cam_file
    from wsss_d2.io.files import read_image_checked, read_label_png
    from wsss_d2.ops.crf import crf_inference_label, local_ids
    from wsss_d2.pseudo.refine import _combine, _with_bg

    d, cam_path, thresholds, pairs, crf, num_classes, ignore = job  # crf None: CAMs only
    hw = (int(d["height"]), int(d["width"]))
    cams, keys = load_cam_file(cam_path, hw, d["file_name"])
    gt = read_label_png(d["sem_seg_file_name"], hw, d["file_name"])
    ids = local_ids(keys)
    if len(keys) == 0:
        maps = [np.zeros(hw, np.uint8)] * len(thresholds)
        raw = maps
    else:
        image = read_image_checked(d["file_name"], "RGB") if crf is not None else None
        raw, maps = [], []
        for t in thresholds:
            local = _with_bg(cams, t).argmax(0)
            raw.append(ids[local].astype(np.uint8))
            if crf is not None:
                crf_map = crf_inference_label(image, local, len(ids), crf)
                maps.append(ids[crf_map].astype(np.uint8))
    pair_conf = np.stack(
        [
            _confusion_with_unsure(
                maps[f] if f == b else _combine(maps[f], maps[b]), gt, num_classes, ignore
            )
            for f, b in (pairs if crf is not None else [])
        ]
        or [np.zeros((num_classes, num_classes + 1), np.int64)]
    )
    raw_conf = np.stack([_confusion_with_unsure(r, gt, num_classes, ignore) for r in raw])
    return pair_conf, raw_conf


def class_names_of(dataset: str, k1: int) -> list | None:
    """The dataset's ``stuff_classes`` when they name all ``k1`` label ids (else None)."""
    from detectron2.data import MetadataCatalog

    names = MetadataCatalog.get(dataset).get("stuff_classes", None)
    return list(names) if names and len(names) == k1 else None


def _row(conf: np.ndarray, class_names) -> dict:
    from wsss_d2.evaluation.pseudo_eval import pseudo_label_metrics

    m = pseudo_label_metrics(conf, class_names)
    c = conf.shape[0]
    labelled = conf[:, :c].sum()
    return {
        "mIoU": m["mIoU"],
        "mIoU_labeled": m["mIoU_labeled"],
        "unsure_pct": 100 * m["ignored_fraction"],
        "bg_share_pct": 100 * conf[:, 0].sum() / max(labelled, 1),
        "gt_bg_share_pct": 100 * conf[0].sum() / max(conf.sum(), 1),
        "bg_precision": m[f"PREC-{class_names[0]}"] if class_names else m["PREC-0"],
        "bg_recall": m[f"REC-{class_names[0]}"] if class_names else m["REC-0"],
        "per_class_iou": {k[4:]: v for k, v in m.items() if k.startswith("IoU-")},
    }


def sweep_setup(ap: argparse.ArgumentParser, argv=None):
    """The set-up both sweeps share: ``--output`` and the config overrides added to ``ap``, the
    arguments parsed, the config read, its datasets registered and the labelled dicts (with
    ground truth) loaded. Returns ``(args, cfg, dataset names, dicts)``."""
    from wsss_d2.config import get_wsss_cfg
    from wsss_d2.data.datasets.from_config import register_datasets_from_config
    from wsss_d2.pseudo.make_round import label_dataset_dicts

    ap.add_argument("--output", default="", help="write the rows as JSON here")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = get_wsss_cfg(args.config_file, args.opts)
    register_datasets_from_config(cfg)
    names, dicts = label_dataset_dicts(cfg, require_gt=True)
    return args, cfg, names, dicts


def main(argv=None) -> list[dict]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import wsss_d2  # noqa: F401  (registers the datasets)
    from wsss_d2.io.cam_files import cam_file_path
    from wsss_d2.ops.crf import CRFParams
    from wsss_d2.ops.pool import map_in_pool

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config-file", required=True)
    ap.add_argument("--cam-dir", required=True, help="folder of <stem>.npz CAM files")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.3])
    ap.add_argument("--workers", type=int, default=0, help="CRF processes (0 = every core)")
    ap.add_argument("--no-crf", action="store_true", help="only the thresholded CAMs (fast)")
    args, cfg, names, dicts = sweep_setup(ap, argv)
    thresholds = sorted(set(args.thresholds))
    pairs = [] if args.no_crf else [(f, b) for f in range(len(thresholds)) for b in range(f + 1)]
    k1 = cfg.INPUT.TAGS.NUM_CLASSES + 1
    class_names = class_names_of(names[0], k1)
    crf = None if args.no_crf else CRFParams.from_config(cfg)
    jobs = [
        (d, cam_file_path(args.cam_dir, d), thresholds, pairs, crf, k1, cfg.MODEL.IGNORE_VALUE)
        for d in dicts
    ]
    start = time.perf_counter()
    pair_conf = np.zeros((max(len(pairs), 1), k1, k1 + 1), np.int64)
    raw_conf = np.zeros((len(thresholds), k1, k1 + 1), np.int64)
    for pc, rc in map_in_pool(_band_job, jobs, args.workers, desc="crf band sweep"):
        pair_conf += pc
        raw_conf += rc
    seconds = time.perf_counter() - start
    rows = []
    for (f, b), conf in zip(pairs, pair_conf):
        rows.append({"conf_fg": thresholds[f], "conf_bg": thresholds[b], **_row(conf, class_names)})
    raw_rows = [{"threshold": t, **_row(c, class_names)} for t, c in zip(thresholds, raw_conf)]
    rows.sort(key=lambda r: -r["mIoU"])
    print(f"{len(dicts)} images of {', '.join(names)}; {len(pairs) and len(thresholds)} CRFs per image in "
          f"{seconds:.0f} s (load {os.getloadavg()[0]:.2f})")  # fmt: skip
    head = "CONF_FG CONF_BG   mIoU  mIoU_lab  unsure%  bg share% (GT)  bg prec  bg rec"
    print(head)
    for r in rows:
        print(f"{r['conf_fg']:7.2f} {r['conf_bg']:7.2f} {r['mIoU']:6.2f} {r['mIoU_labeled']:9.2f} "
              f"{r['unsure_pct']:8.1f} {r['bg_share_pct']:9.1f} ({r['gt_bg_share_pct']:.1f}) "
              f"{r['bg_precision']:8.1f} {r['bg_recall']:7.1f}")  # fmt: skip
    print("thresholded CAMs, no CRF (the CAM mIoU of CAMEvaluator):")
    print("threshold   mIoU  bg share%  bg prec  bg rec")
    for r in raw_rows:
        print(f"{r['threshold']:9.2f} {r['mIoU']:6.2f} {r['bg_share_pct']:10.1f} "
              f"{r['bg_precision']:8.1f} {r['bg_recall']:7.1f}")  # fmt: skip
    if args.output:
        from wsss_d2.io.files import atomic_write_bytes

        atomic_write_bytes(
            args.output,
            json.dumps({"pairs": rows, "no_crf": raw_rows, "seconds": seconds}, indent=2).encode(),
        )
    return rows


if __name__ == "__main__":
    main()
