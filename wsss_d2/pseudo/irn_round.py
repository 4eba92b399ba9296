"""IRN label rounds: an IRNet's class boundaries + the CAM files of a CAM model -> pseudo labels.

IRN's ``make_sem_seg_labels`` step (Ahn, Cho & Kwak, CVPR 2019) as a round of
:class:`~wsss_d2.io.rounds.RoundWriter`: the IRNet predicts the boundary map of every image (with
its flip), :func:`~wsss_d2.pseudo.random_walk.random_walk` propagates the image's CAMs (read from
``WSSS.PSEUDO.CAM_DIR``, the folder a CAM model's labelling run left) inside the regions the
boundaries enclose, and the background threshold turns the walked scores into labels.

Same-size images are walked together (``WSSS.PSEUDO.IMS_PER_BATCH`` per pass); ranks take
``dicts[rank::world_size]``; an interrupted round resumes from the labels already written. The
round's fingerprint holds the IRNet's weights and the CAM folder's own fingerprint
(``cams.json``): labels from CAMs of another model are not mixed into a partial round.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch
from detectron2.utils import comm

from ..data.mappers import build_mapper
from ..io.cam_files import cam_file_path, load_cam_file, read_cam_manifest
from ..io.files import read_image_checked
from ..io.rounds import RoundWriter
from ..modeling.meta_arch.irn import IRNet
from ..modeling.utils import unwrap_model
from ..ops.amp import inference_autocast
from ..ops.crf import CRFParams, crf_inference_label, local_ids
from ..ops.pool import map_in_pool
from ..ops.progress import Progress
from .random_walk import (
    WalkParams,
    background_channel,
    band_label,
    cams_at_stride,
    random_walk,
    walk_to_label,
)

logger = logging.getLogger(__name__)

__all__ = [
    "same_size_batches",
    "irn_cam_dir",
    "WalkedImage",
    "walk_batch",
    "walk_labels",
    "label_batch",
    "crf_refine_label",
    "crf_refine_labels",
    "write_irn_round",
    "make_irn_round",
]


def irn_cam_dir(cfg, cam_dir: str | None = None) -> str:
    """The CAM folder an IRN round walks: ``cam_dir`` or ``WSSS.PSEUDO.CAM_DIR``, which must
    exist (an IRN round propagates the CAMs of a CAM model; it makes none)."""
    cam_dir = cam_dir or cfg.WSSS.PSEUDO.CAM_DIR
    if not cam_dir or not os.path.isdir(cam_dir):
        raise FileNotFoundError(
            "an IRNet's pseudo labels propagate the CAM files of a CAM model: set "
            f"WSSS.PSEUDO.CAM_DIR to their folder (got '{cam_dir}')"
        )
    return cam_dir


def _load_cams(cam_dir: str, x: dict) -> tuple[torch.Tensor, np.ndarray]:
    path = cam_file_path(cam_dir, x)
    cams, keys = load_cam_file(path, (int(x["height"]), int(x["width"])), x["file_name"])
    tags = _tag_ids(x)
    if not np.array_equal(keys, tags):
        raise ValueError(
            f"CAM file {path} has classes {keys.tolist()} but image {x['file_name']} is tagged "
            f"{tags.tolist()}"
        )
    return torch.from_numpy(cams), keys


class WalkedImage(NamedTuple):
    """An image's walk (:func:`walk_batch`), what :func:`walk_labels` turns into labels."""

    rw: torch.Tensor  # (k, h, w) walked CAMs of the image's tags, at the IRNet's stride
    keys: np.ndarray  # the tags' class ids
    input_hw: tuple[int, int]  # the network input size
    out_hw: tuple[int, int]  # the image size
    bg: torch.Tensor | None = None  # (h, w) walked background (MODEL.IRN.WALK_BG_POWER > 0)


