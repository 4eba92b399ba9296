"""CAMs (or segmentor scores) -> pseudo-label maps, and writing a whole label round.

Methods (``WSSS.PSEUDO.METHOD``):

- ``"threshold"``: a pixel is background when every CAM is <= ``BG_THRESHOLD``, else the
  arg-max tag — the raw CAM seeds.
- ``"crf"`` (IRN's ``cam_to_ir_label``): two thresholded maps, one with a high background score
  ``CONF_FG`` (confident foreground) and one with a low one ``CONF_BG`` (confident background),
  each refined by a dense CRF over the image's tags + background. Foreground where the first says
  foreground, background where both say background, 255 (unsure, ignored by the losses) between.
  With ``CONF_FG == CONF_BG`` there is no unsure band: one CRF-refined map.
- ``"pamr"``: the same scheme with PAMR (pixel-adaptive mask refinement) instead of the CRF, run
  on the soft scores ``[bg, CAMs]``.

Every method only ever assigns the image's tags or background. An image without tags is all
background (there is nothing else it could be labelled with).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from detectron2.utils import comm
from tqdm import tqdm

from ..io.cam_files import cam_file_path, load_cam_file
from ..io.files import IGNORE_LABEL, read_image_checked
from ..io.rounds import RoundWriter
from ..modeling.utils import unwrap_model
from ..ops.crf import CRFParams, crf_inference_label, local_ids
from ..ops.pool import map_in_pool

logger = logging.getLogger(__name__)

__all__ = [
    "LabelParams",
    "threshold_labels",
    "crf_labels",
    "pamr_labels",
    "cams_to_label",
    "label_from_files",
    "write_cam_round",
    "segmentation_to_label",
    "write_segmentation_round",
    "make_round",
    "label_datasets",
    "default_round_root",
]

METHODS = ("threshold", "crf", "pamr")


@dataclass(frozen=True)
class LabelParams:
    """Everything CAM -> label needs (picklable, so it travels to pool workers)."""

    method: str = "crf"
    bg_threshold: float = 0.15
    conf_fg: float = 0.30
    conf_bg: float = 0.05
    crf: CRFParams = field(default_factory=CRFParams)
    pamr_iterations: int = 10
    pamr_dilations: tuple = (1, 2, 4, 8, 12, 24)
    pamr_downscale: float = 1.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"WSSS.PSEUDO.METHOD must be one of {METHODS}, got '{self.method}'")
        if self.conf_bg > self.conf_fg:
            raise ValueError(
                f"WSSS.PSEUDO.CONF_BG ({self.conf_bg}) must be <= CONF_FG " f"({self.conf_fg})"
            )

    @classmethod
    def from_config(cls, cfg) -> "LabelParams":
        p = cfg.WSSS.PSEUDO
        return cls(
            method=p.METHOD,
            bg_threshold=p.BG_THRESHOLD,
            conf_fg=p.CONF_FG,
            conf_bg=p.CONF_BG,
            crf=CRFParams.from_config(cfg),
            pamr_iterations=p.PAMR.ITERATIONS,
            pamr_dilations=tuple(p.PAMR.DILATIONS),
            pamr_downscale=p.PAMR.DOWNSCALE,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _with_bg(cams: np.ndarray, bg: float) -> np.ndarray:
    """(k, H, W) -> (k+1, H, W) with a constant background score first."""
    return np.concatenate(
        [np.full((1, *cams.shape[1:]), bg, dtype=np.float32), cams.astype(np.float32)]
    )


def threshold_labels(cams: np.ndarray, keys: Sequence[int], bg_threshold: float) -> np.ndarray:
    """(k, H, W) normalised CAMs of classes ``keys`` -> (H, W) uint8 class ids (0 = background).

    Ties go to background (a CAM must exceed the threshold).
    """
    ids = local_ids(keys)
    return ids[_with_bg(cams, bg_threshold).argmax(0)].astype(np.uint8)


def _combine(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Confident foreground from ``fg``, background where both agree, the rest unsure (255)."""
    out = fg.astype(np.uint8).copy()
    out[fg == 0] = IGNORE_LABEL
    out[(fg == 0) & (bg == 0)] = 0
    return out


