#!/usr/bin/env python
"""Choose IRN's background threshold (``MODEL.IRN.SEM_SEG_BG_THRES``) on the training masks, and
optionally the walk's ``MODEL.IRN.BETA`` and ``MODEL.IRN.EXP_TIMES``.

IRN's labels are the arg-max of ``[threshold, walked CAMs / their maximum]`` (with a walked
background, ``threshold * walked background / that maximum`` instead of the constant); the walk
itself does not depend on the threshold. This script runs the trained IRNet once per image and the
random walk once per (beta, exp_times, bg_power) of the grid
(:func:`wsss_d2.pseudo.irn_round.walk_batch`, the code of an IRN round) and scores every threshold
against the ground truth of the images the tags train on (the WSSS protocol: never the validation
set), so that the band and IRN are compared at their best settings. ``--betas`` /
``--exp-times`` / ``--normalize`` (``MODEL.IRN.WALK_NORM``, which changes the labels, not the
walk) / ``--bg-powers`` (``MODEL.IRN.WALK_BG_POWER``: with a walked background the thresholds
scale it) default to the config's values.

    python benchmarks/sweep_irn_bg.py --config-file configs/voc_mini/irn.yaml \
        --weights output/voc_mini/irn/model_final.pth \
        --cam-dir output/voc_mini/band/pseudo_labels/cams/round_01 \
        --thresholds 0.15 0.20 0.25 0.30 0.35 0.40 [--betas 5 10 --exp-times 6 8] \
        [--normalize global class] [--bg-powers 0 8] [--bands] [--crf]

Printed per row, best first: mIoU, the unsure share (IRN labels have none, so their mIoU is also
the labelled-pixel mIoU), background share of the labels against the ground truth's, background
precision / recall. ``--bands`` also scores every pair of thresholds as a band
(``MODEL.IRN.UNSURE_BG_THRES``: the pixels whose labels at the two differ are unsure and count as
errors in ``mIoU``; ``mIoU_labeled`` in the JSON scores the others). The label of a row is the one
``tools/make_pseudo_labels.py`` writes with its settings. ``--crf`` also scores every row after
the dense CRF of ``MODEL.IRN.CRF`` (:func:`wsss_d2.pseudo.irn_round.crf_refine_label`, the band's
label CRF; ``--workers`` processes). ``--output`` writes every row as JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
import time

import numpy as np

logger = logging.getLogger("wsss_d2.sweep_irn_bg")


def score_labels(labels, dicts, num_classes, ignore) -> np.ndarray:
    """(R, C, C + 1) confusions of ``labels`` (per image of ``dicts``, its ``R`` labels) against
    the ground truth."""
    from wsss_d2.evaluation.pseudo_eval import _confusion_with_unsure
    from wsss_d2.io.files import read_label_png

    conf = np.zeros((len(labels[0]), num_classes, num_classes + 1), np.int64)
    for labs, d in zip(labels, dicts):
        gt = read_label_png(d["sem_seg_file_name"], labs[0].shape, d["file_name"])
        for i, label in enumerate(labs):
            conf[i] += _confusion_with_unsure(label, gt, num_classes, ignore)
    return conf


def label_rows(labels, pairs) -> list[np.ndarray]:
    """An image's labels at the ``T`` thresholds -> its label of every row: each threshold alone,
    then each band ``(i, j)`` of ``pairs`` (``SEM_SEG_BG_THRES`` ``t_i``, ``UNSURE_BG_THRES``
    ``t_j``: :func:`~wsss_d2.pseudo.random_walk.band_label`)."""
    from wsss_d2.pseudo.random_walk import band_label

    return list(labels) + [band_label([labels[i], labels[j]]) for i, j in pairs]


def score_walk(
    walked, dicts, thresholds, stride, num_classes, ignore, normalize="global", pairs=()
) -> np.ndarray:
    """(R, C, C + 1) confusions of the labels of every row (``walked``: what ``walk_batch``
    returned for ``dicts``; rows: :func:`label_rows`)."""
    from wsss_d2.pseudo.irn_round import walk_labels

    labels = walk_labels(walked, stride, thresholds, normalize)
    return score_labels([label_rows(labs, pairs) for labs in labels], dicts, num_classes, ignore)


def mask_boundaries(d: dict, hw: tuple[int, int], stride: int, ignore: int = 255):
    """The boundary map (ceil(H / stride), ceil(W / stride)) of image ``d``'s ground-truth mask
    resized (nearest) to the network input size ``hw``: 1 where a stride cell, widened by one
    pixel to the bottom and right, holds two classes or a void pixel (VOC's void band outlines
    every object; the widening makes a wall of the cell before a class change that falls on a
    cell edge: walls one cell thick, none missing), or lies past the image."""
    import cv2
    import torch

    from wsss_d2.io.files import read_label_png

    gt = read_label_png(d["sem_seg_file_name"], (int(d["height"]), int(d["width"])), d["file_name"])
    gt = cv2.resize(gt, (hw[1], hw[0]), interpolation=cv2.INTER_NEAREST)
    kernel = np.ones((2, 2), np.uint8)  # each pixel with its right / lower neighbours
    h, w = -(-hw[0] // stride), -(-hw[1] // stride)
    lo = np.zeros((h * stride, w * stride), np.uint8)
    hi = np.full_like(lo, ignore)
    lo[: hw[0], : hw[1]] = cv2.erode(gt, kernel, anchor=(0, 0))
    hi[: hw[0], : hw[1]] = cv2.dilate(gt, kernel, anchor=(0, 0))
    lo = lo.reshape(h, stride, w, stride).min(axis=(1, 3))
    hi = hi.reshape(h, stride, w, stride).max(axis=(1, 3))
    return torch.from_numpy(((lo != hi) | (hi == ignore)).astype(np.float32))


def ensemble_outputs(models, inputs: list[dict]) -> list[dict]:
    """The first IRNet's outputs for ``inputs``, each ``edge`` replaced by the mean of every
    IRNet's boundary map (one IRNet: its outputs as they are)."""
    outs = models[0](inputs)
    for m in models[1:]:
        for o, more in zip(outs, m(inputs)):
            o["edge"] = o["edge"] + more["edge"]
    if len(models) > 1:
        for o in outs:
            o["edge"] = o["edge"] / len(models)
    return outs


