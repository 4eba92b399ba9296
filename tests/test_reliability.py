"""Reliability sweep: disk full during a label write, a corrupt image in the middle of a dataset."""

import errno
import os
import shutil

import numpy as np
import pytest
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from wsss_d2.data.datasets import common
from wsss_d2.io import rounds
from wsss_d2.pseudo.make_round import make_round


def _dicts(tmp_path, n=5):
    return [
        {"file_name": str(tmp_path / f"img{i}.png"), "height": 8, "width": 8, "tags": [1]}
        for i in range(n)
    ]


def test_disk_full_on_a_label_write_leaves_a_resumable_round(tmp_path, monkeypatch):
    dicts = _dicts(tmp_path)
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

    monkeypatch.setattr(common.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
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


def test_corrupt_image_mid_dataset_names_it_and_resumes_after_the_fix(tmp_path, cfg_factory):
    src = DatasetCatalog.get("toyparts_mini_train")[:4]
    dicts = []
    for i, d in enumerate(src):  # a private copy of 4 images, the third one corrupt
        dst = tmp_path / f"im{i}.png"
        shutil.copy(d["file_name"], dst)
        dicts.append({**d, "file_name": str(dst)})
    good = (tmp_path / "im2.png").read_bytes()
    (tmp_path / "im2.png").write_bytes(good[: len(good) // 3])  # truncated PNG
    cfg = cfg_factory(
        "configs/pseudo_toy.yaml",
        "MODEL.TINY.WIDTHS",
        "(8, 8, 16, 16)",
        "WSSS.PSEUDO.METHOD",
        "threshold",
        "WSSS.PSEUDO.SCALES",
        "(1.0,)",
        "WSSS.PSEUDO.FLIP",
        "False",
        "WSSS.PSEUDO.IMS_PER_BATCH",
        "1",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
    )
    model = build_model(cfg).eval()
    root = str(tmp_path / "out" / "pseudo_labels")
    with pytest.raises(OSError, match="im2.png"):
        make_round(cfg, model, dicts, 1, root=root, progress=False)
    assert rounds.latest_complete_round(root) is None
    (tmp_path / "im2.png").write_bytes(good)
    folder = make_round(cfg, model, dicts, 1, root=root, progress=False)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".png")) == [
        f"im{i}.png" for i in range(4)
    ]