def crf_labels(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    conf_fg: float,
    conf_bg: float,
    params: CRFParams = CRFParams(),
) -> np.ndarray:
    """IRN-style confident labels.

    Args:
        image: (H, W, 3) uint8 RGB.
        cams: (k, H, W) max-normalised CAMs of the classes ``keys`` (ids 1..K).
    Returns:
        (H, W) uint8: 0 background, class ids, 255 unsure.
    """
    ids = local_ids(keys)
    if len(keys) == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    n = len(ids)
    fg = ids[crf_inference_label(image, _with_bg(cams, conf_fg).argmax(0), n, params)]
    if conf_bg == conf_fg:
        return fg.astype(np.uint8)
    bg = ids[crf_inference_label(image, _with_bg(cams, conf_bg).argmax(0), n, params)]
    return _combine(fg, bg)


def pamr_labels(
    image: np.ndarray,
    cams: np.ndarray,
    keys: Sequence[int],
    conf_fg: float,
    conf_bg: float,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
    downscale: float = 1.0,
) -> np.ndarray:
    """As :func:`crf_labels` with PAMR on the soft scores ``[bg, CAMs]`` instead of a CRF."""
    from ..ops.pamr import PAMR

    if len(keys) == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    ids = local_ids(keys)
    H, W = cams.shape[1:]
    pamr = PAMR(num_iter=iterations, dilations=dilations)
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    maps = []
    for bg in (conf_fg, conf_bg) if conf_fg != conf_bg else (conf_fg,):
        s = torch.from_numpy(_with_bg(cams, bg))[None]
        if downscale != 1.0:
            size = (max(1, round(H * downscale)), max(1, round(W * downscale)))
            s = torch.nn.functional.interpolate(s, size=size, mode="bilinear", align_corners=False)
        r = pamr(img, s)
        if r.shape[-2:] != (H, W):
            r = torch.nn.functional.interpolate(
                r, size=(H, W), mode="bilinear", align_corners=False
            )
        maps.append(ids[r[0].argmax(0).numpy()])
    if len(maps) == 1:
        return maps[0].astype(np.uint8)
    return _combine(*maps)


def cams_to_label(
    image: np.ndarray | None, cams: np.ndarray, keys: Sequence[int], params: LabelParams
) -> np.ndarray:
    """Dispatch on ``params.method``; ``image`` (H, W, 3) RGB uint8 is unused by "threshold"."""
    if params.method == "threshold":
        return threshold_labels(cams, keys, params.bg_threshold)
    if params.method == "crf":
        return crf_labels(image, cams, keys, params.conf_fg, params.conf_bg, params.crf)
    return pamr_labels(
        image,
        cams,
        keys,
        params.conf_fg,
        params.conf_bg,
        params.pamr_iterations,
        params.pamr_dilations,
        params.pamr_downscale,
    )


def label_from_files(job: tuple) -> np.ndarray:
    """Pool job: ``(dataset dict, cam file, LabelParams)`` -> (H, W) uint8 label.

    Reads the image and the CAM file itself (so only paths travel to the worker) and checks that
    the CAM file matches the image size and the image's tags.
    """
    d, cam_path, params = job
    hw = (int(d["height"]), int(d["width"])) if "height" in d and "width" in d else None
    cams, keys = load_cam_file(cam_path, hw, d["file_name"])
    expected = np.asarray(sorted(int(t) for t in d.get("tags", [])), dtype=np.int64)
    if not np.array_equal(keys, expected):
        raise ValueError(
            f"CAM file {cam_path} has classes {keys.tolist()} but image "
            f"{d['file_name']} is tagged {expected.tolist()}"
        )
    image = None
    if params.method != "threshold":
        image = read_image_checked(d["file_name"], "RGB")
        if tuple(image.shape[:2]) != tuple(cams.shape[1:]):
            raise ValueError(
                f"CAM file {cam_path} is {cams.shape[2]}x{cams.shape[1]} (WxH) but "
                f"image {d['file_name']} is {image.shape[1]}x{image.shape[0]}"
            )
    return cams_to_label(image, cams, keys, params)


