"""The label tools' bodies: a pseudo-label round with a CAM model or a segmentor
(``tools/make_pseudo_labels.py``), a SAM-box round (``tools/make_sam_labels.py``) and the
ground-truth round (``tools/make_gt_round.py``)."""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.engine import default_argument_parser
from detectron2.utils import comm

from ..engine.defaults import default_wsss_setup, output_dir_lock, wsss_cfg_from_args
from ..engine.trainer import WSSSTrainer
from ..evaluation.pseudo_eval import evaluate_round
from ..evaluation.sam_eval import SamBoxLabelingEvaluator, sam_round_root
from ..io.files import atomic_write_bytes
from ..io.rounds import MANIFEST, check_unique_stems, config_hash, round_dir
from ..modeling.checkpoint import load_model_weights, require_weights
from ..pseudo.fingerprint import label_fingerprint, weights_fingerprint
from ..pseudo.gt_round import write_gt_round
from ..pseudo.make_round import (
    check_round,
    default_round_root,
    label_datasets,
    make_round,
    open_round,
    round_source,
)
from ..pseudo.sam.labeler import SamBoxLabeler, label_dataset

logger = logging.getLogger(__name__)

__all__ = ["label_argument_parser", "make_pseudo_labels", "make_sam_labels", "make_gt_round"]


