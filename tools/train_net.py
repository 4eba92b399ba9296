#!/usr/bin/env python
"""Train or evaluate any wsss_d2 model, exactly like a Detectron2 project.

python tools/train_net.py --config-file configs/cam_toy.yaml
python tools/train_net.py --config-file configs/plda_r101.yaml --num-gpus 8
python tools/train_net.py --config-file ... --eval-only MODEL.WEIGHTS out/model_final.pth

A new run into an OUTPUT_DIR that holds a finished one (model_final.pth) is refused unless
--resume (continue it) or --overwrite (train anew over it); one training process per OUTPUT_DIR.
"""

from wsss_d2 import runs


def main(args):
    return runs.train(args)


if __name__ == "__main__":
    args = runs.train_argument_parser().parse_args()
    runs.launch_from_args(main, args)
