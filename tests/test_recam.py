"""ReCAM: the cross-entropy on CAM-pooled features by hand, the re-activated maps, training from
a CAM checkpoint, the config."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import MINI_TOY_OPTS, REPO, load_script, tag_inputs
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from wsss_d2.engine.trainer import WSSSTrainer
from wsss_d2.modeling.backbone import TinyBackbone
from wsss_d2.modeling.meta_arch import CAMClassifier
from wsss_d2.modeling.meta_arch.recam import ReCAM, recam_cross_entropy
from wsss_d2.pseudo.cam_inference import CAMInferenceEngine
from wsss_d2.pseudo.make_round import cam_fingerprint


def _kw():
    return dict(
        backbone=TinyBackbone(widths=(8, 8, 16, 16), output_stride=8),
        in_feature="res5",
        num_classes=5,
        pixel_mean=[0.0] * 3,
        pixel_std=[255.0] * 3,
    )


def test_cross_entropy_by_hand():
    # one image, 2 channels, 1 x 2 pixels, 2 classes, tagged with class 0 only
    features = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2)
    logits = torch.tensor([[[[4.0, 2.0]], [[-1.0, 3.0]]]])  # (1, 2, 1, 2)
    targets = torch.tensor([[1.0, 0.0]])
    weight = torch.tensor([[1.0, 0.5], [0.0, 2.0]])  # (K, C)
    # class 0's normalised CAM: (1, 0.5); pooled f_0 = mean(1 * (1, 0), 0.5 * (0, 2)) = (0.5, 0.5)
    # scores = W f_0 = (0.75, 1.0); CE(class 0) = log(e^0.75 + e^1.0) - 0.75
    expected = math.log(math.exp(0.75) + math.exp(1.0)) - 0.75
    got = recam_cross_entropy(features, logits, None, targets, weight)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_means_over_tags_and_images_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(3, 4, 3, 3, generator=g)
    logits = torch.randn(3, 2, 3, 3, generator=g)
    weight = torch.randn(2, 4, generator=g)
    targets = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])  # the third has no tags
    per = [
        [recam_cross_entropy(feats[i : i + 1], logits[i : i + 1], None, onehot, weight).item()]
        for i in range(3)
        for onehot in [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])]
    ]
    expected = ((per[0][0] + per[1][0]) / 2 + per[3][0] + 0.0) / 3
    assert recam_cross_entropy(feats, logits, None, targets, weight).item() == pytest.approx(
        expected, rel=1e-5
    )
    # a padded column (mask 0) changes nothing, whatever its features and scores
    mask = torch.ones(1, 1, 3, 4)
    mask[..., 3] = 0
    f_pad = torch.cat([feats[:1], 50 * torch.rand(1, 4, 3, 1, generator=g)], -1)
    l_pad = torch.cat([logits[:1], 50 * torch.rand(1, 2, 3, 1, generator=g)], -1)
    t = targets[:1]
    assert recam_cross_entropy(f_pad, l_pad, mask, t, weight).item() == pytest.approx(
        recam_cross_entropy(feats[:1], logits[:1], None, t, weight).item(), rel=1e-5
    )


def test_reactivated_maps_use_the_product_weight():
    model = ReCAM(**_kw()).eval()
    x = torch.rand(2, 16, 6, 6)
    want = F.conv2d(x, model.recam_classifier.weight * model.classifier.weight)
    torch.testing.assert_close(model.cam_logits(x), want)
    model.test_recam = False
    torch.testing.assert_close(model.cam_logits(x), model.classifier(x))
    model.train()  # the soft-margin loss pools the CAM classifier's own scores
    torch.testing.assert_close(model.cam_logits(x), model.classifier(x))
    out = ReCAM(**_kw()).eval()(tag_inputs(n=1, size=48))[0]
    assert out["cam"].shape == (5, 48, 48) and out["cam"].max() <= 1 + 1e-6


def test_trains_both_losses_from_a_cam_checkpoint(tmp_path, cfg_factory):
    torch.manual_seed(0)
    cam = CAMClassifier(**_kw())
    DetectionCheckpointer(cam, save_dir=str(tmp_path)).save("cam")
    model = ReCAM(**_kw())
    DetectionCheckpointer(model).load(str(tmp_path / "cam.pth"))  # recam_classifier is new
    torch.testing.assert_close(model.classifier.weight, cam.classifier.weight)
    model.train()
    with EventStorage():
        losses = model(tag_inputs(n=3, size=48, tag_steps=(0, 1)))
    assert set(losses) == {"loss_cls", "loss_recam"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.recam_classifier.weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0  # through the soft margin and the CAMs


def test_voc_mini_config_is_the_official_recipe(cfg_factory):
    cfg = cfg_factory("configs/voc_mini/recam_crop320.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "ReCAM"
    assert cfg.SOLVER.BASE_LR == pytest.approx(5e-5) and cfg.SOLVER.HEAD_LR_MULT == 1.0
    assert tuple(cfg.SOLVER.PARAM_LR_MULTS) == (("recam_classifier", 10.0),)
    assert cfg.SOLVER.MAX_ITER == 330 // cfg.SOLVER.IMS_PER_BATCH * 4
    bad = cfg_factory("configs/voc_mini/recam_crop320.yaml", "MODEL.RECAM.TEST_CAMS", "both")
    with pytest.raises(ValueError, match="TEST_CAMS"):
        ReCAM.from_config(bad)


def test_head_only_config_trains_only_the_recam_classifier(cfg_factory):
    cfg = cfg_factory(
        "configs/voc_mini/recam_head_crop320.yaml",
        "MODEL.EFFICIENTNET.PRETRAINED", "False", "MODEL.WEIGHTS", "",
    )  # fmt: skip
    model = ReCAM(**ReCAM.from_config(cfg))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith("backbone.") for n in trainable)
    opt = WSSSTrainer.build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(model.recam_classifier.weight)] == pytest.approx(10 * cfg.SOLVER.BASE_LR)
    assert lrs[id(model.classifier.weight)] == 0.0


def test_train_net_from_a_cam_run_then_labels_fingerprint(tmp_path, cfg_factory):
    """tools/train_net.py: a CAM run, then ReCAM from its weights with the head-only recipe (the
    CAM network unchanged, W_re trained, CAMs evaluated); the CAM files' fingerprint tells the
    re-activated maps from the plain ones."""
    main = load_script("tools/train_net.py").main
    cfg_file = str(REPO / "configs" / "cam_toy.yaml")
    cam_dir, re_dir = str(tmp_path / "cam"), str(tmp_path / "recam")
    run = ["--config-file", cfg_file, *MINI_TOY_OPTS, "SOLVER.MAX_ITER", "4"]
    main(default_argument_parser().parse_args([*run, "OUTPUT_DIR", cam_dir]))
    head = [
        "MODEL.META_ARCHITECTURE", "ReCAM", "MODEL.WEIGHTS", f"{cam_dir}/model_final.pth",
        "SOLVER.BASE_LR", "0.01", "SOLVER.WARMUP_ITERS", "0", "SOLVER.HEAD_LR_MULT", "1.0",
        "SOLVER.PARAM_LR_MULTS", "(('recam_classifier', 10.0), ('classifier', 0.0), "
        "('backbone', 0.0))",
    ]  # fmt: skip
    res = main(default_argument_parser().parse_args([*run, *head, "OUTPUT_DIR", re_dir]))
    assert 0 <= res["cam"]["mIoU"] <= 100
    before = torch.load(f"{cam_dir}/model_final.pth", weights_only=False)["model"]
    after = torch.load(f"{re_dir}/model_final.pth", weights_only=False)["model"]
    torch.testing.assert_close(after["classifier.weight"], before["classifier.weight"])
    assert "recam_classifier.weight" in after and "recam_classifier.weight" not in before

    cfg = cfg_factory("configs/pseudo_toy.yaml", "MODEL.META_ARCHITECTURE", "ReCAM")
    model = build_model(cfg)
    fp = cam_fingerprint(cfg, model, CAMInferenceEngine(cfg))
    model.test_recam = False
    assert cam_fingerprint(cfg, model, CAMInferenceEngine(cfg)) != fp


def test_training_without_a_cam_model_is_refused(tmp_path):
    main = load_script("tools/train_net.py").main
    args = default_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "cam_toy.yaml"), *MINI_TOY_OPTS,
         "MODEL.META_ARCHITECTURE", "ReCAM", "OUTPUT_DIR", str(tmp_path / "r")]
    )  # fmt: skip
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        main(args)
    missing = str(tmp_path / "no_such_cam.pth")
    args.opts += ["MODEL.WEIGHTS", missing]
    with pytest.raises(FileNotFoundError, match="no_such_cam.pth"):
        main(args)
