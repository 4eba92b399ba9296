#!/usr/bin/env python
"""Reproduce the CIAN toy ablation table (projects/CIAN/README.md).

    python projects/CIAN/toy_ablation.py --out output/cian_toy_ablation
    python projects/CIAN/toy_ablation.py --out ... --round1 <complete round_01 folder>

Steps (each skipped when its output already exists, so an interrupted run resumes):

1. Round 1 (unless ``--round1`` is given): the toy CAM model (configs/cam_toy.yaml, seed 0)
   and its pseudo labels (configs/pseudo_toy.yaml: multi-scale CAMs + CRF) of toyparts_train.
2. For every seed: the self-affinity baseline, CIAN "+CE", CIAN "+CE +CP" (common-class pairs),
   and both with random pairs, all on round 1 with the same schedule and seed
   (configs/ablations/cian_toy_*.yaml), each evaluated on toyparts_val (mIoU, ms+flip as
   configured).
3. Retraining (+RT) for every seed: the CIAN model predicts toyparts_train with a dense CRF
   (tools/make_pseudo_labels.py, round 2), and CIAN trains again from its weights on round 2.
   ``--retrain-from cian ce`` also retrains the "+CE" models the same way.

Writes ``<out>/results.json`` and ``<out>/table.md`` (mean and standard deviation over the
seeds, and every run's value). Runs one process at a time with one thread per process
(``OMP_NUM_THREADS=1``), which is much faster than letting several runs fight over 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

VARIANTS = {  # name -> (config, description)
    "baseline": ("configs/ablations/cian_toy_baseline.yaml", "self-affinity baseline"),
    "ce": ("configs/ablations/cian_toy_ce.yaml", "+CE (cross-image, CE only)"),
    "cian": ("configs/ablations/cian_toy_cp.yaml", "+CE +CP (CIAN, common-class pairs)"),
    "random": ("configs/ablations/cian_toy_random.yaml", "+CE +CP, random pairs"),
    "ce_random": ("configs/ablations/cian_toy_ce_random.yaml", "+CE, random pairs"),
}


def run(cmd: list[str], log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.setdefault("DETECTRON2_DATASETS", str(REPO / "datasets"))
    print("+", " ".join(cmd), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise RuntimeError(f"command failed ({r.returncode}), see {log}: {' '.join(cmd)}")


def final_miou(out_dir: Path) -> float | None:
    """The last ``sem_seg/mIoU`` in a finished run's metrics.json (None if not finished)."""
    m = out_dir / "metrics.json"
    if not (out_dir / "model_final.pth").is_file() or not m.is_file():
        return None
    value = None
    for line in m.read_text().splitlines():
        rec = json.loads(line)
        if "sem_seg/mIoU" in rec:
            value = rec["sem_seg/mIoU"]
    return value


COLLECT_ONLY = False  # --collect: tabulate finished runs, start nothing
EXTRA: list[str] = []  # KEY VALUE overrides given after --, for every command


def train(config: str, out_dir: Path, opts: list[str]) -> float | None:
    miou = final_miou(out_dir)
    if miou is None and COLLECT_ONLY:
        return None
    if miou is None:
        run(
            [
                PY,
                "tools/train_net.py",
                "--config-file",
                config,
                "OUTPUT_DIR",
                str(out_dir),
                "DATALOADER.NUM_WORKERS",
                "0",
                *opts,
                *EXTRA,
            ],
            out_dir.with_suffix(".log"),
        )
        miou = final_miou(out_dir)
        if miou is None:
            raise RuntimeError(f"{out_dir} finished without a sem_seg/mIoU")
    print(f"  {out_dir.name}: mIoU {miou:.2f}", flush=True)
    return miou


def make_round(
    config: str, weights: Path, root: Path, k: int, out_dir: Path, opts: list[str] = ()
) -> tuple[Path, dict | None]:
    folder = root / f"round_{k:02d}"
    if not (folder / "manifest.json").is_file() and not COLLECT_ONLY:
        run(
            [
                PY,
                "tools/make_pseudo_labels.py",
                "--config-file",
                config,
                "MODEL.WEIGHTS",
                str(weights),
                "WSSS.PSEUDO.ROOT",
                str(root),
                "WSSS.PSEUDO.ROUND",
                str(k),
                "OUTPUT_DIR",
                str(out_dir),
                *opts,
                *EXTRA,
            ],
            out_dir.with_suffix(".log"),
        )
    ev = out_dir / "pseudo_label_evaluation.json"
    return folder, (json.loads(ev.read_text()) if ev.is_file() else None)


