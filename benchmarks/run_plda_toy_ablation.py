#!/usr/bin/env python
"""PLDA ablation on the generated toyparts data: trains every variant for every seed with
``tools/train_net.py`` (same schedule, backbone and seeds) and prints the CAM mIoU table
(CAMEvaluator, best background threshold, on the preset's val split).

    DETECTRON2_DATASETS=datasets python benchmarks/run_plda_toy_ablation.py \
        --out-root output/plda_toy_ablation --seeds 0 1 2 [--preset cue]

Finished runs (a ``metrics.json`` holding ``cam/mIoU``) are reused, so an interrupted sweep
resumes. Extra ``KEY VALUE`` pairs after ``--`` go to every run (e.g. ``-- SOLVER.MAX_ITER 800``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

VARIANTS = {  # name -> config (baseline first)
    "baseline (CAM)": "configs/cam_toy.yaml",
    "+adv": "configs/ablations/plda_toy_adv.yaml",
    "+adv, own-class target": "configs/ablations/plda_toy_adv_own.yaml",
    "+cps": "configs/ablations/plda_toy_cps.yaml",
    "+cps (source only)": "configs/ablations/plda_toy_cps_src.yaml",
    "+adv+cps (PLDA, MaskAssign)": "configs/plda_toy.yaml",
    "+adv+cps, own-class target": "configs/ablations/plda_toy_own.yaml",
    "+adv+cps, SimpleAssign": "configs/ablations/plda_toy_simple_assign.yaml",
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
}


def cam_miou(run_dir: Path) -> float | None:
    """Last ``cam/mIoU`` written to ``run_dir/metrics.json`` (None if the run did not finish)."""
    f = run_dir / "metrics.json"
    if not f.is_file():
        return None
    value = None
    for line in f.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "cam/mIoU" in rec:
            value = float(rec["cam/mIoU"])
    return value


def run(config: str, seed: int, out: Path, opts: list[str]) -> float:
    value = cam_miou(out)
    if value is not None:
        return value
    cmd = [
        sys.executable,
        str(REPO / "tools/train_net.py"),
        "--config-file",
        str(REPO / config),
        "OUTPUT_DIR",
        str(out),
        "SEED",
        str(seed),
        *opts,
    ]
    print("running:", " ".join(cmd), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "stdout.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    value = cam_miou(out)
    if value is None:
        raise RuntimeError(f"{out}/metrics.json has no cam/mIoU after the run")
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-root", default="output/plda_toy_ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), help=f"subset of {list(VARIANTS)}"
    )
    ap.add_argument("--preset", default="toyparts", choices=list(PRESETS), help="data preset")
    ap.add_argument("opts", nargs="*", help="KEY VALUE overrides for every run (after --)")
    args = ap.parse_args()
    opts = PRESETS[args.preset] + list(args.opts)
    if "DETECTRON2_DATASETS" not in os.environ:
        print("note: DETECTRON2_DATASETS is not set; toyparts goes to ./datasets", flush=True)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    root = Path(args.out_root)
    results: dict[str, list[float]] = {}
    for name in args.variants:
        slug = Path(VARIANTS[name]).stem
        results[name] = [run(VARIANTS[name], s, root / f"{slug}_s{s}", opts) for s in args.seeds]

    base = results.get("baseline (CAM)")
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    print(f"\n| variant | config | {seeds} | mean | vs baseline |")
    print("|---|---|" + "---|" * (len(args.seeds) + 2))
    for name, vals in results.items():
        mean = statistics.mean(vals)
        delta = f"{mean - statistics.mean(base):+.2f}" if base else "n/a"
        cells = " | ".join(f"{v:.2f}" for v in vals)
        print(f"| {name} | `{VARIANTS[name]}` | {cells} | {mean:.2f} | {delta} |")


if __name__ == "__main__":
    main()
