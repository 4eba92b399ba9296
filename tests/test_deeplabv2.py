"""DeepLab-v2 head, WSSSSegmentor inference, and training on a pseudo-label round."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from wsss_d2.data.build import load_train_dicts, register_with_round, train_round_dir
from wsss_d2.io.rounds import RoundWriter, label_stem
from wsss_d2.modeling.heads.deeplabv2 import DeepLabASPPHead, DeepLabLargeFOVHead

SHAPE = {"res5": ShapeSpec(channels=8, stride=8)}


def _head(cls=DeepLabLargeFOVHead, **kw):
    args = dict(in_feature="res5", num_classes=4, conv_dims=16, dropout=0.0)
    args.update({"fov_dilation": 2} if cls is DeepLabLargeFOVHead else {})
    args.update(kw)
    return cls(SHAPE, **args)


@pytest.mark.parametrize(
    "cls,dilation_arg,conv_dims",
    [
        (DeepLabLargeFOVHead, "fov_dilation", 16),
        (DeepLabLargeFOVHead, "fov_dilation", 0),
        (DeepLabASPPHead, "aspp_dilations", 0),
        (DeepLabASPPHead, "aspp_dilations", 16),
    ],
)
def test_head_shapes(cls, dilation_arg, conv_dims):
    dilation = {"fov_dilation": 2, "aspp_dilations": (1, 2)}[dilation_arg]
    head = _head(cls, conv_dims=conv_dims, **{dilation_arg: dilation}).eval()
    feats = {"res5": torch.randn(2, 8, 5, 7)}
    logits = head.layers(feats)
    assert logits.shape == (2, 4, 5, 7)
    out, losses = head(feats)
    assert out.shape == (2, 4, 40, 56) and losses == {}
    assert head.embed(feats["res5"]).shape[1] == head.embed_channels


def test_aspp_sums_branches():
    head = _head(DeepLabASPPHead, conv_dims=0, aspp_dilations=(1, 2, 3)).eval()
    x = torch.randn(1, 8, 6, 6)
    expect = sum(b(x) for b in head.classifier)
    assert torch.allclose(head.predict(x), expect)


def test_loss_matches_hand_ce_and_ignores_255():
    head = _head(loss_weight=2.0).train()
    logits = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0] = 255
    loss = head.losses(logits, target)["loss_sem_seg"]
    lp = logits.log_softmax(1)
    keep = target != 255
    t = target.clamp(max=3)
    manual = -lp.gather(1, t[:, None])[:, 0][keep].mean()
    assert torch.allclose(loss, 2.0 * manual, atol=1e-6)


def test_loss_all_ignored_is_zero_not_nan():
    head = _head().train()
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    loss = head.losses(logits, torch.full((1, 24, 24), 255))["loss_sem_seg"]
    assert float(loss.detach()) == 0.0
    loss.backward()


def test_loss_upsamples_logits_to_labels():
    head = _head().train()
    logits = torch.randn(1, 4, 3, 3)
    target = torch.randint(0, 4, (1, 24, 24))
    loss = head.losses(logits, target)["loss_sem_seg"]
    up = F.interpolate(logits, size=(24, 24), mode="bilinear", align_corners=False)
    assert torch.allclose(loss, F.cross_entropy(up, target))


def test_bad_feature_name_is_clear():
    with pytest.raises(KeyError, match="IN_FEATURES"):
        DeepLabLargeFOVHead(SHAPE, in_feature="res4", num_classes=3)


def _seg_cfg(*opts):
    return make_cfg(
        "configs/Base-Seg-Toy.yaml",
        "DATASETS.TRAIN",
        "('toyparts_mini_train',)",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "DATALOADER.NUM_WORKERS",
        "0",
        *opts,
    )


def _write_round(root, dicts, num_classes=6, k=1, seed=0) -> str:
    rng = np.random.default_rng(seed)
    w = RoundWriter(str(root), k=k, num_classes=num_classes)
    for d in dicts:
        lab = rng.integers(0, num_classes, (d["height"], d["width"])).astype(np.uint8)
        lab[:4] = 255
        w.write(d, lab)
    return w.finalize(dicts, meta={"source": "test"})


def test_round_attach_config_and_registry(tmp_path):
    dicts = DatasetCatalog.get("toyparts_mini_train")
    folder = _write_round(tmp_path / "rounds", dicts)
    # explicit folder
    cfg = _seg_cfg("WSSS.PSEUDO.TRAIN_ROUND", folder)
    got = load_train_dicts(cfg)
    assert all(d["pseudo_seg_file_name"].endswith(label_stem(d) + ".png") for d in got)
    # latest complete round under ROOT
    cfg = _seg_cfg("WSSS.PSEUDO.ROOT", str(tmp_path / "rounds"))
    assert train_round_dir(cfg) == folder
    # no round anywhere: dicts unchanged
    cfg = _seg_cfg("OUTPUT_DIR", str(tmp_path / "empty"))
    assert "pseudo_seg_file_name" not in load_train_dicts(cfg)[0]
    # a missing folder / a missing label are named
    with pytest.raises(FileNotFoundError, match="TRAIN_ROUND"):
        load_train_dicts(_seg_cfg("WSSS.PSEUDO.TRAIN_ROUND", str(tmp_path / "nope")))
    register_with_round("toyparts_mini_train_r1_test", "toyparts_mini_train", folder)
    reg = DatasetCatalog.get("toyparts_mini_train_r1_test")
    assert [d["pseudo_seg_file_name"] for d in reg] == [d["pseudo_seg_file_name"] for d in got]
    (tmp_path / "rounds" / "round_01" / (label_stem(dicts[0]) + ".png")).unlink()
    with pytest.raises(FileNotFoundError, match=label_stem(dicts[0])):
        load_train_dicts(_seg_cfg("WSSS.PSEUDO.TRAIN_ROUND", folder))


@pytest.mark.parametrize("meta_arch", ["SemanticSegmentor", "WSSSSegmentor"])
def test_training_step_on_round(tmp_path, meta_arch):
    from wsss_d2.engine import WSSSTrainer

    dicts = DatasetCatalog.get("toyparts_mini_train")
    folder = _write_round(tmp_path, dicts)
    cfg = _seg_cfg("WSSS.PSEUDO.TRAIN_ROUND", folder, "MODEL.META_ARCHITECTURE", meta_arch)
    model = build_model(cfg)
    batch = next(iter(WSSSTrainer.build_train_loader(cfg)))
    assert all("sem_seg" in x for x in batch)
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()


def test_no_targets_in_training_is_a_clear_error():
    cfg = _seg_cfg()
    model = build_model(cfg).train()
    x = {"image": torch.zeros(3, 32, 32, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="sem_seg"):
        model([x])


def test_multiscale_flip_inference():
    cfg = _seg_cfg(
        "MODEL.SEG_HEAD.TEST_SCALES", "(0.75, 1.0, 1.5)", "MODEL.SEG_HEAD.TEST_FLIP", "True"
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    img = torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8)
    out = model([{"image": img, "height": 60, "width": 72}])[0]["sem_seg"]
    assert out.shape == (6, 60, 72)
    assert torch.allclose(out.sum(0), torch.ones(60, 72), atol=1e-4)
    # with flips averaged in, the prediction of a mirrored image is the mirrored prediction
    out_f = model([{"image": img.flip(-1), "height": 60, "width": 72}])[0]["sem_seg"]
    assert torch.allclose(out_f, out.flip(-1), atol=1e-5)
    # single scale, no flip = the head's own prediction, softmaxed
    cfg1 = _seg_cfg("MODEL.SEG_HEAD.TEST_FLIP", "False")
    m1 = build_model(cfg1).eval()
    m1.load_state_dict(model.state_dict())
    x = m1.preprocess_image([{"image": img}]).tensor
    with torch.no_grad():
        ref = m1.segment(x).softmax(1)[0]
    assert torch.allclose(m1([{"image": img}])[0]["sem_seg"], ref, atol=1e-5)


def test_crf_inference_keeps_probabilities():
    pytest.importorskip("pydensecrf")
    cfg = _seg_cfg("MODEL.SEG_HEAD.TEST_CRF", "True", "MODEL.SEG_HEAD.TEST_FLIP", "False")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert model.test_crf is not None
    img = torch.randint(0, 255, (3, 24, 32), dtype=torch.uint8)
    out = model([{"image": img, "height": 48, "width": 64}])[0]["sem_seg"]
    assert out.shape == (6, 48, 64)
    assert torch.allclose(out.sum(0), torch.ones(48, 64), atol=1e-3)
