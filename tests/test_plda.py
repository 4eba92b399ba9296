"""PLDA: gradient reversal + schedule hook, MaskAssign, PAMR, multi-head domain classifier,
training steps for every switch combination, empty-domain and NaN handling."""

import itertools

import numpy as np
import pytest
import torch
from conftest import load_script, tag_inputs
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from wsss_d2.engine import HOOK_REGISTRY, GRLScheduleHook
from wsss_d2.modeling.heads import MultiHeadDomainClassifier, balanced_domain_loss
from wsss_d2.modeling.heads.cps import balanced_cps_loss, cps_pixel_weights, cps_pseudo_labels
from wsss_d2.modeling.heads.domain_classifier import domain_pixel_weights
from wsss_d2.modeling.layers import GradientReversal, grad_reverse, grl_schedule
from wsss_d2.modeling.layers.domain_assign import (
    erase_mask,
    mask_assign,
    own_class_target,
    simple_assign,
    strongest_class_only,
)
from wsss_d2.modeling.meta_arch import PLDA
from wsss_d2.ops.pamr import PAMR

SMALL = (
    "MODEL.TINY.WIDTHS",
    "(8, 8, 16, 16)",
    "MODEL.PLDA.DOMAIN_HIDDEN_DIMS",
    "(16, 8)",
    "MODEL.PLDA.DOMAIN_DROPOUT",
    "0.0",
    "MODEL.PLDA.PAMR_ITERS",
    "3",
)


def _inputs(**kw):
    """Two tags per image (classes i and i + 2), so assignments involve several classes."""
    return tag_inputs(tag_steps=(0, 2), **kw)


def _model(cfg_factory, *opts):
    torch.manual_seed(0)
    model = build_model(cfg_factory("configs/plda_toy.yaml", *SMALL, *opts))
    model.train()
    return model


# ---------------------------------------------------------------------- GRL and its schedule
def test_grl_identity_forward_and_reversed_scaled_backward():
    x = torch.randn(3, 4, requires_grad=True)
    layer = GradientReversal(0.5)
    y = layer(x)
    assert torch.equal(y, x)
    g = torch.randn(3, 4)
    y.backward(g)
    assert torch.allclose(x.grad, -0.5 * g)
    layer.coeff = 2.0  # settable; the functional form agrees
    x.grad = None
    grad_reverse(x, 2.0).backward(g)
    assert layer.coeff == 2.0 and torch.allclose(x.grad, -2.0 * g)


def test_schedule_values():
    assert grl_schedule(0.0) == 0.0
    assert grl_schedule(0.5) == pytest.approx(0.9866142981514305)  # 2/(1+e^-5)-1
    assert grl_schedule(1.0) == pytest.approx(0.9999092042625951)  # 2/(1+e^-10)-1
    assert grl_schedule(0.5, gamma=1.0) == pytest.approx(0.2449186624037092)


def test_schedule_hook_sets_and_logs_coefficient(cfg_factory):
    model = _model(cfg_factory)
    hook = HOOK_REGISTRY.get("GRLScheduleHook")(cfg_factory("configs/plda_toy.yaml"))
    assert isinstance(hook, GRLScheduleHook)

    class _Trainer:
        pass

    trainer = _Trainer()
    trainer.model, trainer.max_iter = model, 100
    hook.trainer = trainer
    with EventStorage(0) as storage:
        trainer.storage = storage
        for it, expected in ((0, 0.0), (50, 0.9866142981514305)):
            trainer.iter = it
            storage.iter = it
            hook.before_step()
            assert model.grl.coeff == pytest.approx(expected, abs=1e-6)
            assert storage.latest()["grl_coeff"][0] == pytest.approx(expected, abs=1e-6)


