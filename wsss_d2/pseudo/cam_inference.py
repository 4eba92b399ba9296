"""Batched multi-scale + flip CAM inference over a dataset, one compressed file per image.

IRN's ``make_cam.py`` feeds the network one image and one scale at a time. Here the images of a
dataset are grouped by size and stacked, and :meth:`CAMClassifier.multiscale_cams` runs every
scale of the whole stack (with its flipped copy) in one forward, so the network sees many crops
at once. The dataset is sharded over ranks (``detectron2.utils.comm``); each rank writes its own
files and the ranks meet at a barrier.

A CAM file ``<stem>.npz`` (compressed) holds:

- ``cams``: (k, H, W) float16, each map max-normalised to [0, 1] — only the image's k tags;
- ``keys``: (k,) int64 class ids 1..K of those maps (empty for an image without tags);
- ``hw``: (2,) int64 the image size (H, W); ``version``: file format version.

Files are written atomically and skipped when present, so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import os
import time
import zipfile
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils import comm
from torch import nn
from tqdm import tqdm

from ..data.datasets.common import atomic_write_bytes
from ..data.mappers import build_mapper
from ..modeling.meta_arch.cam import normalize_cams
from .rounds import label_stem

logger = logging.getLogger(__name__)

__all__ = [
    "CAMInferenceEngine",
    "cam_file_path",
    "save_cam_file",
    "load_cam_file",
    "unwrap_model",
    "check_cam_dir",
]

CAM_FILE_VERSION = 1
CAM_DIR_MANIFEST = "cams.json"


def cam_file_path(cam_dir: str, d: dict) -> str:
    """Where the CAM file of dataset dict ``d`` lives in ``cam_dir``."""
    return os.path.join(cam_dir, label_stem(d) + ".npz")


def save_cam_file(path: str, cams: np.ndarray, keys: Sequence[int], hw: tuple[int, int]) -> None:
    """Atomically write (k, H, W) normalised CAMs of classes ``keys`` for an image of size ``hw``."""
    cams = np.asarray(cams)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cams.shape != (len(keys), *hw):
        raise ValueError(f"CAMs for {path} are {cams.shape}, expected {(len(keys), *hw)}")
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        cams=cams.astype(np.float16),
        keys=keys,
        hw=np.asarray(hw, dtype=np.int64),
        version=np.asarray(CAM_FILE_VERSION, dtype=np.int64),
    )
    atomic_write_bytes(path, buf.getvalue())


def load_cam_file(
    path: str, expected_hw: tuple[int, int] | None = None, image_file: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a CAM file -> ``(cams (k, H, W) float32, keys (k,) int64)``.

    Raises:
        FileNotFoundError: no such file.
        OSError: truncated / corrupt file or missing keys (the message names the file).
        ValueError: its size differs from ``expected_hw`` (names the CAM file and the image).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CAM file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            cams = z["cams"].astype(np.float32)
            keys = z["keys"].astype(np.int64)
            hw = tuple(int(v) for v in z["hw"])
    except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as e:
        raise OSError(
            f"cannot read CAM file {path} (truncated or corrupt?): " f"{type(e).__name__}: {e}"
        ) from e
    if cams.shape != (len(keys), *hw):
        raise OSError(
            f"CAM file {path} is inconsistent: cams {cams.shape}, keys {len(keys)}, " f"hw {hw}"
        )
    if expected_hw is not None and hw != tuple(expected_hw):
        raise ValueError(
            f"CAM file {path} is for a {hw[1]}x{hw[0]} (WxH) image but its image "
            f"{image_file or ''} is {expected_hw[1]}x{expected_hw[0]}"
        )
    return cams, keys


def _cam_file_ok(path: str) -> bool:
    try:
        load_cam_file(path)
        return True
    except (OSError, ValueError):
        return False


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def check_cam_dir(cam_dir: str, fingerprint: dict, overwrite: bool = False) -> None:
    """Make sure ``cam_dir`` holds CAMs of *this* model and settings before reusing its files.

    The first call writes ``cams.json`` with ``fingerprint``; a later call with a different
    fingerprint raises (naming the folder) unless ``overwrite``, which empties the folder.
    Call it from the main process only.
    """
    os.makedirs(cam_dir, exist_ok=True)
    path = os.path.join(cam_dir, CAM_DIR_MANIFEST)
    fingerprint = json.loads(json.dumps(fingerprint, default=str))
    if os.path.isfile(path):
        with open(path) as f:
            old = json.load(f)
        if old != fingerprint:
            if not overwrite:
                raise FileExistsError(
                    f"CAM folder {cam_dir} holds CAMs of another model or setting "
                    f"({path}: {old} != {fingerprint}); pass --overwrite or another CAM_DIR"
                )
            for name in os.listdir(cam_dir):
                if name.endswith(".npz"):
                    os.remove(os.path.join(cam_dir, name))
        elif overwrite:
            for name in os.listdir(cam_dir):
                if name.endswith(".npz"):
                    os.remove(os.path.join(cam_dir, name))
    atomic_write_bytes(path, json.dumps(fingerprint, indent=2, sort_keys=True).encode())


@torch.no_grad()
def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of ``model`` whose BatchNorms are folded into the preceding convolutions.

    Covers Detectron2's ``Conv2d`` with a ``norm`` (``BatchNorm2d`` or ``FrozenBatchNorm2d``), the
    building block of its ResNets and of the tiny backbone; other modules are copied unchanged.
    In eval mode the copy computes the same function (up to float rounding) with one memory pass
    less per convolution. ``model`` itself is not modified.
    """
    from detectron2.layers import Conv2d as D2Conv2d
    from detectron2.layers import FrozenBatchNorm2d

    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        bn = getattr(m, "norm", None)
        if not isinstance(m, D2Conv2d) or not isinstance(bn, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            continue
        if isinstance(bn, nn.BatchNorm2d) and not bn.track_running_stats:
            continue  # batch statistics at test time: nothing to fold
        w = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
        b = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        scale = w / torch.sqrt(bn.running_var + bn.eps)
        bias = m.bias if m.bias is not None else torch.zeros_like(bn.running_mean)
        m.weight.copy_(m.weight * scale.view(-1, 1, 1, 1))
        m.bias = nn.Parameter((bias - bn.running_mean) * scale + b, requires_grad=False)
        m.norm = None
    return folded


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
        """
        self.mapper = mapper
        self.scales = tuple(float(s) for s in scales)
        self.flip = bool(flip)
        self.ims_per_batch = max(1, int(ims_per_batch))
        self.num_loader_workers = int(num_loader_workers)
        self.channels_last = bool(channels_last)
        self.fold_bn = bool(fold_bn)

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
        }

    def fingerprint(self) -> dict:
        return {"scales": list(self.scales), "flip": self.flip}

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
        cams = model.multiscale_cams(x, self.scales, self.flip).contiguous()  # (N, K, Hp, Wp)
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
        os.makedirs(cam_dir, exist_ok=True)
        rank, world = comm.get_rank(), comm.get_world_size()
        shard = dicts[rank::world]
        todo = [d for d in shard if not _cam_file_ok(cam_file_path(cam_dir, d))]
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
        was_training = net.training
        net.eval()
        infer = fold_batchnorm(net) if self.fold_bn and todo else net
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
        bar = tqdm(total=len(dicts), desc="CAM inference", disable=not progress, leave=False)

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
