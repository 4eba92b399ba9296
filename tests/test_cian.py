"""CIAN: cross-image affinity layer, head, pair sampler, segmentor."""

from __future__ import annotations

import itertools
import logging
import random

import numpy as np
import pytest
import torch
from conftest import make_cfg
from detectron2.data import DatasetCatalog
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from wsss_d2.data.samplers import PairTrainingSampler
from wsss_d2.io.rounds import RoundWriter
from wsss_d2.modeling.heads.cian import CIANHead, completion_targets
from wsss_d2.modeling.heads.deeplabv2 import DeepLabLargeFOVHead
from wsss_d2.modeling.layers.cross_image_affinity import CrossImageAffinity
from wsss_d2.modeling.meta_arch.cian import group_references

SHAPE = {"res5": ShapeSpec(channels=8, stride=8)}


def _randomize_bn(layer: CrossImageAffinity) -> None:
    torch.nn.init.normal_(layer.bn.weight)
    torch.nn.init.normal_(layer.bn.bias)


# ---------------------------------------------------------------------- layer
def test_affinity_rows_sum_to_one_and_skip_padding():
    torch.manual_seed(0)
    layer = CrossImageAffinity(8)
    x = torch.randn(2, 8, 6, 5)
    valid = torch.ones(2, 1, 6, 5, dtype=torch.bool)
    valid[1, :, 3:] = False
    q, k, v, kv = layer.embed(x, valid)
    assert q.shape == (2, 4, 30) and k.shape == (2, 4, 9) and kv.shape == (2, 9)
    a = layer.affinity(q, k, kv)
    assert a.shape == (2, 30, 9)
    assert torch.allclose(a.sum(-1), torch.ones(2, 30), atol=1e-5)
    assert (a[1][:, ~kv[1]] == 0).all() and (~kv[1]).any()


def test_chunked_message_is_identical():
    torch.manual_seed(0)
    x = torch.randn(3, 8, 7, 7)
    full = CrossImageAffinity(8, chunk_size=0)
    chunked = CrossImageAffinity(8, chunk_size=5)
    chunked.load_state_dict(full.state_dict())
    q, k, v, _ = full.embed(x)
    assert torch.allclose(full.message(q, k, v), chunked.message(q, k, v), atol=1e-6)


def test_zero_bn_residual_is_zero_at_init():
    torch.manual_seed(0)
    layer = CrossImageAffinity(8).train()
    x = torch.randn(4, 8, 5, 5)
    x_self, x_cross = layer(x, torch.tensor([[1], [0], [3], [2]]))
    assert torch.equal(x_self, x) and torch.equal(x_cross, x)


def test_max_merge_over_references():
    torch.manual_seed(0)
    layer = CrossImageAffinity(8).eval()
    _randomize_bn(layer)
    x = torch.randn(3, 8, 4, 4)
    ref = torch.tensor([[1, 2], [2, 0], [0, 1]])
    _, x_cross = layer(x, ref)
    q, k, v, _ = layer.embed(x)
    m_self = layer.message(q, k, v)
    m1 = layer.message(q, k[ref[:, 0]], v[ref[:, 0]])
    m2 = layer.message(q, k[ref[:, 1]], v[ref[:, 1]])
    merged = torch.maximum(torch.maximum(m_self, m1), m2)
    expect = x + layer.bn(layer.out(merged.reshape(3, -1, 4, 4)))
    assert torch.allclose(x_cross, expect, atol=1e-6)
    # the merge is not a mean: some position takes a reference's value over the self message
    assert (merged > m_self).any()
    # an image whose references are itself gets exactly its self-affinity output
    x_self, x_cross = layer(x, torch.tensor([[0], [1], [2]]))
    assert torch.allclose(x_self, x_cross, atol=1e-6)


def test_cross_branch_leaves_running_stats_to_self():
    torch.manual_seed(0)
    layer = CrossImageAffinity(8).train()
    x = torch.randn(2, 8, 4, 4)
    layer(x, None)
    self_only = layer.bn.running_mean.clone()
    layer.bn.reset_running_stats()
    layer(x, torch.tensor([[1], [0]]))
    assert torch.allclose(layer.bn.running_mean, self_only)


