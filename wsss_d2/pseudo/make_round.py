"""Writing a whole pseudo-label round: from CAM files through a refiner, or from a segmentor.

:func:`make_round` is what the pseudo-label tool and :class:`PseudoLabelRefreshHook` call: a CAM
model (:class:`~wsss_d2.modeling.meta_arch.cam.CAMClassifier` and its subclasses, e.g. PLDA) goes
through :class:`~wsss_d2.pseudo.cam_inference.CAMInferenceEngine` (one CAM file per image) and
the refiner of ``WSSS.PSEUDO.METHOD`` (:mod:`wsss_d2.pseudo.refine`); a segmentor
(Detectron2's ``SemanticSegmentor`` and its subclasses) has its ``sem_seg`` scores turned into
labels over the image's tags (+ a dense CRF with ``WSSS.PSEUDO.SEG_METHOD "crf"``); an
:class:`~wsss_d2.modeling.meta_arch.irn.IRNet` walks the CAM files of ``WSSS.PSEUDO.CAM_DIR``
with its boundaries (:mod:`wsss_d2.pseudo.irn_round`, ``WSSS.PSEUDO.METHOD "irn"``). Every round
is written by :class:`~wsss_d2.io.rounds.RoundWriter`: atomically, resumably, sharded by rank.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import numpy as np
import torch
from detectron2.data import get_detection_dataset_dicts
from detectron2.utils import comm

from ..data.mappers import build_mapper
from ..io.cam_files import cam_file_path, check_cam_dir, load_cam_file
from ..io.files import IGNORE_LABEL, read_image_checked
from ..io.rounds import (
    MANIFEST,
    RoundWriter,
    check_unique_stems,
    complete_round_fingerprint,
    config_hash,
    fingerprint_diff,
    partial_round_problem,
    round_dir,
)
from ..modeling.utils import unwrap_model
from ..ops.crf import CRFParams, crf_inference_label, local_ids
from ..ops.pool import map_in_pool
from ..ops.progress import Progress
from .cam_inference import CAMInferenceEngine
from .fingerprint import cam_fingerprint, check_method, label_fingerprint, round_source
from .irn_round import irn_cam_dir, make_irn_round
from .refine import Refiner, build_refiner

logger = logging.getLogger(__name__)

__all__ = [
    "label_from_files",
    "write_cam_round",
    "write_segmentation_round",
    "make_round",
    "label_datasets",
    "default_round_root",
    "cam_fingerprint",
    "open_round",
    "check_round",
    "complete_round",
    "round_source",
    "label_dataset_dicts",
    "check_method",
]


def label_from_files(job: tuple) -> np.ndarray:
    """Pool job: ``(dataset dict, cam file, Refiner)`` -> (H, W) uint8 label.

    Reads the image and the CAM file itself (so only paths travel to the worker) and checks that
    the CAM file matches the image size and the image's tags.
    """
    d, cam_path, refiner = job
    hw = (int(d["height"]), int(d["width"])) if "height" in d and "width" in d else None
    cams, keys = load_cam_file(cam_path, hw, d["file_name"])
    expected = np.asarray(sorted(int(t) for t in d.get("tags", [])), dtype=np.int64)
    if not np.array_equal(keys, expected):
        raise ValueError(
            f"CAM file {cam_path} has classes {keys.tolist()} but image "
            f"{d['file_name']} is tagged {expected.tolist()}"
        )
    image = None
    if refiner.needs_image:
        image = read_image_checked(d["file_name"], "RGB")
        if tuple(image.shape[:2]) != tuple(cams.shape[1:]):
            raise ValueError(
                f"CAM file {cam_path} is {cams.shape[2]}x{cams.shape[1]} (WxH) but "
                f"image {d['file_name']} is {image.shape[1]}x{image.shape[0]}"
            )
    return refiner(image, cams, keys)


def write_cam_round(
    dicts: Iterable[dict],
    cam_dir: str,
    writer: RoundWriter,
    refiner: Refiner,
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
    todo = writer.pending(dicts)
    jobs = [(d, cam_file_path(cam_dir, d), refiner) for d in todo]
    workers = num_workers if refiner.pooled else 1  # PAMR/threshold: cheap, torch-bound
    results = map_in_pool(
        label_from_files,
        jobs,
        workers,
        desc=f"labels ({refiner.method})",
        progress=progress and comm.is_main_process(),
    )
    for d, label in zip(todo, results):
        writer.write(d, label)
    return writer.finish(dicts, meta, finalize)


# ---------------------------------------------------------------------- segmentor outputs
def _seg_job(job: tuple) -> np.ndarray:
    d, local, n, crf = job
    image = read_image_checked(d["file_name"], "RGB")
    return crf_inference_label(image, local, n, crf)


def _seg_label(local: np.ndarray, probs: torch.Tensor, ids: np.ndarray, conf: float) -> np.ndarray:
    """Local ids -> dataset ids; with ``conf`` > 0 a pixel whose label's probability (among the
    background and the image's tags) is under ``conf`` becomes 255 (unsure)."""
    label = ids[local].astype(np.uint8)
    if conf > 0:
        p = probs.gather(0, torch.from_numpy(local.astype(np.int64))[None])[0].numpy()
        label[p < conf] = IGNORE_LABEL
    return label


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
    conf: float = 0.0,
) -> str | None:
    """Predict labels for ``dicts`` with a segmentor (``[{"sem_seg": (K+1, H, W)}]`` outputs).

    Resumable and sharded like :func:`write_cam_round`; the CRF (optional) runs in a pool. The
    labels get one dense CRF, ``crf``: a segmentor's own test-time CRF (``test_crf``, used for
    evaluation) is switched off meanwhile, as CIAN's official retraining labels are refined once.
    ``conf`` (``WSSS.PSEUDO.SEG_CONF``): pixels whose final label has a probability under it,
    the segmentor's scores renormalised over the background and the image's tags, are unsure
    (255); 0 labels every pixel, as CIAN's official retraining seeds.
    """
    dicts = list(dicts)
    todo = writer.pending(dicts)
    net = unwrap_model(model)
    was_training = net.training
    test_crf = getattr(net, "test_crf", None)
    net.eval()
    if test_crf is not None:
        net.test_crf = None
    bar = Progress(len(todo), "segmentor labels", enabled=progress and comm.is_main_process())
    chunk = 64  # images predicted before their CRFs go to the pool (bounds memory)
    try:
        for start in range(0, len(todo), chunk):
            jobs, held = [], []  # held: each CRF job's (probabilities or None, ids)
            for d in todo[start : start + chunk]:
                out = net([mapper(d)])[0]["sem_seg"].float().cpu()
                ids = local_ids(sorted(int(t) for t in d.get("tags", [])))
                probs = out[torch.as_tensor(ids)]
                probs = probs / probs.sum(0, keepdim=True).clamp_min(1e-12)
                local = probs.argmax(0).numpy().astype(np.uint8)
                if crf is None or len(ids) <= 1:
                    writer.write(d, _seg_label(local, probs, ids, conf))
                else:
                    jobs.append((d, local, len(ids), crf))
                    held.append((probs if conf > 0 else None, ids))
                bar.update(1)
            results = map_in_pool(_seg_job, jobs, num_workers, progress=False)
            for (d, *_), (probs, ids), local in zip(jobs, held, results):
                writer.write(d, _seg_label(local, probs, ids, conf))
    finally:
        net.train(was_training)
        if test_crf is not None:
            net.test_crf = test_crf
        bar.close()
    return writer.finish(dicts, meta, finalize)


