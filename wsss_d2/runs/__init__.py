"""The bodies of the command-line tools: what ``tools/*.py`` run inside Detectron2's ``launch``.

- :func:`train`: ``tools/train_net.py`` (train, ``--resume``, ``--eval-only``);
- :func:`make_pseudo_labels`: ``tools/make_pseudo_labels.py`` (a label round with a CAM model or
  a segmentor, scored against the ground truth where there is some);
- :func:`make_sam_labels`: ``tools/make_sam_labels.py`` (a SAM-box label round and its scores);
- :func:`make_gt_round`: ``tools/make_gt_round.py`` (the training masks as a label round: the
  fully supervised ceiling of a segmentor config);
- :func:`run_pipeline`: ``tools/run_pipeline.py`` and ``make demo`` (every stage of a pipeline
  YAML, each an ordinary run of the functions above, then the HTML report);
- :func:`predict`: ``tools/predict.py`` (label PNGs and overlays of images with a trained model);
- :func:`visualize`: ``tools/visualize.py`` (HTML panels of a dataset's images).

Each takes the parsed arguments of the tool (Detectron2's ``default_argument_parser``, plus
``--overwrite`` for the label tools: :func:`label_argument_parser`) and returns the results
dict, so that the tools stay argument parsing and ``launch``, and tests can call these directly.
"""

from .labeling import label_argument_parser, make_gt_round, make_pseudo_labels, make_sam_labels
from .pipelines import STAGE_RUNNERS, pipeline_argument_parser, run_pipeline, stage_executor
from .prediction import predict, tool_config, visualize
from .training import launch_from_args, train, train_argument_parser

__all__ = [
    "launch_from_args",
    "train",
    "make_pseudo_labels",
    "make_sam_labels",
    "make_gt_round",
    "run_pipeline",
    "predict",
    "visualize",
    "label_argument_parser",
    "train_argument_parser",
    "pipeline_argument_parser",
    "tool_config",
    "STAGE_RUNNERS",
    "stage_executor",
]
