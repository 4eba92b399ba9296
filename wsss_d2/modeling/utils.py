"""Model utilities shared by the training, inference and labeling code."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d as D2Conv2d
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["unwrap_model", "fold_batchnorm", "fuse_conv_activation", "FusedConvAct"]


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.Module) -> bool:
    """Fold an eval-mode ``bn`` (``BatchNorm2d`` with running statistics or
    ``FrozenBatchNorm2d``) into ``conv``'s weight and bias in place; False if it cannot be."""
    if not isinstance(bn, (nn.BatchNorm2d, FrozenBatchNorm2d)):
        return False
    if isinstance(bn, nn.BatchNorm2d) and not bn.track_running_stats:
        return False  # batch statistics at test time: nothing to fold
    w = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    b = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = w / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + b, requires_grad=False)
    return True


@torch.no_grad()
def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An inference copy of ``model`` whose BatchNorms are folded into the preceding convolutions.

    Covers Detectron2's ``Conv2d`` with a ``norm`` (``BatchNorm2d`` or ``FrozenBatchNorm2d``), the
    building block of its ResNets and of the tiny backbone, and the (convolution, norm) attribute
    pairs a module lists in ``FOLDABLE_CONV_BN`` (the EfficientNet blocks, whose norms are
    separate modules); the folded norms become ``nn.Identity``. Other modules are copied
    unchanged. In eval mode the copy computes the same function (up to float rounding) with one
    memory pass less per convolution. ``model`` itself is not modified.
    """
    folded = copy.deepcopy(model).eval()
    for m in folded.modules():
        if isinstance(m, D2Conv2d) and getattr(m, "norm", None) is not None:
            if _fold_into(m, m.norm):
                m.norm = None
        for conv_name, bn_name in getattr(m, "FOLDABLE_CONV_BN", ()):
            conv, bn = getattr(m, conv_name, None), getattr(m, bn_name, None)
            if isinstance(conv, nn.Conv2d) and bn is not None and _fold_into(conv, bn):
                setattr(m, bn_name, nn.Identity())
    return folded


# activation modules a oneDNN convolution can apply as its post-op: (attr, scalars)
_POST_OPS = {nn.ReLU6: ("hardtanh", [0.0, 6.0]), nn.ReLU: ("relu", [])}


class FusedConvAct(nn.Module):
    """A convolution and the activation after it as one oneDNN primitive on CPU (the
    activation applied as the convolution's post-op, no second pass over the output), through
    ``torch.ops.mkldnn._convolution_pointwise``, the op PyTorch's inductor fuses into. Same
    results as the two modules. Under CPU autocast it runs in the autocast dtype (its weights
    cast once per dtype and kept: for inference copies, whose weights do not change). A
    convolution with a size-dependent "SAME" padding (``same_padding``, the EfficientNet's
    strided ones) gets it without a padded copy of its input (:meth:`_same_padded`).
    Elsewhere (CUDA, gradients needed, no oneDNN) it runs the two modules."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module | None):
        super().__init__()
        self.conv = conv
        self.act = act if act is not None else nn.Identity()
        self.attr, self.scalars = _POST_OPS[type(act)] if act is not None else ("none", [])
        self._cast: dict[torch.dtype, tuple] = {}

    def _params(self, dtype: torch.dtype) -> tuple:
        w, b = self.conv.weight, self.conv.bias
        if w.dtype == dtype:
            return w, b
        if dtype not in self._cast:
            self._cast[dtype] = (w.detach().to(dtype), None if b is None else b.detach().to(dtype))
        return self._cast[dtype]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        on_cpu = x.device.type == "cpu"
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
        if (
            not on_cpu
            or needs_grad
            or dtype not in (torch.float32, torch.bfloat16)
            or not torch.backends.mkldnn.is_available()
        ):
            x = conv.pad_input(x) if hasattr(conv, "pad_input") else x
            y = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                         conv.groups)  # fmt: skip
            return self.act(y)
        x = x.to(dtype)
        pads = conv.same_padding(*x.shape[-2:]) if hasattr(conv, "same_padding") else (0,) * 4
        if not any(pads):
            return self._onednn(x, dtype, 0, 0)
        return self._same_padded(x, dtype, *pads)

    def _onednn(self, x: torch.Tensor, dtype: torch.dtype, pt: int, pl: int) -> torch.Tensor:
        """One oneDNN call, with ``pt`` / ``pl`` rows / columns of zeros on both sides on top of
        the convolution's own padding."""
        conv = self.conv
        w, b = self._params(dtype)
        padding = [conv.padding[0] + pt, conv.padding[1] + pl]
        return torch.ops.mkldnn._convolution_pointwise(
            x, w, b, padding, list(conv.stride), list(conv.dilation), conv.groups, self.attr,
            self.scalars, "",
        )  # fmt: skip

    def _same_padded(self, x, dtype, pl: int, pr: int, pt: int, pb: int) -> torch.Tensor:
        """The convolution of ``x`` padded by ``(pl, pr, pt, pb)`` (a strided "SAME" padding:
        the odd pixel at the bottom / right) without writing the padded input, a copy as large
        as the input: the symmetric part is the oneDNN call's own padding, and when one more
        bottom row / right column is due, the output's last row / column (the only ones that
        read it) comes from a second call on the few input rows / columns it reads."""
        conv = self.conv
        (sh, sw), (kh, kw), (dh, dw) = conv.stride, conv.kernel_size, conv.dilation
        kh, kw = (kh - 1) * dh + 1, (kw - 1) * dw + 1  # the dilated extents
        ih, iw = x.shape[-2:]
        if min(ih + 2 * pt, ih + pb) < kh or min(iw + 2 * pl, iw + pr) < kw:
            # tiny input: the symmetric call would be empty or the last row start before row 0
            return self._onednn(F.pad(x, [pl, pr, pt, pb]), dtype, 0, 0)
        main = self._onednn(x, dtype, pt, pl)
        oh, ow = (ih + pt + pb - kh) // sh + 1, (iw + pl + pr - kw) // sw + 1
        mh, mw = main.shape[-2:]
        if (mh, mw) == (oh, ow):
            return main
        nhwc = x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        out = torch.empty(main.shape[:2] + (oh, ow), dtype=main.dtype, memory_format=fmt)
        out[..., :mh, :mw] = main
        if mh < oh:  # the last row reads input rows r0.. (r0 = ih + pb - kh) and the bottom pad
            row = F.pad(x[..., (oh - 1) * sh - pt :, :], [pl, pr, 0, pb])
            out[..., oh - 1 :, :] = self._onednn(row, dtype, 0, 0)
        if mw < ow:  # the last column (every row)
            col = F.pad(x[..., (ow - 1) * sw - pl :], [0, pr, pt, pb])
            out[..., :, ow - 1 :] = self._onednn(col, dtype, 0, 0)
        return out


