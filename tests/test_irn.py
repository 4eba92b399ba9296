"""IRN: pixel-pair paths, IRNet losses and training step, the random walk, IRN label rounds."""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import REPO, assert_same_labels, die_after_writes, make_cfg
from test_pseudo_labels import _toy_set

from wsss_d2.data.mappers import TagDatasetMapper
from wsss_d2.io import rounds
from wsss_d2.io.cam_files import cam_file_path, save_cam_file
from wsss_d2.io.files import read_label_png
from wsss_d2.modeling.backbone.tiny import TinyBackbone
from wsss_d2.modeling.checkpoint import load_model_weights
from wsss_d2.modeling.layers.pixel_pairs import PairPaths, pair_offsets, path_points
from wsss_d2.modeling.meta_arch.irn import (
    IRNet,
    downsample_labels,
    irn_losses,
    pair_label_masks,
)
from wsss_d2.pseudo.irn_round import write_irn_round
from wsss_d2.pseudo.random_walk import WalkParams, cams_at_stride, random_walk, walk_to_label


# ---------------------------------------------------------------------- pairs and paths
def test_pair_offsets_and_paths():
    assert len(pair_offsets(5)) == 34 and len(pair_offsets(10)) == 152
    for dy, dx in pair_offsets(10):
        assert dy * dy + dx * dx < 100 and (dy > 0 or dx > 0)
        p = path_points(dy, dx)
        assert (0, 0) in p and (dy, dx) in p  # both ends are on the path
    assert path_points(0, 3) == ((0, 0), (0, 1), (0, 2), (0, 3))
    assert set(path_points(2, 3)) == {
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
        (1, 2),
        (1, 3),
        (2, 2),
        (2, 3),
    }


def test_path_max_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    edge = torch.rand(2, 6, 7, generator=g)
    paths = PairPaths(3)
    got = paths.path_max(edge)
    inside = paths.far_end_inside(6, 7)
    for d, (dy, dx) in enumerate(paths.offsets.tolist()):
        for y in range(6):
            for x in range(7):
                if not inside[d, y, x]:
                    assert (got[:, d, y, x] == 1).all()  # far end outside: padded with 1
                    continue
                ref = torch.stack([edge[:, y + oy, x + ox] for oy, ox in path_points(dy, dx)])
                assert torch.equal(got[:, d, y, x], ref.amax(0))
    # with gradients: the same values, and each path's gradient lands on its arg-max point
    e = edge.clone().requires_grad_(True)
    out = paths.path_max(e)
    assert torch.equal(out, got)
    d = paths.offsets.tolist().index([2, 1])
    out[1, d, 0, 3].backward()
    pts = [(oy, 3 + ox) for oy, ox in path_points(2, 1)]
    best = max(pts, key=lambda p: float(edge[1, p[0], p[1]]))
    assert e.grad[1, best[0], best[1]] == 1 and e.grad.sum() == 1


# ---------------------------------------------------------------------- losses by hand
def test_losses_on_a_two_region_row_by_hand():
    """1 x 4 map, labels [bg, bg, A, A], radius 2: pairs (0,1) bg-pos, (1,2) neg, (2,3) fg-pos."""
    labels = torch.tensor([[[0, 0, 1, 1]]])
    b = torch.tensor([0.1, 0.2, 0.9, 0.3])
    logits = torch.log(b / (1 - b)).view(1, 1, 1, 4)
    dp = torch.zeros(1, 2, 1, 4)
    dp[0, 1, 0] = torch.tensor([0.5, -0.5, 0.25, 0.0])  # dx; dy stays 0
    paths = PairPaths(2)
    masks = pair_label_masks(labels, paths, full_pairs=True)
    assert [int(m.sum()) for m in masks] == [1, 1, 1]
    t = irn_losses(logits, dp, masks, paths)
    e = 1e-5
    assert float(t["aff_bg_pos"]) == pytest.approx(-math.log(1 - 0.2 + e) / (1 + e), rel=1e-5)
    assert float(t["aff_fg_pos"]) == pytest.approx(-math.log(1 - 0.9 + e) / (1 + e), rel=1e-5)
    assert float(t["aff_neg"]) == pytest.approx(-math.log(1 + e - (1 - 0.9)) / (1 + e), rel=1e-5)
    # fg pair (2, 3), d = (0, 1): |D2 - D3 - d| = |0.25 - 0 - 1|; bg pair (0, 1): |0.5 + 0.5|
    assert float(t["dp_fg"]) == pytest.approx(0.75 / (2 + e), rel=1e-5)
    assert float(t["dp_bg"]) == pytest.approx(1.0 / (2 + e), rel=1e-5)
    # the official source window drops every pair of this 1-row map (rows < h - r + 1 = 0)
    assert all(int(m.sum()) == 0 for m in pair_label_masks(labels, paths, full_pairs=False))


