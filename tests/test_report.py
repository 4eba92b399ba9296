"""The pipeline report from synthetic stage folders (no training): every section, absolute stage
folders, and — when Chromium is installed — that a browser renders it."""

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
from conftest import MINI_TOY_OPTS, REPO
from detectron2.data import DatasetCatalog

from wsss_d2.engine.pipeline import Pipeline, Stage
from wsss_d2.engine.report import per_class_columns, write_pipeline_report
from wsss_d2.io.rounds import RoundWriter

CHROMIUM = "/usr/bin/chromium"
CLASSES = ["background", "red", "green", "blue", "yellow", "magenta"]
SECTIONS = ("Stage comparison", "Per-class IoU", "Pseudo-label precision / recall",
            "CAM background threshold", "Label rounds", "Confusion matrices",
            "cam: training losses", "Samples: training set", "Samples: validation set",
            "worst images by mIoU")  # fmt: skip


def _confusion(path, n=6, extra=()):
    rng = np.random.default_rng(len(extra))
    conf = rng.integers(0, 50, (n, n + len(extra))) + 200 * np.eye(n, n + len(extra), dtype=int)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = CLASSES + list(extra)
    path.write_text(json.dumps({"classes": CLASSES, "columns": cols, "confusion": conf.tolist()}))


def _pipeline(tmp_path):
    """cam (train) -> labels (pseudo_labels) -> seg (train), with the files their runs write."""
    opts = list(MINI_TOY_OPTS)
    stages = [
        Stage("cam", "train", str(REPO / "configs/cam_toy.yaml"), opts),
        Stage("labels", "pseudo_labels", str(REPO / "configs/pseudo_toy.yaml"), opts,
              weights_from="cam"),
        Stage("seg", "train", str(REPO / "configs/deeplabv2_toy.yaml"), opts, round_from="labels"),
    ]  # fmt: skip
    out = tmp_path / "run"
    pipe = Pipeline(str(out), stages, source="synthetic.yaml")
    cam = {f"cam/mIoU@{t:.2f}": 30 + 20 * np.sin(3 * t) for t in np.arange(0, 1, 0.1)}
    cam.update({"cam/mIoU": 49.9, **{f"cam/IoU-{c}": 40.0 + i for i, c in enumerate(CLASSES)}})
    labels = {
        "mIoU": 61.0,
        "mIoU_labeled": 70.0,
        "ignored_fraction": 0.2,
        "mPrecision": 75.0,
        "mRecall": 65.0,
        **{f"IoU-{c}": 60.0 for c in CLASSES},
        **{f"PREC-{c}": 80.0 for c in CLASSES},
        **{f"REC-{c}": 55.0 for c in CLASSES},
    }
    seg = {"sem_seg/mIoU": 66.0, **{f"sem_seg/IoU-{c}": 66.0 for c in CLASSES}}  # fmt: skip
    summaries = [
        {"name": n, "kind": k, "config": c, "status": "ran", "seconds": 1.0, "results": r}
        for (n, k, c), r in zip([(s.name, s.kind, s.config) for s in stages], [cam, labels, seg])
    ]
    (out / "cam").mkdir(parents=True)
    (out / "cam" / "metrics.json").write_text(
        "\n".join(json.dumps({"iteration": i, "total_loss": 1 / (i + 1)}) for i in range(5))
    )
    _confusion(out / "cam" / "inference" / "toyparts_mini_val" / "cam_confusion.json")
    _confusion(out / "labels" / "pseudo_label_confusion.json", extra=("unsure",))
    dicts = DatasetCatalog.get("toyparts_mini_train")
    writer = RoundWriter(str(out / "labels" / "pseudo_labels"), 1, 6)
    for d in dicts:
        writer.write(d, np.full((d["height"], d["width"]), d["tags"][0], np.uint8))
    writer.finalize(dicts)
    (out / "labels" / "pseudo_round_01.json").write_text(json.dumps({"metrics": labels}))
    val = DatasetCatalog.get("toyparts_mini_val")
    per_image = [{"file_name": d["file_name"], "mIoU": float(i), "pACC": 50.0}
                 for i, d in enumerate(val)]  # fmt: skip
    inference = out / "seg" / "inference" / "toyparts_mini_val"
    inference.mkdir(parents=True)
    (inference / "sem_seg_per_image.json").write_text(json.dumps(per_image))
    return pipe, summaries, val


def test_report_sections_from_stage_folders(tmp_path, monkeypatch):
    pipe, summaries, val = _pipeline(tmp_path)
    columns, per_class = per_class_columns(summaries)
    assert columns == ["cam (cam)", "labels (pseudo_seg)", "seg (sem_seg)"]
    monkeypatch.chdir(tempfile.mkdtemp())  # rendered from another folder: nothing vanishes
    path = write_pipeline_report(pipe, summaries, num_samples=2, worst_k=3)
    html = open(path).read()
    for s in SECTIONS:
        assert s in html, s
    assert "labels round 1" in html and str(tmp_path / "run" / "labels" / "pseudo_labels") in html
    assert "ignore / unsure (255)" in html
    # the worst images are the lowest per-image mIoU beyond the first two shown
    for d in val[2:5]:
        assert os.path.basename(d["file_name"]) in html
    assert "image mIoU 2.0 %" in html and "image mIoU 11.0 %" not in html


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium is not installed")
def test_report_renders_in_headless_chromium(tmp_path):
    """The report opens in a browser: the DOM Chromium builds holds every section and every
    image decodes into a non-blank screenshot."""
    import cv2

    pipe, summaries, _ = _pipeline(tmp_path)
    path = write_pipeline_report(pipe, summaries, num_samples=2, worst_k=2)
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    dom = subprocess.run(flags + ["--dump-dom", f"file://{path}"], capture_output=True, text=True,
                         timeout=120).stdout  # fmt: skip
    for s in SECTIONS:
        assert s in dom, s
    assert dom.count("<img") == open(path).read().count("<img")
    shot = tmp_path / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1400,3000", f"file://{path}"],
                   capture_output=True, timeout=120)  # fmt: skip
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (3000, 1400) and img.std() > 10
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
