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
    thresholds = [0.05, 0.5, 1.0]  # 1.0: all background with the constant (ties go to it)
    by_power = {}
    for power in (0.0, 2.0):  # the constant background, the walked one (WALK_BG_POWER)
        walked = walk_batch(net, inputs, cam_dir, WalkParams(bg_power=power))
        for norm in ("global", "class"):
            conf = sweep.score_walk(walked, dicts, thresholds, net.stride, 4, 255, norm)
            for t, c in zip(thresholds, conf):
                params = WalkParams(bg_threshold=t, normalize=norm, bg_power=power)
                labels = label_batch(net, inputs, cam_dir, params)
                ref = sum(
                    _confusion_with_unsure(lab, sweep_gt, 4, 255)
                    for lab, sweep_gt in zip(labels, _gts(dicts))
                )
                assert np.array_equal(c, ref), (power, norm, t)
            assert len({c.tobytes() for c in conf}) > 1  # the thresholds change the labels
        by_power[power] = conf
    assert not np.array_equal(by_power[0.0], by_power[2.0])  # walking the background does
    row = sweep.load_sweep_rows()._row(by_power[0.0][1], None)
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


def test_crf_and_band_rows_are_those_of_the_round_labels(tmp_path):
    """``--crf`` / ``--bands``: every row's confusions (each threshold alone, then the band of
    the two, without and with the label CRF) are those of the labels the IRN round writes with
    the same settings (``SEM_SEG_BG_THRES``, ``UNSURE_BG_THRES``, ``CRF``); the band leaves
    pixels unsure and the CRF changes labels."""
    from test_irn import _irn_round

    from wsss_d2.io import rounds
    from wsss_d2.ops.crf import CRFParams
    from wsss_d2.pseudo.irn_round import walk_labels

    sweep = load_script("benchmarks/sweep_irn_bg.py")
    dicts, cam_dir = _toy_set(tmp_path, n=3)
    for i, d in enumerate(dicts):
        gt = np.zeros((d["height"], d["width"]), np.uint8)
        gt[: d["height"] // 2] = d["tags"][0]
        save_label_png(str(tmp_path / f"gt{i}.png"), gt)
        d["sem_seg_file_name"] = str(tmp_path / f"gt{i}.png")
    net = _tiny_irn().eval()
    inputs = [_mapper()(d) for d in dicts]
    thresholds, pairs = [0.3, 0.6], [(0, 1)]
    params = WalkParams(exp_times=1)  # the untrained IRNet's walk of 2 ** 8 steps is uniform
    walked = walk_batch(net, inputs, cam_dir, params)
    crf = CRFParams(bilateral_sxy=10, bilateral_srgb=10)  # for 20 x 28 images
    plain = sweep.score_walk(walked, dicts, thresholds, net.stride, 4, 255, pairs=pairs)
    refined = sum(
        sweep._crf_job((d, labs, keys, crf, 1, pairs, 4, 255))[0]
        for (_, keys, *_), d, labs in zip(walked, dicts, walk_labels(walked, 4, thresholds))
    )
    for row, (t, u) in enumerate([(0.3, 0.0), (0.6, 0.0), (0.3, 0.6)]):
        one = dataclasses.replace(params, bg_threshold=t, unsure_threshold=u)
        for name, use_crf, conf in (("plain", None, plain), ("crf", crf, refined)):
            folder = _irn_round(str(tmp_path / f"{name}{row}"), dicts, cam_dir, None,
                                params=one, crf=use_crf)  # fmt: skip
            ref = sum(
                _confusion_with_unsure(
                    read_label_png(f"{folder}/{rounds.label_stem(d)}.png"), g, 4, 255
                )
                for d, g in zip(dicts, _gts(dicts))
            )
            assert np.array_equal(conf[row], ref), (name, t, u)
    assert plain[2][:, -1].sum() > 0 and plain[0][:, -1].sum() == 0  # the band's unsure pixels
    assert not np.array_equal(plain, refined)


def _mask_dict(tmp_path, gt):
    save_label_png(str(tmp_path / "gt.png"), gt)
    h, w = gt.shape
    return {"sem_seg_file_name": str(tmp_path / "gt.png"), "file_name": "im", "height": h,
            "width": w}  # fmt: skip


def test_mask_boundaries_by_hand(tmp_path):
    """``--mask-boundaries``: a stride cell is a wall where it (widened by a pixel to the bottom
    and right) holds two classes or void, or lies past the image."""
    bounds = load_script("benchmarks/sweep_irn_bg.py").mask_boundaries
    gt = np.zeros((8, 12), np.uint8)
    gt[:, :6] = 1  # the change inside the middle cell (columns 4-7)
    assert bounds(_mask_dict(tmp_path, gt), (8, 12), 4).tolist() == [[0, 1, 0]] * 2
    gt[:, :8] = 1  # the change on a cell edge: the cell before it
    assert bounds(_mask_dict(tmp_path, gt), (8, 12), 4).tolist() == [[0, 1, 0]] * 2
    gt[4:, :] = 2  # a change on a row edge (and none left between the columns below it)
    assert bounds(_mask_dict(tmp_path, gt), (8, 12), 4).tolist() == [[1, 1, 1], [0, 0, 0]]
    gt[:4, :] = 2
    gt[1, 1] = 255  # void
    assert bounds(_mask_dict(tmp_path, gt), (8, 12), 4).tolist() == [[1, 0, 0], [0, 0, 0]]
    one = np.full((6, 10), 3, np.uint8)  # past the image: rows 6-7, columns 10-11
    assert bounds(_mask_dict(tmp_path, one), (6, 10), 4).tolist() == [[0, 0, 1], [1, 1, 1]]
    # resized (nearest) to the network input size: the change stays in the middle cell
    half = np.zeros((4, 6), np.uint8)
    half[:, :3] = 1
    assert bounds(_mask_dict(tmp_path, half), (8, 12), 4).tolist() == [[0, 1, 0]] * 2


def test_walk_with_mask_boundaries_keeps_a_peak_in_its_region(tmp_path):
    """From one CAM peak inside a region of the mask, the walk on the mask's boundaries labels
    that region and leaves the other background; with no boundaries it floods both."""
    from test_pseudo_labels import _write_image

    from wsss_d2.io.cam_files import cam_file_path, save_cam_file
    from wsss_d2.pseudo.random_walk import walk_to_label

    sweep = load_script("benchmarks/sweep_irn_bg.py")
    h, w = 32, 48
    gt = np.zeros((h, w), np.uint8)
    gt[:, :22] = 2  # class 2 on the left, background on the right
    d = {**_mask_dict(tmp_path, gt), "image_id": 0, "tags": [2]}
    d["file_name"] = _write_image(tmp_path / "im.png", np.zeros((h, w, 3), np.uint8))
    cams = np.zeros((1, h, w), np.float32)
    cams[0, 12:18, 4:10] = 1.0  # a small peak inside the left region
    cam_dir = str(tmp_path / "cams")
    save_cam_file(cam_file_path(cam_dir, d), cams, [2], (h, w))
    net = _tiny_irn().eval()
    x = _mapper()(d)
    walls = {"edge": sweep.mask_boundaries(d, (h, w), net.stride)}
    none = {"edge": torch.zeros_like(walls["edge"])}
    labels = {}
    for name, out in (("walls", walls), ("none", none)):
        (wk,) = walk_batch(net, [x], cam_dir, WalkParams(), outs=[out])
        labels[name] = walk_to_label(wk.rw, wk.keys, net.stride, wk.input_hw, wk.out_hw, 0.25)
    assert (labels["walls"][:, :16] == 2).all() and (labels["walls"][:, 28:] == 0).all()
    assert (labels["none"] == 2).all()


def test_ensemble_boundaries_are_the_mean(tmp_path):
    """Several ``--weights``: the walk reads the mean of the IRNets' boundary maps."""
    sweep = load_script("benchmarks/sweep_irn_bg.py")
    dicts, _ = _toy_set(tmp_path, n=2)
    inputs = [_mapper()(d) for d in dicts]
    a, b = _tiny_irn(0).eval(), _tiny_irn(1).eval()
    with torch.no_grad():
        ea, eb = [o["edge"] for o in a(inputs)], [o["edge"] for o in b(inputs)]
        one = sweep.ensemble_outputs([a], inputs)
        both = sweep.ensemble_outputs([a, b], inputs)
    for i in range(2):
        assert torch.equal(one[i]["edge"], ea[i]) and not torch.equal(ea[i], eb[i])
        torch.testing.assert_close(both[i]["edge"], (ea[i] + eb[i]) / 2)
