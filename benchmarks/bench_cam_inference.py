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

The real workload (voc_mini train images at their size, IRN's four scales + flip):

    DETECTRON2_DATASETS=<folder of voc_mini> python benchmarks/bench_cam_inference.py \
        --config-file configs/voc_mini/cam.yaml --weights <cam model> --dataset voc_2012_train_tags \
        --num-images 32 --ims-per-batch 1 --reference irn_pairs --ranks 2   # EfficientNet-Lite0
    ... --config-file configs/cam_r50.yaml --num-images 12 --ims-per-batch 4 ...  # ResNet-50

``--ranks N`` runs ours as the tools run it with ``--num-gpus N MODEL.DEVICE cpu``: N processes
(Detectron2's launch, gloo), each labelling ``dicts[rank::N]`` with ``threads / N`` torch threads;
the reference keeps one process with every thread (with ``--ranks 1`` ours runs in the
reference's process, without ``WSSS.PSEUDO.CPU_RETAIN_BUFFERS``: that malloc setting is
process-wide and would speed the reference up too). ``--bf16`` adds ``WSSS.PSEUDO.CPU_BF16`` (with
the config's ``CPU_BF16_FLOAT32`` stages in float32). Both
times exclude start-up (imports, model building, warm-up), which is printed apart. The CAMs are
compared as float values and as the labels they give at the background threshold
(``--bg-threshold``, default ``MODEL.CAM.BG_THRESHOLD``) by the label tool's ``threshold_labels``:
the share of pixels whose label agrees with the reference's. The load average is printed before
(above 1 a warning says the timing is not an idle machine's) and after.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog
from detectron2.utils import comm

import wsss_d2  # noqa: F401
from wsss_d2.config import get_wsss_cfg
from wsss_d2.data.mappers import build_mapper
from wsss_d2.engine import WSSSTrainer
from wsss_d2.engine.launch import launch
from wsss_d2.io.cam_files import cam_file_path, load_cam_file
from wsss_d2.io.rounds import label_stem
from wsss_d2.modeling.test_time import rescale
from wsss_d2.ops.progress import load_line
from wsss_d2.pseudo.cam_inference import CAMInferenceEngine
from wsss_d2.pseudo.refine import threshold_labels

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
        size = (int(d.get("height", H)), int(d.get("width", W)))  # the CAM files' size
        if size != (H, W) and len(keys):  # the mapper resized the image (INPUT.TAGS.TEST_LONG)
            cam = F.interpolate(cam[None], size=size, mode="bilinear", align_corners=False)[0]
        cam = cam / (cam.flatten(1).amax(1)[:, None, None] + 1e-5)
        np.save(
            os.path.join(out_dir, label_stem(d) + ".npy"),
            {"keys": keys.numpy(), "high_res": cam.numpy()},
            allow_pickle=True,
        )


def _config(args):
    # in one process with the reference (--ranks 1), ours does not change malloc's thresholds:
    # the process-wide setting would speed the reference's later runs up too
    retain = ["WSSS.PSEUDO.CPU_RETAIN_BUFFERS", False] if args.ranks == 1 else []
    return get_wsss_cfg(
        args.config_file,
        ["MODEL.DEVICE", "cpu", "WSSS.PSEUDO.IMS_PER_BATCH", args.ims_per_batch,
         "WSSS.PSEUDO.CPU_BF16", args.bf16, *retain, *args.opts],
    )  # fmt: skip


def _dicts(args):
    dicts = DatasetCatalog.get(args.dataset)
    return dicts[: args.num_images] if args.num_images else dicts


def _ours(args, state_path, out_dir, threads, result_path):
    """One rank of our engine (Detectron2 launch): warm-up, then the timed run of its shard."""
    torch.set_num_threads(threads)
    cfg, dicts = _config(args), _dicts(args)
    model = WSSSTrainer.build_model(cfg).eval()
    model.load_state_dict(torch.load(state_path))
    engine = CAMInferenceEngine(cfg)
    engine.run(model, dicts[: 2 * comm.get_world_size()], out_dir + "_warm", progress=False)
    comm.synchronize()
    t0 = time.perf_counter()
    engine.run(model, dicts, out_dir, progress=False)  # includes the closing barrier
    dt = time.perf_counter() - t0
    if comm.is_main_process():
        with open(result_path, "w") as f:
            json.dump({"seconds": dt}, f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config-file", default=os.path.join(REPO, "configs", "pseudo_toy.yaml"))
    ap.add_argument("--weights", default="", help="model weights (default: random init)")
    ap.add_argument("--dataset", default="toyparts_train")
    ap.add_argument("--num-images", type=int, default=64, help="0: the whole dataset")
    ap.add_argument("--ims-per-batch", type=int, default=16)
    ap.add_argument(
        "--reference",
        choices=("single", "irn_pairs"),
        default="single",
        help="single: one image/scale/flip per forward; irn_pairs: image+flip pair",
    )
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs; best time kept")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--ranks", type=int, default=1, help="processes of ours (CPU, gloo)")
    ap.add_argument("--bf16", action="store_true", help="ours in CPU bfloat16 autocast")
    ap.add_argument("--bg-threshold", type=float, default=-1.0, help="-1: MODEL.CAM.BG_THRESHOLD")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    per_rank = max(1, threads // args.ranks)

    t_start = time.perf_counter()
    cfg = _config(args)
    torch.manual_seed(0)
    model = WSSSTrainer.build_model(cfg).eval()
    if args.weights:
        from detectron2.checkpoint import DetectionCheckpointer

        DetectionCheckpointer(model).load(args.weights)
    dicts = _dicts(args)
    mapper = build_mapper(cfg, is_train=False)
    engine = CAMInferenceEngine(cfg)
    scales = engine.scales
    threshold = args.bg_threshold if args.bg_threshold >= 0 else cfg.MODEL.CAM.BG_THRESHOLD
    print(
        f"{len(dicts)} images of {args.dataset} ({cfg.MODEL.BACKBONE.NAME}), scales {scales}, "
        f"flip {engine.flip}, batch {engine.ims_per_batch}, reference '{args.reference}' "
        f"({threads} threads), ours {args.ranks} rank(s) x {per_rank} thread(s)"
        f"{', bfloat16' if args.bf16 else ''}; {load_line('before')}",
        flush=True,
    )

    with tempfile.TemporaryDirectory() as tmp:
        state_path = os.path.join(tmp, "model.pth")
        torch.save(model.state_dict(), state_path)
        ref_dir = os.path.join(tmp, "ref")
        os.makedirs(ref_dir)
        pairs = args.reference == "irn_pairs"
        reference_loop(model, mapper, dicts[:2], scales, ref_dir, pairs)  # warm-up, not timed
        t_ref = t_ours = t_wall = float("inf")
        for r in range(args.repeats):  # alternate the two, keep each one's best time
            t0 = time.perf_counter()
            reference_loop(model, mapper, dicts, scales, ref_dir, pairs)
            t_ref = min(t_ref, time.perf_counter() - t0)
            result = os.path.join(tmp, f"ours{r}.json")
            t0 = time.perf_counter()
            if args.ranks > 1:
                launch(
                    _ours,
                    args.ranks,
                    dist_url="auto",
                    args=(args, state_path, os.path.join(tmp, f"ours{r}"), per_rank, result),
                )
            else:
                _ours(args, state_path, os.path.join(tmp, f"ours{r}"), per_rank, result)
                torch.set_num_threads(threads)  # _ours set its own in this process
            t_wall = min(t_wall, time.perf_counter() - t0)
            with open(result) as f:
                t_ours = min(t_ours, json.load(f)["seconds"])
        our_dir = os.path.join(tmp, "ours0")

        diff, agree, total = 0.0, 0, 0
        for d in dicts:
            ref = np.load(os.path.join(ref_dir, label_stem(d) + ".npy"), allow_pickle=True).item()
            cams, keys = load_cam_file(cam_file_path(our_dir, d))
            assert (keys - 1).tolist() == ref["keys"].tolist(), d["file_name"]
            if cams.size:
                diff = max(diff, float(np.abs(cams - ref["high_res"]).max()))
            a = threshold_labels(cams.astype(np.float32), keys, threshold)
            b = threshold_labels(ref["high_res"], ref["keys"] + 1, threshold)
            agree, total = agree + int((a == b).sum()), total + a.size

    n = len(dicts)
    ours = f"batched engine, {args.ranks} rank(s){' bf16' if args.bf16 else ''}"
    print(f"{'':34s}{'seconds':>10s}{'images/s':>12s}")
    print(f"{'IRN-style loop':34s}{t_ref:10.2f}{n / t_ref:12.2f}")
    print(f"{ours:34s}{t_ours:10.2f}{n / t_ours:12.2f}")
    print(
        f"speed-up: {t_ref / t_ours:.2f}x ({t_ref / t_wall:.2f}x counting our process start-up "
        f"and warm-up, {t_wall:.1f} s)   max |CAM difference|: {diff:.4f} (float16 storage)   "
        f"labels at background {threshold:.2f} agree on {100.0 * agree / max(total, 1):.3f} % "
        f"of pixels"
    )
    print(f"after {time.perf_counter() - t_start:.0f} s: {load_line('after')}")


if __name__ == "__main__":
    main()
