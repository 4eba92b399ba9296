"""Trainer and hooks."""

from .defaults import default_wsss_setup
from .grl_hook import GRLScheduleHook  # noqa: F401
from .hooks import HOOK_REGISTRY, build_hooks_from_config
from .refresh_hook import PseudoLabelRefreshHook  # noqa: F401
from .trainer import WSSSTrainer, check_weights_exist

__all__ = [
    "HOOK_REGISTRY",
    "build_hooks_from_config",
    "WSSSTrainer",
    "check_weights_exist",
    "default_wsss_setup",
]
