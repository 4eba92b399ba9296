#!/usr/bin/env python
"""Multi-scale + flip CAM inference: our batched engine vs an IRN-style loop, same model/images.

The reference is written the way IRN's ``make_cam.py`` works, one image, one scale and one flip
at a time (``--reference irn_pairs``: IRN's exact packing, the image and its flip as a batch of
2 per scale), every class upsampled then the tags selected, one ``.npy`` per image. Ours is
:class:`wsss_d2.pseudo.CAMInferenceEngine`: same-size images stacked, all scales and flips of a
stack in one forward each, only the tags resized, compressed float16 files. Both read the images
through the same mapper and write their files; the CAMs are compared after the run.

    python benchmarks/bench_cam_inference.py                       # toy CAM model, 96 px images
    python benchmarks/bench_cam_inference.py --num-images 32 --weights output/cam_toy/model_final.pth
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog

import wsss_d2  # noqa: F401
from wsss_d2.config import get_wsss_cfg
from wsss_d2.data.mappers import build_mapper
from wsss_d2.engine import WSSSTrainer
from wsss_d2.io.cam_files import cam_file_path, load_cam_file
from wsss_d2.io.rounds import label_stem
from wsss_d2.modeling.test_time import rescale
from wsss_d2.pseudo.cam_inference import CAMInferenceEngine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@torch.no_grad()
def reference_loop(model, mapper, dicts, scales, out_dir, pairs: bool) -> None:
    """IRN-style: per image, per scale (and per flip unless ``pairs``), a separate forward."""
    for d in dicts:
        x = mapper(d)
        img = model.preprocess_image([x]).tensor  # (1, 3, H, W)
        H, W = img.shape[-2:]
        total = torch.zeros(model.num_classes, H, W)
        for s in scales:
            xs = rescale(img, s)
            views = [torch.cat([xs, xs.flip(-1)])] if pairs else [xs, xs.flip(-1)]
            outs = []
            for v in views:
                outs.append(F.relu(model.cam_logits(model.extract_features(v))))
            cam = torch.cat(outs)
            cam = cam[0] + cam[1].flip(-1)
            total += F.interpolate(cam[None], size=(H, W), mode="bilinear", align_corners=False)[0]
        keys = torch.nonzero(x["tags"] > 0).flatten()
        cam = total[keys]
        cam = cam / (cam.flatten(1).amax(1)[:, None, None] + 1e-5)
        np.save(
            os.path.join(out_dir, label_stem(d) + ".npy"),
            {"keys": keys.numpy(), "high_res": cam.numpy()},
            allow_pickle=True,
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-file", default=os.path.join(REPO, "configs", "pseudo_toy.yaml"))
    ap.add_argument("--weights", default="", help="model weights (default: random init)")
    ap.add_argument("--dataset", default="toyparts_train")
    ap.add_argument("--num-images", type=int, default=64)
    ap.add_argument("--ims-per-batch", type=int, default=16)
    ap.add_argument(
        "--reference",
        choices=("single", "irn_pairs"),
        default="single",
        help="single: one image/scale/flip per forward; irn_pairs: image+flip pair",
    )
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs; best time kept")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = get_wsss_cfg(
        args.config_file,
        ["MODEL.DEVICE", "cpu", "WSSS.PSEUDO.IMS_PER_BATCH", args.ims_per_batch, *args.opts],
    )
    model = WSSSTrainer.build_model(cfg).eval()
    if args.weights:
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(model).load(args.weights)
    dicts = DatasetCatalog.get(args.dataset)[: args.num_images]
    mapper = build_mapper(cfg, is_train=False)
    engine = CAMInferenceEngine(cfg)
    scales = engine.scales
    print(
        f"{len(dicts)} images of {args.dataset}, scales {scales}, flip {engine.flip}, "
        f"torch threads {torch.get_num_threads()}, batch {engine.ims_per_batch}, "
        f"reference '{args.reference}', load average {os.getloadavg()[0]:.2f}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        ref_dir = os.path.join(tmp, "ref")
        os.makedirs(ref_dir)
        # warm-up both paths on a few images (allocator, lazy init), not timed
        reference_loop(model, mapper, dicts[:2], scales, ref_dir, args.reference == "irn_pairs")
        engine.run(model, dicts[:2], os.path.join(tmp, "warm"), progress=False)

        # alternate the two, keep each one's best time: the machine may be shared
        t_ref = t_ours = float("inf")
        for r in range(args.repeats):
            t0 = time.perf_counter()
            reference_loop(model, mapper, dicts, scales, ref_dir, args.reference == "irn_pairs")
            t_ref = min(t_ref, time.perf_counter() - t0)
            t0 = time.perf_counter()
            engine.run(model, dicts, os.path.join(tmp, f"ours{r}"), progress=False)
            t_ours = min(t_ours, time.perf_counter() - t0)
        our_dir = os.path.join(tmp, "ours0")

        diff = 0.0
        for d in dicts:
            ref = np.load(os.path.join(ref_dir, label_stem(d) + ".npy"), allow_pickle=True).item()
            cams, keys = load_cam_file(cam_file_path(our_dir, d))
            assert (keys - 1).tolist() == ref["keys"].tolist(), d["file_name"]
            if cams.size:
                diff = max(diff, float(np.abs(cams - ref["high_res"]).max()))

    n = len(dicts)
    print(f"{'':24s}{'seconds':>10s}{'images/s':>12s}")
    print(f"{'IRN-style loop':24s}{t_ref:10.2f}{n / t_ref:12.2f}")
    print(f"{'batched engine':24s}{t_ours:10.2f}{n / t_ours:12.2f}")
    print(
        f"speed-up: {t_ref / t_ours:.2f}x   max |CAM difference|: {diff:.4f} " "(float16 storage)"
    )


if __name__ == "__main__":
    main()