# ---------------------------------------------------------------------- head
def _heads():
    kw = dict(in_feature="res5", num_classes=4, conv_dims=0, fov_dilation=2)
    torch.manual_seed(0)
    base = DeepLabLargeFOVHead(SHAPE, **kw)
    cian = CIANHead(SHAPE, **kw)
    cian.load_state_dict(base.state_dict(), strict=False)
    return base, cian


def test_head_equals_baseline_at_init():
    base, cian = _heads()
    feats = {"res5": torch.randn(2, 8, 6, 6)}
    base.eval(), cian.eval()
    assert torch.allclose(base(feats)[0], cian(feats)[0])
    cian.train()
    s, c = cian.layers(feats, torch.tensor([[1], [0]]))
    ref = base.layers(feats)
    assert torch.allclose(s, ref) and torch.allclose(c, ref)


def test_completion_targets_follow_the_prediction_within_tags():
    logits = torch.zeros(2, 4, 2, 2)
    logits[:, 3] = 5.0  # class 3 wins everywhere but the last column ...
    logits[:, 1, :, 1] = 9.0  # ... where class 1 wins
    tags = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # image 0: {1}, image 1: {3}
    valid = torch.ones(2, 2, 2, dtype=torch.bool)
    valid[1, 0, 0] = False
    t = completion_targets(logits, tags, (2, 2), valid)
    # image 0: class 3 is not among its tags -> ignored; class 1 is -> kept
    assert t[0].tolist() == [[255, 1], [255, 1]]
    # image 1: class 3 kept, class 1 (not a tag) ignored, padding ignored
    assert t[1].tolist() == [[255, 255], [3, 255]]
    # background is always allowed
    bg = torch.zeros(1, 4, 2, 2)
    bg[:, 0] = 1.0
    assert (completion_targets(bg, torch.zeros(1, 3), (4, 4)) == 0).all()


def _small_head(**kwargs) -> CIANHead:
    """A seeded 4-class CIAN head on 8-channel res5 features, in training mode."""
    torch.manual_seed(0)
    return CIANHead(
        SHAPE, in_feature="res5", num_classes=4, conv_dims=0, fov_dilation=2, **kwargs
    ).train()


@pytest.mark.parametrize("cross,cross_ce,completion", list(itertools.product([0, 1], repeat=3)))
def test_head_loss_switches(cross, cross_ce, completion):
    head = _small_head(
        cross=bool(cross), cross_ce_weight=float(cross_ce), completion_weight=float(completion)
    )
    feats = {"res5": torch.randn(2, 8, 4, 4, requires_grad=True)}
    targets = torch.randint(0, 4, (2, 32, 32))
    targets[:, :8] = 255
    tags = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, losses = head(feats, targets, torch.tensor([[1], [0]]), tags)
    expect = {"loss_ce_self"}
    if cross and cross_ce:
        expect.add("loss_ce_cross")
    if completion:
        expect.add("loss_cp_self")
        if cross:
            expect.add("loss_cp_cross")
    assert set(losses) == expect
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_completion_warmup_ramps_the_completion_losses_only():
    def losses_at(it, warmup):
        head = _small_head(completion_warmup_iters=warmup)
        feats = {"res5": torch.randn(2, 8, 4, 4)}
        targets = torch.randint(0, 4, (2, 32, 32))
        tags = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
        with EventStorage(it) as storage:
            _, losses = head(feats, targets, torch.tensor([[1], [0]]), tags)
            scale = storage.latest().get("cian/completion_scale")
        return {k: float(v) for k, v in losses.items()}, scale

    full, scale = losses_at(10, 0)
    assert scale is None  # no warm-up: nothing logged
    assert full["loss_cp_self"] > 0 and full["loss_cp_cross"] > 0
    for it, expect in ((0, 0.0), (10, 0.25), (40, 1.0), (100, 1.0)):
        ramped, scale = losses_at(it, 40)
        assert scale[0] == pytest.approx(expect)
        for k in ("loss_cp_self", "loss_cp_cross"):
            assert ramped[k] == pytest.approx(expect * full[k], rel=1e-6)
        for k in ("loss_ce_self", "loss_ce_cross"):
            assert ramped[k] == pytest.approx(full[k], rel=1e-6)
    with pytest.raises(ValueError, match="COMPLETION_WARMUP_ITERS"):
        CIANHead(SHAPE, in_feature="res5", num_classes=4, completion_warmup_iters=-1)


