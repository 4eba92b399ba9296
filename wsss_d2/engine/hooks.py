"""Hook registry: ``cfg.WSSS.HOOKS`` names the hooks a :class:`WSSSTrainer` adds."""

from detectron2.utils.registry import Registry

__all__ = ["HOOK_REGISTRY", "build_hooks_from_config"]

HOOK_REGISTRY = Registry("WSSS_HOOK")
HOOK_REGISTRY.__doc__ = """
Training hooks (``detectron2.engine.HookBase``), built as ``HOOK_REGISTRY.get(name)(cfg)``
(``@configurable`` with ``from_config(cls, cfg)``). The trainer is reachable as ``self.trainer``
once registered.
"""


def build_hooks_from_config(cfg) -> list:
    return [HOOK_REGISTRY.get(name)(cfg) for name in cfg.WSSS.HOOKS]
