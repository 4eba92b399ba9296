#!/usr/bin/env python
"""Write the ground-truth masks of the training set as a label round (fully supervised ceiling).

    python tools/make_gt_round.py --config-file configs/voc_mini/deeplabv2.yaml \
        OUTPUT_DIR output/voc_mini/gt_labels
    python tools/train_net.py --config-file configs/voc_mini/deeplabv2.yaml \
        WSSS.PSEUDO.TRAIN_ROUND output/voc_mini/gt_labels/pseudo_labels/round_01

The round covers ``WSSS.PSEUDO.DATASETS`` (default ``DATASETS.TRAIN``) and goes to
``WSSS.PSEUDO.ROOT/round_KK`` (default ``OUTPUT_DIR/pseudo_labels``, ``K = WSSS.PSEUDO.ROUND``),
with a fingerprint of the masks like every round: ``--overwrite`` writes a complete round again,
``--resume`` reuses one made from the same masks.
"""

from wsss_d2 import runs


def main(args):
    return runs.make_gt_round(args)


if __name__ == "__main__":
    args = runs.label_argument_parser().parse_args()
    runs.launch_from_args(main, args)
