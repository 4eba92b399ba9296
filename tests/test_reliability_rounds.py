"""Reliability of label rounds: fingerprints (settings, weights, dataset), --overwrite, one writer
per round, the refresh hook across --resume, a full disk mid-write."""

import errno
import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import MINI_TOY_OPTS, REPO, make_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from sam_utils import write_images

from wsss_d2 import runs
from wsss_d2.engine import HOOK_REGISTRY, WSSSTrainer
from wsss_d2.io import files, rounds
from wsss_d2.io.cam_files import check_cam_dir, save_cam_file
from wsss_d2.io.files import read_label_png
from wsss_d2.pseudo.make_round import make_round

FAST_CAM = [
    "WSSS.PSEUDO.METHOD", "threshold", "WSSS.PSEUDO.SCALES", "(1.0,)", "WSSS.PSEUDO.FLIP",
    "False", "WSSS.PSEUDO.IMS_PER_BATCH", "4", "WSSS.PSEUDO.NUM_WORKERS", "1",
]  # fmt: skip


def _cfg(tmp_path, *opts, config="configs/pseudo_toy.yaml"):
    return make_cfg(config, *MINI_TOY_OPTS, *FAST_CAM, "OUTPUT_DIR", str(tmp_path / "out"), *opts)


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


def _dicts(n=6, start=0):
    return DatasetCatalog.get("toyparts_mini_train")[start : start + n]


def _interrupt_after(monkeypatch, n):
    """Make the n+1-th label write of any round raise KeyboardInterrupt (a kill mid-round)."""
    real, calls = rounds.RoundWriter.write, []

    def write(self, d, label):
        if len(calls) == n:
            raise KeyboardInterrupt("killed mid-round")
        calls.append(d["file_name"])
        return real(self, d, label)

    monkeypatch.setattr(rounds.RoundWriter, "write", write)


def _labels(folder, dicts):
    return [read_label_png(os.path.join(folder, rounds.label_stem(d) + ".png")) for d in dicts]


def _killed_round(tmp_path, monkeypatch, cfg, model, dicts, root, n=3, **kw):
    _interrupt_after(monkeypatch, n)
    with pytest.raises(KeyboardInterrupt):
        make_round(cfg, model, dicts, 1, root=root, progress=False, **kw)
    monkeypatch.undo()
    assert not os.path.exists(rounds.round_dir(root, 1))