# ---------------------------------------------------------------------- sampler
def _random_tags(rng: random.Random, n: int, k: int) -> list[list[int]]:
    return [sorted(rng.sample(range(1, k + 1), rng.randint(0, min(3, k)))) for _ in range(n)]


@pytest.mark.parametrize("trial", range(30))
def test_sampler_pairs_share_a_tag(trial):
    rng = random.Random(trial)
    n, k, g = rng.randint(1, 25), rng.randint(1, 8), rng.randint(2, 3)
    tags = _random_tags(rng, n, k)
    s = PairTrainingSampler(tags, group_size=g, mode="common_class", seed=trial)
    lonely = set(s.partnerless)
    for grp in itertools.islice(s.groups(), 4 * n):
        q, refs = grp[0], grp[1:]
        assert len(grp) == g
        for r in refs:
            if q in lonely:
                assert r == q
            else:
                assert r != q and set(tags[q]) & set(tags[r])
    # partnerless means: no other image shares any of its tags
    for i in range(n):
        has = any(set(tags[i]) & set(tags[j]) for j in range(n) if j != i)
        assert (i in lonely) == (not has)


def test_sampler_random_mode_and_every_image_is_a_query():
    tags = [[1], [2], [3], [1, 2]]
    s = PairTrainingSampler(tags, mode="random", seed=0)
    groups = list(itertools.islice(s.groups(), 40))
    assert all(g[1] != g[0] for g in groups)
    assert sorted(g[0] for g in groups[:4]) == [0, 1, 2, 3]  # one pass = each image once
    assert any(not set(tags[g[0]]) & set(tags[g[1]]) for g in groups)


def test_sampler_partnerless_logged_or_strict_error(caplog):
    tags = [[1], [1], [2], []]
    with caplog.at_level(logging.WARNING):
        s = PairTrainingSampler(tags, seed=0, names=["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    assert s.partnerless == [2, 3] and "c.jpg" in caplog.text
    with pytest.raises(ValueError, match="c.jpg"):
        PairTrainingSampler(tags, seed=0, strict=True, names=["a.jpg", "b.jpg", "c.jpg", "d.jpg"])


def test_sampler_shards_whole_groups_across_ranks():
    rng = random.Random(0)
    tags = _random_tags(rng, 20, 4)
    full = PairTrainingSampler(tags, group_size=2, seed=3)
    stream = list(itertools.islice(full.groups(), 12))
    for rank in range(3):
        s = PairTrainingSampler(tags, group_size=2, seed=3)
        s._rank, s._world_size = rank, 3
        got = list(itertools.islice(iter(s), 8))
        assert got == [i for grp in stream[rank::3][:4] for i in grp]


def test_group_references():
    ref, lonely = group_references(6, 3)
    assert ref.tolist() == [[1, 2], [2, 0], [0, 1], [4, 5], [5, 3], [3, 4]] and lonely == 0
    tags = torch.tensor([[1, 0], [1, 0], [0, 1], [0, 1]])
    ref, lonely = group_references(4, 2, tags)
    assert ref.tolist() == [[1], [0], [3], [2]] and lonely == 0
    tags = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 1]])
    ref, lonely = group_references(4, 2, tags)
    assert ref.tolist() == [[0], [1], [3], [2]] and lonely == 2
    ref, lonely = group_references(3, 2, None)  # not made of pairs
    assert ref.tolist() == [[0], [1], [2]] and lonely == 3


# ---------------------------------------------------------------------- segmentor
def _cian_cfg(*opts):
    return make_cfg(
        "configs/cian_toy.yaml",
        "DATASETS.TRAIN",
        "('toyparts_mini_train',)",
        "SOLVER.IMS_PER_BATCH",
        "4",
        "DATALOADER.NUM_WORKERS",
        "0",
        "MODEL.TINY.WIDTHS",
        "(8, 8, 16, 16)",
        *opts,
    )