def default_round_root(cfg) -> str:
    """``WSSS.PSEUDO.ROOT`` or ``OUTPUT_DIR/pseudo_labels``."""
    return cfg.WSSS.PSEUDO.ROOT or os.path.join(cfg.OUTPUT_DIR, "pseudo_labels")


def open_round(
    root: str, k: int, num_classes: int, overwrite: bool, fingerprint: dict | None
) -> RoundWriter:
    """Open round ``k`` on every rank: the main process checks it (complete? another
    fingerprint?), takes its lock and, with ``overwrite``, empties it; the others wait for that
    and only get the paths."""
    writer = None
    if comm.is_main_process():
        writer = RoundWriter(root, k, num_classes, overwrite, fingerprint=fingerprint)
    # no rank writes into the round before the main process has checked (or emptied) it
    comm.synchronize()
    if writer is None:
        writer = RoundWriter(
            root, k, num_classes, overwrite, fingerprint=fingerprint, prepare=False
        )
    return writer


def complete_round(
    root: str, k: int, fingerprint: dict, reuse: bool = False, overwrite: bool = False
) -> str | None:
    """The folder of complete round ``k`` when it may be reused as it is, None when it is to be
    written (absent, or ``overwrite``). A complete round of the same ``fingerprint`` is reused
    with ``reuse`` and refused without; one of another fingerprint is refused naming the keys."""
    folder = round_dir(root, k)
    if overwrite or not os.path.isfile(os.path.join(folder, MANIFEST)):
        return None
    old = complete_round_fingerprint(root, k)
    if not fingerprint_diff(old, fingerprint):
        if reuse:
            logger.info(
                "pseudo-label round %s is already complete with this fingerprint: reused", folder
            )
            return folder
        raise FileExistsError(
            f"pseudo-label round {folder} is already complete (same settings, weights and "
            "dataset); pass --resume to reuse it or --overwrite to write it again"
        )
    what = ", ".join(fingerprint_diff(old, fingerprint)) if old else "no fingerprint"
    raise FileExistsError(
        f"pseudo-label round {folder} is already complete but was made otherwise (differing: "
        f"{what}); pass --overwrite to write it again, or choose another WSSS.PSEUDO.ROUND"
    )


