#!/usr/bin/env python
"""Write a SAM-box pseudo-label round for ``DATASETS.TRAIN`` and score it.

    python tools/make_sam_labels.py --config-file configs/sam_boxes_voc.yaml \\
        WSSS.SAM.CHECKPOINT weights/sam_vit_h_4b8939.pth
    python tools/make_sam_labels.py --config-file configs/sam_boxes_voc.yaml --num-gpus 8
    python tools/make_sam_labels.py --config-file configs/sam_boxes_voc.yaml --eval-only

Images are sharded by rank; each rank writes its labels into the round's partial folder, and
the main process finalizes the round (manifest + rename) after all ranks meet. An interrupted
run resumes where it stopped (images with a label are skipped), with or without ``--resume``;
a complete round is only written again with ``--overwrite``. ``--eval-only`` scores an existing round. Scores (mIoU
against the ground truth where the dataset has it, box statistics) go to the log and to
``OUTPUT_DIR/sam_box_labeling.json``.
"""

import itertools
import logging
import os

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

import wsss_d2  # noqa: F401  (registers datasets, evaluators)
from wsss_d2.engine import default_wsss_setup
from wsss_d2.evaluation.sam_eval import SamBoxLabelingEvaluator, sam_round_root
from wsss_d2.io.rounds import RoundWriter, config_hash, round_dir
from wsss_d2.pseudo.sam.labeler import SamBoxLabeler, label_dataset

logger = logging.getLogger("wsss_d2.make_sam_labels")


def setup(args):
    return default_wsss_setup(args)


def load_dicts(cfg):
    dicts = list(itertools.chain.from_iterable(DatasetCatalog.get(n) for n in cfg.DATASETS.TRAIN))
    name = cfg.DATASETS.TRAIN[0]
    classes = MetadataCatalog.get(name).get("stuff_classes")
    if classes is None or len(classes) != cfg.INPUT.TAGS.NUM_CLASSES + 1:
        raise ValueError(
            f"dataset {name} has {None if classes is None else len(classes) - 1} classes but "
            f"INPUT.TAGS.NUM_CLASSES is {cfg.INPUT.TAGS.NUM_CLASSES}"
        )
    return name, dicts, list(classes)


def main(args):
    cfg = setup(args)
    name, dicts, classes = load_dicts(cfg)
    evaluator = SamBoxLabelingEvaluator(cfg, dataset_name=name, output_dir=cfg.OUTPUT_DIR)
    root = sam_round_root(cfg)
    rank, world = comm.get_rank(), comm.get_world_size()
    shard = dicts[rank::world]
    if args.eval_only:
        evaluator.reset()
        evaluator.process(shard, [{}] * len(shard))  # read the labels back from the round
        return evaluator.evaluate()

    final = round_dir(root, cfg.WSSS.SAM.ROUND)
    if comm.is_main_process():
        # the main process checks (and, with --overwrite, accepts) a complete round first, so
        # that no rank starts writing into a round that will be refused
        RoundWriter(root, cfg.WSSS.SAM.ROUND, len(classes), overwrite=args.overwrite)
    comm.synchronize()
    writer = RoundWriter(root, cfg.WSSS.SAM.ROUND, len(classes), overwrite=args.overwrite)
    device = torch.device(cfg.MODEL.DEVICE)
    if device.type == "cuda" and world > 1:
        torch.cuda.set_device(comm.get_local_rank())
    labeler = SamBoxLabeler(cfg, classes[1:])
    n = label_dataset(labeler, shard, writer, evaluator, progress=comm.is_main_process())
    logger.info("rank %d labelled %d images (%d in its shard)", rank, n, len(shard))
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
        logger.info("SAM-box labels: %s", final)
    comm.synchronize()
    return res


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite", action="store_true", help="write the round again even if it is complete"
    )
    args = parser.parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
