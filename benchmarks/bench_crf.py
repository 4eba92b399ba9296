#!/usr/bin/env python
"""Dense CRF: a sequential pydensecrf loop vs our process pool, on the same images.

Default: 100 VOC-size (500x375) synthetic images with 21 labels, 10 mean-field iterations, the
pool over every core. Both runs call the same :func:`wsss_d2.ops.crf.crf_inference_label`;
the outputs are compared pixel for pixel. A last line times the same CRF restricted to the
image's tags + background (3 labels here), which is what the pseudo-label tools run.

    python benchmarks/bench_crf.py                        # the issue's setting (~15 min on 2 cores)
    python benchmarks/bench_crf.py --num-images 10        # quicker
"""

from __future__ import annotations

import argparse
import resource
import time

import cv2
import numpy as np

from wsss_d2.ops.crf import CRFParams, crf_inference_label
from wsss_d2.ops.pool import default_num_workers, map_in_pool
from wsss_d2.ops.progress import load_line


def make_image(i: int, h: int, w: int, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random image with coloured regions and a noisy label map of ``n_labels`` ids."""
    rng = np.random.default_rng(i)
    small = rng.integers(0, n_labels, (h // 40 + 1, w // 40 + 1))
    regions = cv2.resize(small.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    palette = rng.integers(0, 256, (n_labels, 3))
    img = palette[regions].astype(np.float32) + rng.normal(0, 12, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    labels = regions.astype(np.int64)
    noise = rng.random((h, w)) < 0.2
    labels[noise] = rng.integers(0, n_labels, int(noise.sum()))
    return img, labels


def _cpu(who) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _job(args):
    i, h, w, n, params = args
    img, lab = make_image(i, h, w, n)
    return crf_inference_label(img, lab, n, params)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num-images", type=int, default=100)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--labels", type=int, default=21)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0, help="pool size (0: every core)")
    args = ap.parse_args()
    params = CRFParams(iterations=args.iterations)
    jobs = [(i, args.height, args.width, args.labels, params) for i in range(args.num_images)]
    workers = args.workers or default_num_workers()
    print(
        f"{args.num_images} images {args.width}x{args.height}, {args.labels} labels, "
        f"{args.iterations} iterations; pool of {workers} on {default_num_workers()} cores; "
        f"{load_line('before')}"
    )

    c0, t0 = _cpu(resource.RUSAGE_SELF), time.perf_counter()
    seq = list(map_in_pool(_job, jobs, num_workers=1, progress=False))
    t_seq, c_seq = time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - c0
    c0, t0 = _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    pool = list(map_in_pool(_job, jobs, num_workers=workers, progress=False))
    t_pool, c_pool = time.perf_counter() - t0, _cpu(resource.RUSAGE_CHILDREN) - c0
    same = all(np.array_equal(a, b) for a, b in zip(seq, pool))

    n = args.num_images
    # CPU seconds / wall seconds: how many cores each run actually got from the OS
    print(f"{'':22s}{'seconds':>10s}{'s/image':>10s}{'CPU s':>10s}{'cores used':>12s}")
    print(f"{'sequential':22s}{t_seq:10.2f}{t_seq / n:10.3f}{c_seq:10.1f}{c_seq / t_seq:12.2f}")
    print(f"{'pool':22s}{t_pool:10.2f}{t_pool / n:10.3f}{c_pool:10.1f}{c_pool / t_pool:12.2f}")
    print(f"speed-up: {t_seq / t_pool:.2f}x   identical outputs: {same}")

    # what the tools actually run: only the image's tags + background (here 3 labels)
    k = min(3, args.labels)
    m = min(n, 5)
    t0 = time.perf_counter()
    for i in range(m):
        _job((i, args.height, args.width, k, params))
    t_tags = (time.perf_counter() - t0) / m
    print(
        f"one image, {k} labels (tags + background) instead of {args.labels}: "
        f"{t_tags:.3f} s/image ({t_seq / n / t_tags:.1f}x less)"
    )
    print(load_line("after"))
    if not same:
        raise SystemExit("pool output differs from the sequential output")


if __name__ == "__main__":
    main()
