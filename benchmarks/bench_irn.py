#!/usr/bin/env python
"""IRN's random walk: our batched walk vs a per-image version of the official loop.

The reference follows the official ``propagate_to_edge`` step by step for one image at a time
(written here from the paper's equations): the dense N x N affinity matrix of the pairs within
the radius, ``a = (1 - max boundary on the path)^beta`` with ones on the diagonal, columns
normalised, squared ``exp_times`` times, then the CAMs times ``1 - B`` multiplied by it; then
upsampling, division by the maximum, background 0.25, arg-max. Ours is
:func:`wsss_d2.pseudo.random_walk.random_walk` on a batch (sparse CSR steps, and its dense
variant), then :func:`walk_to_label`. Both in float64 on the same boundary maps and CAMs; the
labels are compared pixel for pixel.

Inputs: synthetic stride-4 maps (ellipse objects: boundaries on their outlines, a CAM peak inside
each), or ``--config/--weights/--cam-dir/--dataset`` for the boundaries of a trained IRNet and the
CAM files of a CAM model.

    python benchmarks/bench_irn.py                          # 96 toy-size maps (24 x 24)
    python benchmarks/bench_irn.py --size 40 --num 16       # larger maps (the dense loop is N^3)
    python benchmarks/bench_irn.py --config configs/irn_toy.yaml --weights irn/model_final.pth \
        --cam-dir labels/pseudo_labels/cams/round_01 --dataset toyparts_train --num 96
"""

from __future__ import annotations

import argparse
import logging
import time

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from wsss_d2.ops.progress import load_line
from wsss_d2.pseudo.random_walk import random_walk, walk_to_label

logger = logging.getLogger("bench_irn")


# ---------------------------------------------------------------------- the official loop
def _offsets(radius: int) -> list[tuple[int, int]]:
    out = [(0, x) for x in range(1, radius)]
    for y in range(1, radius):
        for x in range(-radius + 1, radius):
            if x * x + y * y < radius * radius:
                out.append((y, x))
    return out


def _segment(dy: int, dx: int) -> list[tuple[int, int]]:
    n2 = dy * dy + dx * dx
    return [
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 / n2 < 1
    ]


def reference_walk(
    cams: torch.Tensor, edge: torch.Tensor, radius: int = 5, beta: float = 10.0, exp_times: int = 8
) -> torch.Tensor:
    """One image: (k, h, w) CAMs, (h, w) boundary -> (k, h, w) walked scores (dense N x N)."""
    h, w = edge.shape
    n = h * w
    ids = torch.arange(n).view(h, w)
    A = torch.eye(n, dtype=cams.dtype)
    for dy, dx in _offsets(radius):
        ys, ye = 0, h - dy  # sources whose partner (y + dy, x + dx) is inside the map
        xs, xe = max(0, -dx), min(w, w - dx)
        if ye <= ys or xe <= xs:
            continue
        m = torch.stack(
            [edge[ys + oy : ye + oy, xs + ox : xe + ox] for oy, ox in _segment(dy, dx)]
        ).amax(0)
        a = (1 - m).to(cams.dtype) ** beta
        src = ids[ys:ye, xs:xe].reshape(-1)
        dst = ids[ys + dy : ye + dy, xs + dx : xe + dx].reshape(-1)
        A[src, dst] = a.reshape(-1)
        A[dst, src] = a.reshape(-1)
    T = A / A.sum(0, keepdim=True)
    for _ in range(exp_times):
        T = T @ T
    x = (cams * (1 - edge).to(cams.dtype)).reshape(-1, n)
    return (x @ T).reshape(-1, h, w)


def reference_label(rw: torch.Tensor, keys, hw, bg: float = 0.25) -> np.ndarray:
    """Upsample x4, crop, divide by the maximum, background first, arg-max, class ids."""
    up = F.interpolate(rw[:, None], scale_factor=4, mode="bilinear", align_corners=False)
    up = up[:, 0, : hw[0], : hw[1]]
    up = up / torch.max(up)
    up = F.pad(up, (0, 0, 0, 0, 1, 0), value=bg)
    return np.asarray([0, *keys])[torch.argmax(up, 0).numpy()].astype(np.uint8)