def test_unsure_pixels_and_window():
    labels = torch.zeros(1, 5, 6, dtype=torch.long)
    labels[0, :, 3:] = 2
    labels[0, 2, 2] = 255
    paths = PairPaths(2)
    bg, fg, neg = pair_label_masks(labels, paths, full_pairs=False)
    # window: rows 0..3, columns 1..4; no pair touches the unsure pixel (2, 2)
    src_used = (bg + fg + neg).sum(1)[0] > 0
    assert not src_used[4].any() and not src_used[:, 0].any() and not src_used[:, 5].any()
    assert not src_used[2, 2]
    for m in (bg, fg, neg):
        far = paths.at_far_end(m.new_zeros(1, 1, 5, 6).fill_(1))  # shape check only
        assert far.shape[2] == m.shape[1]
    d = paths.offsets.tolist().index([0, 1])
    assert neg[0, d, 0, 2] == 1 and fg[0, d, 0, 3] == 1 and bg[0, d, 0, 1] == 1
    lab = torch.arange(64).view(1, 8, 8)
    assert downsample_labels(lab, (2, 2), 4).tolist() == [[[18, 22], [50, 54]]]


# ---------------------------------------------------------------------- the model
def _tiny_irn(seed: int = 0, **kw) -> IRNet:
    torch.manual_seed(seed)
    backbone = TinyBackbone(widths=(8, 8, 8, 8), dilations=(1, 2, 4), output_stride=8, norm="BN")
    args = dict(
        backbone=backbone,
        in_features=("res3", "res4", "res5"),
        pixel_mean=[128.0] * 3,
        pixel_std=[64.0] * 3,
        edge_dim=8,
        dp_dims=(8, 8, 8),
        dp_merge_dim=8,
        dp_hidden_dim=8,
        train_radius=5,
        test_pad_size=0,
    )
    args.update(kw)
    return IRNet(**args)


def test_training_step_trains_only_the_branches():
    from detectron2.utils.events import EventStorage

    model = _tiny_irn().train()
    assert not model.backbone.training  # detached backbone stays in eval mode
    g = torch.Generator().manual_seed(0)
    inputs = []
    for _ in range(2):
        lab = torch.full((40, 48), 255, dtype=torch.long)
        lab[:16], lab[24:, :20], lab[24:, 28:] = 0, 1, 3
        img = torch.randint(0, 255, (3, 40, 48), generator=g).to(torch.uint8)
        inputs.append({"image": img, "sem_seg": lab})
    with EventStorage():
        losses = model(inputs)
    assert set(losses) == {
        "loss_aff_bg_pos",
        "loss_aff_fg_pos",
        "loss_aff_neg",
        "loss_dp_fg",
        "loss_dp_bg",
    }
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.edge_head.predictor.weight.grad.abs().sum() > 0
    assert model.dp_head.predictor.weight.grad.abs().sum() > 0
    with pytest.raises(KeyError, match="sem_seg"):
        model([{"image": inputs[0]["image"], "file_name": "x.png"}])
    # the switch: the backbone trains too
    model2 = _tiny_irn(detach_backbone=False).train()
    with EventStorage():
        sum(model2(inputs).values()).backward()
    assert model2.backbone.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model2.backbone.parameters())
    # inference: stride-4 maps of each image's own size
    model.eval()
    out = model([{"image": inputs[0]["image"][:, :37, :45]}])[0]
    assert out["edge"].shape == (10, 12) and out["dp"].shape == (2, 10, 12)
    assert 0 <= float(out["edge"].min()) and float(out["edge"].max()) <= 1