# ---------------------------------------------------------------------- fingerprints
def test_partial_round_of_other_settings_is_refused_naming_the_key(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    model, dicts, root = _model(cfg), _dicts(), str(tmp_path / "labels")
    _killed_round(tmp_path, monkeypatch, cfg, model, dicts, root)
    other = _cfg(tmp_path, "WSSS.PSEUDO.BG_THRESHOLD", "0.6")
    with pytest.raises(FileExistsError, match=r"WSSS\.PSEUDO\.BG_THRESHOLD: 0\.5 -> 0\.6"):
        make_round(other, model, dicts, 1, root=root, progress=False)
    assert rounds.latest_complete_round(root) is None  # nothing mixed was finalized


def test_overwrite_really_empties_a_partial_round(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    model, dicts, root = _model(cfg), _dicts(), str(tmp_path / "labels")
    _killed_round(tmp_path, monkeypatch, cfg, model, dicts, root)
    other = _cfg(tmp_path, "WSSS.PSEUDO.BG_THRESHOLD", "0.6")
    folder = make_round(other, model, dicts, 1, root=root, overwrite=True, progress=False)
    ref_old = make_round(cfg, model, dicts, 1, root=str(tmp_path / "a"), progress=False)
    ref_new = make_round(other, model, dicts, 1, root=str(tmp_path / "b"), progress=False)
    assert any((x != y).any() for x, y in zip(_labels(ref_old, dicts), _labels(ref_new, dicts)))
    for got, want in zip(_labels(folder, dicts), _labels(ref_new, dicts)):
        np.testing.assert_array_equal(got, want)  # no label of the old settings survived


def test_partial_round_of_other_weights_is_refused(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    paths = []
    for seed, name in ((0, "a"), (1, "b")):
        DetectionCheckpointer(_model(cfg, seed), save_dir=str(tmp_path)).save(name)
        paths.append(str(tmp_path / f"{name}.pth"))
    dicts, root = _dicts(), str(tmp_path / "labels")
    cfg_a = _cfg(tmp_path, "MODEL.WEIGHTS", paths[0], "WSSS.PSEUDO.CAM_DIR", str(tmp_path / "ca"))
    cfg_b = _cfg(tmp_path, "MODEL.WEIGHTS", paths[1], "WSSS.PSEUDO.CAM_DIR", str(tmp_path / "cb"))
    _killed_round(tmp_path, monkeypatch, cfg_a, _model(cfg, 0), dicts, root)
    with pytest.raises(FileExistsError, match=r"partial pseudo-label round.*weights\.sha256"):
        make_round(cfg_b, _model(cfg, 1), dicts, 1, root=root, progress=False)


def test_partial_round_of_another_dataset_is_refused(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    model, root = _model(cfg), str(tmp_path / "labels")
    _killed_round(tmp_path, monkeypatch, cfg, model, _dicts(6, 0), root)
    with pytest.raises(FileExistsError, match=r"dataset\.hash"):
        make_round(cfg, model, _dicts(6, 6), 1, root=root, progress=False)


def test_partial_segmentor_round_of_other_settings_is_refused(tmp_path, monkeypatch):
    seg = ("MODEL.SEG_HEAD.CONV_DIMS", "16", "MODEL.SEG_HEAD.TEST_SCALES", "(1.0,)")
    seg += ("MODEL.SEG_HEAD.TEST_FLIP", "False", "WSSS.PSEUDO.SEG_METHOD", "argmax")
    cfg = _cfg(tmp_path, *seg, config="configs/deeplabv2_toy.yaml")
    model, dicts, root = _model(cfg), _dicts(), str(tmp_path / "labels")
    _killed_round(tmp_path, monkeypatch, cfg, model, dicts, root)
    other = _cfg(
        tmp_path, *seg, "WSSS.PSEUDO.SEG_METHOD", "crf", config="configs/deeplabv2_toy.yaml"
    )
    with pytest.raises(FileExistsError, match=r"WSSS\.PSEUDO\.SEG_METHOD: 'argmax' -> 'crf'"):
        make_round(other, model, dicts, 1, root=root, progress=False)


def _sam_dataset(tmp_path):
    """Four random images with two GT boxes each, registered with 2 classes."""
    name = "rel_sam_boxes"
    dicts = write_images(str(tmp_path / "sam_images"), 4)
    for d in dicts:
        d["annotations"] = [
            {"bbox": [4, 4, 20, 20], "bbox_mode": 0, "category_id": 1, "iscrowd": 0},
            {"bbox": [30, 10, 60, 40], "bbox_mode": 0, "category_id": 2, "iscrowd": 0},
        ]
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).set(stuff_classes=["background", "cat", "dog"], ignore_label=255)
    return name


def _sam_run(tmp_path, *opts, flags=()):
    name = _sam_dataset(tmp_path)
    args = runs.label_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "sam_boxes_coco_tiny.yaml"), *flags,
         "OUTPUT_DIR", str(tmp_path / "sam_out"), "INPUT.TAGS.NUM_CLASSES", "2",
         "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
         "WSSS.SAM.IMAGES_PER_BATCH", "1", *opts]
    )  # fmt: skip
    return runs.make_sam_labels(args)


def test_partial_sam_round_of_other_settings_is_refused(tmp_path, monkeypatch):
    _interrupt_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _sam_run(tmp_path)
    monkeypatch.undo()
    with pytest.raises(FileExistsError, match=r"WSSS\.SAM\.MASK_MIN_SCORE: 0\.0 -> 0\.5"):
        _sam_run(tmp_path, "WSSS.SAM.MASK_MIN_SCORE", "0.5")
    res = _sam_run(tmp_path)  # the same settings resume it
    assert res["sam_boxes"]["images"] == 4


def test_cam_folder_without_a_fingerprint_is_not_reused(tmp_path):
    folder = str(tmp_path / "cams")
    save_cam_file(os.path.join(folder, "x.npz"), np.zeros((0, 2, 2)), [], (2, 2))
    with pytest.raises(FileExistsError, match="unknown origin"):
        check_cam_dir(folder, {"weights": "a.pth"})
    check_cam_dir(folder, {"weights": "a.pth"}, overwrite=True)
    assert not os.path.exists(os.path.join(folder, "x.npz"))


# ---------------------------------------------------------------------- one writer per round
def _lock_file(folder, pid):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "round_01.lock"), "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": "earlier"}, f)


def test_a_second_writer_of_a_round_fails_at_once(tmp_path):
    root = str(tmp_path / "labels")
    _lock_file(root, os.getppid())  # a live process that is not this one
    with pytest.raises(RuntimeError, match=rf"in use by another process \(pid {os.getppid()}"):
        rounds.RoundWriter(root, 1, num_classes=2)
    assert not os.path.exists(rounds.round_dir(root, 1) + ".partial")