def write_cam_round(
    dicts: Iterable[dict],
    cam_dir: str,
    writer: RoundWriter,
    params: LabelParams,
    num_workers: int = 0,
    meta: dict | None = None,
    finalize: bool = True,
    progress: bool = True,
) -> str | None:
    """Turn the CAM files of ``dicts`` into label round ``writer.k`` (resumable, sharded).

    Every rank labels ``dicts[rank::world_size]`` that are not done yet (CRFs in a pool of
    ``num_workers`` processes), the ranks meet at a barrier and the main process finalizes the
    round. Returns the complete round's folder (on every rank), or None if ``finalize`` is False.
    """
    dicts = list(dicts)
    shard = dicts[comm.get_rank() :: comm.get_world_size()]
    todo = [d for d in shard if not writer.is_done(d)]
    if len(todo) < len(shard):
        logger.info(
            "round %d: %d of %d labels already written, resuming",
            writer.k,
            len(shard) - len(todo),
            len(shard),
        )
    jobs = [(d, cam_file_path(cam_dir, d), params) for d in todo]
    workers = 1 if params.method != "crf" else num_workers  # PAMR/threshold: cheap, torch-bound
    results = map_in_pool(
        label_from_files,
        jobs,
        workers,
        desc=f"labels ({params.method})",
        progress=progress and comm.is_main_process(),
    )
    for d, label in zip(todo, results):
        writer.write(d, label)
    return _finish(writer, dicts, meta, finalize)


def _finish(writer: RoundWriter, dicts: list[dict], meta: dict | None, finalize: bool):
    comm.synchronize()
    if not finalize:
        return None
    if comm.is_main_process():
        writer.finalize(dicts, meta)
    comm.synchronize()
    return writer.final_dir


# ---------------------------------------------------------------------- segmentor outputs
def segmentation_to_label(
    scores: torch.Tensor | np.ndarray,
    tags: Sequence[int],
    image: np.ndarray | None = None,
    crf: CRFParams | None = None,
) -> np.ndarray:
    """A segmentor's (K+1, H, W) scores -> (H, W) uint8 label over the tags + background.

    Classes not among ``tags`` are never assigned; with ``crf`` the arg-max map is refined by a
    dense CRF over those labels (``image`` (H, W, 3) RGB uint8 needed).
    """
    scores = torch.as_tensor(scores).float()
    ids = local_ids(sorted(int(t) for t in tags))
    local = scores[torch.as_tensor(ids)].argmax(0).numpy()
    if crf is not None and len(ids) > 1:
        local = crf_inference_label(image, local, len(ids), crf)
    return ids[local].astype(np.uint8)


def _seg_job(job: tuple) -> np.ndarray:
    d, local, ids, crf = job
    image = read_image_checked(d["file_name"], "RGB")
    return ids[crf_inference_label(image, local, len(ids), crf)].astype(np.uint8)


@torch.no_grad()
def write_segmentation_round(
    model: torch.nn.Module,
    dicts: Iterable[dict],
    mapper,
    writer: RoundWriter,
    crf: CRFParams | None = None,
    num_workers: int = 0,
    meta: dict | None = None,
    finalize: bool = True,
    progress: bool = True,
) -> str | None:
    """Predict labels for ``dicts`` with a segmentor (``[{"sem_seg": (K+1, H, W)}]`` outputs).

    Resumable and sharded like :func:`write_cam_round`; the CRF (optional) runs in a pool.
    """
    dicts = list(dicts)
    shard = dicts[comm.get_rank() :: comm.get_world_size()]
    todo = [d for d in shard if not writer.is_done(d)]
    net = unwrap_model(model)
    was_training = net.training
    net.eval()
    bar = tqdm(
        total=len(todo),
        desc="segment",
        disable=not (progress and comm.is_main_process()),
        leave=False,
    )
    chunk = 64  # images predicted before their CRFs go to the pool (bounds memory)
    try:
        for start in range(0, len(todo), chunk):
            jobs = []
            for d in todo[start : start + chunk]:
                out = net([mapper(d)])[0]["sem_seg"].float().cpu()
                ids = local_ids(sorted(int(t) for t in d.get("tags", [])))
                local = out[torch.as_tensor(ids)].argmax(0).numpy().astype(np.uint8)
                if crf is None or len(ids) <= 1:
                    writer.write(d, ids[local].astype(np.uint8))
                else:
                    jobs.append((d, local, ids, crf))
                bar.update(1)
            for (d, *_), label in zip(
                jobs, map_in_pool(_seg_job, jobs, num_workers, progress=False)
            ):
                writer.write(d, label)
    finally:
        net.train(was_training)
        bar.close()
    return _finish(writer, dicts, meta, finalize)


def default_round_root(cfg) -> str:
    """``WSSS.PSEUDO.ROOT`` or ``OUTPUT_DIR/pseudo_labels``."""
    return cfg.WSSS.PSEUDO.ROOT or os.path.join(cfg.OUTPUT_DIR, "pseudo_labels")


