#!/usr/bin/env python
"""Write a pseudo-label round of the training set with a trained CAM model (or segmentor).

    python tools/make_pseudo_labels.py --config-file configs/pseudo_toy.yaml \
        MODEL.WEIGHTS output/cam_toy/model_final.pth OUTPUT_DIR output/pseudo_toy
    python tools/make_pseudo_labels.py --config-file configs/pseudo_voc.yaml --num-gpus 8 \
        MODEL.WEIGHTS output/plda_r101/model_final.pth WSSS.PSEUDO.ROUND 1

Multi-scale + flip CAMs go to ``WSSS.PSEUDO.CAM_DIR`` (one ``.npz`` per image), labels to
``WSSS.PSEUDO.ROOT/round_KK`` (default ``OUTPUT_DIR/pseudo_labels``). An interrupted run is
resumed by running the same command again (finished CAMs and labels are kept); a complete round
is never overwritten unless ``--overwrite`` is given. The round is scored against the ground
truth when the dataset has some (``OUTPUT_DIR/pseudo_label_evaluation.json``).
"""

import json
import logging
import os

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import get_detection_dataset_dicts
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm

import wsss_d2  # noqa: F401  (registers everything)
from wsss_d2.engine import WSSSTrainer, check_weights_exist, default_wsss_setup
from wsss_d2.evaluation.pseudo_eval import evaluate_round
from wsss_d2.io.files import atomic_write_bytes
from wsss_d2.io.rounds import MANIFEST, round_dir
from wsss_d2.pseudo.make_round import default_round_root, label_datasets, make_round

logger = logging.getLogger("wsss_d2.make_pseudo_labels")


def setup(args):
    return default_wsss_setup(args)


def main(args):
    cfg = setup(args)
    root = default_round_root(cfg)
    k = cfg.WSSS.PSEUDO.ROUND
    final = round_dir(root, k)
    # fail before any model work when the round is already complete
    if os.path.isfile(os.path.join(final, MANIFEST)) and not args.overwrite:
        raise FileExistsError(
            f"pseudo-label round {final} is already complete; pass --overwrite " "to write it again"
        )
    model = WSSSTrainer.build_model(cfg)
    check_weights_exist(cfg.MODEL.WEIGHTS)
    DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
        cfg.MODEL.WEIGHTS, resume=False
    )
    names = label_datasets(cfg)
    # no consistency check: its class histogram assumes 0-based COCO-style category ids
    dicts = get_detection_dataset_dicts(names, filter_empty=False, check_consistency=False)
    folder = make_round(
        cfg, model, dicts, k, root=root, overwrite=args.overwrite, meta={"datasets": list(names)}
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
                "round %d: mIoU %.2f, labeled-pixel mIoU %.2f, %.1f%% unsure",
                k,
                res["mIoU"],
                res["mIoU_labeled"],
                100 * res["ignored_fraction"],
            )
    return res


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="rewrite a complete round (and its CAMs) instead of stopping",
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
