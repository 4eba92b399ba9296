#!/usr/bin/env python
"""PLDA ablation on the generated toyparts data: every variant for every seed (same schedule,
backbone and seeds), and the CAM mIoU tables (CAMEvaluator, best background threshold, on the
preset's validation split).

    OMP_NUM_THREADS=1 DETECTRON2_DATASETS=datasets python projects/PLDA/toy_ablation.py \
        --out-root output/plda_toy_ablation --seeds 0 1 2 [--preset large]

The runs are the stages of one pipeline (:mod:`wsss_d2.sweep`): finished runs are reused, an
interrupted sweep resumes, a run whose config changed runs again. Extra ``KEY VALUE`` pairs after
``--`` go to every run (e.g. ``-- SOLVER.MAX_ITER 800``). ``--held-out SPLIT`` also scores every
final model on SPLIT (``--eval-only``) and prints its table and one with both means side by
side: variants chosen by their validation numbers are then reported on data no choice has seen
(``toyparts_{cue,stripe,large}_test``). ``--collect`` prints the tables of the finished runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from wsss_d2.sweep import markdown_table, run_stages, stage_value

REPO = Path(__file__).resolve().parents[2]
CONFIGS = "projects/PLDA/configs"

VARIANTS = {  # name -> config (baseline first)
    "baseline (CAM)": "configs/cam_toy.yaml",
    "+adv": f"{CONFIGS}/plda_toy_adv.yaml",
    "+adv, own-class target": f"{CONFIGS}/plda_toy_adv_own.yaml",
    "+cps": f"{CONFIGS}/plda_toy_cps.yaml",
    "+cps (source only)": f"{CONFIGS}/plda_toy_cps_src.yaml",
    "+adv+cps (PLDA, MaskAssign)": "configs/plda_toy.yaml",
    "+adv+cps, own-class target": f"{CONFIGS}/plda_toy_own.yaml",
    "+adv+cps, SimpleAssign": f"{CONFIGS}/plda_toy_simple_assign.yaml",
    # CPS on the CAM's logits (the paper's), where the configs above train a pixel classifier
    "+adv+cps, CPS on the CAM": f"{CONFIGS}/plda_toy_cam_cps.yaml",
    "+adv+cps, own-class target, CPS on the CAM": f"{CONFIGS}/plda_toy_own_cam_cps.yaml",
}
# data presets: overrides put before the user's; "cue" = bodies striped at their class's angle
# 60 % of the time (toyparts_cue_*) and the tiny backbone at output stride 4 (24x24 CAMs of
# the 96 px images: at OS8 the heads are about one CAM cell, and blur, not the part-only CAM,
# limits the baseline)
PRESETS = {
    "toyparts": [],
    "cue": [
        "DATASETS.TRAIN",
        "('toyparts_cue_train',)",
        "DATASETS.TEST",
        "('toyparts_cue_val',)",
        "MODEL.TINY.OUTPUT_STRIDE",
        "4",
    ],
    # every body striped at its class's angle: a subtle but fully reliable body cue
    "stripe": [
        "DATASETS.TRAIN",
        "('toyparts_stripe_train',)",
        "DATASETS.TEST",
        "('toyparts_stripe_val',)",
        "MODEL.TINY.OUTPUT_STRIDE",
        "4",
    ],
    # as stripe with bodies 1.6x larger (heads unchanged): a head-only CAM misses most of the
    # object even after its blur
    "large": [
        "DATASETS.TRAIN",
        "('toyparts_large_train',)",
        "DATASETS.TEST",
        "('toyparts_large_val',)",
        "MODEL.TINY.OUTPUT_STRIDE",
        "4",
    ],
}


def table(title, results, seeds, held_out=None) -> str:
    """Per-seed scores, their mean and its gap to the baseline's mean; with ``held_out``, the
    held-out split's mean and gap as two more columns."""

    def mean_and_gap(tab, name):
        mean = statistics.mean(tab[name])
        base = tab.get("baseline (CAM)")
        return [f"{mean:.2f}", f"{mean - statistics.mean(base):+.2f}" if base else "n/a"]

    headers = ["variant", "config", *(f"seed {s}" for s in seeds), "mean", "vs baseline"]
    headers += ["held-out mean", "vs baseline"] if held_out else []
    rows = [
        [name, f"`{VARIANTS[name]}`", *(f"{v:.2f}" for v in vals), *mean_and_gap(results, name)]
        + (mean_and_gap(held_out, name) if held_out else [])
        for name, vals in results.items()
    ]
    return f"\n{title}\n\n" + markdown_table(headers, rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-root", default="output/plda_toy_ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}"
    )
    ap.add_argument("--preset", default="toyparts", choices=list(PRESETS), help="data preset")
    ap.add_argument("--held-out", default="", help="also score every final model on this split")
    ap.add_argument("--collect", action="store_true", help="only tabulate the finished runs")
    ap.add_argument("opts", nargs="*", help="KEY VALUE overrides for every run (after --)")
    args = ap.parse_args()
    opts = PRESETS[args.preset] + list(args.opts)
    if "DETECTRON2_DATASETS" not in os.environ:
        print("note: DETECTRON2_DATASETS is not set; toyparts goes to ./datasets", flush=True)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    stages, names = [], {}
    for name in args.variants:
        cfg = VARIANTS[name]
        for seed in args.seeds:
            run = f"{Path(cfg).stem}_s{seed}"
            run_opts = opts + ["SEED", str(seed)]
            stages.append({"name": run, "kind": "train", "config": cfg, "opts": run_opts})
            names[(name, seed)] = run
            if args.held_out:  # the trained model on the held-out split
                stages.append({
                    "name": f"{run}_{args.held_out}", "kind": "evaluate", "config": cfg,
                    "weights_from": run,
                    "opts": run_opts + ["DATASETS.TEST", f"('{args.held_out}',)"],
                })  # fmt: skip
    done = run_stages(args.out_root, stages, str(REPO), collect_only=args.collect)

    def scores(suffix=""):
        out = {}
        for name in args.variants:
            vals = [stage_value(done, names[(name, s)] + suffix, "cam/mIoU") for s in args.seeds]
            if None not in vals:
                out[name] = vals
        return out

    results = scores()
    print(table("CAM mIoU on the preset's validation split", results, args.seeds))
    if args.held_out:
        held_out = scores(f"_{args.held_out}")
        print(table(f"CAM mIoU on the held-out split {args.held_out}", held_out, args.seeds))
        both = {k: v for k, v in results.items() if k in held_out}
        title = f"Validation seeds and mean, held-out ({args.held_out}) mean"
        print(table(title, both, args.seeds, held_out))


if __name__ == "__main__":
    main()