# ---------------------------------------------------------------------- inputs
def synthetic(num: int, size: int, seed: int = 0):
    """``num`` items (cams (k, s, s) float64, edge (s, s), keys, (4s, 4s))."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        lab = np.zeros((size, size), np.uint8)
        k = int(rng.integers(1, 4))
        keys = sorted(rng.choice(np.arange(1, 6), size=k, replace=False).tolist())
        cams = np.zeros((k, size, size))
        for i in range(k):
            c = tuple(int(v) for v in rng.integers(size // 5, size - size // 5, 2))
            ax = tuple(int(v) for v in rng.integers(size // 8, size // 3, 2))
            cv2.ellipse(lab, c, ax, float(rng.uniform(0, 180)), 0, 360, i + 1, -1)
            yy, xx = np.mgrid[:size, :size]
            cams[i] = np.exp(-((yy - c[1]) ** 2 + (xx - c[0]) ** 2) / (2 * (ax[0] / 2) ** 2))
        bd = np.zeros((size, size), np.float32)
        bd[:, 1:] += lab[:, 1:] != lab[:, :-1]
        bd[1:, :] += lab[1:, :] != lab[:-1, :]
        bd = cv2.GaussianBlur(np.clip(bd, 0, 1), (3, 3), 0.7)
        edge = np.clip(bd * 1.5 + rng.random((size, size)) * 0.05, 0, 1)
        cams = cams / (cams.reshape(k, -1).max(1)[:, None, None] + 1e-5)
        out.append((torch.from_numpy(cams), torch.from_numpy(edge), keys, (4 * size, 4 * size)))
    return out


def from_model(args):
    """Boundaries of a trained IRNet and the CAM files of ``--cam-dir`` for ``--num`` images."""
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    import wsss_d2  # noqa: F401  (registers the datasets and architectures)
    from wsss_d2.config import get_wsss_cfg
    from wsss_d2.data.datasets.from_config import register_datasets_from_config
    from wsss_d2.data.mappers import build_mapper
    from wsss_d2.io.cam_files import cam_file_path, load_cam_file
    from wsss_d2.modeling.checkpoint import load_model_weights
    from wsss_d2.pseudo.random_walk import cams_at_stride

    cfg = get_wsss_cfg(args.config)
    register_datasets_from_config(cfg)
    model = build_model(cfg).eval()
    load_model_weights(model, args.weights)
    mapper = build_mapper(cfg, is_train=False)
    out = []
    with torch.no_grad():
        for d in DatasetCatalog.get(args.dataset)[: args.num]:
            x = mapper(d)
            edge = model([x])[0]["edge"].double()
            c, keys = load_cam_file(cam_file_path(args.cam_dir, d), (d["height"], d["width"]))
            cams = cams_at_stride(torch.from_numpy(c), tuple(edge.shape), model.stride).double()
            out.append((cams, edge, keys.tolist(), (d["height"], d["width"])))
    return out


# ---------------------------------------------------------------------- runs
def run_ours(items, batch: int, method: str):
    labels = []
    for s in range(0, len(items), batch):
        chunk = items[s : s + batch]
        h = max(e.shape[0] for _, e, _, _ in chunk)
        w = max(e.shape[1] for _, e, _, _ in chunk)
        cmax = max(c.shape[0] for c, _, _, _ in chunk)
        E = torch.ones(len(chunk), h, w, dtype=torch.float64)
        X = torch.zeros(len(chunk), cmax, h, w, dtype=torch.float64)
        for i, (c, e, _, _) in enumerate(chunk):
            E[i, : e.shape[0], : e.shape[1]] = e
            X[i, : c.shape[0], : e.shape[0], : e.shape[1]] = c
        rw = random_walk(X, E, method=method)
        for i, (_, e, keys, hw) in enumerate(chunk):
            labels.append(
                walk_to_label(rw[i, : len(keys), : e.shape[0], : e.shape[1]], keys, 4, hw, hw)
            )
    return labels


def run_reference(items):
    return [reference_label(reference_walk(c, e), keys, hw) for c, e, keys, hw in items]


def _timed(fn, *a):
    t0 = time.perf_counter()
    out = fn(*a)
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--num", type=int, default=96, help="images")
    ap.add_argument("--size", type=int, default=24, help="synthetic maps: side at stride 4")
    ap.add_argument("--batch", type=int, default=32, help="our walk: images per batch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-dense", action="store_true", help="skip our dense variant")
    ap.add_argument("--config", default="")
    ap.add_argument("--weights", default="")
    ap.add_argument("--cam-dir", default="")
    ap.add_argument("--dataset", default="")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    items = from_model(args) if args.config else synthetic(args.num, args.size)
    sizes = sorted({tuple(e.shape) for _, e, _, _ in items})
    logger.info(
        "%d images, stride-4 maps %s, radius 5, beta 10, 2^8 steps, float64, %d thread(s); %s",
        len(items), sizes[:3], args.threads, load_line("before"),
    )  # fmt: skip
    ref, t_ref = _timed(run_reference, items)
    ours, t_ours = _timed(run_ours, items, args.batch, "sparse")
    rows = [
        ("official loop, per image (dense)", t_ref, ref),
        ("ours, batched sparse", t_ours, ours),
    ]
    if not args.no_dense:
        dense, t_dense = _timed(run_ours, items, args.batch, "dense")
        rows.append(("ours, batched dense", t_dense, dense))
    n = len(items)
    logger.info("%-34s %10s %10s %10s %14s", "", "seconds", "images/s", "speed-up", "pixels differ")
    for name, t, labels in rows:
        diff = sum(int((a != b).sum()) for a, b in zip(labels, ref))
        logger.info("%-34s %10.2f %10.2f %9.2fx %14d", name, t, n / t, t_ref / t, diff)
    total = sum(a.size for a in ref)
    same = all(np.array_equal(a, b) for a, b in zip(ours, ref))
    logger.info("labels identical (ours sparse vs official loop): %s (%d pixels)", same, total)
    logger.info(load_line("after"))


if __name__ == "__main__":
    main()