def check_round(
    root: str, k: int, fingerprint: dict, reuse: bool = False, overwrite: bool = False
) -> str | None:
    """Everything :func:`make_round` would refuse about round ``k``, checked before any work and
    without writing: a complete round (see :func:`complete_round`, whose result this returns) or
    a partial round of another fingerprint."""
    done = complete_round(root, k, fingerprint, reuse, overwrite)
    if done is None and not overwrite:
        problem = partial_round_problem(root, k, fingerprint)
        if problem:
            raise FileExistsError(problem)
    return done


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
    weights: dict | None = None,
    names: tuple = (),
    reuse: bool = False,
) -> str:
    """Write pseudo-label round ``k`` of ``dicts`` with ``model``, the way ``cfg`` says.

    A CAM model (:class:`CAMClassifier`: CAM baseline, PLDA) goes through
    :class:`CAMInferenceEngine` (CAM files in ``cam_dir``, default ``WSSS.PSEUDO.CAM_DIR`` or
    ``<root>/cams/round_KK``) and the refiner of ``WSSS.PSEUDO.METHOD``; a segmentor
    (``SemanticSegmentor``) has its ``sem_seg`` scores turned into labels over the tags (+ CRF if
    ``SEG_METHOD`` is "crf"). Resumes an interrupted round; raises ``FileExistsError`` for a
    complete one unless ``overwrite``. Runs on every rank (sharded); returns the round folder.

    The round carries the fingerprint of :func:`~wsss_d2.pseudo.fingerprint.label_fingerprint`
    (``weights``: what the model's weights are, default the hash of ``MODEL.WEIGHTS``; ``names``:
    the datasets): a partial round of another fingerprint is refused, not resumed; a complete
    round of the same fingerprint is returned as it is with ``reuse`` (see :func:`complete_round`).
    """
    dicts = list(dicts)
    check_unique_stems(dicts)  # before any work: two images must not share a label file
    root = root or default_round_root(cfg)
    p = cfg.WSSS.PSEUDO
    source = round_source(model)
    check_method(cfg, source)
    if source == "irn":
        cam_dir = irn_cam_dir(cfg, cam_dir)
        if cam_dir != p.CAM_DIR:  # the fingerprint reads the CAM folder's from the config
            cfg = cfg.clone()
            cfg.defrost()
            cfg.WSSS.PSEUDO.CAM_DIR = cam_dir
            cfg.freeze()
    fingerprint = label_fingerprint(cfg, dicts, source, weights, names)
    done = complete_round(root, k, fingerprint, reuse, overwrite)
    if done is not None:
        return done
    writer = open_round(root, k, cfg.INPUT.TAGS.NUM_CLASSES + 1, overwrite, fingerprint)
    try:
        return _write_round(cfg, model, dicts, writer, source, cam_dir, overwrite, meta, progress)
    finally:
        writer.close()  # finalize gave the round's lock up; an error gives it up here