# ---------------------------------------------------------------------- domain assignment
def test_mask_assign_on_hand_made_cams():
    cam = torch.zeros(1, 2, 4, 4)
    cam[0, 0, 0, 0:2] = torch.tensor([1.0, 0.7])  # class 0 peak: 2 source pixels
    cam[0, 0, 1, 0] = 0.5  # below theta: neither domain from this CAM
    masked = torch.zeros(1, 2, 4, 4)
    masked[0, 0, 2, 0:3] = torch.tensor([1.0, 0.65, 0.3])  # emerges once the peak is erased
    masked[0, 0, 0, 0] = 0.9  # an erased (source) pixel is never target
    masked[0, 1, 3, 3] = 1.0  # class 1 only in the masked CAM
    source, target = mask_assign(cam, masked, theta=0.6)
    exp_s = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    exp_s[0, 0, 0, 0:2] = True
    exp_t = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    exp_t[0, 0, 2, 0:2] = True
    exp_t[0, 1, 3, 3] = True
    assert torch.equal(source, exp_s) and torch.equal(target, exp_t)
    # a lower target threshold admits the masked CAM's 0.3 pixel, the source stays the same
    s_low, t_low = mask_assign(cam, masked, theta=0.6, target_theta=0.2)
    assert torch.equal(s_low, exp_s) and t_low[0, 0, 2, 2] and t_low.sum() == exp_t.sum() + 1
    # erasing covers each source cell's whole output-stride block, of any class
    er = erase_mask(source, (8, 8))
    assert er.shape == (1, 1, 8, 8) and er.sum() == 8 and er[0, 0, :2, :4].all()
    s2, t2 = simple_assign(cam, high=0.6, low=0.4)
    assert torch.equal(s2, exp_s) and t2.sum() == 1 and t2[0, 0, 1, 0]


def test_strongest_class_only_and_own_class_target():
    cam = torch.zeros(1, 2, 1, 3)
    cam[0, 0, 0] = torch.tensor([0.9, 0.3, 0.0])  # pixel 0: class 0's; pixel 1: class 1's
    cam[0, 1, 0] = torch.tensor([0.7, 0.8, 0.0])  # pixel 2: nobody's
    strong = strongest_class_only(cam)
    torch.testing.assert_close(strong[0, :, 0], torch.tensor([[0.9, 0.0, 0.0], [0.0, 0.8, 0.0]]))
    masked = torch.zeros(1, 2, 1, 3)
    masked[0, 1, 0] = torch.tensor([1.0, 0.0, 0.9])  # class 1 fires on class 0's pixel 0
    _, target = mask_assign(cam * 0, masked, theta=0.6)  # (no source: nothing erased)
    assert target[0, 1, 0].tolist() == [True, False, True]
    own = own_class_target(cam, target)
    # pixel 0 is class 0's in the unmasked CAM, pixel 2 nobody's: class 1 keeps neither
    assert own[0, 1, 0].tolist() == [False, False, False] and not own[0, 0].any()


def test_masked_forward_sees_source_pixels_erased_to_the_mean(cfg_factory):
    model = _model(cfg_factory, "MODEL.PLDA.ADV_ON", "False")
    seen = []
    orig = model.extract_features

    def spy(x):
        seen.append(x.detach().clone())
        return orig(x)

    model.extract_features = spy
    with EventStorage():
        model(_inputs())
    assert len(seen) == 2  # the image, then the masked image
    x, xm = seen
    erased = (xm == 0).all(1) & (x != 0).any(1)
    assert erased.any() and not erased.all()
    kept = ~(xm == 0).all(1)
    assert torch.equal(xm.permute(0, 2, 3, 1)[kept], x.permute(0, 2, 3, 1)[kept])


# ---------------------------------------------------------------------- PAMR
def test_pamr_moves_labels_to_the_region_edge():
    torch.manual_seed(0)
    img = torch.zeros(1, 3, 24, 32)
    img[..., 16:] = 1.0  # two regions, edge between columns 15 and 16
    img += 0.02 * torch.randn_like(img)
    fg = torch.zeros(1, 1, 24, 32)
    fg[..., :20] = 1.0  # a coarse mask that spills 4 columns over the edge
    masks = torch.cat([1 - fg, fg], 1)
    out = PAMR(num_iter=10, dilations=(1, 2, 4, 8))(img, masks)
    assert out.shape == masks.shape
    assert torch.allclose(out.sum(1), torch.ones(1, 24, 32), atol=1e-5)
    label = out.argmax(1)[0]
    assert (label[:, :16] == 1).all() and (label[:, 16:] == 0).all()
    with pytest.raises(ValueError, match="PAMR expects"):
        PAMR()(img[0], masks)


