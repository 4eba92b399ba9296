#!/usr/bin/env python
"""Write a pseudo-label round of the training set with a trained CAM model (or segmentor, IRNet).

    python tools/make_pseudo_labels.py --config-file configs/pseudo_toy.yaml \
        MODEL.WEIGHTS output/cam_toy/model_final.pth OUTPUT_DIR output/pseudo_toy
    python tools/make_pseudo_labels.py --config-file configs/pseudo_voc.yaml --num-gpus 8 \
        MODEL.WEIGHTS output/plda_r101/model_final.pth WSSS.PSEUDO.ROUND 1

With an IRNet config (``WSSS.PSEUDO.METHOD irn``, e.g. ``configs/irn_toy.yaml``) ``MODEL.WEIGHTS``
is the trained IRNet and ``WSSS.PSEUDO.CAM_DIR`` the CAM folder of an earlier CAM run, whose CAMs
the random walk propagates:

    python tools/make_pseudo_labels.py --config-file configs/irn_toy.yaml \
        MODEL.WEIGHTS output/irn_toy/model_final.pth \
        WSSS.PSEUDO.CAM_DIR output/pseudo_toy/pseudo_labels/cams/round_01

Multi-scale + flip CAMs go to ``WSSS.PSEUDO.CAM_DIR`` (one ``.npz`` per image), labels to
``WSSS.PSEUDO.ROOT/round_KK`` (default ``OUTPUT_DIR/pseudo_labels``). An interrupted run is
resumed by running the same command again (finished CAMs and labels are kept) — with the same
settings, weights and dataset only: otherwise the error names what differs, and ``--overwrite``
restarts the round from empty. A complete round is never overwritten unless ``--overwrite`` is
given; ``--resume`` reuses it when it was made the same way. ``MODEL.WEIGHTS`` must be given and
fit the model. The round is scored against the ground truth when the dataset has some
(``OUTPUT_DIR/pseudo_label_evaluation.json``).
"""

from detectron2.engine import default_argument_parser  # noqa: F401  (tests use it)

from wsss_d2 import runs


def main(args):
    return runs.make_pseudo_labels(args)


if __name__ == "__main__":
    args = runs.label_argument_parser().parse_args()
    runs.launch_from_args(main, args)
