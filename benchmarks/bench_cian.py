#!/usr/bin/env python
"""CIAN vs the self-affinity baseline (and the vanilla DeepLab-v2): parameters, FLOPs, step time.

    python benchmarks/bench_cian.py                              # ResNet-101 OS8, 321x321, CPU
    python benchmarks/bench_cian.py --device cuda --batch 16 --steps 20
    python benchmarks/bench_cian.py --config configs/cian_toy.yaml --size 96 --batch 16

Models, all built from the same config (random weights, same input):

- ``vanilla``:  WSSSSegmentor + DeepLabLargeFOVHead (no affinity module);
- ``baseline``: CIANSegmentor with ``MODEL.CIAN.CROSS False``, completion off: the paper's
  self-affinity baseline (same parameters as CIAN);
- ``cian``:     CIANSegmentor as configured (one common-class reference per query).

FLOPs are fvcore's ``FlopCountAnalysis`` (one multiply-add = one flop, as the paper counts) for
one image: *inference* (backbone + head, self-affinity only) and *training forward* (backbone +
self branch, plus the cross branch of a pair for CIAN: the paper's Table 1 compares these,
88.2 G baseline vs 89.7 G CIAN, +1.7 %). Step time: forward + losses + backward + SGD step on
a batch of ``--batch`` images made of pairs sharing a tag, median over ``--steps`` after one
warm-up step. Goals at the paper's proportions: training step <= 1.1x the baseline's, training
FLOPs within +2 %, inference FLOPs equal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from fvcore.nn import FlopCountAnalysis
from torch import nn

import wsss_d2  # noqa: F401  (registers everything)
from wsss_d2.config import get_wsss_cfg
from wsss_d2.ops.progress import load_line

REPO = Path(__file__).resolve().parents[1]


def make_cfg(config: str, device: str, opts: list[str]):
    path = str(REPO / config) if not Path(config).is_file() else config
    return get_wsss_cfg(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device] + opts)


def build(cfg, kind: str) -> nn.Module:
    cfg = cfg.clone()
    if kind == "vanilla":
        cfg.merge_from_list(
            [
                "MODEL.META_ARCHITECTURE",
                "WSSSSegmentor",
                "MODEL.SEM_SEG_HEAD.NAME",
                "DeepLabLargeFOVHead",
            ]
        )
    elif kind == "baseline":
        cfg.merge_from_list(["MODEL.CIAN.CROSS", "False", "MODEL.CIAN.COMPLETION", "False"])
    torch.manual_seed(0)
    return build_model(cfg)


class InferenceForward(nn.Module):
    """images (N, 3, H, W) normalised -> logits, the path a test image takes (scale 1, no flip)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model.sem_seg_head.layers(self.model.backbone(images))


class TrainingForward(nn.Module):
    """images (2, 3, H, W) = one pair -> the training logits (self, and cross for CIAN)."""

    def __init__(self, model, cross: bool):
        super().__init__()
        self.model, self.cross = model, cross

    def forward(self, images):
        feats = self.model.backbone(images)
        head = self.model.sem_seg_head
        if not hasattr(head, "affinity"):
            return head.layers(feats)
        ref = torch.tensor([[1], [0]], device=images.device) if self.cross else None
        return head.layers(feats, ref)


def count_flops(module: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(total flops, flops of the affinity matmuls) of ``module(x)``."""
    module.eval()
    with torch.no_grad():
        fca = FlopCountAnalysis(module, (x,))
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        ops = fca.by_operator()
        return float(fca.total()), float(ops.get("matmul", 0) + ops.get("bmm", 0))


def make_batch(cfg, n: int, size: int, device: str) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    k = cfg.INPUT.TAGS.NUM_CLASSES
    out = []
    for i in range(n):
        tags = torch.zeros(k)
        tags[(i // 2) % k] = 1  # the two images of a pair share a tag
        lab = torch.randint(0, k + 1, (size, size), generator=g)
        lab[: size // 3] = 255
        img = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        out.append({"image": img, "sem_seg": lab, "tags": tags, "height": size, "width": size})
    return out


def step_time(model: nn.Module, batch: list[dict], steps: int, device: str) -> float:
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6, momentum=0.9)
    times = []
    with EventStorage():
        for i in range(steps + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:  # the first step is a warm-up
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="configs/cian_r101.yaml")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=321, help="square crop size")
    p.add_argument("--batch", type=int, default=2, help="images per step (pairs: even)")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    a = p.parse_args(argv)
    if a.batch % 2:
        p.error("--batch must be even (query + reference pairs)")
    cfg = make_cfg(a.config, a.device, a.opts)
    torch.set_num_threads(torch.get_num_threads())
    print(
        f"config {a.config}, device {a.device}, input {a.size}x{a.size}, batch {a.batch}, "
        f"{a.steps} timed steps (median), torch threads {torch.get_num_threads()}; "
        f"{load_line('before')}"
    )

    x1 = torch.randn(1, 3, a.size, a.size, device=a.device)
    x2 = torch.randn(2, 3, a.size, a.size, device=a.device)
    batch = make_batch(cfg, a.batch, a.size, a.device)
    rows = {}
    for kind in ("vanilla", "baseline", "cian"):
        model = build(cfg, kind)
        params = sum(q.numel() for q in model.parameters()) / 1e6
        inf = count_flops(InferenceForward(model), x1)[0] / 1e9
        train, mm = (f / 2 / 1e9 for f in count_flops(TrainingForward(model, kind == "cian"), x2))
        t = step_time(model, batch, a.steps, a.device)
        rows[kind] = (params, inf, train, t, mm)
        del model

    print(
        f"{'model':<10}{'params (M)':>12}{'infer GFLOPs':>14}{'train fwd GFLOPs':>18}"
        f"{'step (s)':>11}"
    )
    for kind, (params, inf, train, t, _) in rows.items():
        print(f"{kind:<10}{params:>12.2f}{inf:>14.2f}{train:>18.2f}{t:>11.3f}")
    b, c = rows["baseline"], rows["cian"]
    ratios = {
        "params": c[0] / b[0],
        "inference FLOPs": c[1] / b[1],
        "training forward FLOPs": c[2] / b[2],
        "training step time": c[3] / b[3],
    }
    goals = {"inference FLOPs": 1.02, "training forward FLOPs": 1.02, "training step time": 1.10}
    print("cian / baseline:")
    for name, r in ratios.items():
        goal = goals.get(name)
        verdict = (
            ""
            if goal is None
            else (f"  goal <= {goal:.2f}: " f"{'met' if r <= goal else 'NOT met'}")
        )
        print(f"  {name:<24}{r:>8.3f}x{verdict}")
    # The cross branch re-runs the shared 1x1 output conv, BN and classifier on the merged
    # messages; a per-layer counter that counts a shared layer once (as the paper's 88.2 ->
    # 89.7 G suggests) sees only the new affinity matmuls of the reference pair.
    shared_once = (b[2] + c[4] - b[4]) / b[2]
    print(
        f"  {'training FLOPs, shared layers counted once':<24}{shared_once:>8.3f}x "
        f"(affinity matmuls: baseline {b[4]:.3f} G, cian {c[4]:.3f} G per image)"
    )
    v = rows["vanilla"]
    print(
        f"baseline / vanilla: params {b[0] / v[0]:.3f}x, inference FLOPs {b[1] / v[1]:.3f}x, "
        f"step {b[3] / v[3]:.3f}x"
    )
    print(load_line("after"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