def cam_fingerprint(cfg, model: torch.nn.Module, engine, meta: dict | None = None) -> dict:
    """What a folder of CAMs depends on: the network (class and parameter shapes), its weights
    (file, size, mtime; the training iteration for a refresh), input normalisation and size, and
    the inference protocol. Config keys that do not change the CAMs (new defaults elsewhere,
    label thresholds) are left out, so adding a key to the config does not invalidate caches."""
    import hashlib

    w = cfg.MODEL.WEIGHTS
    stamp = [os.path.getsize(w), int(os.path.getmtime(w))] if os.path.isfile(w) else None
    shapes = repr([(k, tuple(v.shape)) for k, v in model.state_dict().items()])
    return {
        **engine.fingerprint(),
        "model": type(model).__name__,
        "structure": hashlib.sha1(shapes.encode()).hexdigest()[:12],
        "weights": w,
        "weights_stamp": stamp,
        "iteration": (meta or {}).get("iteration"),
        "pixel_mean_std": [list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)],
        "input_format": cfg.INPUT.FORMAT,
        "test_long": cfg.INPUT.TAGS.TEST_LONG,
    }


def make_round(
    cfg,
    model: torch.nn.Module,
    dicts: Iterable[dict],
    k: int,
    root: str | None = None,
    cam_dir: str | None = None,
    overwrite: bool = False,
    meta: dict | None = None,
    progress: bool = True,
) -> str:
    """Write pseudo-label round ``k`` of ``dicts`` with ``model``, the way ``cfg`` says.

    A CAM model (one with ``multiscale_cams``: CAM baseline, PLDA) goes through
    :class:`CAMInferenceEngine` (CAM files in ``cam_dir``, default ``WSSS.PSEUDO.CAM_DIR`` or
    ``<root>/cams/round_KK``) and ``WSSS.PSEUDO.METHOD``; any other model is a segmentor whose
    ``sem_seg`` scores are turned into labels over the tags (+ CRF if ``SEG_METHOD`` is "crf").
    Resumes an interrupted round; raises ``FileExistsError`` for a complete one unless
    ``overwrite``. Runs on every rank (sharded); returns the round folder.
    """
    from ..data.mappers import build_mapper
    from ..io.cam_files import check_cam_dir
    from ..io.rounds import config_hash
    from .cam_inference import CAMInferenceEngine

    dicts = list(dicts)
    root = root or default_round_root(cfg)
    p = cfg.WSSS.PSEUDO
    writer = RoundWriter(root, k, cfg.INPUT.TAGS.NUM_CLASSES + 1, overwrite=overwrite)
    info = {
        "weights": cfg.MODEL.WEIGHTS,
        "config_hash": config_hash(cfg),
        "num_classes_fg": cfg.INPUT.TAGS.NUM_CLASSES,
        **(meta or {}),
    }
    net = unwrap_model(model)
    if hasattr(net, "multiscale_cams"):
        engine = CAMInferenceEngine(cfg)
        cam_dir = cam_dir or p.CAM_DIR or os.path.join(root, "cams", f"round_{k:02d}")
        if comm.is_main_process():
            check_cam_dir(cam_dir, cam_fingerprint(cfg, net, engine, meta), overwrite)
        comm.synchronize()
        engine.run(model, dicts, cam_dir, progress=progress)
        params = LabelParams.from_config(cfg)
        info.update(
            source="cam",
            cam_dir=cam_dir,
            label_params=params.to_dict(),
            scales=list(engine.scales),
            flip=engine.flip,
        )
        return write_cam_round(
            dicts, cam_dir, writer, params, p.NUM_WORKERS, meta=info, progress=progress
        )
    if p.SEG_METHOD not in ("argmax", "crf"):
        raise ValueError(f"WSSS.PSEUDO.SEG_METHOD must be 'argmax' or 'crf', got '{p.SEG_METHOD}'")
    crf = CRFParams.from_config(cfg) if p.SEG_METHOD == "crf" else None
    info.update(source="segmentor", seg_method=p.SEG_METHOD, crf=crf.to_dict() if crf else None)
    return write_segmentation_round(
        model,
        dicts,
        build_mapper(cfg, is_train=False),
        writer,
        crf,
        p.NUM_WORKERS,
        meta=info,
        progress=progress,
    )


def label_datasets(cfg) -> tuple[str, ...]:
    """The datasets a round covers: ``WSSS.PSEUDO.DATASETS`` or ``DATASETS.TRAIN``."""
    return tuple(cfg.WSSS.PSEUDO.DATASETS) or tuple(cfg.DATASETS.TRAIN)