def fuse_conv_activation(model: torch.nn.Module) -> torch.nn.Module:
    """Fuse, in place, every (convolution, activation) pair a module lists in ``CONV_ACT``
    (``None``: no activation; the convolution still runs as one oneDNN call) into a
    :class:`FusedConvAct`, the activation becoming ``nn.Identity``. Only where the norm
    between them (``FOLDABLE_CONV_BN``) was folded by :func:`fold_batchnorm`: call it on that
    inference copy. Returns ``model``.

    On one CPU thread this removes a memory pass per activation and takes 1x1 convolutions off
    PyTorch's im2col path (which it picks over oneDNN for single-threaded 1x1 convolutions):
    about 2-4x per fused layer in bfloat16 (``projects/PseudoLabels/README.md``, "Speed")."""
    for m in list(model.modules()):
        norms = dict(getattr(m, "FOLDABLE_CONV_BN", ()))
        for conv_name, act_name in getattr(m, "CONV_ACT", ()):
            conv = getattr(m, conv_name, None)
            act = getattr(m, act_name, None) if act_name else None
            if type(conv) is FusedConvAct or not isinstance(conv, nn.Conv2d):
                continue
            if conv_name in norms and not isinstance(getattr(m, norms[conv_name]), nn.Identity):
                continue  # a norm still sits between the convolution and its activation
            if act_name and type(act) not in _POST_OPS:
                continue
            setattr(m, conv_name, FusedConvAct(conv, act))
            if act_name:
                setattr(m, act_name, nn.Identity())
    return model