def _batch(n=4, size=32, seed=0, tags=None):
    g = torch.Generator().manual_seed(seed)
    tags = tags or [[1, 0, 0, 1, 0], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 1, 1, 0, 0]][:n]
    out = []
    for i in range(n):
        lab = torch.randint(0, 6, (size, size), generator=g)
        lab[: size // 4] = 255
        out.append(
            {
                "image": torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8),
                "sem_seg": lab,
                "tags": torch.tensor(tags[i], dtype=torch.float32),
                "height": size,
                "width": size,
            }
        )
    return out


@pytest.mark.parametrize(
    "cross,cross_ce,completion,sampling",
    [
        (c, ce, cp, s)
        for c, ce, cp in itertools.product([0, 1], repeat=3)
        for s in ("common_class", "random")
        if c or s == "common_class"
    ],
)
def test_training_step_each_switch(cross, cross_ce, completion, sampling):
    cfg = _cian_cfg(
        "MODEL.CIAN.CROSS",
        str(bool(cross)),
        "MODEL.CIAN.CROSS_CE",
        str(bool(cross_ce)),
        "MODEL.CIAN.COMPLETION",
        str(bool(completion)),
        "DATALOADER.PAIR_SAMPLING",
        sampling,
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(_batch())
    assert "loss_ce_self" in losses
    assert ("loss_ce_cross" in losses) == bool(cross and cross_ce)
    assert ("loss_cp_cross" in losses) == bool(cross and completion)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_bad_batches_fall_back_to_self_pairs(caplog):
    model = build_model(_cian_cfg()).train()
    caplog.set_level(logging.WARNING)
    with EventStorage() as storage:
        for n in (1, 3):  # one image; not a whole number of pairs
            losses = model(_batch(n))
            assert all(torch.isfinite(v) for v in losses.values())
        # pairs that share no tag under common-class sampling
        losses = model(_batch(2, tags=[[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]]))
        assert all(torch.isfinite(v) for v in losses.values())
        assert storage.history("cian/self_paired_fraction").latest() == 1.0
    assert "self-pairs" in caplog.text


def test_eval_single_image_independent_of_batch():
    cfg = _cian_cfg("MODEL.SEG_HEAD.TEST_FLIP", "True")
    torch.manual_seed(0)
    model = build_model(cfg)
    _randomize_bn(model.sem_seg_head.affinity)  # a non-zero residual, as after training
    model.eval()
    batch = _batch(3)
    alone = model([batch[0]])[0]["sem_seg"]
    together = model(batch)[0]["sem_seg"]
    other = model([batch[0], batch[2]])[0]["sem_seg"]
    assert alone.shape == (6, 32, 32)
    assert torch.allclose(alone, together, atol=1e-5) and torch.allclose(alone, other, atol=1e-5)


def test_pair_loader_batches_hold_pairs(tmp_path):
    from wsss_d2.engine import WSSSTrainer

    dicts = DatasetCatalog.get("toyparts_mini_train")
    rng = np.random.default_rng(0)
    w = RoundWriter(str(tmp_path), 1, 6)
    for d in dicts:
        w.write(d, rng.integers(0, 6, (d["height"], d["width"])).astype(np.uint8))
    folder = w.finalize(dicts)
    cfg = _cian_cfg("WSSS.PSEUDO.TRAIN_ROUND", folder)
    loader = iter(WSSSTrainer.build_train_loader(cfg))
    model = build_model(cfg).train()
    for _ in range(2):
        batch = next(loader)
        assert len(batch) == 4 and all("sem_seg" in x for x in batch)
        for a, b in (batch[0:2], batch[2:4]):
            assert set(a["tags"].nonzero().flatten().tolist()) & set(
                b["tags"].nonzero().flatten().tolist()
            )
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    with pytest.raises(ValueError, match="multiple"):
        WSSSTrainer.build_train_loader(
            _cian_cfg("WSSS.PSEUDO.TRAIN_ROUND", folder, "SOLVER.IMS_PER_BATCH", "3")
        )
