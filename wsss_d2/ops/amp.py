"""Mixed precision for inference loops: fp16 autocast on CUDA; on CPU bfloat16 only when asked.

Training uses Detectron2's ``AMPTrainer`` (``SOLVER.AMP.ENABLED``). Inference loops that run a
network over a whole dataset — CAM inference (``WSSS.PSEUDO.AMP``), and any other stage that
wants it (the IRNet's forward in IRN rounds: ``with inference_autocast(device, amp): ...``) —
wrap their forward passes in :func:`inference_autocast` and cast the result back to float32
before anything is normalised, thresholded or saved. CPU bfloat16 (``cpu_bf16``) is a separate
switch: it is fast only where the CPU computes bfloat16 natively (AVX-512 BF16, AMX); elsewhere
oneDNN emulates it and it is slower than float32 (``benchmarks/bench_cam_inference.py --bf16``).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["inference_autocast", "amp_active", "autocast_name"]


def amp_active(device, enabled: bool) -> bool:
    """Whether :func:`inference_autocast` autocasts on ``device``: enabled and a CUDA device."""
    return bool(enabled) and torch.device(device).type == "cuda"


def autocast_name(device, enabled: bool, cpu_bf16: bool = False) -> str:
    """What :func:`inference_autocast` computes in on ``device``: "fp16", "bf16" or ""
    (float32), for fingerprints of the files it writes."""
    if amp_active(device, enabled):
        return "fp16"
    return "bf16" if cpu_bf16 and torch.device(device).type == "cpu" else ""


def inference_autocast(
    device, enabled: bool, dtype: torch.dtype = torch.float16, cpu_bf16: bool = False
):
    """``torch.autocast("cuda", dtype)`` when :func:`amp_active`; on CPU
    ``torch.autocast("cpu", torch.bfloat16)`` when ``cpu_bf16``; else a no-op context (CPU
    inference stays float32 unless asked: bfloat16 changes results)."""
    name = autocast_name(device, enabled, cpu_bf16)
    if name == "fp16":
        return torch.autocast("cuda", dtype=dtype)
    if name == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