# ---------------------------------------------------------------------- domain classifier
def test_domain_heads_receive_only_their_class_pixels():
    torch.manual_seed(0)
    d = MultiHeadDomainClassifier(6, num_classes=3, hidden_dims=(5, 4), dropout=0.0)
    feats = torch.randn(2, 6, 3, 3, requires_grad=True)
    pix = torch.tensor([0, 4, 4, 10])  # pixel 4 is in classes 0 and 2
    cls = torch.tensor([0, 0, 2, 2])
    logits = d(feats, pix, cls)
    assert logits.shape == (4, 2)
    flat = feats.detach().permute(0, 2, 3, 1).reshape(-1, 6)
    for j in range(4):  # each entry is exactly its own class's head on its own pixel
        emb = d.base(flat[pix[j]][None])[0]
        ref = d.head_weight[cls[j]] @ emb + d.head_bias[cls[j]]
        assert torch.allclose(logits[j], ref, atol=1e-5)
    logits.sum().backward()
    assert d.head_weight.grad[1].abs().sum() == 0 and d.head_bias.grad[1].abs().sum() == 0
    assert d.head_weight.grad[0].abs().sum() > 0 and d.head_weight.grad[2].abs().sum() > 0
    touched = feats.grad.permute(0, 2, 3, 1).reshape(-1, 6).abs().sum(1) > 0
    assert touched.nonzero().flatten().tolist() == [0, 4, 10]


def test_domain_head_gradients_are_reproducible_with_two_threads():
    # many entries share a class head: an accumulating index would sum their gradients in a
    # thread-dependent order (measured: runs of the same training differed)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        d = MultiHeadDomainClassifier(16, num_classes=3, hidden_dims=(32, 32), dropout=0.0)
        feats = torch.randn(4, 16, 24, 24)
        pix = torch.arange(4 * 24 * 24)
        cls = torch.randint(0, 3, pix.shape, generator=torch.Generator().manual_seed(1))
        grads = []
        for _ in range(3):
            d.zero_grad()
            (d(feats, pix, cls) * torch.linspace(-1, 1, 2)).sum().backward()
            grads.append(d.head_weight.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert grads[0].abs().sum() > 0
    assert all(torch.equal(grads[0], g) for g in grads[1:])


def test_empty_domains_give_exact_zero_losses():
    logits = torch.randn(3, 2, requires_grad=True)
    only_source = balanced_domain_loss(
        logits, torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 10
    )
    assert only_source.item() == 0.0
    assert balanced_domain_loss(logits, torch.zeros(3, dtype=torch.long),
                                torch.zeros(3, dtype=torch.long), 10, weighting="balanced") == 0  # fmt: skip
    only_source.backward()
    assert torch.isfinite(logits.grad).all()
    empty = balanced_domain_loss(
        torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 10
    )
    assert empty.item() == 0.0
    cps = balanced_cps_loss(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 255))
    assert cps.item() == 0.0


def test_domain_weights_hand_computed():
    """1 source + 200 target pixels of one class in image 0 (T = 201), and image 1's class with
    source pixels only (no target: weight 0 in both schemes)."""
    dom = torch.tensor([0] + [1] * 200 + [0, 0])
    groups = torch.tensor([7] * 201 + [3, 3])
    off = domain_pixel_weights(dom, groups, "official")  # (T - n_d) / (1 + T)
    assert off[0].item() == pytest.approx(200 / 202)
    assert torch.allclose(off[1:201], torch.full((200,), 1 / 202))
    assert off[201:].tolist() == [0.0, 0.0]
    bal = domain_pixel_weights(dom, groups, "balanced")  # T / (2 n_d)
    assert bal[0].item() == pytest.approx(100.5)
    assert torch.allclose(bal[1:201], torch.full((200,), 201 / 400))
    assert bal[201:].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="DOMAIN_WEIGHTING"):
        domain_pixel_weights(dom, groups, "mean")
    # the loss: weighted CE summed and divided by all pixels, x (1 + exp(-H)) with the entropy
    lg = torch.randn(203, 2)
    ce = torch.nn.functional.cross_entropy(lg, dom, reduction="none")
    pr = lg.softmax(1)
    ew = 1 + torch.exp((pr * pr.log()).sum(1))
    for weighting, w in (("official", off), ("balanced", bal)):
        got = balanced_domain_loss(lg, dom, groups, 1000, weighting=weighting)
        assert got.item() == pytest.approx((w * ce).sum().item() / 1000, rel=1e-5)
        got = balanced_domain_loss(lg, dom, groups, 1000, True, weighting)
        assert got.item() == pytest.approx((w * ew * ce).sum().item() / 1000, rel=1e-5)
    # official: each domain weighs n_s n_t / (1 + T) = 200 / 202 in total; ours: T / 2 each
    assert off[0].item() == pytest.approx(off[1:201].sum().item())
    assert bal[0].item() == pytest.approx(bal[1:201].sum().item())


