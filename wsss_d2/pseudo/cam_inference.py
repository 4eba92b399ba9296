"""Batched multi-scale + flip CAM inference over a dataset, one compressed file per image.

IRN's ``make_cam.py`` feeds the network one image and one scale at a time. Here the images of a
dataset are grouped by size and stacked, and :meth:`CAMClassifier.multiscale_cams` runs every
scale of the whole stack (with its flipped copy) in one forward, so the network sees many crops
at once. The dataset is sharded over ranks (``detectron2.utils.comm``); each rank writes its own
files and the ranks meet at a barrier.

One file per image in the format of :mod:`wsss_d2.io.cam_files`, written atomically and skipped
when present, so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm

from ..data.mappers import build_mapper
from ..io.cam_files import cam_file_ok, cam_file_path, save_cam_file
from ..io.rounds import check_unique_stems
from ..modeling.meta_arch.cam import normalize_cams
from ..modeling.utils import fold_batchnorm, fuse_conv_activation, unwrap_model
from ..ops.allocator import retain_freed_buffers
from ..ops.amp import autocast_name, inference_autocast, keep_float32
from ..ops.progress import Progress

logger = logging.getLogger(__name__)

__all__ = ["CAMInferenceEngine"]


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, dicts: list[dict], mapper):
        self.dicts, self.mapper = dicts, mapper

    def __len__(self):
        return len(self.dicts)

    def __getitem__(self, i):
        return self.mapper(self.dicts[i])


class CAMInferenceEngine:
    """Multi-scale + flip CAMs of a dataset, batched, sharded by rank, saved per image.

    Works with any model that has the :class:`CAMClassifier` interface: ``preprocess_image``,
    ``multiscale_cams(images, scales, flip)`` and ``num_classes`` (CAM baseline, PLDA, ...).
    """

    @configurable
    def __init__(
        self,
        *,
        mapper,
        scales: Sequence[float] = (1.0, 0.5, 1.5, 2.0),
        flip: bool = True,
        ims_per_batch: int = 8,
        num_loader_workers: int = 0,
        channels_last: bool = True,
        fold_bn: bool = True,
        amp: bool = False,
        cpu_bf16: bool = False,
        cpu_bf16_float32: Sequence[str] = (),
        cpu_retain_buffers: bool = True,
        cpu_fuse: bool = True,
    ):
        """
        Args:
            mapper: maps a dataset dict to a model input (``image`` (3, H, W), ``tags`` (K,)).
            scales, flip: the CAM inference protocol (IRN: 1.0, 0.5, 1.5, 2.0 with flips).
            ims_per_batch: images of the same size stacked into one forward pass.
            num_loader_workers: processes decoding images ahead of the model.
            channels_last: run the forward passes on NHWC tensors (and, inside :meth:`run`, with
                NHWC weights): on CPU, batched convolutions are about twice as fast this way.
            fold_bn: run :meth:`run` on a copy of the model with BatchNorms folded into the
                convolutions (:func:`fold_batchnorm`).
            amp: run the forward passes in fp16 autocast when the model is on CUDA
                (:func:`~wsss_d2.ops.amp.inference_autocast`); the CAMs are summed, resized
                and normalised in float32. Ignored on CPU.
            cpu_bf16: the same in bfloat16 autocast when the model is on CPU (fast only on
                CPUs with native bfloat16; ``benchmarks/bench_cam_inference.py --bf16``).
            cpu_bf16_float32: with ``cpu_bf16``, the submodules (``model.get_submodule``
                paths) that :meth:`run` keeps in float32 (:func:`~wsss_d2.ops.amp.keep_float32`
                on its inference copy): a backbone's first, high-resolution stages, where
                bfloat16's rounding of the image's detail changes the labels most.
            cpu_retain_buffers: when :meth:`run` runs on CPU, let malloc keep the forwards'
                freed buffers for the next one (:func:`~wsss_d2.ops.allocator.retain_freed_buffers`:
                process-wide; results unchanged).
            cpu_fuse: with ``fold_bn``, on CPU, fuse each convolution of the inference copy
                with its activation into one oneDNN call
                (:func:`~wsss_d2.modeling.utils.fuse_conv_activation`; modules that list
                ``CONV_ACT``, e.g. the EfficientNet blocks).
        """
        self.mapper = mapper
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.ims_per_batch = max(1, int(ims_per_batch))
        self.num_loader_workers = int(num_loader_workers)
        self.channels_last = bool(channels_last)
        self.fold_bn = bool(fold_bn)
        self.amp = bool(amp)
        self.cpu_bf16 = bool(cpu_bf16)
        self.cpu_bf16_float32 = tuple(str(n) for n in cpu_bf16_float32)
        self.cpu_retain_buffers = bool(cpu_retain_buffers)
        self.cpu_fuse = bool(cpu_fuse)

    @classmethod
    def from_config(cls, cfg):
        p = cfg.WSSS.PSEUDO
        return {
            "mapper": build_mapper(cfg, is_train=False),
            "scales": p.SCALES,
            "flip": p.FLIP,
            "ims_per_batch": p.IMS_PER_BATCH,
            "num_loader_workers": p.NUM_LOADER_WORKERS,
            "channels_last": p.CHANNELS_LAST,
            "fold_bn": p.FOLD_BN,
            "amp": p.AMP,
            "cpu_bf16": p.CPU_BF16,
            "cpu_bf16_float32": p.CPU_BF16_FLOAT32,
            "cpu_retain_buffers": p.CPU_RETAIN_BUFFERS,
            "cpu_fuse": p.CPU_FUSE,
        }

    def fingerprint(self, device="cpu") -> dict:
        """What the CAMs depend on (besides the model): the protocol, and fp16 / bf16 when it
        is used on ``device``."""
        fp = {"scales": list(self.scales), "flip": self.flip}
        dtype = autocast_name(device, self.amp, self.cpu_bf16)
        if dtype:
            fp["amp"] = dtype
        if dtype == "bf16" and self.cpu_bf16_float32:
            fp["float32_modules"] = list(self.cpu_bf16_float32)
        return fp

    # ------------------------------------------------------------------ core
    @torch.no_grad()
    def cams_for_batch(self, model: torch.nn.Module, inputs: list[dict]) -> list[np.ndarray]:
        """Normalised CAMs of the tagged classes for mapped inputs.

        Args:
            inputs: mapper outputs (``image`` (3, h, w) — all the same size for one forward —,
                ``tags`` (K,) multi-hot, optional ``height``/``width`` original size).
        Returns:
            per input a (k, H, W) float32 array in [0, 1] for its k tags (in class order), at
            the original image size.
        """
        model = unwrap_model(model)
        images = model.preprocess_image(inputs)
        x = images.tensor
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with inference_autocast(x.device, self.amp, cpu_bf16=self.cpu_bf16):
            cams = model.multiscale_cams(x, self.scales, self.flip)
        cams = cams.float().contiguous()  # (N, K, Hp, Wp)
        out = []
        for i, inp in enumerate(inputs):
            h, w = images.image_sizes[i]
            keys = torch.nonzero(inp["tags"] > 0).flatten().to(cams.device)
            cam = cams[i : i + 1, keys, :h, :w]  # only the tags: less to resize and store
            oh, ow = int(inp.get("height", h)), int(inp.get("width", w))
            if (oh, ow) != (h, w) and cam.shape[1] > 0:
                cam = F.interpolate(cam, size=(oh, ow), mode="bilinear", align_corners=False)
            out.append(normalize_cams(cam[0]).float().cpu().numpy().reshape(-1, oh, ow))
        return out

    def run(
        self,
        model: torch.nn.Module,
        dataset_dicts: Iterable[dict],
        cam_dir: str,
        progress: bool = True,
    ) -> list[str]:
        """Write ``cam_dir/<stem>.npz`` for every image (skipping valid existing files).

        Every rank processes ``dicts[rank::world_size]``; all ranks return the full list of CAM
        file paths after a barrier. The model is run in eval mode and restored afterwards.
        """
        dicts = list(dataset_dicts)
        check_unique_stems(dicts)  # two images must not share a CAM file
        os.makedirs(cam_dir, exist_ok=True)
        rank, world = comm.get_rank(), comm.get_world_size()
        shard = dicts[rank::world]
        todo = [d for d in shard if not cam_file_ok(cam_file_path(cam_dir, d))]
        if len(todo) < len(shard):
            logger.info(
                "CAM inference: %d of %d images already done in %s (rank %d)",
                len(shard) - len(todo),
                len(shard),
                cam_dir,
                rank,
            )
        # same-size images are adjacent so that they share forward passes
        todo.sort(key=lambda d: (d.get("height", 0), d.get("width", 0)))
        t0 = time.perf_counter()
        net = unwrap_model(model)
        device = net.device  # a CAM meta-architecture's (CAMClassifier, PLDA)
        if self.cpu_retain_buffers and todo and device.type == "cpu":
            retain_freed_buffers()
        was_training = net.training
        net.eval()
        infer = fold_batchnorm(net) if self.fold_bn and todo else net
        if infer is not net and self.cpu_fuse and device.type == "cpu":
            fuse_conv_activation(infer)
        if (
            todo
            and self.cpu_bf16_float32
            and autocast_name(device, self.amp, self.cpu_bf16) == "bf16"
        ):
            # the first stages in float32, on a copy (the caller's model stays as it is)
            infer = copy.deepcopy(infer) if infer is net else infer
            keep_float32(infer, self.cpu_bf16_float32)
        if self.channels_last and todo:
            # same Parameter objects, new layout: an optimizer holding them is unaffected
            infer.to(memory_format=torch.channels_last)
        try:
            self._run_shard(infer, todo, cam_dir, progress and comm.is_main_process())
        finally:
            if self.channels_last and todo and infer is net:
                net.to(memory_format=torch.contiguous_format)
            net.train(was_training)
        dt = time.perf_counter() - t0
        counts = comm.all_gather((len(todo), dt))
        if comm.is_main_process() and sum(c for c, _ in counts):
            n = sum(c for c, _ in counts)
            logger.info(
                "CAM inference: %d images in %.1fs (%.2f img/s over %d ranks) -> %s",
                n,
                max(t for _, t in counts),
                n / max(max(t for _, t in counts), 1e-9),
                world,
                cam_dir,
            )
        comm.synchronize()
        return [cam_file_path(cam_dir, d) for d in dicts]

    def _run_shard(self, model, dicts: list[dict], cam_dir: str, progress: bool) -> None:
        loader = torch.utils.data.DataLoader(
            _ListDataset(dicts, self.mapper),
            batch_size=None,
            shuffle=False,
            num_workers=self.num_loader_workers,
        )
        buckets: dict[tuple, list] = defaultdict(list)
        bar = Progress(len(dicts), "CAM inference", enabled=progress)

        def flush(key):
            batch = buckets.pop(key)
            for x, cam in zip(batch, self.cams_for_batch(model, batch)):
                keys = torch.nonzero(x["tags"] > 0).flatten().numpy() + 1
                save_cam_file(cam_file_path(cam_dir, x), cam, keys, cam.shape[1:])
            bar.update(len(batch))

        for x in loader:
            key = tuple(x["image"].shape)
            buckets[key].append(x)
            if len(buckets[key]) >= self.ims_per_batch:
                flush(key)
        for key in list(buckets):
            flush(key)
        bar.close()
