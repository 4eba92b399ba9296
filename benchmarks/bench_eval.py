#!/usr/bin/env python
"""Our semantic evaluator vs Detectron2's ``SemSegEvaluator`` on the same label maps.

    python benchmarks/bench_eval.py [--num 300] [--height 375] [--width 500] [--classes 21]

Both score the same predictions ((C, H, W) score tensors, as models return them) against the same
ground-truth PNGs; prints images/s of each, the ratio, and checks that the mIoU agrees.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import SemSegEvaluator

from wsss_d2.data.datasets.common import set_tag_metadata
from wsss_d2.evaluation import WSSSSemSegEvaluator
from wsss_d2.io.files import save_label_png
from wsss_d2.ops.progress import load_line


def run(ev, dicts, outputs):
    ev.reset()
    t = time.perf_counter()
    for d, o in zip(dicts, outputs):
        ev.process([d], [o])
    res = ev.evaluate()
    return time.perf_counter() - t, res["sem_seg"]["mIoU"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=300)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(load_line("before"))
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="bench_eval_")
    dicts, outputs = [], []
    for i in range(a.num):
        gt = rng.integers(0, a.classes, (a.height, a.width)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.05] = 255
        p = os.path.join(tmp, f"{i}.png")
        save_label_png(p, gt)
        dicts.append({"file_name": f"{i}.jpg", "sem_seg_file_name": p, "image_id": i})
        outputs.append({"sem_seg": torch.rand(a.classes, a.height, a.width)})
    name = "bench_eval_maps"
    DatasetCatalog.register(name, lambda: dicts)
    set_tag_metadata(name, [f"c{i}" for i in range(1, a.classes)])
    ours = WSSSSemSegEvaluator(name, num_classes=a.classes, distributed=False)
    d2 = SemSegEvaluator(name, distributed=False)
    t_ours, t_d2 = [], []
    for _ in range(a.repeats):  # interleaved, best of N: the machine is noisy
        t, m_ours = run(ours, dicts, outputs)
        t_ours.append(t)
        t, m_d2 = run(d2, dicts, outputs)
        t_d2.append(t)
    assert abs(m_ours - m_d2) < 1e-6, (m_ours, m_d2)
    ips_ours, ips_d2 = a.num / min(t_ours), a.num / min(t_d2)
    print(f"maps: {a.num} x {a.width}x{a.height}, {a.classes} classes, best of {a.repeats}")
    print(f"detectron2 SemSegEvaluator : {ips_d2:8.1f} images/s  (mIoU {m_d2:.4f})")
    print(f"wsss_d2 WSSSSemSegEvaluator: {ips_ours:8.1f} images/s  (mIoU {m_ours:.4f})")
    print(f"ratio (ours / detectron2)  : {ips_ours / ips_d2:.2f}x")
    print(load_line("after"))


if __name__ == "__main__":
    main()
