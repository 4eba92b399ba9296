"""CAM classifier: training step, inference contract, multi-scale merging, checkpoints."""

import numpy as np
import pytest
import torch
from conftest import tag_inputs
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from wsss_d2.modeling.backbone import TinyBackbone
from wsss_d2.modeling.meta_arch import CAMClassifier, normalize_cams


def _tiny_model(**kw):
    backbone = TinyBackbone(widths=(8, 8, 16, 16), output_stride=8)
    return CAMClassifier(
        backbone=backbone,
        in_feature="res5",
        num_classes=5,
        pixel_mean=[0.0] * 3,
        pixel_std=[255.0] * 3,
        **kw
    )


def test_training_step_from_config(cfg_factory):
    cfg = cfg_factory("configs/cam_toy.yaml")
    model = build_model(cfg)
    model.train()
    with EventStorage():
        losses = model(tag_inputs())
    assert set(losses) == {"loss_cls"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.classifier.weight.grad.abs().sum() > 0


def test_loss_matches_hand_computation():
    model = _tiny_model()
    scores = torch.tensor([[2.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    # multi-label soft margin = mean_k -[y log s(x) + (1-y) log(1-s(x))]
    expected = -(np.log(1 / (1 + np.exp(-2.0))) + np.log(1 - 1 / (1 + np.exp(1.0)))) / 2
    assert model.classification_loss(scores, targets).item() == pytest.approx(expected, rel=1e-5)


def test_masked_pooling_ignores_padding():
    logits = torch.zeros(1, 1, 4, 4)
    logits[..., :2, :2] = 1.0
    logits[..., 2:, :] = 100.0  # padding region
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert CAMClassifier.pool(logits, mask).item() == pytest.approx(0.5)


def test_inference_contract_and_absent_tags_zero():
    model = _tiny_model(bg_threshold=0.2).eval()
    inp = tag_inputs(n=2, size=60)
    inp[1]["height"], inp[1]["width"] = 90, 75  # output at the original size
    with torch.no_grad():
        out = model(inp)
    assert out[0]["cam"].shape == (5, 60, 60) and out[0]["sem_seg"].shape == (6, 60, 60)
    assert out[1]["cam"].shape == (5, 90, 75)
    cam = out[0]["cam"]
    assert cam.min() >= 0 and cam.max() <= 1 + 1e-6
    absent = inp[0]["tags"] == 0
    assert torch.all(cam[absent] == 0)
    assert torch.all(out[0]["sem_seg"][0] == 0.2)


def test_normalize_cams_per_class_max():
    cams = torch.rand(2, 3, 5, 5) * 7
    n = normalize_cams(cams)
    assert torch.allclose(n.flatten(-2).amax(-1), torch.ones(2, 3), atol=1e-4)


class _ColumnModel(CAMClassifier):
    """A hand-made 'network': the CAM of class 0 is the x coordinate (flip-sensitive)."""

    def extract_features(self, images):
        n, _, h, w = images.shape
        x = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return x

    def cam_logits(self, features):
        return torch.cat([features, 1 - features], 1)


def test_multiscale_flip_merging_on_hand_made_model():
    model = _ColumnModel(
        backbone=TinyBackbone(widths=(4, 4, 4, 4)),
        in_feature="res5",
        num_classes=2,
        pixel_mean=[0.0] * 3,
        pixel_std=[1.0] * 3,
    )
    img = torch.zeros(1, 3, 8, 16)
    single = model.multiscale_cams(img, scales=(1.0,), flip=False)
    flipped = model.multiscale_cams(img, scales=(1.0,), flip=True)
    # x + flip(x) = x + (1 - x) = 1 everywhere: the flip must be undone before summing
    assert torch.allclose(flipped[0, 0], torch.ones(8, 16), atol=1e-5)
    two_scales = model.multiscale_cams(img, scales=(1.0, 0.5), flip=False)
    assert two_scales.shape == (1, 2, 8, 16)
    # at scale 0.5 the ramp is resampled back to full size: the sum stays ~2x the single ramp
    assert torch.allclose(two_scales, 2 * single, atol=0.1)


def test_checkpoint_roundtrip_and_missing_weights(tmp_path, cfg_factory):
    from wsss_d2.engine import check_weights_exist

    cfg = cfg_factory("configs/cam_toy.yaml")
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("tiny")
    other = build_model(cfg)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)
    DetectionCheckpointer(other).load(str(tmp_path / "tiny.pth"))
    assert torch.equal(other.classifier.weight, model.classifier.weight)
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS file not found: .*nope.pth"):
        check_weights_exist(str(tmp_path / "nope.pth"))
