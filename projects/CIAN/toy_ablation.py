#!/usr/bin/env python
"""Reproduce the CIAN toy ablation table (projects/CIAN/README.md).

    OMP_NUM_THREADS=1 python projects/CIAN/toy_ablation.py --out output/cian_toy_ablation
    python projects/CIAN/toy_ablation.py --out ... --round1 <complete round_01 folder>

The runs are the stages of one pipeline (:mod:`wsss_d2.sweep`): finished runs are reused and
an interrupted run resumes.

1. Round 1 (unless ``--round1`` is given): the toy CAM model (configs/cam_toy.yaml, seed 0)
   and its pseudo labels (configs/pseudo_toy.yaml: multi-scale CAMs + CRF) of toyparts_train.
2. For every seed: the self-affinity baseline, CIAN "+CE", CIAN "+CE +CP" (common-class pairs),
   and both with random pairs, all on round 1 with the same schedule and seed
   (projects/CIAN/configs/cian_toy_*.yaml), each evaluated on toyparts_val (mIoU, ms+flip as
   configured).
3. Retraining (+RT) for every seed: the CIAN model predicts toyparts_train with a dense CRF
   (tools/make_pseudo_labels.py, round 2), and CIAN trains again from its weights on round 2.
   ``--retrain-from cian ce`` also retrains the "+CE" models the same way.

Writes ``<out>/results.json`` and ``<out>/table.md`` (mean and standard deviation over the
seeds, and every run's value). Run it with one thread per process (``OMP_NUM_THREADS=1``), which
is much faster than letting torch's threads fight over 2 cores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wsss_d2.sweep import markdown_table, mean_sd, run_stages, stage_value

REPO = Path(__file__).resolve().parents[2]
CONFIGS = "projects/CIAN/configs"

VARIANTS = {  # name -> (config, description)
    "baseline": (f"{CONFIGS}/cian_toy_baseline.yaml", "self-affinity baseline"),
    "ce": (f"{CONFIGS}/cian_toy_ce.yaml", "+CE (cross-image, CE only)"),
    "cian": (f"{CONFIGS}/cian_toy_cp.yaml", "+CE +CP (CIAN, common-class pairs)"),
    "random": (f"{CONFIGS}/cian_toy_random.yaml", "+CE +CP, random pairs"),
    "ce_random": (f"{CONFIGS}/cian_toy_ce_random.yaml", "+CE, random pairs"),
}
# retraining: the first model predicts the training set (CRF) -> round 2 -> train again from its
# weights with the same losses ("retrain" = on top of +CE +CP, as the paper)
RETRAIN = {"cian": f"{CONFIGS}/cian_toy_retrain.yaml", "ce": VARIANTS["ce"][0]}
NAMES = {
    **{k: d for k, (_, d) in VARIANTS.items()},
    "retrain": "+CE +CP +RT (retraining)",
    "ce_retrain": "+CE +RT (retraining the +CE model)",
}


def stages_of(a) -> list[dict]:
    """The sweep's runs, in the order they run (the must-show variants first, seed by seed)."""
    extra = ["DATALOADER.NUM_WORKERS", "0", *a.opts]
    stages = []
    round1 = {"round_from": "round1"}
    if a.round1:
        round1 = {}
        extra_round = ["WSSS.PSEUDO.TRAIN_ROUND", str(Path(a.round1).resolve())]
    else:
        extra_round = []
        stages += [
            {"name": "cam_toy", "kind": "train", "config": "configs/cam_toy.yaml", "opts": extra},
            {"name": "round1", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml",
             "weights_from": "cam_toy", "opts": extra},
        ]  # fmt: skip
    for seed in a.seeds:
        for v in a.variants:
            stages.append({
                "name": f"{v}_s{seed}", "kind": "train", "config": VARIANTS[v][0], **round1,
                "opts": ["SEED", str(seed), *extra_round, *extra],
            })  # fmt: skip
    for src in [] if a.no_retrain else a.retrain_from:
        tag = "" if src == "cian" else f"{src}_"
        for seed in a.seeds:
            first = f"{src}_s{seed}"
            stages += [
                {"name": f"round2_{tag}s{seed}", "kind": "pseudo_labels",
                 "config": VARIANTS[src][0], "weights_from": first,
                 "opts": ["WSSS.PSEUDO.ROUND", "2", *extra]},
                {"name": f"retrain_{tag}s{seed}", "kind": "train", "config": RETRAIN[src],
                 "weights_from": first, "round_from": f"round2_{tag}s{seed}",
                 "opts": ["SEED", str(seed), *extra]},
            ]  # fmt: skip
    return stages


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="output/cian_toy_ablation")
    p.add_argument("--round1", default="", help="an existing complete round_01 folder to use")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--variants",
        nargs="+",
        default=["baseline", "cian", "random", "ce", "ce_random"],
        choices=list(VARIANTS),
    )
    p.add_argument("--no-retrain", action="store_true")
    p.add_argument(
        "--retrain-from",
        nargs="+",
        default=["cian"],
        choices=["cian", "ce"],
        help="variants whose models write round 2 and are retrained on it",
    )
    p.add_argument("--collect", action="store_true", help="only tabulate the finished runs")
    p.add_argument(
        "opts",
        nargs="*",
        help="KEY VALUE overrides for every command, after -- (e.g. the datasets: -- "
        "DATASETS.TRAIN \"('toyparts_cue_train',)\" DATASETS.TEST \"('toyparts_cue_val',)\")",
    )
    a = p.parse_args(argv)
    if a.round1 and not (Path(a.round1) / "manifest.json").is_file():
        raise FileNotFoundError(f"round 1 is not a complete round: {a.round1}")
    out = Path(a.out).resolve()
    done = run_stages(str(out), stages_of(a), str(REPO), collect_only=a.collect)

    runs: dict[str, dict[str, float]] = {}
    for v in a.variants:
        for seed in a.seeds:
            value = stage_value(done, f"{v}_s{seed}", "sem_seg/mIoU")
            if value is not None:
                runs.setdefault(v, {})[str(seed)] = value
    rounds = {n: s["results"] for n, s in done.items() if s["kind"] == "pseudo_labels"}
    for src in [] if a.no_retrain else a.retrain_from:
        tag = "" if src == "cian" else f"{src}_"
        for seed in a.seeds:
            value = stage_value(done, f"retrain_{tag}s{seed}", "sem_seg/mIoU")
            if value is not None:
                runs.setdefault(f"{tag}retrain", {})[str(seed)] = value
    results = {"seeds": a.seeds, "runs": runs, "rounds": rounds}
    (out / "results.json").write_text(json.dumps(results, indent=2))

    rows = []
    for v in ["baseline", "ce", "ce_random", "cian", "random", "retrain", "ce_retrain"]:
        if v in runs:
            got = [s for s in a.seeds if str(s) in runs[v]]
            vals = [runs[v][str(s)] for s in got]
            per = ", ".join(f"{x:.2f} (seed {s})" for x, s in zip(vals, got))
            rows.append([NAMES[v], mean_sd(vals), per])
    for name, ev in rounds.items():
        if "mIoU" in ev:
            ignored = 100 * ev.get("ignored_fraction", 0.0)
            rows.append([f"pseudo labels {name} (toyparts_train)", f"{ev['mIoU']:.2f}",
                         f"ignored {ignored:.1f} %"])  # fmt: skip
    table = markdown_table(["variant", "toyparts_val mIoU (mean ± sd)", "per seed"], rows)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