def label_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's argument parser plus ``--overwrite`` (the label tools')."""
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write a complete round (and its CAMs) again, restart a partial one from empty",
    )
    return parser


# ---------------------------------------------------------------------- pseudo labels
def make_pseudo_labels(args):
    """Write round ``WSSS.PSEUDO.ROUND`` of ``WSSS.PSEUDO.DATASETS`` with ``MODEL.WEIGHTS``.

    Before anything is written (``config.yaml`` included): a complete round is refused unless
    ``--overwrite`` (write it again) or ``--resume`` with the same fingerprint (reuse it); the
    weights must be given and fit the model; a partial round must have this round's fingerprint
    (settings, weights, dataset); two images must not share a label file.
    """
    cfg = wsss_cfg_from_args(args)
    root = default_round_root(cfg)
    k = cfg.WSSS.PSEUDO.ROUND
    final = round_dir(root, k)
    # fail before any model work when the round is already complete
    if os.path.isfile(os.path.join(final, MANIFEST)) and not (args.overwrite or args.resume):
        raise FileExistsError(
            f"pseudo-label round {final} is already complete; pass --overwrite to write it again "
            "(or --resume to reuse it if it was made with these settings)"
        )
    require_weights(cfg.MODEL.WEIGHTS, purpose="writing pseudo labels")
    names = label_datasets(cfg)
    # no consistency check: its class histogram assumes 0-based COCO-style category ids
    dicts = get_detection_dataset_dicts(names, filter_empty=False, check_consistency=False)
    check_unique_stems(dicts)
    model = WSSSTrainer.build_model(cfg)
    load_model_weights(model, cfg.MODEL.WEIGHTS)
    fingerprint = label_fingerprint(cfg, dicts, round_source(model), names=names)
    folder = check_round(root, k, fingerprint, reuse=args.resume, overwrite=args.overwrite)
    with output_dir_lock(cfg.OUTPUT_DIR, "writing pseudo labels"):
        default_wsss_setup(args, cfg)
        if folder is None:
            meta = {"datasets": list(names)}
            folder = make_round(
                cfg, model, dicts, k, root=root, overwrite=args.overwrite, meta=meta, names=names
            )
        res = evaluate_round(
            dicts,
            folder,
            cfg.INPUT.TAGS.NUM_CLASSES + 1,
            dataset_name=names[0] if len(names) == 1 else "",
            output_dir=cfg.OUTPUT_DIR,
        )
        if comm.is_main_process():
            summary = {"round": k, "folder": folder, "metrics": res}
            atomic_write_bytes(
                os.path.join(cfg.OUTPUT_DIR, f"pseudo_round_{k:02d}.json"),
                json.dumps(summary, indent=2).encode(),
            )
            if res:
                logger.info(
                    "round %d: mIoU %.2f, labeled-pixel mIoU %.2f, %.1f%% unsure; background "
                    "IoU %.1f, precision %.1f, recall %.1f (unsure pixels count as misses)",
                    k,
                    res["mIoU"],
                    res["mIoU_labeled"],
                    100 * res["ignored_fraction"],
                    *(res.get(f"{m}-background", float("nan")) for m in ("IoU", "PREC", "REC")),
                )
    return res


def make_gt_round(args):
    """Write the ground-truth masks of ``WSSS.PSEUDO.DATASETS`` (default ``DATASETS.TRAIN``) as
    round ``WSSS.PSEUDO.ROUND`` under ``WSSS.PSEUDO.ROOT`` (default ``OUTPUT_DIR/pseudo_labels``):
    the fully supervised ceiling of a segmentor config. A complete round is refused unless
    ``--overwrite`` (write it again) or ``--resume`` with the same masks (reuse it). Returns the
    round folder."""
    cfg = wsss_cfg_from_args(args)
    names = label_datasets(cfg)
    dicts = get_detection_dataset_dicts(names, filter_empty=False, check_consistency=False)
    root, k = default_round_root(cfg), cfg.WSSS.PSEUDO.ROUND
    with output_dir_lock(cfg.OUTPUT_DIR, "writing the ground-truth round"):
        default_wsss_setup(args, cfg)
        folder = None
        if comm.is_main_process():
            folder = write_gt_round(
                dicts,
                root,
                k,
                cfg.INPUT.TAGS.NUM_CLASSES + 1,
                overwrite=args.overwrite,
                names=names,
                reuse=args.resume,
            )
            logger.info(
                "ground-truth round of %s: %s (%d images)", ", ".join(names), folder, len(dicts)
            )
        comm.synchronize()
    return folder or round_dir(root, k)


def _sam_dicts(cfg) -> tuple[str, list[dict], list[str]]:
    dicts = [d for n in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(n)]
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("stuff_classes")
    if classes is None or len(classes) != cfg.INPUT.TAGS.NUM_CLASSES + 1:
        raise ValueError(
            f"dataset {name} has {None if classes is None else len(classes) - 1} classes but "
            f"INPUT.TAGS.NUM_CLASSES is {cfg.INPUT.TAGS.NUM_CLASSES}"
        )
    return name, dicts, list(classes)


def _score_sam_round(evaluator, shard: list[dict]) -> dict:
    evaluator.reset()
    evaluator.process(shard, [{}] * len(shard))  # read the labels back from the round
    return evaluator.evaluate()


def make_sam_labels(args):
    """Write SAM-box round ``WSSS.SAM.ROUND`` of ``DATASETS.TRAIN`` (or score it, ``--eval-only``).

    Images are sharded by rank; each rank writes its labels into the round's partial folder and
    the main process finalizes the round after all ranks meet. An interrupted run resumes where it
    stopped when its fingerprint (SAM settings and checkpoint, dataset) matches; a complete round
    is only written again with ``--overwrite`` (``--resume`` reuses one of the same fingerprint).
    The checks, and loading SAM, come before ``OUTPUT_DIR/config.yaml`` is written.
    """
    cfg = wsss_cfg_from_args(args)
    name, dicts, classes = _sam_dicts(cfg)
    root = sam_round_root(cfg)
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = dicts[rank::world]
    if args.eval_only:
        default_wsss_setup(args, cfg)
        evaluator = SamBoxLabelingEvaluator(cfg, dataset_name=name, output_dir=cfg.OUTPUT_DIR)
        return _score_sam_round(evaluator, shard)
    k = cfg.WSSS.SAM.ROUND
    check_unique_stems(dicts)
    weights = weights_fingerprint(cfg.WSSS.SAM.CHECKPOINT)
    fingerprint = label_fingerprint(cfg, dicts, "sam_boxes", weights, cfg.DATASETS.TRAIN)
    done = check_round(root, k, fingerprint, reuse=args.resume, overwrite=args.overwrite)
    if torch.device(cfg.MODEL.DEVICE).type == "cuda" and world > 1:
        torch.cuda.set_device(comm.get_local_rank())
    labeler = None if done else SamBoxLabeler(cfg, classes[1:])  # loads (and checks) SAM
    with output_dir_lock(cfg.OUTPUT_DIR, "writing SAM labels"):
        default_wsss_setup(args, cfg)
        evaluator = SamBoxLabelingEvaluator(cfg, dataset_name=name, output_dir=cfg.OUTPUT_DIR)
        if done:
            return _score_sam_round(evaluator, shard)
        writer = open_round(root, k, len(classes), args.overwrite, fingerprint)
        try:
            n = label_dataset(labeler, shard, writer, evaluator, progress=comm.is_main_process())
            logger.info("rank %d labelled %d images (%d in its shard)", rank, n, len(shard))
            # every rank's labels are in the partial folder before the main process finalizes it
            comm.synchronize()
            res = evaluator.evaluate()
            if comm.is_main_process():
                writer.finalize(
                    dicts,
                    meta={
                        "source": "sam_boxes",
                        "dataset": list(cfg.DATASETS.TRAIN),
                        "sam_model_type": cfg.WSSS.SAM.MODEL_TYPE,
                        "sam_checkpoint": os.path.basename(cfg.WSSS.SAM.CHECKPOINT),
                        "box_source": cfg.WSSS.SAM.BOX_SOURCE,
                        "config_hash": config_hash(cfg),
                        "scores": res,
                    },
                )
                logger.info("SAM-box labels: %s", writer.final_dir)
        finally:
            writer.close()  # finalize gave the lock up; an error gives it up here
        # no rank returns before the round is renamed into place
        comm.synchronize()
    return res
