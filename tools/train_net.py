#!/usr/bin/env python
"""Train or evaluate any wsss_d2 model, exactly like a Detectron2 project.

python tools/train_net.py --config-file configs/cam_toy.yaml
python tools/train_net.py --config-file configs/plda_r101.yaml --num-gpus 8
python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth
"""

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

import wsss_d2  # noqa: F401  (registers everything)
from wsss_d2.engine import WSSSTrainer, check_weights_exist, default_wsss_setup


def setup(args):
    return default_wsss_setup(args)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = WSSSTrainer.build_model(cfg)
        check_weights_exist(cfg.MODEL.WEIGHTS)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        res = WSSSTrainer.test(cfg, model)
        verify_results(cfg, res)
        return res
    trainer = WSSSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