@torch.no_grad()
def walk_batch(
    net,
    inputs: list[dict],
    cam_dir: str,
    params: WalkParams,
    amp: bool = False,
    outs: list[dict] | None = None,
) -> list[WalkedImage]:
    """IRNet boundaries + CAM files -> the walked scores, for mapped inputs of one image size:
    a :class:`WalkedImage` per input, what :func:`~wsss_d2.pseudo.random_walk.walk_to_label`
    turns into a label (so that several background thresholds can be scored from one walk); with
    ``params.bg_power > 0`` the background channel is walked in the same pass. ``amp``: the
    IRNet's forward in fp16 autocast on CUDA (the walk itself keeps ``params.dtype``). ``outs``:
    the IRNet's outputs for ``inputs`` when the caller already has them (walks with other
    parameters from one forward)."""
    if outs is None:
        with inference_autocast(next(net.parameters()).device, amp):
            outs = net(inputs)
    dt = params.torch_dtype
    cams, keys, edges = [], [], []
    for x, out in zip(inputs, outs):
        c, k = _load_cams(cam_dir, x)
        if len(k) == 0:
            logger.info("image %s has no tags: labelled all background", x["file_name"])
        size = tuple(out["edge"].shape)
        cams.append(cams_at_stride(c, size, net.stride, tuple(x["image"].shape[-2:])))
        keys.append(k)
        edges.append(out["edge"].float())
    h = max(e.shape[0] for e in edges)
    w = max(e.shape[1] for e in edges)
    cmax = max(c.shape[0] for c in cams)
    device = edges[0].device
    E = torch.ones(len(inputs), h, w, dtype=dt, device=device)  # padding is boundary
    X = torch.zeros(len(inputs), cmax, h, w, dtype=dt, device=device)
    for i, (c, e) in enumerate(zip(cams, edges)):
        E[i, : e.shape[0], : e.shape[1]] = e
        X[i, : c.shape[0], : c.shape[1], : c.shape[2]] = c.to(device)
    walk_bg = params.bg_power > 0
    if walk_bg:  # padded class channels are 0: no effect on the maximum
        X = torch.cat([X, background_channel(X, params.bg_power)], 1)
    rw = X
    if cmax > 0:
        rw = random_walk(X, E, params.radius, params.beta, params.exp_times, params.method)
    out = []
    for i, x in enumerate(inputs):
        fh, fw = edges[i].shape
        hw_in, hw_out = tuple(x["image"].shape[-2:]), (int(x["height"]), int(x["width"]))
        bg = rw[i, -1, :fh, :fw] if walk_bg else None
        out.append(WalkedImage(rw[i, : len(keys[i]), :fh, :fw], keys[i], hw_in, hw_out, bg))
    return out


def walk_labels(
    walked: list[WalkedImage], stride: int, thresholds: Sequence[float], normalize: str = "global"
) -> list[list[np.ndarray]]:
    """Per image of ``walked`` (what :func:`walk_batch` returns), its label at every background
    score of ``thresholds``."""
    return [
        [
            walk_to_label(w.rw, w.keys, stride, w.input_hw, w.out_hw, t, normalize, w.bg)
            for t in thresholds
        ]
        for w in walked
    ]


@torch.no_grad()
def label_batch(
    net, inputs: list[dict], cam_dir: str, params: WalkParams, amp: bool = False
) -> list[np.ndarray]:
    """IRNet boundaries + CAM files -> labels, for mapped inputs of one image size
    (:func:`walk_batch`, then the background threshold ``params.bg_threshold``; unsure pixels
    with ``params.unsure_threshold``, :func:`~wsss_d2.pseudo.random_walk.band_label`): the labels
    of an IRN round without its optional CRF (``MODEL.IRN.CRF``, :func:`write_irn_round`)."""
    walked = walk_batch(net, inputs, cam_dir, params, amp)
    return [
        band_label(labs)
        for labs in walk_labels(walked, net.stride, params.thresholds, params.normalize)
    ]


def crf_refine_label(
    image: np.ndarray, label: np.ndarray, keys, params: CRFParams = CRFParams()
) -> np.ndarray:
    """An IRN label (class ids over background and ``keys``) refined by the dense CRF the CRF
    band runs on its thresholded CAMs (:func:`~wsss_d2.ops.crf.crf_inference_label`: the label as
    the unary at ``params.gt_prob``, the image's colours pairwise). Not in the official
    ``make_sem_seg_labels``: ``MODEL.IRN.CRF`` (default off)."""
    ids = local_ids(keys)
    if len(ids) <= 1:
        return np.asarray(label, dtype=np.uint8)
    lut = np.zeros(256, np.int64)
    lut[ids] = np.arange(len(ids))
    local = lut[np.asarray(label, dtype=np.uint8)]
    return ids[crf_inference_label(image, local, len(ids), params)].astype(np.uint8)


def crf_refine_labels(job: tuple) -> list[np.ndarray]:
    """``(file_name, labels, keys, params)`` -> each of an image's labels refined by
    :func:`crf_refine_label` (the image read once; a process pool's job)."""
    file_name, labels, keys, params = job
    image = read_image_checked(file_name, "RGB")
    return [crf_refine_label(image, label, keys, params) for label in labels]


def _tag_ids(x: dict) -> np.ndarray:
    return np.flatnonzero(np.asarray(x["tags"]) > 0) + 1