def summarize(values: list[float]) -> str:
    if not values:
        return "-"
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {sd:.2f}"


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
    global COLLECT_ONLY
    COLLECT_ONLY = a.collect
    EXTRA[:] = a.opts
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"seeds": a.seeds, "runs": {}, "rounds": {}}

    def save():
        (out / "results.json").write_text(json.dumps(results, indent=2))

    if a.round1:
        round1 = Path(a.round1).resolve()
    else:
        cam_dir = out / "cam_toy"
        if not (cam_dir / "model_final.pth").is_file():
            run(
                [
                    PY,
                    "tools/train_net.py",
                    "--config-file",
                    "configs/cam_toy.yaml",
                    "OUTPUT_DIR",
                    str(cam_dir),
                    "DATALOADER.NUM_WORKERS",
                    "0",
                    *EXTRA,
                ],
                cam_dir.with_suffix(".log"),
            )
        round1, ev = make_round(
            "configs/pseudo_toy.yaml",
            cam_dir / "model_final.pth",
            out / "round1",
            1,
            out / "round1_make",
        )
        results["rounds"]["round1"] = ev
    if not (round1 / "manifest.json").is_file():
        raise FileNotFoundError(f"round 1 is not a complete round: {round1}")
    ev1 = round1.parent / "round_01_eval.json"
    if ev1.is_file():
        results["rounds"]["round1"] = json.loads(ev1.read_text())
    results["round1"] = str(round1)

    # the must-show variants first, seed by seed, so a partial run already compares them
    for seed in a.seeds:
        for v in a.variants:
            config = VARIANTS[v][0]
            miou = train(
                config,
                out / f"{v}_s{seed}",
                ["SEED", str(seed), "WSSS.PSEUDO.TRAIN_ROUND", str(round1)],
            )
            if miou is not None:
                results["runs"].setdefault(v, {})[str(seed)] = miou
            save()
    # retraining: the first model predicts the training set (CRF) -> round 2 -> train again
    # from its weights with the same losses ("retrain" = on top of +CE +CP, as the paper)
    retrain_cfg = {"cian": "configs/ablations/cian_toy_retrain.yaml", "ce": VARIANTS["ce"][0]}
    for src in [] if a.no_retrain else a.retrain_from:
        tag = "" if src == "cian" else f"{src}_"
        for seed in a.seeds:
            first = out / f"{src}_s{seed}"
            if not (first / "model_final.pth").is_file():
                continue
            r2, ev = make_round(
                VARIANTS[src][0],
                first / "model_final.pth",
                out / f"round2_{tag}s{seed}",
                2,
                out / f"round2_{tag}s{seed}_make",
            )
            results["rounds"][f"round2_{tag}s{seed}"] = ev
            if not (r2 / "manifest.json").is_file():
                continue
            miou = train(
                retrain_cfg[src],
                out / f"retrain_{tag}s{seed}",
                [
                    "SEED",
                    str(seed),
                    "WSSS.PSEUDO.TRAIN_ROUND",
                    str(r2),
                    "MODEL.WEIGHTS",
                    str(first / "model_final.pth"),
                ],
            )
            if miou is not None:
                results["runs"].setdefault(f"{tag}retrain", {})[str(seed)] = miou
            save()

    names = {
        **{k: d for k, (_, d) in VARIANTS.items()},
        "retrain": "+CE +CP +RT (retraining)",
        "ce_retrain": "+CE +RT (retraining the +CE model)",
    }
    lines = ["| variant | toyparts_val mIoU (mean ± sd) | per seed |", "|---|---|---|"]
    for v in ["baseline", "ce", "ce_random", "cian", "random", "retrain", "ce_retrain"]:
        if v in results["runs"]:
            got = [s for s in a.seeds if str(s) in results["runs"][v]]
            vals = [results["runs"][v][str(s)] for s in got]
            per = ", ".join(f"{x:.2f} (seed {s})" for x, s in zip(vals, got))
            lines.append(f"| {names[v]} | {summarize(vals)} | {per} |")
    for name, ev in results["rounds"].items():
        if ev:
            lines.append(
                f"| pseudo labels {name} (toyparts_train) | {ev['mIoU']:.2f} | "
                f"ignored {100 * ev['ignored_fraction']:.1f} % |"
            )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    save()
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
