"""benchmarks/sweep_irn_bg.py: the label it scores for a threshold is the IRN round's label."""

import dataclasses

import numpy as np
import torch
from conftest import load_script
from test_irn import _mapper, _tiny_irn
from test_pseudo_labels import _toy_set

from wsss_d2.evaluation.pseudo_eval import _confusion_with_unsure
from wsss_d2.io.files import read_label_png, save_label_png
from wsss_d2.pseudo.irn_round import label_batch, walk_batch
from wsss_d2.pseudo.random_walk import WalkParams


def test_scores_are_those_of_the_round_labels(tmp_path):
    sweep = load_script("benchmarks/sweep_irn_bg.py")
    dicts, cam_dir = _toy_set(tmp_path, n=4)
    rng = np.random.default_rng(1)
    for i, d in enumerate(dicts):  # ground truth: background and the image's tags
        gt = rng.choice([0, *d["tags"]], size=(d["height"], d["width"])).astype(np.uint8)
        gt[0, 0] = 255
        save_label_png(str(tmp_path / f"gt{i}.png"), gt)
        d["sem_seg_file_name"] = str(tmp_path / f"gt{i}.png")
    net = _tiny_irn().eval()
    inputs = [_mapper()(d) for d in dicts]
    thresholds = [0.05, 0.5, 1.0]  # 1.0: all background (ties go to it)
    walked = walk_batch(net, inputs, cam_dir, WalkParams())
    for norm in ("global", "class"):
        conf = sweep.score_walk(walked, dicts, thresholds, net.stride, 4, 255, norm)
        for t, c in zip(thresholds, conf):
            labels = label_batch(net, inputs, cam_dir, WalkParams(bg_threshold=t, normalize=norm))
            ref = sum(
                _confusion_with_unsure(lab, sweep_gt, 4, 255)
                for lab, sweep_gt in zip(labels, _gts(dicts))
            )
            assert np.array_equal(c, ref), (norm, t)
        assert len({c.tobytes() for c in conf}) > 1  # the thresholds change the labels
    row = sweep.load_sweep_rows()._row(conf[1], None)
    assert row["unsure_pct"] == 0 and row["mIoU"] == row["mIoU_labeled"]


def _gts(dicts):
    return [read_label_png(d["sem_seg_file_name"]) for d in dicts]


def test_walks_from_given_outputs_equal_the_forward_and_beta_changes_them(tmp_path):
    """The sweep walks several (beta, exp_times) from one IRNet forward (``outs``): each walk is
    the one ``walk_batch`` computes with its own forward, and beta does change the walk."""
    dicts, cam_dir = _toy_set(tmp_path, n=3)
    net = _tiny_irn().eval()
    inputs = [_mapper()(d) for d in dicts]
    with torch.no_grad():
        outs = net(inputs)
        walked = {}
        for beta in (2.0, 10.0):
            params = WalkParams(beta=beta, exp_times=4)
            given = walk_batch(net, inputs, cam_dir, params, outs=outs)
            own = walk_batch(net, inputs, cam_dir, params)
            for (a, ka, *_), (b, kb, *_) in zip(given, own):
                assert torch.equal(a, b) and np.array_equal(ka, kb)
            walked[beta] = given
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(walked[2.0], walked[10.0]))


def test_crf_scores_are_those_of_the_crf_refined_round_labels(tmp_path):
    """``--crf``: an image's CRF confusions are those of :func:`crf_refine_label` applied to the
    round's label at each threshold, and the CRF changes some label."""
    from wsss_d2.io.files import read_image_checked
    from wsss_d2.ops.crf import CRFParams
    from wsss_d2.pseudo.irn_round import crf_refine_label

    sweep = load_script("benchmarks/sweep_irn_bg.py")
    dicts, cam_dir = _toy_set(tmp_path, n=3)
    for i, d in enumerate(dicts):
        gt = np.zeros((d["height"], d["width"]), np.uint8)
        gt[: d["height"] // 2] = d["tags"][0]
        save_label_png(str(tmp_path / f"gt{i}.png"), gt)
        d["sem_seg_file_name"] = str(tmp_path / f"gt{i}.png")
    net = _tiny_irn().eval()
    inputs = [_mapper()(d) for d in dicts]
    thresholds = [0.3, 0.6]
    params = WalkParams(exp_times=1)  # the untrained IRNet's walk of 2 ** 8 steps is uniform
    walked = walk_batch(net, inputs, cam_dir, params)
    labels = sweep.walk_labels(walked, thresholds, net.stride)
    crf = CRFParams(bilateral_sxy=10, bilateral_srgb=10)  # for 20 x 28 images
    changed = False
    for (_, keys, *_), d, labs in zip(walked, dicts, labels):
        got = sweep._crf_job((d, labs, keys, crf, 4, 255))
        image = read_image_checked(d["file_name"], "RGB")
        for t, lab, c in zip(thresholds, labs, got):
            one = dataclasses.replace(params, bg_threshold=t)
            assert np.array_equal(lab, label_batch(net, [_mapper()(d)], cam_dir, one)[0])
            ref = crf_refine_label(image, lab, keys, crf)
            changed |= not np.array_equal(ref, lab)
            assert np.array_equal(c, _confusion_with_unsure(ref, _gts([d])[0], 4, 255))
    assert changed