def same_size_batches(dicts: Iterable[dict], mapper, ims_per_batch: int):
    """Yield ``[(mapped input, dict), ...]`` batches of up to ``ims_per_batch`` inputs of one
    image size (the dicts taken by size, a batch yielded as soon as it is full, the partial ones
    at the end), for one IRNet pass and one batched walk each."""
    buckets: dict[tuple, list] = defaultdict(list)
    for d in sorted(dicts, key=lambda d: (d.get("height", 0), d.get("width", 0))):
        x = mapper(d)
        key = tuple(x["image"].shape)
        buckets[key].append((x, d))
        if len(buckets[key]) >= max(1, ims_per_batch):
            yield buckets.pop(key)
    yield from buckets.values()


def write_irn_round(
    dicts: Iterable[dict],
    cam_dir: str,
    model: torch.nn.Module,
    mapper,
    writer: RoundWriter,
    params: WalkParams = WalkParams(),
    ims_per_batch: int = 8,
    meta: dict | None = None,
    finalize: bool = True,
    progress: bool = True,
    amp: bool = False,
    crf: CRFParams | None = None,
    num_workers: int = 0,
) -> str | None:
    """Label ``dicts`` by IRN's random walk: round ``writer.k`` (resumable, rank-sharded).

    Args:
        cam_dir: the CAM files of the images (:mod:`wsss_d2.io.cam_files` format).
        model: an IRNet (inference ``[{"edge": (h, w), "dp": ...}]`` and ``stride``).
        mapper: test mapper (dict -> ``image``, ``tags``, ``height``, ``width``, ``file_name``).
        ims_per_batch: same-size images per network pass and per batched walk.
        amp: the IRNet's forward in fp16 autocast on CUDA (``WSSS.PSEUDO.AMP``).
        crf: refine every label by :func:`crf_refine_label` with these parameters
            (``MODEL.IRN.CRF``), over a pool of ``num_workers`` processes; None (official) = no CRF.
    Every rank labels ``dicts[rank::world_size]`` not done yet, the ranks meet at a barrier and
    the main process finalizes the round. Returns the round folder (or None if not ``finalize``).
    """
    dicts = list(dicts)
    todo = writer.pending(dicts)
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    bar = Progress(len(todo), "labels (irn)", enabled=progress and comm.is_main_process())
    try:
        for batch in same_size_batches(todo, mapper, ims_per_batch):
            inputs = [x for x, _ in batch]
            walked = walk_batch(net, inputs, cam_dir, params, amp)
            labels = walk_labels(walked, net.stride, params.thresholds, params.normalize)
            if crf is not None:
                jobs = [(x["file_name"], lab, _tag_ids(x), crf) for x, lab in zip(inputs, labels)]
                labels = list(map_in_pool(crf_refine_labels, jobs, num_workers, progress=False))
            for x, labs in zip(inputs, labels):
                writer.write(x, band_label(labs))
            bar.update(len(batch))
    finally:
        net.train(was_training)
        bar.close()
    return writer.finish(dicts, meta, finalize)


def make_irn_round(
    cfg,
    model: torch.nn.Module,
    dicts: Iterable[dict],
    writer: RoundWriter,
    info: dict | None = None,
    cam_dir: str | None = None,
    progress: bool = True,
) -> str:
    """The IRN round of ``dicts``: the CAM files in ``cam_dir`` (default ``WSSS.PSEUDO.CAM_DIR``,
    written by a CAM model's labelling run) walked with the boundaries of the IRNet ``model``."""
    net = unwrap_model(model)
    if not isinstance(net, IRNet):
        raise TypeError(f"an IRN round needs an IRNet, got {type(net).__name__}")
    cam_dir = irn_cam_dir(cfg, cam_dir)
    params = WalkParams.from_config(cfg)
    crf = CRFParams.from_config(cfg) if cfg.MODEL.IRN.CRF else None
    meta = {
        **(info or {}),
        "source": "irn",
        "cam_dir": cam_dir,
        "cams": read_cam_manifest(cam_dir),
        "walk_params": params.to_dict(),
    }
    if crf is not None:
        meta["crf"] = crf.to_dict()
    return write_irn_round(
        dicts,
        cam_dir,
        model,
        build_mapper(cfg, is_train=False),
        writer,
        params,
        cfg.WSSS.PSEUDO.IMS_PER_BATCH,
        meta=meta,
        progress=progress,
        amp=cfg.WSSS.PSEUDO.AMP,
        crf=crf,
        num_workers=cfg.WSSS.PSEUDO.NUM_WORKERS,
    )