def _crf_job(job: tuple) -> np.ndarray:
    """One image: (W, R, C, C + 1) confusions of its rows after the label CRF (``labels``: its
    ``W`` walks' labels at the ``T`` thresholds, walk by walk; each label refined once, then the
    rows made from them as the IRN round makes its label from the refined labels)."""
    from wsss_d2.evaluation.pseudo_eval import _confusion_with_unsure
    from wsss_d2.io.files import read_label_png
    from wsss_d2.pseudo.irn_round import crf_refine_labels

    d, labels, keys, crf, n_walks, pairs, num_classes, ignore = job
    refined = crf_refine_labels((d["file_name"], labels, keys, crf))
    gt = read_label_png(d["sem_seg_file_name"], labels[0].shape, d["file_name"])
    t = len(labels) // n_walks
    rows = [
        _confusion_with_unsure(label, gt, num_classes, ignore)
        for w in range(n_walks)
        for label in label_rows(refined[w * t : (w + 1) * t], pairs)
    ]
    return np.stack(rows).reshape(n_walks, -1, num_classes, num_classes + 1)


def main(argv=None) -> list[dict]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import dataclasses

    import torch

    import wsss_d2  # noqa: F401  (registers the datasets and models)
    from wsss_d2.data.mappers import build_mapper
    from wsss_d2.engine.trainer import WSSSTrainer
    from wsss_d2.io.files import atomic_write_bytes
    from wsss_d2.modeling.checkpoint import load_model_weights
    from wsss_d2.ops.amp import inference_autocast
    from wsss_d2.ops.crf import CRFParams
    from wsss_d2.ops.pool import map_in_pool
    from wsss_d2.pseudo.irn_round import same_size_batches, walk_batch, walk_labels
    from wsss_d2.pseudo.random_walk import WalkParams

    sweep = load_sweep_rows()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config-file", required=True, help="an IRNet config")
    ap.add_argument(
        "--weights", nargs="+", help="the trained IRNet (several: their boundary maps averaged)"
    )
    ap.add_argument("--cam-dir", required=True, help="the CAM folder the walk propagates")
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.15, 0.2, 0.25, 0.3, 0.35])
    ap.add_argument("--betas", type=float, nargs="+", help="MODEL.IRN.BETA values (the config's)")
    ap.add_argument("--exp-times", type=int, nargs="+", help="MODEL.IRN.EXP_TIMES values")
    ap.add_argument(
        "--normalize", nargs="+", choices=("global", "class"), help="MODEL.IRN.WALK_NORM values"
    )
    ap.add_argument(
        "--bg-powers",
        type=float,
        nargs="+",
        help="MODEL.IRN.WALK_BG_POWER values (0: the constant background; > 0: the walked one, "
        "whose scale the thresholds then are)",
    )
    ap.add_argument(
        "--bands", action="store_true", help="also score every pair of thresholds as a band"
    )
    ap.add_argument("--crf", action="store_true", help="also score the labels after the CRF")
    ap.add_argument("--workers", type=int, default=0, help="CRF processes (0 = every core)")
    ap.add_argument(
        "--mask-boundaries",
        action="store_true",
        help="boundaries from the training masks instead of the IRNet's (the walk's ceiling)",
    )
    args, cfg, names, dicts = sweep.sweep_setup(ap, argv)
    if not args.weights and not args.mask_boundaries:
        ap.error("--weights is required (unless --mask-boundaries)")
    weights = [] if args.mask_boundaries else args.weights  # the masks: no IRNet to load
    models = [WSSSTrainer.build_model(cfg).eval() for _ in weights or [None]]
    for m, w in zip(models, weights):
        load_model_weights(m, w)
    model = models[0]
    base = WalkParams.from_config(cfg)
    walks = [
        dataclasses.replace(base, beta=b, exp_times=e, normalize=n, bg_power=p)
        for b in sorted(set(args.betas or [base.beta]))
        for e in sorted(set(args.exp_times or [base.exp_times]))
        for n in sorted(set(args.normalize or [base.normalize]))
        for p in sorted(set(args.bg_powers or [base.bg_power]))
    ]
    mapper = build_mapper(cfg, is_train=False)
    thresholds = sorted(set(args.thresholds))
    k1 = cfg.INPUT.TAGS.NUM_CLASSES + 1
    class_names = sweep.class_names_of(names[0], k1)
    pairs = list(itertools.combinations(range(len(thresholds)), 2)) if args.bands else []
    settings = [(t, 0.0) for t in thresholds] + [(thresholds[i], thresholds[j]) for i, j in pairs]
    conf = np.zeros((len(walks), len(settings), k1, k1 + 1), np.int64)
    crf_conf = np.zeros_like(conf)
    crf = CRFParams.from_config(cfg) if args.crf else None
    start, done = time.perf_counter(), 0
    for batch in same_size_batches(dicts, mapper, cfg.WSSS.PSEUDO.IMS_PER_BATCH):
        inputs, batch_dicts = [x for x, _ in batch], [d for _, d in batch]
        with torch.no_grad():
            if args.mask_boundaries:
                outs = [
                    {"edge": mask_boundaries(d, tuple(x["image"].shape[-2:]), model.stride)}
                    for x, d in batch
                ]
            else:
                with inference_autocast(next(model.parameters()).device, cfg.WSSS.PSEUDO.AMP):
                    outs = ensemble_outputs(models, inputs)
            labels = [[] for _ in batch]  # per image: (walk, threshold) labels, for the CRF
            walked_by = {}  # (beta, exp_times, bg_power) -> the walk: not the normalisation
            for w, params in enumerate(walks):
                key = (params.beta, params.exp_times, params.bg_power)
                if key not in walked_by:
                    walked_by[key] = walk_batch(model, inputs, args.cam_dir, params, outs=outs)
                walked = walked_by[key]
                labs = walk_labels(walked, model.stride, thresholds, params.normalize)
                rows = [label_rows(lab, pairs) for lab in labs]
                conf[w] += score_labels(rows, batch_dicts, k1, cfg.MODEL.IGNORE_VALUE)
                for i, lab in enumerate(labs if crf is not None else ()):
                    labels[i] += lab
        if crf is not None:
            jobs = [
                (d, labs, walked[i][1], crf, len(walks), pairs, k1, cfg.MODEL.IGNORE_VALUE)
                for i, (d, labs) in enumerate(zip(batch_dicts, labels))
            ]
            for c in map_in_pool(_crf_job, jobs, args.workers, desc="crf", progress=False):
                crf_conf += c.reshape(crf_conf.shape)
        done += len(batch)
        logger.info("%d / %d images, %.1f s", done, len(dicts), time.perf_counter() - start)
    seconds = time.perf_counter() - start
    rows = [
        {
            "beta": p.beta,
            "exp_times": p.exp_times,
            "normalize": p.normalize,
            "bg_power": p.bg_power,
            "threshold": t,
            "unsure_threshold": u,
            "crf": bool(use_crf),
            "edges": "mask" if args.mask_boundaries else "irnet",
            **sweep._row(c, class_names),
        }
        for use_crf, confs in ((False, conf), (True, crf_conf))[: 2 if crf is not None else 1]
        for p, cw in zip(walks, confs)
        for (t, u), c in zip(settings, cw)
    ]
    rows.sort(key=lambda r: -r["mIoU"])
    print(f"{len(dicts)} images of {', '.join(names)}; IRNet + {len(walks)} walk(s) in "
          f"{seconds:.0f} s (load {os.getloadavg()[0]:.2f})")  # fmt: skip
    print(
        " beta  exp    norm  bg pow  threshold  unsure  crf   mIoU  unsure%  bg share% (GT)"
        "  bg prec  bg rec"
    )
    for r in rows:
        crf_col = "yes" if r["crf"] else "no"
        print(f"{r['beta']:5g} {r['exp_times']:4d} {r['normalize']:>7} {r['bg_power']:7g} "
              f"{r['threshold']:10.2f} "
              f"{r['unsure_threshold']:7.2f} {crf_col:>4} {r['mIoU']:6.2f} {r['unsure_pct']:8.1f} "
              f"{r['bg_share_pct']:9.1f} ({r['gt_bg_share_pct']:.1f}) "
              f"{r['bg_precision']:8.1f} {r['bg_recall']:7.1f}")  # fmt: skip
    if args.output:
        atomic_write_bytes(
            args.output, json.dumps({"rows": rows, "seconds": seconds}, indent=2).encode()
        )
    return rows


def load_sweep_rows():
    """``benchmarks/sweep_crf_band.py`` (its ``sweep_setup`` and ``_row``: the same set-up and
    metrics for both sweeps)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sweep_crf_band.py")
    spec = importlib.util.spec_from_file_location("sweep_crf_band", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    main()
