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

__all__ = ["inference_autocast", "amp_active", "autocast_name", "Float32", "keep_float32"]


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


class Float32(torch.nn.Module):
    """Runs ``module`` in float32 inside an autocast region: autocast off, floating inputs cast
    to float32 (so its output is float32 too, and the next autocast op casts it down again)."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:  # the wrapped module's attributes (a backbone's size_divisibility)
            return getattr(super().__getattr__("module"), name)

    def forward(self, *args, **kwargs):
        def up(a):
            return a.float() if torch.is_tensor(a) and a.is_floating_point() else a

        args = [up(a) for a in args]
        kwargs = {k: up(v) for k, v in kwargs.items()}
        device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
        with torch.autocast(device, enabled=False):
            return self.module(*args, **kwargs)


def keep_float32(model: torch.nn.Module, names) -> torch.nn.Module:
    """Wrap the submodules of ``model`` named in ``names`` (``model.get_submodule`` paths) in
    :class:`Float32`, in place, and return ``model``: under a lower-precision autocast they keep
    float32. Meant for an inference copy (CAM inference keeps a backbone's first stages in
    float32 under CPU bfloat16, where rounding the image's fine detail costs the most). An
    unknown name raises an error naming it and the model's class."""
    for name in names:
        try:
            module = model.get_submodule(name)
        except AttributeError as e:
            raise KeyError(
                f"{type(model).__name__} has no submodule {name!r} to keep in float32"
            ) from e
        if isinstance(module, Float32):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, (torch.nn.Sequential, torch.nn.ModuleList)) and attr.isdigit():
            parent[int(attr)] = Float32(module)
        else:
            setattr(parent, attr, Float32(module))
    return model