def test_a_stale_round_lock_is_taken_over_and_logged(tmp_path, caplog, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    root = str(tmp_path / "labels")
    _lock_file(root, dead.pid)
    monkeypatch.setattr(logging.getLogger("wsss_d2"), "propagate", True)
    with caplog.at_level(logging.WARNING):
        w = rounds.RoundWriter(root, 1, num_classes=2)
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    d = {"file_name": "x.png", "height": 2, "width": 2}
    w.write(d, np.zeros((2, 2), np.uint8))
    w.finalize([d])
    assert not os.path.exists(os.path.join(root, "round_01.lock"))  # released when complete


# ---------------------------------------------------------------------- refresh hook + resume
@HOOK_REGISTRY.register()
class _RelCrashBefore(HookBase):
    """Raises before iteration ``at`` once (a test switch)."""

    at = None

    def __init__(self, cfg):
        super().__init__()

    def before_step(self):
        if type(self).at is not None and self.trainer.iter == type(self).at:
            type(self).at = None
            raise RuntimeError("simulated crash")


def _refresh_cfg(tmp_path):
    return make_cfg(
        "configs/pseudo_toy.yaml", *MINI_TOY_OPTS, *FAST_CAM,
        "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "6",
        "SOLVER.CHECKPOINT_PERIOD", "3", "WSSS.HOOKS", "('PseudoLabelRefreshHook', '_RelCrashBefore')",
        "WSSS.PSEUDO.REFRESH.PERIOD", "2", "WSSS.PSEUDO.REFRESH.EVALUATE", "False",
    )  # fmt: skip


def _refresh_hook(trainer):
    return next(h for h in trainer._hooks if type(h).__name__ == "PseudoLabelRefreshHook")


def test_resume_trains_on_the_checkpoints_round_and_reuses_the_next(tmp_path):
    cfg = _refresh_cfg(tmp_path)
    root = str(tmp_path / "out" / "pseudo_labels")
    # rounds 1 (iteration 2) and 2 (iteration 4) are written; the checkpoint of iteration 2 (on
    # round 1) is the last before the crash at iteration 5
    _RelCrashBefore.at = 5
    trainer = WSSSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train()
    assert [k for k, _ in rounds.list_complete_rounds(root)] == [1, 2]
    trainer = WSSSTrainer(cfg)
    trainer.resume_or_load(resume=True)
    hook = _refresh_hook(trainer)
    assert hook.cfg.WSSS.PSEUDO.TRAIN_ROUND == rounds.round_dir(root, 1)  # not the later round 2
    trainer.train()
    # iteration 4 rewrote nothing: round 2 (same fingerprint) was reused, no round 3 on top
    assert [k for k, _ in rounds.list_complete_rounds(root)] == [1, 2]
    assert hook.cfg.WSSS.PSEUDO.TRAIN_ROUND == rounds.round_dir(root, 2)


def test_refresh_interrupted_mid_write_resumes_that_round(tmp_path, monkeypatch):
    cfg = _refresh_cfg(tmp_path)
    root = str(tmp_path / "out" / "pseudo_labels")
    _interrupt_after(monkeypatch, 24 + 5)  # round 1 (24 images), then 5 labels of round 2
    trainer = WSSSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    monkeypatch.undo()
    partial = rounds.round_dir(root, 2) + ".partial"
    kept = {f: os.path.getmtime(os.path.join(partial, f)) for f in os.listdir(partial)}
    assert sum(f.endswith(".png") for f in kept) == 5
    trainer = WSSSTrainer(cfg)
    trainer.resume_or_load(resume=True)
    trainer.train()
    assert [k for k, _ in rounds.list_complete_rounds(root)] == [1, 2]
    folder = rounds.round_dir(root, 2)
    for f, t in kept.items():
        if f.endswith(".png"):
            assert os.path.getmtime(os.path.join(folder, f)) == t  # resumed, not rewritten


# ---------------------------------------------------------------------- a full disk
def test_disk_full_on_a_label_write_leaves_a_resumable_round(tmp_path, monkeypatch):
    dicts = [
        {"file_name": str(tmp_path / f"img{i}.png"), "height": 8, "width": 8, "tags": [1]}
        for i in range(5)
    ]
    label = np.ones((8, 8), np.uint8)
    root = str(tmp_path / "labels")
    w = rounds.RoundWriter(root, 1, num_classes=2)
    for d in dicts[:2]:
        w.write(d, label)

    real_fdopen = os.fdopen

    class _FullDisk:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # part of the bytes land, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="No space left"):
        w.write(dicts[2], label)
    monkeypatch.undo()
    # no half-written label, no temporary file, no complete-looking round
    assert sorted(os.listdir(w.partial_dir)) == ["img0.png", "img1.png"]
    assert rounds.latest_complete_round(root) is None
    with pytest.raises(RuntimeError, match="incomplete: 3 images have no label"):
        w.finalize(dicts)
    # space is back: the same round resumes where it stopped
    w2 = rounds.RoundWriter(root, 1, num_classes=2)
    assert [w2.is_done(d) for d in dicts] == [True, True, False, False, False]
    for d in dicts:
        if not w2.is_done(d):
            w2.write(d, label)
    folder = w2.finalize(dicts)
    assert rounds.read_manifest(folder)["num_images"] == 5