def test_boundary_context_convs_switch():
    """``MODEL.IRN.EDGE_CONTEXT_CONVS`` (ours): 3x3 layers before the boundary predictor, trained
    with it; 0 (official) adds no parameters, so earlier checkpoints load as before."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    official = _tiny_irn()
    assert not any(k.startswith("edge_head.context") for k in official.state_dict())
    model = _tiny_irn(edge_context_convs=2).train()
    convs = [m for m in model.edge_head.context if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3), (3, 3)]
    lab = torch.full((40, 48), 255, dtype=torch.long)
    lab[:16], lab[24:, :20] = 0, 1
    img = torch.randint(0, 255, (3, 40, 48), generator=torch.Generator().manual_seed(0))
    with EventStorage():
        sum(model([{"image": img.to(torch.uint8), "sem_seg": lab}]).values()).backward()
    assert all(c.weight.grad.abs().sum() > 0 for c in convs)
    out = model.eval()([{"image": img[:, :37, :45].to(torch.uint8)}])[0]
    assert out["edge"].shape == official.eval()([{"image": img[:, :37, :45]}])[0]["edge"].shape
    cfg = make_cfg("configs/irn_toy.yaml", "MODEL.IRN.EDGE_CONTEXT_CONVS", "1")
    assert len(build_model(cfg).edge_head.context) == 3  # conv, GroupNorm, ReLU


def test_boundary_test_scales():
    """``MODEL.IRN.TEST_SCALES`` (ours): the boundary logits of each scale, resampled to the
    stride grid of the image, averaged; the displacement stays scale 1's."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(1)
    img = torch.randint(0, 255, (3, 37, 45), generator=g).to(torch.uint8)
    one = _tiny_irn().eval()([{"image": img}])[0]
    same = _tiny_irn(test_scales=(1.0, 1.0)).eval()([{"image": img}])[0]
    torch.testing.assert_close(same["edge"], one["edge"])
    torch.testing.assert_close(same["dp"], one["dp"])
    # by hand: the image at x2 through the scale-1 network, its logits resampled to the grid
    net = _tiny_irn(test_scales=(1.0, 2.0)).eval()
    two = net([{"image": img}])[0]
    big = F.interpolate(img[None].float(), size=(74, 90), mode="bilinear", align_corners=False)
    e2 = torch.logit(_tiny_irn().eval()([{"image": big[0]}])[0]["edge"], eps=0)
    e2 = F.interpolate(e2[None, None], size=(10, 12), mode="bilinear", align_corners=False)[0, 0]
    e1 = torch.logit(one["edge"], eps=0)
    torch.testing.assert_close(two["edge"], torch.sigmoid((e1 + e2) / 2), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(two["edge"], one["edge"], atol=1e-4)
    torch.testing.assert_close(two["dp"], one["dp"])
    # without scale 1 the displacement still comes from a scale-1 pass
    only2 = _tiny_irn(test_scales=(2.0,)).eval()([{"image": img}])[0]
    torch.testing.assert_close(only2["edge"], torch.sigmoid(e2), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(only2["dp"], one["dp"])
    with pytest.raises(ValueError, match="TEST_SCALES"):
        _tiny_irn(test_scales=(1.0, 0.0))


@pytest.mark.parametrize(
    "config,opts",
    [
        ("configs/irn_toy.yaml", []),
        ("configs/irn_r50_voc.yaml", ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"]),
        ("configs/irn_voc_mini.yaml", ["MODEL.EFFICIENTNET.PRETRAINED", "False"]),
    ],
)
def test_configs_build_and_predict(config, opts):
    from detectron2.modeling import build_model

    cfg = make_cfg(config, *opts, "MODEL.IRN.TEST_PAD_SIZE", "0")
    model = build_model(cfg).eval()
    assert type(model).__name__ == "IRNet" and model.stride == 4
    out = model([{"image": torch.zeros(3, 64, 72, dtype=torch.uint8)}])[0]
    assert out["edge"].shape == (16, 18)


# ---------------------------------------------------------------------- the random walk
def _wall(h=16, w=16, col=8) -> torch.Tensor:
    edge = torch.zeros(h, w)
    edge[:, col] = 1.0
    return edge


def test_walk_stops_at_a_boundary_and_fills_the_region():
    """A wall splits the map; one CAM peak on the left: the walk fills the left, not the right."""
    edge = _wall()
    cam = torch.zeros(1, 16, 16, dtype=torch.float64)
    cam[0, 6:9, 1:4] = 1.0  # a small peak in the left half
    rw = random_walk(cam[None], edge[None])[0]
    label = walk_to_label(rw, [7], 4, (64, 64), (64, 64), 0.25)
    left, right = label[:, : 4 * 8 - 4], label[:, 4 * 8 + 4 :]
    assert (left == 7).all() and (right == 0).all()
    raw = walk_to_label(cam, [7], 4, (64, 64), (64, 64), 0.25)  # no walk: only the peak
    assert (raw[:, :28] == 7).mean() < 0.25
    # without the wall the same seed floods the whole map
    flood = walk_to_label(random_walk(cam[None], torch.zeros(1, 16, 16))[0], [7], 4, (64, 64),
                          (64, 64), 0.25)  # fmt: skip
    assert (flood == 7).all()


def test_walk_fills_a_closed_ring_and_two_classes_keep_their_sides():
    edge = torch.zeros(20, 20)
    edge[4, 4:15] = edge[14, 4:15] = edge[4:15, 4] = edge[4:15, 14] = 1.0  # a square ring
    cams = torch.zeros(2, 20, 20, dtype=torch.float64)
    cams[0, 8:10, 8:10] = 1.0  # class 2 inside the ring
    cams[1, 0:3, 15:20] = 1.0  # class 5 outside (scores are normalised by the image's maximum:
    # spread over the larger outside region it still clears the background's 0.25)
    label = walk_to_label(random_walk(cams[None], edge[None])[0], [2, 5], 4, (80, 80), (80, 80))
    inside = label[4 * 5 + 4 : 4 * 14 - 4, 4 * 5 + 4 : 4 * 14 - 4]
    assert (inside == 2).all()
    outside = np.ones((80, 80), bool)
    outside[4 * 4 - 4 : 4 * 15 + 4, 4 * 4 - 4 : 4 * 15 + 4] = False
    assert (label[outside] == 5).all()


def test_class_normalisation_keeps_a_weaker_class_above_the_background():
    """``MODEL.IRN.WALK_NORM``: with the official global maximum, a tag whose walked scores peak
    at 0.3 falls under a background of 0.5; divided by its own maximum it keeps its region. An
    image with one tag gets the same label either way."""
    rw = torch.zeros(2, 4, 8, dtype=torch.float64)
    rw[0, :, :4] = 1.0  # class 3, strong, left half
    rw[1, :, 4:] = 0.3  # class 9, weak, right half
    rw[1, 0, 7] = 0.1  # below its own maximum's 0.5: background under both
    glob = walk_to_label(rw, [3, 9], 1, (4, 8), (4, 8), 0.5)
    per_class = walk_to_label(rw, [3, 9], 1, (4, 8), (4, 8), 0.5, "class")
    assert (glob[:, :4] == 3).all() and (glob[:, 4:] == 0).all()
    want = np.zeros((4, 8), np.uint8)
    want[:, :4], want[:, 4:] = 3, 9
    want[0, 7] = 0
    assert np.array_equal(per_class, want)
    one = rw[1:] * 0.5
    assert np.array_equal(
        walk_to_label(one, [9], 1, (4, 8), (4, 8), 0.5),
        walk_to_label(one, [9], 1, (4, 8), (4, 8), 0.5, "class"),
    )
    with pytest.raises(ValueError, match="WALK_NORM"):
        WalkParams(normalize="max")


def test_unsure_band_of_two_background_scores():
    """``MODEL.IRN.UNSURE_BG_THRES``: a pixel whose best score lies between the two background
    scores is labelled differently at them and becomes unsure; the others keep their label."""
    from wsss_d2.pseudo.random_walk import band_label

    rw = torch.tensor([[[1.0, 0.7, 0.5, 0.2]]], dtype=torch.float64)  # one tag, 1 x 4
    params = WalkParams(bg_threshold=0.6, unsure_threshold=0.4)
    assert params.thresholds == (0.6, 0.4) and WalkParams().thresholds == (0.25,)
    labels = [walk_to_label(rw, [5], 1, (1, 4), (1, 4), t) for t in params.thresholds]
    assert labels[0].tolist() == [[5, 5, 0, 0]] and labels[1].tolist() == [[5, 5, 5, 0]]
    assert band_label(labels).tolist() == [[5, 5, 255, 0]]
    assert band_label(labels[:1]).tolist() == [[5, 5, 0, 0]]  # no second score: as official
    with pytest.raises(ValueError, match="UNSURE_BG_THRES"):
        WalkParams(unsure_threshold=-0.1)


def test_walked_background_by_hand_and_against_the_constant():
    """``MODEL.IRN.WALK_BG_POWER``: the background channel is ``(1 - max_c cam_c) ** power``
    (all ones without classes); walked with the CAMs it labels the side of a wall whose CAM is
    weak background, where IRN's constant background score (0.25) gives it the class."""
    from wsss_d2.pseudo.random_walk import background_channel

    cams = torch.tensor([[[0.2, 1.0]], [[0.5, 0.0]]], dtype=torch.float64)  # 2 classes, 1 x 2
    assert background_channel(cams, 2.0)[0, 0].tolist() == pytest.approx([0.25, 0.0])
    assert background_channel(cams[None], 1.0).shape == (1, 1, 1, 2)
    assert background_channel(torch.zeros(0, 3, 4), 2.0).tolist() == torch.ones(1, 3, 4).tolist()
    cam = torch.zeros(1, 16, 16, dtype=torch.float64)
    cam[0, :, :8] = 1.0  # the object fills the left of the wall
    cam[0, :, 9:] = 0.4  # weak context CAM on the right
    bg = background_channel(cam, 1.0)
    rw = random_walk(torch.cat([cam, bg])[None], _wall()[None])[0]
    const = walk_to_label(rw[:1], [7], 4, (64, 64), (64, 64), 0.25)
    walked = walk_to_label(rw[:1], [7], 4, (64, 64), (64, 64), 1.0, bg=rw[1])
    left, right = (slice(None), slice(0, 28)), (slice(None), slice(40, 64))
    assert (const[left] == 7).all() and (const[right] == 7).all()
    assert (walked[left] == 7).all() and (walked[right] == 0).all()
    # the background score scales the walked channel: small enough, the class wins again
    assert (walk_to_label(rw[:1], [7], 4, (64, 64), (64, 64), 0.5, bg=rw[1])[right] == 7).all()
    with pytest.raises(ValueError, match="WALK_BG_POWER"):
        WalkParams(bg_power=-1.0)


def test_walked_background_unsure_band(tmp_path):
    """``UNSURE_BG_THRES`` with a walked background is its second scale: the round's unsure
    pixels are those labelled differently at the two scales, the others keep the first scale's
    label (``configs/voc_mini/irn_crop320_bgwalk_band.yaml``)."""
    from wsss_d2.pseudo.irn_round import label_batch, walk_batch, walk_labels

    dicts, cam_dir = _toy_set(tmp_path, n=2)
    net = _tiny_irn().eval()
    inputs = [_mapper()(d) for d in dicts[:1]]
    params = WalkParams(exp_times=2, bg_power=2.0, bg_threshold=1.5, unsure_threshold=0.5)
    (label,) = label_batch(net, inputs, cam_dir, params)
    ((hi, lo),) = walk_labels(walk_batch(net, inputs, cam_dir, params), net.stride, (1.5, 0.5))
    differ = hi != lo
    assert differ.any() and (~differ).any()  # both kinds of pixel are checked
    assert np.array_equal(label == 255, differ)
    assert np.array_equal(label[~differ], hi[~differ])


def test_walk_batch_walks_the_background_with_the_cams(tmp_path):
    """The walked background of :func:`walk_batch` is the walk of the background channel of the
    image's strided CAMs alone (channels do not mix), and the classes' walk is unchanged."""
    from wsss_d2.pseudo.irn_round import _load_cams, walk_batch
    from wsss_d2.pseudo.random_walk import background_channel

    dicts, cam_dir = _toy_set(tmp_path, n=2)
    net = _tiny_irn().eval()
    inputs = [_mapper()(d) for d in dicts[:1]]
    with torch.no_grad():
        outs = net(inputs)
    params = WalkParams(exp_times=2)
    (plain,) = walk_batch(net, inputs, cam_dir, params, outs=outs)
    (wk,) = walk_batch(net, inputs, cam_dir, replace(params, bg_power=3.0), outs=outs)
    assert plain.bg is None and torch.equal(plain.rw, wk.rw)
    edge = outs[0]["edge"].double()
    cams = cams_at_stride(_load_cams(cam_dir, inputs[0])[0], edge.shape, 4, wk.input_hw)
    want = random_walk(background_channel(cams.double(), 3.0)[None], edge[None], exp_times=2)
    assert float((wk.bg - want[0, 0]).abs().max()) < 1e-10


def test_sparse_and_dense_walks_agree_and_batches_do_not_matter():
    g = torch.Generator().manual_seed(0)
    edge = torch.rand(3, 9, 11, generator=g) ** 3
    cams = torch.rand(3, 2, 9, 11, generator=g, dtype=torch.float64)
    cams[1, 1] = 0  # an image with one tag, padded with a zero channel
    a = random_walk(cams, edge, method="sparse")
    b = random_walk(cams, edge, method="dense")
    assert float((a - b).abs().max()) < 1e-10
    for i in range(3):  # each image alone: bit for bit its batched result
        assert torch.equal(random_walk(cams[i : i + 1], edge[i : i + 1])[0], a[i])
    # padding with boundary and zero scores leaves the image's result unchanged
    E = torch.ones(1, 12, 15)
    E[0, :9, :11] = edge[0]
    X = torch.zeros(1, 2, 12, 15, dtype=torch.float64)
    X[0, :, :9, :11] = cams[0]
    assert float((random_walk(X, E)[0, :, :9, :11] - a[0]).abs().max()) < 1e-12
    with pytest.raises(ValueError, match="sparse"):
        random_walk(cams, edge, method="magic")


def test_cams_at_stride_and_labels_of_an_untagged_image():
    cams = torch.zeros(1, 10, 13)
    cams[0, :4, :4] = 1.0
    s = cams_at_stride(cams, (3, 4), 4)
    assert s.shape == (1, 3, 4) and float(s.max()) == pytest.approx(1.0, abs=1e-4)
    assert float(s[0, 0, 0]) == pytest.approx(1.0, abs=1e-4) and float(s[0, 1, 1]) == 0.0
    assert cams_at_stride(torch.zeros(0, 10, 13), (3, 4), 4).shape == (0, 3, 4)
    empty = walk_to_label(torch.zeros(0, 3, 4), [], 4, (10, 13), (10, 13))
    assert empty.shape == (10, 13) and (empty == 0).all()


# ---------------------------------------------------------------------- rounds
def _mapper():
    return TagDatasetMapper(False, augmentations=[], image_format="RGB", num_classes=3)


def _irn_round(root, dicts, cam_dir, state_path, ims_per_batch=3, writer=None, **kw):
    model = _tiny_irn()
    if state_path:
        model.load_state_dict(torch.load(state_path, weights_only=True))
    writer = writer or rounds.RoundWriter(root, 1, 4)
    params = kw.pop("params", WalkParams())
    return write_irn_round(
        dicts, cam_dir, model, _mapper(), writer, params, ims_per_batch, progress=False, **kw
    )


def test_irn_round_with_crf_is_the_crf_of_the_walk_labels(tmp_path):
    """``MODEL.IRN.CRF``: each label is :func:`crf_refine_label` of the walk's label (the same in
    a pool of two workers as inline), and the CRF does change labels."""
    from wsss_d2.io.files import read_image_checked
    from wsss_d2.ops.crf import CRFParams
    from wsss_d2.pseudo.irn_round import crf_refine_label

    dicts, cam_dir = _toy_set(tmp_path, n=4)
    params = WalkParams(exp_times=1, bg_threshold=0.3)  # the untrained walk of 2 ** 8 is uniform
    crf = CRFParams(bilateral_sxy=10, bilateral_srgb=10)  # for 20 x 28 images
    plain = _irn_round(str(tmp_path / "plain"), dicts, cam_dir, None, params=params)
    folders = [
        _irn_round(str(tmp_path / f"crf{n}"), dicts, cam_dir, None, params=params, crf=crf,
                   num_workers=n)  # fmt: skip
        for n in (1, 2)
    ]
    changed = 0
    for d in dicts:
        stem = rounds.label_stem(d) + ".png"
        walk = read_label_png(os.path.join(plain, stem))
        want = crf_refine_label(read_image_checked(d["file_name"], "RGB"), walk, d["tags"], crf)
        for folder in folders:
            assert np.array_equal(read_label_png(os.path.join(folder, stem)), want)
        changed += int((want != walk).sum())
    assert changed > 0
    # an untagged image stays all background
    label = np.zeros((5, 6), np.uint8)
    assert np.array_equal(crf_refine_label(np.zeros((5, 6, 3), np.uint8), label, []), label)


def test_interrupted_irn_round_resumes_to_identical_files(tmp_path, monkeypatch):
    dicts, cam_dir = _toy_set(tmp_path, n=6)
    ref = _irn_round(str(tmp_path / "ref"), dicts, cam_dir, None)
    root = str(tmp_path / "run")
    writer = rounds.RoundWriter(root, 1, 4)
    die_after_writes(monkeypatch, writer, 4)
    with pytest.raises(KeyboardInterrupt):
        _irn_round(root, dicts, cam_dir, None, writer=writer)
    assert rounds.latest_complete_round(root) is None
    partial = writer.partial_dir
    done = {f: os.path.getmtime(os.path.join(partial, f)) for f in os.listdir(partial)}
    assert len(done) == 4
    folder = _irn_round(root, dicts, cam_dir, None)
    for f, t in done.items():  # finished labels are not recomputed
        assert os.path.getmtime(os.path.join(folder, f)) == t
    for d in dicts:
        stem = rounds.label_stem(d) + ".png"
        a = read_label_png(os.path.join(folder, stem))
        np.testing.assert_array_equal(a, read_label_png(os.path.join(ref, stem)))
        assert set(np.unique(a).tolist()) <= {0, *d["tags"]}


def test_two_process_irn_round_equals_one_process(tmp_path):
    from wsss_d2.engine.launch import launch

    dicts, cam_dir = _toy_set(tmp_path, n=5)
    state = str(tmp_path / "irn.pth")
    torch.save(_tiny_irn(seed=3).state_dict(), state)
    one = _irn_round(str(tmp_path / "one"), dicts, cam_dir, state)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(
        _irn_round,
        2,
        dist_url=f"tcp://127.0.0.1:{port}",
        args=(str(tmp_path / "two"), dicts, cam_dir, state),
    )
    two = rounds.round_dir(str(tmp_path / "two"), 1)
    assert rounds.read_manifest(two)["num_images"] == 5
    assert_same_labels(dicts, one, two)


# ---------------------------------------------------------------------- bad input
def test_cam_file_of_another_size_is_named(tmp_path):
    dicts, cam_dir = _toy_set(tmp_path, n=2)
    d = dicts[1]
    path = cam_file_path(cam_dir, d)
    save_cam_file(path, np.zeros((len(d["tags"]), 10, 10)), d["tags"], (10, 10))
    with pytest.raises(ValueError, match="im01.npz") as e:
        _irn_round(str(tmp_path / "r"), dicts, cam_dir, None)
    assert "im01.png" in str(e.value)


def test_irn_checkpoint_of_another_architecture_is_refused(tmp_path, cfg_factory):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cam = build_model(cfg_factory("configs/cam_toy.yaml"))
    DetectionCheckpointer(cam, save_dir=str(tmp_path)).save("cam")
    irn = build_model(cfg_factory("configs/irn_toy.yaml"))
    path = str(tmp_path / "cam.pth")
    with pytest.raises(ValueError, match="cam.pth") as e:
        load_model_weights(irn, path)
    assert "missing: dp_head." in str(e.value) and "IRNet" in str(e.value)
    DetectionCheckpointer(irn, save_dir=str(tmp_path)).save("irn")
    load_model_weights(irn, str(tmp_path / "irn.pth"))  # its own checkpoint passes
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model_weights(irn, str(tmp_path / "nope.pth"))


def test_image_without_tags_is_all_background_and_logged(tmp_path, caplog):
    dicts, cam_dir = _toy_set(tmp_path, n=3)
    d = dicts[0]
    d["tags"] = []
    save_cam_file(cam_file_path(cam_dir, d), np.zeros((0, 20, 28)), [], (20, 28))
    with caplog.at_level(logging.INFO, logger="wsss_d2.pseudo.irn_round"):
        folder = _irn_round(str(tmp_path / "r"), dicts, cam_dir, None)
    assert (read_label_png(os.path.join(folder, rounds.label_stem(d) + ".png")) == 0).all()
    assert any("no tags" in r.getMessage() and "im00.png" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- tool and pipeline
def test_make_round_irn_method_on_toy_data(tmp_path, cfg_factory):
    """``WSSS.PSEUDO.METHOD irn`` through make_round: CAM folder + IRN checkpoint + manifest."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from wsss_d2.pseudo.make_round import make_round

    dicts = DatasetCatalog.get("toyparts_mini_train")[:4]
    cam_dir = str(tmp_path / "cams")
    for d in dicts:
        cams = np.random.default_rng(0).random((len(d["tags"]), d["height"], d["width"]))
        save_cam_file(cam_file_path(cam_dir, d), cams, d["tags"], (d["height"], d["width"]))
    cfg = cfg_factory("configs/irn_toy.yaml", "MODEL.TINY.WIDTHS", (8, 8, 8, 8))
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("irn")
    cfg.MODEL.WEIGHTS = str(tmp_path / "irn.pth")
    with pytest.raises(FileNotFoundError, match="CAM_DIR"):
        make_round(cfg, model, dicts, 1, root=str(tmp_path / "labels"))
    cfg.WSSS.PSEUDO.CAM_DIR = cam_dir
    folder = make_round(cfg, model, dicts, 1, root=str(tmp_path / "labels"), progress=False)
    man = rounds.read_manifest(folder)
    assert man["source"] == "irn" and man["cam_dir"] == cam_dir and man["num_images"] == 4
    assert man["walk_params"]["beta"] == 10.0 and man["walk_params"]["exp_times"] == 8
    assert "crf" not in man  # the official walk: no CRF
    assert man["walk_params"]["unsure_threshold"] == 0.0
    cfg.MODEL.IRN.CRF = True
    folder = make_round(cfg, model, dicts, 2, root=str(tmp_path / "labels"), progress=False)
    assert rounds.read_manifest(folder)["crf"]["gt_prob"] == cfg.WSSS.PSEUDO.CRF.GT_PROB
    # a CAM model with METHOD irn is refused with a clear message
    cam_cfg = cfg_factory("configs/cam_toy.yaml", "WSSS.PSEUDO.METHOD", "irn")
    with pytest.raises(ValueError, match="IRNet"):
        make_round(cam_cfg, build_model(cam_cfg), dicts, 1, root=str(tmp_path / "x"))


def test_irn_round_of_cams_from_another_model_is_refused(tmp_path, cfg_factory, monkeypatch):
    """The round fingerprint holds the CAM folder's cams.json: a partial IRN round is not resumed,
    and a complete one not reused, once the CAM folder holds CAMs of another model."""
    import json

    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from wsss_d2.io.cam_files import CAM_DIR_MANIFEST
    from wsss_d2.pseudo import irn_round
    from wsss_d2.pseudo.make_round import make_round

    dicts = DatasetCatalog.get("toyparts_mini_train")[:4]
    cam_dir = str(tmp_path / "cams")
    for d in dicts:
        cams = np.random.default_rng(1).random((len(d["tags"]), d["height"], d["width"]))
        save_cam_file(cam_file_path(cam_dir, d), cams, d["tags"], (d["height"], d["width"]))
    manifest = os.path.join(cam_dir, CAM_DIR_MANIFEST)
    with open(manifest, "w") as f:
        json.dump({"model": "CAMClassifier", "weights": {"sha256": "aaa"}}, f)
    cfg = cfg_factory(
        "configs/irn_toy.yaml", "MODEL.TINY.WIDTHS", (8, 8, 8, 8), "WSSS.PSEUDO.CAM_DIR", cam_dir
    )
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("irn")
    cfg.MODEL.WEIGHTS = str(tmp_path / "irn.pth")
    root = str(tmp_path / "labels")
    real, calls = irn_round.walk_batch, []

    def dying(*a, **k):  # the first batch is written, then the run dies
        if calls:
            raise KeyboardInterrupt("killed mid-round")
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(irn_round, "walk_batch", dying)
    cfg.WSSS.PSEUDO.IMS_PER_BATCH = 2
    with pytest.raises(KeyboardInterrupt):
        make_round(cfg, model, dicts, 1, root=root, progress=False)
    monkeypatch.setattr(irn_round, "walk_batch", real)
    with open(manifest, "w") as f:  # the CAM folder now holds another model's CAMs
        json.dump({"model": "PLDA", "weights": {"sha256": "bbb"}}, f)
    with pytest.raises(FileExistsError, match="cams"):
        make_round(cfg, model, dicts, 1, root=root, progress=False)
    folder = make_round(cfg, model, dicts, 1, root=root, progress=False, overwrite=True)
    assert rounds.read_manifest(folder)["cams"]["model"] == "PLDA"
    with open(manifest, "w") as f:
        json.dump({"model": "CAMClassifier", "weights": {"sha256": "ccc"}}, f)
    with pytest.raises(FileExistsError, match="cams"):
        make_round(cfg, model, dicts, 1, root=root, progress=False, reuse=True)


def test_pipeline_cams_from(tmp_path):
    import yaml

    from wsss_d2.engine.pipeline import load_pipeline

    spec = {
        "OUTPUT_DIR": str(tmp_path / "out"),
        "STAGES": [
            {"name": "labels", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml"},
            {"name": "irn", "kind": "train", "config": "configs/irn_toy.yaml",
             "round_from": "labels"},
            {"name": "irn_labels", "kind": "pseudo_labels", "config": "configs/irn_toy.yaml",
             "weights_from": "irn", "cams_from": "labels"},
        ],
    }  # fmt: skip
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    pipe = load_pipeline(str(path), repo_root=str(REPO))
    folder = rounds.round_dir(pipe.stage_dir("labels") + "/pseudo_labels", 1)
    os.makedirs(folder)
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        f.write('{"round": 1, "cam_dir": "/some/cams"}')
    opts = pipe.stage_opts(pipe.stages[2])
    assert opts[opts.index("WSSS.PSEUDO.CAM_DIR") + 1] == "/some/cams"
    with open(os.path.join(folder, "manifest.json"), "w") as f:
        f.write('{"round": 1}')
    with pytest.raises(FileNotFoundError, match="cam_dir"):
        pipe.stage_opts(pipe.stages[2])
    spec["STAGES"][2]["cams_from"] = "later"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match="cams_from 'later'"):
        load_pipeline(str(path), repo_root=str(REPO))


def test_toy_pipeline_with_irn_stages_end_to_end(tmp_path):
    """CAM -> band (+ CAM files) -> IRNet on the band -> walk of the same CAMs, through the tool."""
    import yaml
    from conftest import MINI_TOY_OPTS, load_script

    fast = MINI_TOY_OPTS + ["WSSS.PSEUDO.SCALES", "(1.0,)", "WSSS.PSEUDO.FLIP", "False"]
    irn = fast + [
        "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "4", "INPUT.TAGS.RESIZE_LONG", "(80, 112)",
        "INPUT.TAGS.CROP_SIZE", "96", "INPUT.TAGS.TEST_LONG", "0", "MODEL.IRN.TEST_PAD_SIZE", "96",
        "WSSS.PSEUDO.IMS_PER_BATCH", "12",
    ]  # fmt: skip
    spec = {
        "OUTPUT_DIR": str(tmp_path / "out"),
        "STAGES": [
            {"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml",
             "opts": fast + ["SOLVER.MAX_ITER", "2"]},
            {"name": "labels", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml",
             "weights_from": "cam", "opts": fast + ["WSSS.PSEUDO.METHOD", "threshold"]},
            {"name": "irn", "kind": "train", "config": "configs/irn_toy.yaml",
             "weights_from": "cam", "round_from": "labels", "opts": irn},
            {"name": "irn_labels", "kind": "pseudo_labels", "config": "configs/irn_toy.yaml",
             "weights_from": "irn", "cams_from": "labels", "opts": irn},
        ],
    }  # fmt: skip
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = load_script("tools/run_pipeline.py").main(["--config-file", str(path), "--no-report"])
    assert [s["status"] for s in res] == ["ran"] * 4
    assert "pseudo_seg/mIoU" in res[3]["results"] or "mIoU" in res[3]["results"]
    folder = rounds.latest_complete_round(str(tmp_path / "out" / "irn_labels" / "pseudo_labels"))
    man = rounds.read_manifest(folder[1])
    cams = rounds.read_manifest(
        rounds.latest_complete_round(str(tmp_path / "out" / "labels" / "pseudo_labels"))[1]
    )["cam_dir"]
    assert man["source"] == "irn" and man["cam_dir"] == cams and man["num_images"] == 24
