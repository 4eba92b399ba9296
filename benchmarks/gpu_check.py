#!/usr/bin/env python
"""The model-zoo speed / memory table: training s/iter and peak memory with and without AMP, and
CAM-inference images/s, of the VOC configs with random weights at their configured batch and crop.

    python benchmarks/gpu_check.py                      # CUDA: the four MODEL_ZOO.md configs
    python benchmarks/gpu_check.py --out table.md --iters 20 --warmup 5
    python benchmarks/gpu_check.py --device cpu --configs configs/cam_toy.yaml \
        --batch 2 --crop 64 --iters 2 --warmup 1 --cam-images 2      # a CPU smoke run

A training iteration is Detectron2's own step (``SimpleTrainer`` / ``AMPTrainer`` as
``SOLVER.AMP.ENABLED`` builds them in ``WSSSTrainer``: forward, backward, SGD) on a synthetic
batch of ``SOLVER.IMS_PER_BATCH`` random images of ``INPUT.TAGS.CROP_SIZE`` pixels with random tags
(and random labels for segmentors; CIAN's groups share a tag). CAM inference is
``CAMInferenceEngine.cams_for_batch`` (``WSSS.PSEUDO.SCALES`` x flip, ``IMS_PER_BATCH`` images of
VOC size 500x375) with ``WSSS.PSEUDO.AMP`` off and on; segmentors report inference images/s
(``MODEL.SEG_HEAD.TEST_SCALES`` x flip, CRF off: it runs on the CPU). Peak memory is
``torch.cuda.max_memory_allocated``. AMP rows need CUDA. The table goes to stdout (and ``--out``).
"""

from __future__ import annotations

import argparse
import logging
import time

import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from tabulate import tabulate

from wsss_d2.config import get_wsss_cfg
from wsss_d2.data.mappers import tags_to_multi_hot
from wsss_d2.engine.report_samples import is_cam_model
from wsss_d2.engine.trainer import WSSSTrainer, build_step_trainer
from wsss_d2.ops.amp import inference_autocast
from wsss_d2.pseudo.cam_inference import CAMInferenceEngine

CONFIGS = (
    "configs/cam_r50.yaml",
    "configs/plda_r101.yaml",
    "configs/deeplabv2_r101_voc.yaml",
    "configs/cian_r101.yaml",
)
HEADERS = ["config", "batch x crop", "s/iter", "s/iter AMP", "peak GiB", "peak GiB AMP",
           "inference img/s", "inference img/s AMP"]  # fmt: skip


def load_cfg(path: str, device: str, opts=()):
    return get_wsss_cfg(path, ["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", *opts])


def synthetic_batch(cfg, n: int, crop: int, seed: int = 0, with_labels: bool = False) -> list:
    """``n`` random training inputs of ``crop`` x ``crop``; every image is tagged with class 1
    (CIAN's common-class groups) and one more random class."""
    g = torch.Generator().manual_seed(seed)
    k = cfg.INPUT.TAGS.NUM_CLASSES
    out = []
    for _ in range(n):
        tags = sorted({1, int(torch.randint(1, k + 1, (1,), generator=g))})
        x = {
            "image": torch.randint(0, 256, (3, crop, crop), generator=g, dtype=torch.uint8),
            "tags": tags_to_multi_hot(tags, k),
            "height": crop,
            "width": crop,
        }
        if with_labels:
            ids = torch.tensor([0, *tags, 255])
            x["sem_seg"] = ids[torch.randint(0, len(ids), (crop, crop), generator=g)]
        out.append(x)
    return out


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _peak_reset(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str):
    if torch.device(device).type != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**30


