"""``WSSSTrainer``: Detectron2's ``DefaultTrainer`` with mapper, evaluators and hooks from config.

Two differences in how it is put together: several processes train on CPU (``--num-gpus 2
MODEL.DEVICE cpu``, gloo), where Detectron2's constructor fails (it always gives
DistributedDataParallel ``device_ids``, an error for a CPU module: detectron2 issue #5146); and
``SOLVER.AMP.ENABLED`` (Detectron2's ``AMPTrainer``: fp16 autocast + gradient scaling) is
refused with a clear error off CUDA instead of failing at the first step.
"""

from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.data import build_detection_test_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.solver import get_default_optimizer_params
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..data.build import build_train_loader
from ..data.mappers import build_mapper
from ..evaluation.registry import build_evaluators
from ..modeling.checkpoint import WSSSCheckpointer
from ..modeling.utils import unwrap_model
from .grad_clip import add_full_model_gradient_clipping
from .hooks import build_hooks_from_config

logger = logging.getLogger(__name__)

__all__ = [
    "WSSSTrainer",
    "check_weights_exist",
    "refuse_overwriting_a_run",
    "wrap_ddp",
    "build_step_trainer",
]


def check_weights_exist(path: str) -> None:
    """A clear error for a ``MODEL.WEIGHTS`` file that does not exist (URLs are left alone)."""
    if path and "://" not in path and not PathManager.exists(path):
        raise FileNotFoundError(f"MODEL.WEIGHTS file not found: '{path}'")


def refuse_overwriting_a_run(output_dir: str, resume: bool, overwrite: bool) -> None:
    """A new training run (no ``--resume``) into a folder that holds a finished one
    (``model_final.pth``) would overwrite its checkpoints: refused unless ``overwrite``."""
    final = os.path.join(output_dir, "model_final.pth")
    if not resume and not overwrite and PathManager.exists(final):
        raise FileExistsError(
            f"{output_dir} already holds a finished training run ({final}); pass --resume to "
            "continue it, --overwrite to train anew over it, or choose another OUTPUT_DIR"
        )


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """Detectron2's ``create_ddp_model`` (a no-op in one process), with the local rank as device
    id only for a CUDA module: a CPU module takes none (gloo)."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    kwargs = {} if on_cuda else {"device_ids": None}
    return create_ddp_model(model, broadcast_buffers=False, **kwargs)


def build_step_trainer(cfg, model, data_loader, optimizer) -> SimpleTrainer:
    """``AMPTrainer`` when ``SOLVER.AMP.ENABLED`` (CUDA only), else ``SimpleTrainer``."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    if torch.device(cfg.MODEL.DEVICE).type != "cuda" or not torch.cuda.is_available():
        raise ValueError(
            f"SOLVER.AMP.ENABLED needs CUDA (MODEL.DEVICE is '{cfg.MODEL.DEVICE}', CUDA "
            f"{'available' if torch.cuda.is_available() else 'not available'}); set it to False"
        )
    return AMPTrainer(model, data_loader, optimizer)