def _write_round(cfg, model, dicts, writer, source, cam_dir, overwrite, meta, progress) -> str:
    p, root, k = cfg.WSSS.PSEUDO, writer.root, writer.k
    info = {
        "weights": cfg.MODEL.WEIGHTS,
        "config_hash": config_hash(cfg),
        "num_classes_fg": cfg.INPUT.TAGS.NUM_CLASSES,
        **(meta or {}),
    }
    net = unwrap_model(model)
    if source == "irn":
        return make_irn_round(cfg, model, dicts, writer, info, cam_dir, progress)
    if source == "cam":
        engine = CAMInferenceEngine(cfg)
        cam_dir = cam_dir or p.CAM_DIR or os.path.join(root, "cams", f"round_{k:02d}")
        if comm.is_main_process():
            check_cam_dir(cam_dir, cam_fingerprint(cfg, net, engine, meta), overwrite)
        comm.synchronize()
        engine.run(model, dicts, cam_dir, progress=progress)
        refiner = build_refiner(cfg)
        info.update(
            source="cam",
            cam_dir=cam_dir,
            label_params=refiner.to_dict(),
            scales=list(engine.scales),
            flip=engine.flip,
        )
        return write_cam_round(
            dicts, cam_dir, writer, refiner, p.NUM_WORKERS, meta=info, progress=progress
        )
    crf = CRFParams.from_config(cfg) if p.SEG_METHOD == "crf" else None
    info.update(source="segmentor", seg_method=p.SEG_METHOD, crf=crf.to_dict() if crf else None)
    if p.SEG_CONF > 0:  # recorded only when used: rounds written before the key keep their info
        info.update(seg_conf=p.SEG_CONF)
    return write_segmentation_round(
        model,
        dicts,
        build_mapper(cfg, is_train=False),
        writer,
        crf,
        p.NUM_WORKERS,
        meta=info,
        progress=progress,
        conf=p.SEG_CONF,
    )


def label_dataset_dicts(cfg, require_gt: bool = False) -> tuple[tuple[str, ...], list[dict]]:
    """The names of :func:`label_datasets` and their dicts (no empty-image filter, no class
    histogram); ``require_gt``: a ``KeyError`` naming the first image without ground truth."""
    names = label_datasets(cfg)
    dicts = get_detection_dataset_dicts(names, filter_empty=False, check_consistency=False)
    missing = [d["file_name"] for d in dicts if not d.get("sem_seg_file_name")]
    if require_gt and missing:
        raise KeyError(f"{len(missing)} images have no ground truth, first {missing[0]}")
    return names, dicts


def label_datasets(cfg) -> tuple[str, ...]:
    """The datasets a round covers: ``WSSS.PSEUDO.DATASETS`` or ``DATASETS.TRAIN``."""
    return tuple(cfg.WSSS.PSEUDO.DATASETS) or tuple(cfg.DATASETS.TRAIN)