def time_training(cfg, batch: list, iters: int, warmup: int, amp: bool) -> tuple[float, object]:
    """(seconds per training iteration, peak GiB) of the config's step trainer."""
    cfg = cfg.clone()
    cfg.SOLVER.AMP.ENABLED = amp
    torch.manual_seed(0)
    _peak_reset(cfg.MODEL.DEVICE)
    model = build_model(cfg).train()
    optimizer = WSSSTrainer.build_optimizer(cfg, model)

    def loader():
        while True:
            yield batch

    trainer = build_step_trainer(cfg, model, loader(), optimizer)
    with EventStorage(0) as storage:
        trainer.storage = storage
        for i in range(warmup + iters):
            if i == warmup:
                _sync(cfg.MODEL.DEVICE)
                t0 = time.perf_counter()
            trainer.iter = storage.iter = i
            trainer.run_step()
        _sync(cfg.MODEL.DEVICE)
    dt = (time.perf_counter() - t0) / max(iters, 1)
    peak = _peak_gib(cfg.MODEL.DEVICE)
    del trainer, model, optimizer
    return dt, peak


@torch.no_grad()
def time_inference(cfg, n_images: int, amp: bool, size=(500, 375), repeats: int = 2) -> float:
    """Images/s of CAM inference (CAM models: the pseudo-label protocol) or of the segmentor's
    test-time protocol (CRF off), on VOC-sized random images."""
    cfg = cfg.clone()
    cfg.WSSS.PSEUDO.AMP = amp
    cfg.MODEL.SEG_HEAD.TEST_CRF = False
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    w, h = size
    images = [
        {"image": torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
         "tags": tags_to_multi_hot([1, 2], cfg.INPUT.TAGS.NUM_CLASSES), "height": h, "width": w}
        for _ in range(n_images)
    ]  # fmt: skip
    if hasattr(model, "multiscale_cams"):
        engine = CAMInferenceEngine(cfg)
        step = engine.ims_per_batch

        def run():
            for s in range(0, n_images, step):
                engine.cams_for_batch(model, images[s : s + step])

    else:

        def run():
            for x in images:
                with inference_autocast(cfg.MODEL.DEVICE, amp):
                    model([x])

    run()  # warm-up (cuDNN autotuning, allocator)
    _sync(cfg.MODEL.DEVICE)
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    _sync(cfg.MODEL.DEVICE)
    return repeats * n_images / (time.perf_counter() - t0)


def check_config(path: str, args) -> list:
    cfg = load_cfg(path, args.device, args.opts)
    n = args.batch or cfg.SOLVER.IMS_PER_BATCH
    crop = args.crop or cfg.INPUT.TAGS.CROP_SIZE
    seg = not is_cam_model(cfg)
    batch = synthetic_batch(cfg, n, crop, with_labels=seg)
    cuda = torch.device(args.device).type == "cuda" and torch.cuda.is_available()
    row = [path.split("/")[-1], f"{n} x {crop}"]
    fp32 = time_training(cfg, batch, args.iters, args.warmup, amp=False)
    amp = time_training(cfg, batch, args.iters, args.warmup, amp=True) if cuda else None
    inf = time_inference(cfg, args.cam_images, False, args.infer_size)
    inf_amp = time_inference(cfg, args.cam_images, True, args.infer_size) if cuda else None
    fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    row += [fmt(fp32[0], 3), fmt(amp and amp[0], 3), fmt(fp32[1], 2), fmt(amp and amp[1], 2)]
    row += [fmt(inf, 1), fmt(inf_amp, 1)]
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=20, help="timed training iterations")
    ap.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    ap.add_argument("--batch", type=int, default=0, help="override SOLVER.IMS_PER_BATCH")
    ap.add_argument("--crop", type=int, default=0, help="override INPUT.TAGS.CROP_SIZE")
    ap.add_argument("--cam-images", type=int, default=16, help="images per inference timing")
    ap.add_argument("--infer-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--out", default="", help="also write the markdown table here")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if torch.device(args.device).type == "cuda" and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name()
    else:
        device_name = "CPU"
    rows = []
    for path in args.configs:
        t0 = time.time()
        rows.append(check_config(path, args))
        logging.warning("%s done in %.0f s", path, time.time() - t0)
    table = tabulate(rows, headers=HEADERS, tablefmt="github")
    text = f"{device_name}, torch {torch.__version__}, random weights\n\n{table}\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return rows


if __name__ == "__main__":
    main()