class WSSSTrainer(DefaultTrainer):
    """Only what differs from ``DefaultTrainer``: everything else is Detectron2's own loop."""

    def __init__(self, cfg):
        """As ``DefaultTrainer.__init__`` (model, optimizer, loader, step trainer, scheduler,
        checkpointer, hooks), with :func:`wrap_ddp` and :func:`build_step_trainer` (module
        docstring)."""
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = wrap_ddp(model)
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # Detectron2's checkpointer, reading files safely and writing them atomically
        self.checkpointer = WSSSCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, with NHWC (channels-last) parameters when ``MODEL.CHANNELS_LAST``:
        CPU convolutions then run in NHWC (the inputs stay NCHW; the first convolution's output
        follows its weights' layout). Measured on EfficientNet-Lite0 CAM training, one thread:
        324 vs 374 ms per 320x320 image."""
        model = super().build_model(cfg)
        if cfg.MODEL.CHANNELS_LAST:
            model = model.to(memory_format=torch.channels_last)
        return model

    @classmethod
    def build_train_loader(cls, cfg):
        # the dicts carry the training pseudo-label round (WSSS.PSEUDO.TRAIN_ROUND / latest);
        # DATALOADER.PAIR_SAMPLING groups queries with references (CIAN)
        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_mapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluators(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """SGD whose parameters outside ``model.backbone`` get ``SOLVER.HEAD_LR_MULT`` x lr, and
        those named by a ``SOLVER.PARAM_LR_MULTS`` prefix that prefix's multiplier;
        ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model"`` clips the norm of all gradients
        together (:func:`add_full_model_gradient_clipping`), Detectron2's types per parameter."""
        mult = cfg.SOLVER.HEAD_LR_MULT
        prefixes = [(str(p), float(m)) for p, m in cfg.SOLVER.PARAM_LR_MULTS]

        def lr_factor(name: str) -> float:
            for prefix, m in prefixes:
                if name.startswith(prefix):
                    return m
            return 1.0 if name.startswith("backbone.") else mult

        params = get_default_optimizer_params(
            model,
            base_lr=cfg.SOLVER.BASE_LR,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
            lr_factor_func=lr_factor,
        )
        if cfg.SOLVER.OPTIMIZER == "ADAMW":
            opt = torch.optim.AdamW(
                params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
            )
        else:
            opt = torch.optim.SGD(
                params,
                lr=cfg.SOLVER.BASE_LR,
                momentum=cfg.SOLVER.MOMENTUM,
                nesterov=cfg.SOLVER.NESTEROV,
                weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            )
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if clip.ENABLED and clip.CLIP_TYPE == "full_model":  # SIPE's: one norm over all params
            return add_full_model_gradient_clipping(opt, clip.CLIP_VALUE, clip.NORM_TYPE)
        return maybe_add_gradient_clipping(cfg, opt)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        # deeplab's builder knows WarmupPolyLR and defers to Detectron2's for the others
        return build_deeplab_lr_scheduler(cfg, optimizer)

    def build_hooks(self):
        ret = super().build_hooks()
        extra = build_hooks_from_config(self.cfg)
        # after the LR scheduler, before checkpointing/eval, so their state is in both
        idx = next((i + 1 for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)), 0)
        return ret[:idx] + extra + ret[idx:]

    def reset_train_loader(self, cfg) -> None:
        """Train on ``cfg``'s training data from the next iteration on (a new pseudo-label
        round): the running loop's loader is replaced by ``build_train_loader(cfg)``."""
        self._trainer.reset_data_loader(lambda: self.build_train_loader(cfg))

    def train(self):
        """Train; return the last evaluation results (DefaultTrainer returns them only when
        TEST.EXPECTED_RESULTS is set)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    def resume_or_load(self, resume: bool = True):
        """Detectron2's, with the run's own checkpoint loaded strictly on ``--resume`` (every key
        must fit: a checkpoint of another architecture is an error naming it, as is a missing,
        truncated or non-checkpoint file) and ``MODEL.WEIGHTS`` tolerantly otherwise (ImageNet
        weights have no heads)."""
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            if not PathManager.isfile(path):
                raise FileNotFoundError(
                    f"--resume: {os.path.join(self.cfg.OUTPUT_DIR, 'last_checkpoint')} names "
                    f"{path}, which does not exist"
                )
            self.checkpointer.strict = True
        else:
            needs = getattr(unwrap_model(self.model), "REQUIRES_WEIGHTS", "")
            if needs and not self.cfg.MODEL.WEIGHTS:
                raise ValueError(
                    f"{self.cfg.MODEL.META_ARCHITECTURE} starts from {needs}: set MODEL.WEIGHTS"
                )
            check_weights_exist(self.cfg.MODEL.WEIGHTS)
            self.checkpointer.strict = False
        super().resume_or_load(resume=resume)