def test_cps_weights_hand_computed_and_single_class_images_give_zero():
    # image 0: class 1 on 3 pixels, class 2 on 1 (T = 4); image 1: class 1 only, on 2 pixels
    lab = torch.full((2, 2, 4), 255)
    lab[0, 0] = torch.tensor([1, 1, 1, 2])
    lab[1, 1, :2] = 1
    off = cps_pixel_weights(lab, 3, weighting="official")  # (T - n_c) / (1 + T)
    assert off[0, 0].tolist() == pytest.approx([1 / 5, 1 / 5, 1 / 5, 3 / 5])
    assert off[1].abs().sum() == 0 and off[0, 1].abs().sum() == 0
    bal = cps_pixel_weights(lab, 3, weighting="balanced")  # T / (classes present x n_c)
    assert bal[0, 0].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0])
    assert bal[1, 1, :2].tolist() == [1.0, 1.0] and bal[1, 1, 2:].abs().sum() == 0
    with pytest.raises(ValueError, match="CPS_WEIGHTING"):
        cps_pixel_weights(lab, 3, weighting="mean")
    cl = torch.randn(2, 3, 2, 4, requires_grad=True)
    ce = torch.nn.functional.cross_entropy(cl, lab.clamp(max=2), reduction="none")
    for weighting, w in (("official", off), ("balanced", bal)):
        got = balanced_cps_loss(cl, lab, weighting=weighting)
        assert got.item() == pytest.approx((w * ce).sum().item() / 16, rel=1e-5)
    # only the single-class image: the official loss is exactly 0 (and attached), ours is not
    single = torch.full((2, 2, 4), 255)
    single[1] = lab[1]
    zero = balanced_cps_loss(cl, single, weighting="official")
    assert zero.item() == 0.0 and zero.requires_grad
    assert balanced_cps_loss(cl, single, weighting="balanced").item() > 0


def test_cps_pseudo_labels_dynamic_threshold():
    probs = torch.zeros(1, 3, 1, 4)  # bg, class 1, class 2
    probs[0, 1, 0] = torch.tensor([0.9, 0.5, 0.6, 0.0])
    probs[0, 2, 0] = torch.tensor([0.0, 0.0, 0.3, 0.25])
    region = torch.ones(1, 2, 1, 4, dtype=torch.bool)
    lab = cps_pseudo_labels(probs, region, alpha=0.6, min_confidence=0.2)
    # class 1: > 0.54 -> pixels 0, 2; class 2: > max(0.18, 0.2) -> pixels 2, 3; 2 is ambiguous
    assert lab.tolist() == [[[1, 255, 255, 2]]]
    region[0, 1, 0, 3] = False
    assert cps_pseudo_labels(probs, region, 0.6, 0.2).tolist() == [[[1, 255, 255, 255]]]
    with pytest.raises(ValueError, match="CPS_AMBIGUITY"):
        cps_pseudo_labels(probs, region, 0.6, 0.2, ambiguity="some")


