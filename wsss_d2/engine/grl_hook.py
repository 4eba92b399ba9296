"""``GRLScheduleHook``: the DANN schedule of the gradient reversal coefficient."""

from __future__ import annotations

import logging

from detectron2.config import configurable
from detectron2.engine import HookBase

from ..modeling.layers.grl import GradientReversal, grl_schedule
from .hooks import HOOK_REGISTRY

logger = logging.getLogger(__name__)

__all__ = ["GRLScheduleHook"]


@HOOK_REGISTRY.register()
class GRLScheduleHook(HookBase):
    """Before every step, sets each :class:`GradientReversal` of the model to
    ``2 / (1 + exp(-gamma * p)) - 1`` with p = iter / max_iter, and logs it as ``grl_coeff``.

    The coefficient starts at 0, so the adversarial gradient reaches the features only once the
    domain classifier has learned something (Ganin & Lempitsky 2015, PLDA's official schedule).
    """

    @configurable
    def __init__(self, *, gamma: float = 10.0):
        self.gamma = gamma
        self._layers: list[GradientReversal] | None = None

    @classmethod
    def from_config(cls, cfg):
        return {"gamma": cfg.MODEL.PLDA.GRL_GAMMA}

    def _find_layers(self) -> list[GradientReversal]:
        model = self.trainer.model
        model = getattr(model, "module", model)  # DistributedDataParallel
        layers = [m for m in model.modules() if isinstance(m, GradientReversal)]
        if not layers:
            logger.warning("GRLScheduleHook: the model has no GradientReversal layer")
        return layers

    def before_step(self):
        if self._layers is None:
            self._layers = self._find_layers()
        max_iter = max(int(self.trainer.max_iter), 1)
        coeff = grl_schedule(self.trainer.iter / max_iter, self.gamma)
        for layer in self._layers:
            layer.coeff = coeff
        self.trainer.storage.put_scalars(grl_coeff=coeff, smoothing_hint=False)
