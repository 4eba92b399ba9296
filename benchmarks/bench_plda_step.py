#!/usr/bin/env python
"""Time per training step of PLDA vs the CAM baseline: same backbone, batch and inputs, in one run.

    python benchmarks/bench_plda_step.py                       # tiny backbone, 96 px, batch 16
    python benchmarks/bench_plda_step.py --backbone r50 --size 128 --batch 4
    python benchmarks/bench_plda_step.py --backbone r101 --size 512 --batch 16 --device cuda

A step is forward + backward + SGD update on random images with random tags (the cost does not
depend on the pixel values). Prints both medians and the ratio PLDA / CAM (goal: <= 2.3x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from wsss_d2.config import get_wsss_cfg
from wsss_d2.ops.progress import load_line

CONFIGS = {
    "tiny": ("configs/cam_toy.yaml", "configs/plda_toy.yaml"),
    "r50": ("configs/cam_r50.yaml", "configs/plda_r50.yaml"),
    "r101": ("configs/cam_r101.yaml", "configs/plda_r101.yaml"),
}


def make_cfg(path: str, device: str, extra: list[str]):
    return get_wsss_cfg(path, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", ""] + extra)


def build(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    return model, opt


def one_step(model, opt, inputs, sync) -> tuple[float, float]:
    """(wall, process CPU) seconds of forward + backward + update."""
    sync()
    w0, c0 = time.perf_counter(), time.process_time()
    losses = model(inputs)
    opt.zero_grad()
    sum(losses.values()).backward()
    opt.step()
    sync()
    return time.perf_counter() - w0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backbone", choices=sorted(CONFIGS), default="tiny")
    ap.add_argument("--size", type=int, default=96, help="square input size (pixels)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="extra KEY VALUE config overrides")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(load_line("before"))

    cam_path, plda_path = CONFIGS[args.backbone]
    cfgs = {
        "CAM": make_cfg(cam_path, args.device, args.opts),
        "PLDA": make_cfg(plda_path, args.device, args.opts),
    }
    k = cfgs["CAM"].INPUT.TAGS.NUM_CLASSES
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(args.batch):
        tags = torch.zeros(k)
        tags[torch.randperm(k, generator=g)[: 1 + i % 2]] = 1
        inputs.append(
            {
                "image": torch.randint(
                    0, 256, (3, args.size, args.size), generator=g, dtype=torch.uint8
                ),
                "tags": tags,
            }
        )
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    models = {name: build(cfg) for name, cfg in cfgs.items()}
    wall = {name: [] for name in cfgs}
    cpu = {name: [] for name in cfgs}
    # steps alternate between the two models, so that both see the same machine load
    with EventStorage():
        for i in range(args.warmup + args.steps):
            for name, (model, opt) in models.items():
                w, c = one_step(model, opt, inputs, sync)
                if i >= args.warmup:
                    wall[name].append(w)
                    cpu[name].append(c)
    med = {name: statistics.median(t) for name, t in wall.items()}
    med_cpu = {name: statistics.median(t) for name, t in cpu.items()}
    for name in cfgs:
        print(
            f"{name:5s} {args.backbone} {args.size}px batch {args.batch} on {args.device}: "
            f"median {med[name] * 1000:.1f} ms/step wall (min {min(wall[name]) * 1000:.1f}), "
            f"{med_cpu[name] * 1000:.1f} ms/step process CPU, {args.steps} steps"
        )
    if not args.device.startswith("cuda"):
        print(f"ratio PLDA/CAM (process CPU) = {med_cpu['PLDA'] / med_cpu['CAM']:.2f}x")
    print(f"ratio PLDA/CAM (wall) = {med['PLDA'] / med['CAM']:.2f}x  (goal <= 2.3x)")
    print(load_line("after"))


if __name__ == "__main__":
    main()