def test_cps_pseudo_labels_official_ambiguity_includes_background_and_other_regions():
    probs = torch.zeros(1, 3, 1, 5)  # bg, class 1, class 2
    probs[0, 0, 0] = torch.tensor([0.1, 0.8, 0.1, 0.1, 1.0])  # bg confident > 0.7: pixels 1, 4
    probs[0, 1, 0] = torch.tensor([0.9, 0.9, 0.9, 0.0, 0.0])  # class 1 confident: 0, 1, 2
    probs[0, 2, 0] = torch.tensor([0.0, 0.0, 0.6, 0.5, 0.0])  # class 2 (> 0.36): 2, 3
    region = torch.zeros(1, 2, 1, 5, dtype=torch.bool)
    region[0, 0, 0, :3] = True  # class 1's source: pixels 0-2; class 2's: none
    # official: 1 is ambiguous with the background, 2 with class 2 (outside its region)
    off = cps_pseudo_labels(probs, region, 0.6, 0.2, ambiguity="all", bg_alpha=0.7)
    assert off.tolist() == [[[1, 255, 255, 255, 255]]]
    # ours: only the classes confident inside their regions are compared
    ours = cps_pseudo_labels(probs, region, 0.6, 0.2, ambiguity="region")
    assert ours.tolist() == [[[1, 1, 1, 255, 255]]]


