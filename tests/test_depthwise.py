"""The dilated depthwise convolution's custom backward matches F.conv2d's gradients."""

import pytest
import torch
import torch.nn.functional as F

from wsss_d2.modeling.backbone.efficientnet import SameConv2d
from wsss_d2.modeling.layers.depthwise import depthwise_conv2d


@pytest.mark.parametrize("k,d,bias", [(3, 2, False), (5, 4, True), (5, 1, False)])
def test_gradients_match_conv2d(k, d, bias):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    w = torch.randn(6, 1, k, k, requires_grad=True)
    b = torch.randn(6, requires_grad=True) if bias else None
    g = torch.randn(2, 6, 9, 11)
    pad = (k - 1) * d // 2
    ref = F.conv2d(x, w, b, 1, pad, d, 6)
    ref_grads = torch.autograd.grad(ref, [x, w] + ([b] if bias else []), g)
    out = depthwise_conv2d(x, w, b, pad, d)
    grads = torch.autograd.grad(out, [x, w] + ([b] if bias else []), g)
    assert torch.allclose(out, ref, atol=1e-5)
    for a, r in zip(grads, ref_grads):
        assert torch.allclose(a, r, atol=1e-4, rtol=1e-4)


def test_same_conv_uses_it_only_when_dilated_depthwise_and_training():
    torch.manual_seed(0)
    conv = SameConv2d(8, 8, 5, dilation=2, groups=8)
    x = torch.randn(1, 8, 10, 10, requires_grad=True)
    y = conv(x)
    assert type(y.grad_fn).__name__ == "DepthwiseConv2dFunctionBackward"
    with torch.no_grad():
        assert torch.allclose(conv(x), y, atol=1e-6)
    assert type(SameConv2d(8, 8, 5, groups=8)(x).grad_fn).__name__ != (
        "DepthwiseConv2dFunctionBackward"
    )
    with pytest.raises(ValueError, match="same"):
        depthwise_conv2d(x, conv.weight, None, 1, 2)


def test_gradients_under_cpu_autocast_have_the_inputs_dtypes():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 11, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise_conv2d(x, w, b, 2, 2)
        ref = F.conv2d(x, w, b, 1, 2, 2, 6)
    assert out.dtype == ref.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().sum(), [x, w, b])
    ref_grads = torch.autograd.grad(ref.float().sum(), [x, w, b])
    for a, r, t in zip(grads, ref_grads, (x, w, b)):
        assert a.dtype == t.dtype and torch.allclose(a, r, atol=0.1, rtol=0.05)
