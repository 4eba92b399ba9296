"""Mixed precision for inference loops: fp16 autocast on CUDA, nothing elsewhere.

Training uses Detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``). Inference loops that run a
network over a whole dataset — CAM inference (``WSSS.PSEUDO.AMP``), and any other stage that
wants it (the IRNet's forward in IRN rounds: ``with inference_autocast(device, amp): ...``) —
wrap their forward passes in :func:`inference_autocast` and cast the result back to float32
before anything is normalised, thresholded or saved.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["inference_autocast", "amp_active"]


def amp_active(device, enabled: bool) -> bool:
    """Whether :func:`inference_autocast` autocasts on ``device``: enabled and a CUDA device."""
    return bool(enabled) and torch.device(device).type == "cuda"


def inference_autocast(device, enabled: bool, dtype: torch.dtype = torch.float16):
    """``torch.autocast("cuda", dtype)`` when :func:`amp_active`, else a no-op context: CPU
    inference stays float32 (CPU autocast would change results and is rarely faster)."""
    if amp_active(device, enabled):
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()
