#!/usr/bin/env python
"""Write a SAM-box pseudo-label round for ``DATASETS.TRAIN`` and score it.

    python tools/make_sam_labels.py --config-file configs/sam_boxes_voc.yaml \\
        WSSS.SAM.CHECKPOINT weights/sam_vit_h_4b8939.pth
    python tools/make_sam_labels.py --config-file configs/sam_boxes_voc.yaml --num-gpus 8
    python tools/make_sam_labels.py --config-file configs/sam_boxes_voc.yaml --eval-only

Images are sharded by rank; each rank writes its labels into the round's partial folder, and
the main process finalizes the round (manifest + rename) after all ranks meet. An interrupted
run resumes where it stopped (images with a label are skipped), with or without ``--resume``, if
its SAM settings, SAM checkpoint and dataset are the same (else the error names what differs);
a complete round is only written again with ``--overwrite`` (``--resume`` reuses it when it was
made the same way). ``--eval-only`` scores an existing
round. Scores (mIoU against the ground truth where the dataset has it, box statistics) go to the
log and to ``OUTPUT_DIR/sam_box_labeling.json``.
"""

from wsss_d2 import runs


def main(args):
    return runs.make_sam_labels(args)


if __name__ == "__main__":
    args = runs.label_argument_parser().parse_args()
    runs.launch_from_args(main, args)
