"""Stride-1 depthwise convolution whose input gradient is computed as a convolution.

On CPU, PyTorch's backward of a *dilated* depthwise convolution is several times slower than its
forward (it leaves the oneDNN path): measured on one thread, a 5x5 depthwise conv with dilation 2
on (4, 1152, 20, 20) takes 336 ms for its backward, against 120 ms for the weight gradient alone
and 12 ms for a forward convolution of the same size. With stride 1 and "same" padding the input
gradient *is* such a convolution: the output gradient convolved with the spatially flipped
kernel, with the same padding and dilation. :func:`depthwise_conv2d` computes it that way and
leaves the weight gradient to PyTorch; values match ``F.conv2d``'s gradients to float rounding
(``tests/test_depthwise.py``).

Dilated depthwise convolutions are what the output-stride-16/8 EfficientNet's last stages are
made of, so this speeds up fine-tuning it on CPU; inference and undilated layers are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["depthwise_conv2d", "DepthwiseConv2dFunction"]


class DepthwiseConv2dFunction(torch.autograd.Function):
    """``F.conv2d(x, weight, bias, 1, padding, dilation, groups=C)`` with "same" padding."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int, dilation: int):
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, bias is not None)
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        padding, dilation, has_bias = ctx.conf
        channels = x.shape[1]
        # under autocast the forward ran in a lower precision than the saved tensors (bfloat16 /
        # float16 output, float32 weights): the backward computes in the gradient's dtype and
        # returns each gradient in its input's dtype
        dt = grad_out.dtype
        w = weight.to(dt)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # stride 1, padding (k - 1) * d / 2: the transposed convolution is a convolution
            gx = F.conv2d(grad_out, w.flip(-1, -2), None, 1, padding, dilation, channels)
            gx = gx.to(x.dtype)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(
                grad_out, x.to(dt), w, None, [1, 1], [padding, padding], [dilation, dilation],
                False, [0, 0], channels, [False, True, False],
            )[1].to(weight.dtype)  # fmt: skip
        if has_bias and ctx.needs_input_grad[2]:
            gb = grad_out.sum((0, 2, 3)).to(ctx.bias_dtype)
        return gx, gw, gb, None, None


def depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: int, dilation: int
) -> torch.Tensor:
    """Depthwise (``groups == channels``) stride-1 conv with "same" padding
    ``(k - 1) * dilation / 2``: (N, C, H, W) x (C, 1, k, k) -> (N, C, H, W)."""
    k = weight.shape[-1]
    if weight.shape[1] != 1 or weight.shape[0] != x.shape[1] or weight.shape[-2] != k:
        raise ValueError(
            f"depthwise_conv2d: weight {tuple(weight.shape)} is not a square depthwise kernel "
            f"for input {tuple(x.shape)}"
        )
    if 2 * padding != (k - 1) * dilation:
        raise ValueError(f"depthwise_conv2d needs 'same' padding {(k - 1) * dilation // 2}")
    return DepthwiseConv2dFunction.apply(x, weight, bias, padding, dilation)
