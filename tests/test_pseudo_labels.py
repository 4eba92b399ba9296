"""Pseudo labels: CAM inference engine, CRF + pool, CAM -> labels, rounds, evaluator, refresh hook.

Everything runs on tiny images: a dense CRF costs seconds on a VOC-size image.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, assert_same_labels, die_after_writes, load_script
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone
from PIL import Image

from wsss_d2.evaluation.pseudo_eval import PseudoLabelEvaluator, pseudo_label_metrics
from wsss_d2.io import rounds
from wsss_d2.io.cam_files import cam_file_path, load_cam_file, save_cam_file
from wsss_d2.io.files import read_label_png
from wsss_d2.modeling.meta_arch.cam import CAMClassifier
from wsss_d2.ops.crf import CRFParams, crf_inference_label
from wsss_d2.ops.pool import map_in_pool
from wsss_d2.pseudo.cam_inference import CAMInferenceEngine
from wsss_d2.pseudo.make_round import label_from_files, write_cam_round, write_segmentation_round
from wsss_d2.pseudo.refine import (
    CRFRefiner,
    PAMRRefiner,
    ThresholdRefiner,
    refiner_class,
    threshold_labels,
)


# ---------------------------------------------------------------------- a hand-made CAM model
class _IdentityBackbone(Backbone):
    """Stride-1 "features" = the normalised image itself (3 channels)."""

    def forward(self, x):
        return {"res5": x}

    def output_shape(self):
        return {"res5": ShapeSpec(channels=3, stride=1)}


def _hand_model() -> CAMClassifier:
    """CAM of class k = ReLU(channel k of the image / 255): exact, known, asymmetric if the image
    is."""
    m = CAMClassifier(
        backbone=_IdentityBackbone(),
        in_feature="res5",
        num_classes=3,
        pixel_mean=[0.0, 0.0, 0.0],
        pixel_std=[255.0, 255.0, 255.0],
    )
    with torch.no_grad():
        m.classifier.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    return m.eval()


def _ramp_image(h=16, w=24) -> torch.Tensor:
    """(3, h, w) uint8: channel 0 grows left->right, 1 right->left, 2 top->bottom."""
    x = torch.linspace(0, 1, w)
    y = torch.linspace(0, 1, h)
    img = torch.stack([x.expand(h, w), x.flip(0).expand(h, w), y[:, None].expand(h, w)])
    return (img * 200 + 20).round().to(torch.uint8)


def _mapped(img: torch.Tensor, tags, name="a.png"):
    t = torch.zeros(3)
    for c in tags:
        t[c - 1] = 1
    return {
        "image": img,
        "tags": t,
        "height": img.shape[1],
        "width": img.shape[2],
        "file_name": name,
    }


def test_multiscale_flip_merging_matches_hand_computation():
    model = _hand_model()
    img = _ramp_image()
    expected = img.float() / 255.0  # ReLU(channel k), before normalisation
    engine = CAMInferenceEngine(mapper=None, scales=(1.0,), flip=True)
    (cam,) = engine.cams_for_batch(model, [_mapped(img, [1, 2, 3])])
    # scale 1 + its flip: 2 x the map (unflipped correctly: the ramps are not symmetric)
    exp = expected / expected.flatten(1).amax(1)[:, None, None]
    np.testing.assert_allclose(cam, exp.numpy(), atol=1e-3)
    # several scales: each is resized back; linear ramps survive bilinear resampling closely
    engine = CAMInferenceEngine(mapper=None, scales=(1.0, 0.5, 1.5), flip=True)
    (cam_ms,) = engine.cams_for_batch(model, [_mapped(img, [1, 2, 3])])
    assert np.abs(cam_ms - exp.numpy())[:, 2:-2, 2:-2].max() < 0.05
    # a wrong un-flip would mirror channel 0 into channel 1's shape
    assert np.corrcoef(cam_ms[0].ravel(), exp[0].numpy().ravel())[0, 1] > 0.99


def test_batching_gives_the_same_cams_as_one_by_one():
    model = _hand_model()
    imgs = [_ramp_image(), _ramp_image().flip(-1), 255 - _ramp_image()]
    engine = CAMInferenceEngine(mapper=None, scales=(1.0, 0.5, 2.0), flip=True)
    batch = engine.cams_for_batch(model, [_mapped(x, [1, 3]) for x in imgs])
    for x, b in zip(imgs, batch):
        (single,) = engine.cams_for_batch(model, [_mapped(x, [1, 3])])
        np.testing.assert_allclose(b, single, atol=1e-5)


def test_absent_tags_stay_zero(tmp_path):
    model = _hand_model()
    img = _ramp_image()
    # class 2 fires strongly on the left, but the image is only tagged 1 and 3
    engine = CAMInferenceEngine(mapper=None, scales=(1.0,), flip=False)
    (cam,) = engine.cams_for_batch(model, [_mapped(img, [1, 3])])
    assert cam.shape == (2, *img.shape[1:])  # only the tags are kept
    path = str(tmp_path / "a.npz")
    save_cam_file(path, cam, [1, 3], img.shape[1:])
    cams, keys = load_cam_file(path, tuple(img.shape[1:]))
    assert keys.tolist() == [1, 3]
    for refiner in (
        ThresholdRefiner(bg_threshold=0.1),
        PAMRRefiner(conf_fg=0.3, conf_bg=0.1, iterations=2),
    ):
        label = refiner(img.permute(1, 2, 0).numpy(), cams, keys)
        assert set(np.unique(label).tolist()) <= {0, 1, 3, 255}
    # the model's own inference output masks the absent class too
    out = model([{"image": img, "tags": torch.tensor([1.0, 0.0, 1.0])}])[0]
    assert float(out["cam"][1].abs().max()) == 0.0


# ---------------------------------------------------------------------- CRF
def _two_regions(h=24, w=32):
    img = np.zeros((h, w, 3), np.uint8)
    img[:, w // 2 :] = (230, 40, 40)
    img[:, : w // 2] = (20, 30, 25)
    lab = np.zeros((h, w), np.int64)
    lab[:, w // 2 :] = 1
    return img, lab


def test_crf_keeps_a_clean_two_region_image():
    img, lab = _two_regions()
    params = CRFParams(bilateral_sxy=10, bilateral_srgb=10)
    np.testing.assert_array_equal(crf_inference_label(img, lab, 2, params), lab)
    # and cleans speckle noise along the colour edge's sides
    noisy = lab.copy()
    rng = np.random.default_rng(0)
    flip = rng.random(lab.shape) < 0.08
    noisy[flip] = 1 - noisy[flip]
    out = crf_inference_label(img, noisy, 2, params)
    assert (out != lab).sum() < (noisy != lab).sum() / 4


def _write_image(path: Path, arr: np.ndarray) -> str:
    Image.fromarray(arr).save(path)
    return str(path)


def _toy_set(tmp_path: Path, n=6, h=20, w=28, seed=0):
    """n small RGB images + CAM files with 1-2 tags (of 3 classes); returns dicts, cam dir."""
    rng = np.random.default_rng(seed)
    cam_dir = tmp_path / "cams"
    dicts = []
    for i in range(n):
        img = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        cams = rng.random((3, h, w)).astype(np.float32) * 0.3
        tags = sorted(rng.choice([1, 2, 3], size=1 + i % 2, replace=False).tolist())
        for t in tags:  # a bright blob where its CAM is high
            y, x = rng.integers(4, h - 4), rng.integers(4, w - 4)
            img[y - 3 : y + 4, x - 3 : x + 4] = (200, 50 * t, 30)
            cams[t - 1, y - 2 : y + 3, x - 2 : x + 3] = 1.0
        d = {
            "file_name": _write_image(tmp_path / f"im{i:02d}.png", img),
            "image_id": i,
            "height": h,
            "width": w,
            "tags": tags,
        }
        save_cam_file(cam_file_path(str(cam_dir), d), cams[np.asarray(tags) - 1], tags, (h, w))
        dicts.append(d)
    return dicts, str(cam_dir)


def test_pool_output_equals_sequential(tmp_path):
    dicts, cam_dir = _toy_set(tmp_path, n=6)
    params = CRFRefiner(
        conf_fg=0.5, conf_bg=0.2, crf=CRFParams(bilateral_sxy=10, bilateral_srgb=10)
    )
    jobs = [(d, cam_file_path(cam_dir, d), params) for d in dicts]
    seq = list(map_in_pool(label_from_files, jobs, num_workers=1, progress=False))
    pool = list(map_in_pool(label_from_files, jobs, num_workers=2, progress=False))
    assert len(seq) == len(pool) == 6
    for a, b in zip(seq, pool):
        np.testing.assert_array_equal(a, b)
    assert any((a == 255).any() for a in seq) and any(((a > 0) & (a < 255)).any() for a in seq)


# ---------------------------------------------------------------------- rounds
def test_killed_round_leaves_nothing_complete_and_resumes_to_same_files(tmp_path, monkeypatch):
    dicts, cam_dir = _toy_set(tmp_path, n=6)
    params = CRFRefiner(
        conf_fg=0.5, conf_bg=0.2, crf=CRFParams(bilateral_sxy=10, bilateral_srgb=10)
    )
    ref_root, root = str(tmp_path / "ref"), str(tmp_path / "run")
    write_cam_round(
        dicts, cam_dir, rounds.RoundWriter(ref_root, 1, 4), params, num_workers=1, progress=False
    )

    writer = rounds.RoundWriter(root, 1, 4)
    die_after_writes(monkeypatch, writer, 3)
    with pytest.raises(KeyboardInterrupt):
        write_cam_round(dicts, cam_dir, writer, params, num_workers=2, progress=False)
    assert rounds.latest_complete_round(root) is None
    assert not os.path.exists(rounds.round_dir(root, 1))
    assert len([f for f in os.listdir(writer.partial_dir) if f.endswith(".png")]) == 3

    # resume: the 3 finished labels are not recomputed
    writer2 = rounds.RoundWriter(root, 1, 4)
    done_before = {
        f: os.path.getmtime(os.path.join(writer2.partial_dir, f))
        for f in os.listdir(writer2.partial_dir)
    }
    folder = write_cam_round(dicts, cam_dir, writer2, params, num_workers=2, progress=False)
    assert rounds.latest_complete_round(root) == (1, folder)
    for f, t in done_before.items():
        assert os.path.getmtime(os.path.join(folder, f)) == t
    for d in dicts:
        stem = rounds.label_stem(d) + ".png"
        np.testing.assert_array_equal(
            read_label_png(os.path.join(folder, stem)),
            read_label_png(os.path.join(ref_root, "round_01", stem)),
        )
    # and a complete round is not overwritten without asking
    with pytest.raises(FileExistsError, match="already complete"):
        rounds.RoundWriter(root, 1, 4)


def test_segmentor_round_only_uses_tags(tmp_path):
    dicts, _ = _toy_set(tmp_path, n=3)

    class FakeSegmentor(torch.nn.Module):
        def forward(self, inputs):  # class 2 everywhere is the strongest, then background
            h, w = inputs[0]["height"], inputs[0]["width"]
            s = torch.zeros(4, h, w)
            s[2], s[0] = 5.0, 1.0
            return [{"sem_seg": s}]

    def mapper(d):
        return dict(d)

    folder = write_segmentation_round(
        FakeSegmentor(),
        dicts,
        mapper,
        rounds.RoundWriter(str(tmp_path / "seg"), 1, 4),
        crf=None,
        progress=False,
    )
    for d in dicts:
        lab = read_label_png(os.path.join(folder, rounds.label_stem(d) + ".png"))
        assert (lab == (2 if 2 in d["tags"] else 0)).all()


def test_segmentor_round_conf_marks_unsure_pixels(tmp_path):
    """WSSS.PSEUDO.SEG_CONF: a pixel whose label's probability, renormalised over the background
    and the image's tags, is under it becomes 255; 0 labels every pixel, with or without the CRF
    (with it, no label reaches 0.99 here, so every pixel is unsure)."""
    dicts, _ = _toy_set(tmp_path, n=4)

    class HalfSure(torch.nn.Module):
        def forward(self, inputs):  # left: class 2 at 0.6 / bg 0.1; right: 0.35 / bg 0.3
            h, w = inputs[0]["height"], inputs[0]["width"]
            s = torch.zeros(4, h, w)
            s[0, :, : w // 2], s[2, :, : w // 2], s[3, :, : w // 2] = 0.1, 0.6, 0.3
            s[0, :, w // 2 :], s[2, :, w // 2 :], s[3, :, w // 2 :] = 0.3, 0.35, 0.35
            return [{"sem_seg": s}]

    def labels(conf, crf=None, name="seg"):
        folder = write_segmentation_round(
            HalfSure(),
            dicts,
            lambda d: dict(d),
            rounds.RoundWriter(str(tmp_path / name), 1, 4),
            crf=crf,
            progress=False,
            conf=conf,
        )
        return [read_label_png(os.path.join(folder, rounds.label_stem(d) + ".png")) for d in dicts]

    halves = ({0: 0.1, 1: 0.0, 2: 0.6, 3: 0.3}, {0: 0.3, 1: 0.0, 2: 0.35, 3: 0.35})
    w = dicts[0]["width"]
    kinds = set()
    for d, dense, sure in zip(dicts, labels(0.0, name="dense"), labels(0.7, name="sure")):
        for half, cols in zip(halves, (slice(0, w // 2), slice(w // 2, w))):
            ids = [0, *d["tags"]]
            best = max(ids, key=lambda c: (half[c], -c))  # the first of equal scores
            p = half[best] / sum(half[c] for c in ids)
            assert (dense[:, cols] == best).all()
            assert (sure[:, cols] == (best if p >= 0.7 else 255)).all()
            kinds.add(p >= 0.7)
    assert kinds == {True, False}  # both cases occur in the toy set
    crf = CRFParams(iterations=2)
    for dense, sure in zip(labels(0.0, crf, "dense_crf"), labels(0.99, crf, "sure_crf")):
        assert (dense != 255).all() and (sure == 255).all()  # nothing reaches 0.99


# ---------------------------------------------------------------------- bad input
def test_truncated_or_mismatched_cam_file_is_named(tmp_path):
    dicts, cam_dir = _toy_set(tmp_path, n=1)
    path = cam_file_path(cam_dir, dicts[0])
    with pytest.raises(ValueError, match=r"a\.npz|im00\.npz") as e:
        load_cam_file(path, (10, 10), "some_image.png")
    assert "some_image.png" in str(e.value)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(OSError, match="im00.npz"):
        load_cam_file(path)
    params = ThresholdRefiner()
    with pytest.raises(OSError, match="im00.npz"):
        label_from_files((dicts[0], path, params))


def test_image_without_tags_is_all_background(tmp_path):
    img = np.full((12, 14, 3), 90, np.uint8)
    empty = np.zeros((0, 12, 14), np.float32)
    for method in ("threshold", "crf", "pamr"):
        lab = refiner_class(method)()(img, empty, [])
        assert lab.shape == (12, 14) and (lab == 0).all()
    assert (threshold_labels(empty, [], 0.0) == 0).all()
    # and end to end through the engine and a file
    model = _hand_model()
    engine = CAMInferenceEngine(mapper=None, scales=(1.0,), flip=True)
    (cam,) = engine.cams_for_batch(model, [_mapped(_ramp_image(), [])])
    assert cam.shape == (0, 16, 24)


def _load_tool():
    return load_script("tools/make_pseudo_labels.py")


def test_tool_does_not_overwrite_a_complete_round(tmp_path):
    tool = _load_tool()
    out = tmp_path / "out"
    final = out / "pseudo_labels" / "round_01"
    final.mkdir(parents=True)
    (final / "manifest.json").write_text('{"round": 1}')
    parser = tool.default_argument_parser()
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(
        ["--config-file", str(REPO / "configs" / "pseudo_toy.yaml"), "OUTPUT_DIR", str(out)]
    )
    with pytest.raises(FileExistsError, match="--overwrite"):
        tool.main(args)
    assert (final / "manifest.json").read_text() == '{"round": 1}'


# ---------------------------------------------------------------------- evaluator
def test_pseudo_label_metrics_by_hand():
    # gt rows, pred cols (bg, fg, unsure): bg 8 right 1 unsure; fg 2 right, 1 wrong, 2 unsure
    conf = np.array([[8, 0, 1], [1, 2, 2]])
    r = pseudo_label_metrics(conf, ["background", "a"])
    assert r["IoU-background"] == pytest.approx(100 * 8 / (9 + 9 - 8))
    assert r["IoU-a"] == pytest.approx(100 * 2 / (5 + 2 - 2))
    assert r["REC-a"] == pytest.approx(40.0) and r["PREC-a"] == pytest.approx(100.0)
    assert r["ignored_fraction"] == pytest.approx(3 / 14)
    assert r["mIoU_labeled"] == pytest.approx(100 * (8 / 9 + 2 / 3) / 2)


def test_evaluator_reads_round_files(tmp_path):
    gt = np.array([[0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 255, 1, 1]], np.uint8)
    from wsss_d2.io.files import save_label_png

    save_label_png(str(tmp_path / "gt.png"), gt)
    save_label_png(str(tmp_path / "p.png"), pred)
    ev = PseudoLabelEvaluator("", num_classes=2, distributed=False)
    ev.process(
        [
            {
                "file_name": "x",
                "height": 1,
                "width": 4,
                "sem_seg_file_name": str(tmp_path / "gt.png"),
                "pseudo_seg_file_name": str(tmp_path / "p.png"),
            }
        ],
        [None],
    )
    r = ev.evaluate()["pseudo_seg"]
    assert r["ignored_fraction"] == pytest.approx(1 / 3)
    assert r["IoU-1"] == pytest.approx(100.0) and r["IoU-0"] == pytest.approx(50.0)


# ---------------------------------------------------------------------- refresh hook
def test_refresh_hook_writes_a_round_and_switches_the_loader(tmp_path, cfg_factory):
    from wsss_d2.engine import WSSSTrainer
    from wsss_d2.engine.refresh_hook import PseudoLabelRefreshHook

    cfg = cfg_factory(
        "configs/pseudo_toy.yaml",
        "DATASETS.TRAIN",
        ("toyparts_mini_train",),
        "DATASETS.TEST",
        (),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "DATALOADER.NUM_WORKERS",
        0,
        "SOLVER.IMS_PER_BATCH",
        4,
        "SOLVER.MAX_ITER",
        2,
        "SOLVER.WARMUP_ITERS",
        0,
        "WSSS.HOOKS",
        ("PseudoLabelRefreshHook",),
        "WSSS.PSEUDO.REFRESH.PERIOD",
        1,
        "WSSS.PSEUDO.REFRESH.AT_END",
        True,
        "WSSS.PSEUDO.SCALES",
        (1.0,),
        "WSSS.PSEUDO.NUM_WORKERS",
        1,
        "MODEL.TINY.WIDTHS",
        (8, 8, 8, 8),
    )
    trainer = WSSSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    hook = next(h for h in trainer._hooks if isinstance(h, PseudoLabelRefreshHook))
    trainer.train()
    root = str(tmp_path / "out" / "pseudo_labels")
    # round 1 at iteration 1 (trained on from then on), round 2 after the last iteration
    assert [k for k, _ in rounds.list_complete_rounds(root)] == [1, 2]
    assert rounds.read_manifest(rounds.round_dir(root, 2))["iteration"] == 2
    folder = rounds.round_dir(root, 1)
    assert hook.cfg.WSSS.PSEUDO.TRAIN_ROUND == folder
    assert hook.history and "mIoU" in hook.history[0]["metrics"]
    batch = next(iter(trainer._trainer.data_loader))
    assert all("sem_seg" in x for x in batch)  # the new loader reads the round's labels
    assert rounds.read_manifest(folder)["num_images"] == 24


def test_cam_folder_of_another_model_is_not_reused(tmp_path):
    from wsss_d2.io.cam_files import check_cam_dir

    folder = str(tmp_path / "cams")
    check_cam_dir(folder, {"weights": "a.pth", "scales": [1.0]})
    save_cam_file(os.path.join(folder, "x.npz"), np.zeros((0, 2, 2)), [], (2, 2))
    check_cam_dir(folder, {"weights": "a.pth", "scales": [1.0]})  # same model: reused
    assert os.path.isfile(os.path.join(folder, "x.npz"))
    with pytest.raises(FileExistsError, match="cams"):
        check_cam_dir(folder, {"weights": "b.pth", "scales": [1.0]})
    check_cam_dir(folder, {"weights": "b.pth", "scales": [1.0]}, overwrite=True)
    assert not os.path.isfile(os.path.join(folder, "x.npz"))


def test_fold_bn_and_channels_last_keep_the_cams(tmp_path, cfg_factory):
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    cfg = cfg_factory(
        "configs/pseudo_toy.yaml",
        "MODEL.TINY.WIDTHS",
        (8, 8, 8, 8),
        "WSSS.PSEUDO.SCALES",
        (1.0, 0.5),
        "WSSS.PSEUDO.IMS_PER_BATCH",
        3,
    )
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():  # non-trivial BatchNorm statistics to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dicts = DatasetCatalog.get("toyparts_mini_train")[:5]
    plain = CAMInferenceEngine(cfg, fold_bn=False, channels_last=False)
    fast = CAMInferenceEngine(cfg)
    assert fast.fold_bn and fast.channels_last
    plain.run(model, dicts, str(tmp_path / "plain"), progress=False)
    fast.run(model, dicts, str(tmp_path / "fast"), progress=False)
    for d in dicts:
        a, ka = load_cam_file(cam_file_path(str(tmp_path / "plain"), d))
        b, kb = load_cam_file(cam_file_path(str(tmp_path / "fast"), d))
        assert ka.tolist() == kb.tolist()
        np.testing.assert_allclose(a, b, atol=2e-3)
    # the model itself is untouched and back in training mode
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert v.dim() != 4 or v.is_contiguous(), k


def test_engine_runs_a_plda_model(tmp_path, cfg_factory):
    """Any CAMClassifier-interface meta-architecture works: here PLDA (toy config)."""
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    cfg = cfg_factory(
        "configs/plda_toy.yaml", "WSSS.PSEUDO.SCALES", (1.0, 0.5), "INPUT.TAGS.TEST_LONG", 0
    )
    model = build_model(cfg).eval()
    assert type(model).__name__ == "PLDA"
    dicts = DatasetCatalog.get("toyparts_mini_train")[:3]
    paths = CAMInferenceEngine(cfg).run(model, dicts, str(tmp_path / "cams"), progress=False)
    for d, p in zip(dicts, paths):
        cams, keys = load_cam_file(p, (d["height"], d["width"]), d["file_name"])
        assert keys.tolist() == sorted(d["tags"]) and cams.max() <= 1.0 + 1e-3


def _two_rank_round(root: str, dicts: list, cam_dir: str) -> None:
    params = CRFRefiner(
        conf_fg=0.5, conf_bg=0.2, crf=CRFParams(bilateral_sxy=10, bilateral_srgb=10)
    )
    write_cam_round(
        dicts, cam_dir, rounds.RoundWriter(root, 1, 4), params, num_workers=1, progress=False
    )


def test_two_process_round_equals_one_process(tmp_path):
    """Ranks label their shards, the main process renames, all meet at barriers (gloo, CPU)."""
    import socket

    from wsss_d2.engine.launch import launch

    dicts, cam_dir = _toy_set(tmp_path, n=5)
    _two_rank_round(str(tmp_path / "one"), dicts, cam_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch(
        _two_rank_round,
        2,
        dist_url=f"tcp://127.0.0.1:{port}",
        args=(str(tmp_path / "two"), dicts, cam_dir),
    )
    one, two = rounds.round_dir(str(tmp_path / "one"), 1), rounds.round_dir(
        str(tmp_path / "two"), 1
    )
    assert rounds.read_manifest(two)["num_images"] == 5
    assert_same_labels(dicts, one, two)


def test_cam_fingerprint_ignores_label_settings(cfg_factory):
    from detectron2.modeling import build_model

    from wsss_d2.pseudo.make_round import cam_fingerprint

    cfg = cfg_factory("configs/pseudo_toy.yaml", "MODEL.TINY.WIDTHS", (8, 8, 8, 8))
    model = build_model(cfg)
    base = cam_fingerprint(cfg, model, CAMInferenceEngine(cfg))
    cfg2 = cfg.clone()
    cfg2.WSSS.PSEUDO.CONF_FG, cfg2.WSSS.PSEUDO.METHOD = 0.9, "threshold"
    assert cam_fingerprint(cfg2, model, CAMInferenceEngine(cfg2)) == base
    cfg2.WSSS.PSEUDO.SCALES = (1.0,)
    assert cam_fingerprint(cfg2, model, CAMInferenceEngine(cfg2)) != base
    cfg3 = cfg_factory("configs/pseudo_toy.yaml", "MODEL.TINY.WIDTHS", (8, 8, 8, 16))
    assert cam_fingerprint(cfg3, build_model(cfg3), CAMInferenceEngine(cfg3)) != base


def test_segmentor_round_runs_one_crf_not_the_test_crf_too(tmp_path):
    """CIAN's retraining labels are refined by one CRF (the label CRF); the model's own test-time
    CRF is off while it labels, and back on afterwards."""
    dicts, _ = _toy_set(tmp_path, n=2)
    calls = []

    class SegmentorWithTestCRF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.test_crf = lambda image, probs: calls.append("test") or probs

        def forward(self, inputs):
            h, w = inputs[0]["height"], inputs[0]["width"]
            if self.test_crf is not None:
                self.test_crf(None, None)
            return [{"sem_seg": torch.rand(4, h, w)}]

    net = SegmentorWithTestCRF()
    write_segmentation_round(
        net,
        dicts,
        lambda d: dict(d),
        rounds.RoundWriter(str(tmp_path / "seg"), 1, 4),
        crf=CRFParams(iterations=2),
        num_workers=1,
        progress=False,
    )
    assert calls == [] and net.test_crf is not None


def test_test_crf_iterations_key(cfg_factory):
    from wsss_d2.modeling.meta_arch.segmentor import build_test_crf

    cfg = cfg_factory("configs/cian_toy.yaml", "MODEL.SEG_HEAD.TEST_CRF", True)
    assert build_test_crf(cfg).keywords["params"].iterations == cfg.WSSS.PSEUDO.CRF.ITERATIONS
    cfg.MODEL.SEG_HEAD.TEST_CRF_ITERATIONS = 5
    assert build_test_crf(cfg).keywords["params"].iterations == 5