def test_cps_scores_softmax_of_one_and_raw_logits_or_normalized_cam(cfg_factory):
    logits = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1)
    cam = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    off = _model(cfg_factory).pseudo_scores(logits, None)  # softmax([1, 2, -1])
    e = torch.tensor([1.0, 2.0, -1.0]).exp()
    torch.testing.assert_close(off.flatten(), e / e.sum())
    ours = _model(cfg_factory, "MODEL.PLDA.CPS_DISTRIBUTION", "normalized").pseudo_scores(
        None, cam
    )  # [1 - 1, 1, 0] / 1
    torch.testing.assert_close(ours.flatten(), torch.tensor([0.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="CPS_DISTRIBUTION"):
        _model(cfg_factory, "MODEL.PLDA.CPS_DISTRIBUTION", "cam")


@pytest.mark.parametrize("where", ["masked", "image"])
def test_target_pseudo_labels_use_the_masked_images_affinity(cfg_factory, where):
    model = _model(cfg_factory, "MODEL.PLDA.ADV_ON", "False", "MODEL.PLDA.CPS_TARGET_AFFINITY",
                   where)  # fmt: skip
    images, orig_aff, orig_feat = [], model.pamr.affinity, model.extract_features
    model.pamr.affinity = lambda img: images.append(img.clone()) or orig_aff(img)
    model.extract_features = lambda x: images.append(x.clone()) or orig_feat(x)
    with EventStorage():
        model(_inputs())
    x, xm = images[0], images[1]  # the two forward passes come first
    size = images[2].shape[-2:]
    small = [torch.nn.functional.interpolate(t, size=size, mode="bilinear") for t in (x, xm)]
    assert not torch.equal(small[0], small[1])
    if where == "masked":  # one affinity for the source (image), one for the target (masked)
        assert len(images) == 4
        assert torch.equal(images[2], small[0]) and torch.equal(images[3], small[1])
    else:  # one shared affinity
        assert len(images) == 3 and torch.equal(images[2], small[0])


# ---------------------------------------------------------------------- training steps
@pytest.mark.parametrize(
    "adv,cps,assign,head",
    [
        (adv, cps, assign, head)
        for adv, cps, assign, head in itertools.product(
            [False, True], [False, True], ["mask", "simple"], ["cam", "pixel"]
        )
        if cps or head == "cam"  # the CPS head only matters with CPS
    ],
)
def test_training_step_every_switch(cfg_factory, adv, cps, assign, head):
    model = _model(
        cfg_factory,
        "MODEL.PLDA.ADV_ON",
        str(adv),
        "MODEL.PLDA.CPS_ON",
        str(cps),
        "MODEL.PLDA.ASSIGN",
        assign,
        "MODEL.PLDA.CPS_UPSAMPLE",
        "2",
        "MODEL.PLDA.CPS_HEAD",
        head,
    )
    with EventStorage():
        losses = model(_inputs())
    expected = (
        {"loss_cls"}
        | ({"loss_adv"} if adv else set())
        | ({"loss_cps_src", "loss_cps_tgt"} if cps else set())
    )
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name, mod in (("backbone", model.backbone), ("classifier", model.classifier)):
        grads = [p.grad for p in mod.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name
    if adv:
        assert losses["loss_adv"] > 0
        g = model.domain_classifier.head_weight.grad
        assert torch.isfinite(g).all() and g.abs().sum() > 0
    if cps and head == "pixel":
        g = model.cps_head.weight.grad
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_learned_cps_background_is_trained_by_cps_only(cfg_factory):
    with pytest.raises(ValueError, match="CPS_BACKGROUND"):
        _model(cfg_factory, "MODEL.PLDA.CPS_BACKGROUND", "none")
    # without CPS there is no background logit to train (DDP would stop on an unused parameter)
    assert _model(cfg_factory, "MODEL.PLDA.CPS_ON", "False", "MODEL.PLDA.CPS_BACKGROUND",
                  "learned").cps_background is None  # fmt: skip
    zero = _model(cfg_factory, "MODEL.PLDA.CPS_HEAD", "cam")
    learned = _model(
        cfg_factory, "MODEL.PLDA.CPS_HEAD", "cam", "MODEL.PLDA.CPS_BACKGROUND", "learned"
    )
    features = torch.randn(2, learned.backbone.output_shape()["res5"].channels, 3, 4)
    logits = learned.cam_logits(features)
    out = learned.cps_logits(features, logits)
    assert torch.equal(out[:, 1:], logits)
    assert torch.allclose(out[:, :1], learned.cps_background(features))
    assert zero.cps_logits(features, logits)[:, 0].abs().sum() == 0
    with EventStorage():
        losses = learned(_inputs())
    assert losses["loss_cps_src"] > 0
    losses["loss_cps_src"].backward()
    g = learned.cps_background.weight.grad
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # at a labelled pixel the CE pushes the background logit down: a step along -grad lowers it
    # (the features are ReLU outputs, so the weight gradient is a non-negative feature sum)
    with torch.no_grad():
        feats = learned.extract_features(learned.preprocess_image(_inputs()).tensor)
        assert feats.min() >= 0
        before = learned.cps_background(feats).mean()
        learned.cps_background.weight -= 10.0 * g
        assert learned.cps_background(feats).mean() < before


def test_pixel_cps_head_trains_the_features_not_the_cam_classifier(cfg_factory):
    with pytest.raises(ValueError, match="CPS_HEAD"):
        _model(cfg_factory, "MODEL.PLDA.CPS_HEAD", "seg")
    assert _model(cfg_factory, "MODEL.PLDA.CPS_ON", "False", "MODEL.PLDA.CPS_HEAD",
                  "pixel").cps_head is None  # fmt: skip
    model = _model(cfg_factory, "MODEL.PLDA.CPS_HEAD", "pixel", "MODEL.PLDA.ADV_ON", "False")
    with EventStorage():
        losses = model(_inputs())
    assert losses["loss_cps_src"] > 0 and losses["loss_cps_tgt"] >= 0
    (losses["loss_cps_src"] + losses["loss_cps_tgt"]).backward()
    assert model.classifier.weight.grad is None  # the CAM's logits are not supervised by CPS
    for name, mod in (("backbone", model.backbone), ("cps_head", model.cps_head)):
        grads = [p.grad for p in mod.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0, name
    # inference is still the CAM classifier's
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            model(_inputs())[0]["cam"], super(PLDA, model).forward(_inputs())[0]["cam"]
        )


def test_adversarial_gradient_is_reversed_at_the_features(cfg_factory):
    grads = {}
    for coeff in (1.0, -1.0):
        model = _model(cfg_factory, "MODEL.PLDA.CPS_ON", "False")
        model.grl.coeff = coeff
        with EventStorage():
            model(_inputs())["loss_adv"].backward()
        grads[coeff] = model.backbone.stages[-1].conv2.weight.grad.clone()
        dgrad = model.domain_classifier.head_weight.grad.clone()
        grads[f"d{coeff}"] = dgrad
    assert grads[1.0].abs().sum() > 0
    assert torch.allclose(grads[1.0], -grads[-1.0], atol=1e-6)
    assert torch.allclose(grads["d1.0"], grads["d-1.0"], atol=1e-6)  # D itself is not reversed


def test_no_pixel_above_theta_gives_zero_losses(cfg_factory):
    model = _model(cfg_factory, "MODEL.PLDA.THETA", "1.5")
    with EventStorage():
        losses = model(_inputs())
    for k in ("loss_adv", "loss_cps_src", "loss_cps_tgt"):
        assert losses[k].item() == 0.0, k
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_inference_matches_cam_classifier(cfg_factory):
    model = _model(cfg_factory)
    assert isinstance(model, PLDA)
    model.eval()
    inputs = _inputs()
    with torch.no_grad():
        out = model(inputs)
        ref = super(PLDA, model).forward(inputs)  # CAMClassifier.forward
    assert set(out[0]) == {"cam", "sem_seg"}
    assert torch.equal(out[0]["cam"], ref[0]["cam"])


def test_nan_loss_stops_training_naming_iteration_and_term(cfg_factory):
    model = _model(cfg_factory, "MODEL.PLDA.CPS_ON", "False")
    model.adv_loss_weight = float("nan")  # forces loss_adv (only) to NaN
    data = iter(lambda: _inputs(), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SimpleTrainer(model, data, opt)
    with pytest.raises(FloatingPointError, match=r"(?s)iteration=0.*loss_adv.: nan"):
        trainer.train(0, 2)


def test_masked_pass_leaves_batchnorm_running_stats_alone(cfg_factory):
    from wsss_d2.modeling.layers.domain_assign import frozen_norm_stats

    model = _model(cfg_factory)
    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone(), bn.num_batches_tracked.clone()
    with torch.no_grad(), frozen_norm_stats(model.backbone):
        model.extract_features(torch.randn(2, 3, 32, 32))
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(
        bn.num_batches_tracked, before[1]
    )
    assert bn.momentum == 0.1  # restored
    with torch.no_grad():
        model.extract_features(torch.randn(2, 3, 32, 32))
    assert not torch.equal(bn.running_mean, before[0])


def test_assign_stats_counts_domains_against_the_ground_truth(cfg_factory, tmp_path):
    """projects/PLDA/assign_stats.py: precision, background share and object coverage of
    hand-made source / target masks on a hand-made ground truth (at the image's size, sampled on
    the CAM's grid); a mask of another size than its image is an error naming it."""
    from wsss_d2.io.files import save_label_png

    stats_mod = load_script("projects/PLDA/assign_stats.py")

    model = _model(cfg_factory).eval()
    x = _inputs(n=1)[0]  # 64 px, tags 0 and 2; CAM grid 8x8 (output stride 8)
    gt = np.zeros((8, 8), np.uint8)
    gt[:4, :4] = 1  # class 0's object: 16 cells
    gt[4:, 4:] = 3  # class 2's object: 16 cells
    gt[0, 7] = 255
    # at the image's size (64 px), as a dataset's masks; the tool samples it on the 8x8 grid
    save_label_png(str(tmp_path / "gt.png"), np.kron(gt, np.ones((8, 8), np.uint8)))
    source = torch.zeros(1, 5, 8, 8, dtype=torch.bool)
    target = torch.zeros_like(source)
    source[0, 0, :2, :4] = True  # 8 cells on its object
    source[0, 0, 6:, :2] = True  # 4 on background
    target[0, 2, 4:, 4:6] = True  # 8 cells on its object
    target[0, 0, 4:, 4:6] = True  # 8 on another class's object
    model.assign_domains = lambda *a: (None, None, source, target)
    d = dict(x, sem_seg_file_name=str(tmp_path / "gt.png"), file_name="image.png")
    with torch.no_grad():
        s = stats_mod.domain_stats(model, lambda r: r, [d])
    assert s["source px / image"] == 12 and s["target px / image"] == 16
    assert s["source precision"] == pytest.approx(8 / 12)
    assert s["source on background"] == pytest.approx(4 / 12)
    assert s["target precision"] == pytest.approx(0.5) and s["target on background"] == 0
    assert s["object px / image"] == 32
    assert s["objects covered by the source"] == pytest.approx(8 / 32)
    assert s["objects covered by source + target"] == pytest.approx(16 / 32)
    save_label_png(str(tmp_path / "small.png"), gt)
    with torch.no_grad(), pytest.raises(ValueError, match="small.png"):
        stats_mod.domain_stats(
            model, lambda r: r, [dict(d, sem_seg_file_name=str(tmp_path / "small.png"))]
        )
