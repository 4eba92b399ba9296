"""Shared test set-up: a private datasets root, small configs, the coco_tiny location."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Generated datasets (toyparts) go to a per-run folder, removed at exit, unless the caller chose
# one (subprocesses of the tests inherit it).
if "DETECTRON2_DATASETS" not in os.environ:
    _DATASETS = tempfile.mkdtemp(prefix="wsss_d2_datasets_")
    os.environ["DETECTRON2_DATASETS"] = _DATASETS
    atexit.register(shutil.rmtree, _DATASETS, ignore_errors=True)

REPO = Path(__file__).resolve().parents[1]

# config overrides for tiny, fast CPU runs on the generated mini toy data
MINI_TOY_OPTS = [
    "DATASETS.TRAIN", "('toyparts_mini_train',)", "DATASETS.TEST", "('toyparts_mini_val',)",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "0",
    "MODEL.TINY.WIDTHS", "(8, 8, 16, 16)",
]  # fmt: skip
COCO_TINY = REPO.parent / "shared" / "data" / "coco_tiny"
VOC_MINI = REPO.parent / "shared" / "data" / "voc_mini"


def load_script(relpath: str):
    """The repository script ``relpath`` (e.g. ``tools/train_net.py``) imported as a module."""
    import importlib.util

    path = REPO / relpath
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_same_labels(dicts, folder_a: str, folder_b: str) -> None:
    """Every image's label PNG is the same in the two round folders, pixel for pixel."""
    import numpy as np

    from wsss_d2.io.files import read_label_png
    from wsss_d2.io.rounds import label_stem

    for d in dicts:
        stem = label_stem(d) + ".png"
        np.testing.assert_array_equal(
            read_label_png(os.path.join(folder_a, stem)),
            read_label_png(os.path.join(folder_b, stem)),
        )


def die_after_writes(monkeypatch, writer, n: int) -> list:
    """Make ``writer.write`` raise ``KeyboardInterrupt`` after ``n`` labels (a run killed
    mid-round); returns the list of the images written before."""
    real_write, calls = writer.write, []

    def dying_write(d, label):
        if len(calls) == n:
            raise KeyboardInterrupt("killed mid-round")
        calls.append(d["file_name"])
        return real_write(d, label)

    monkeypatch.setattr(writer, "write", dying_write)
    return calls


@pytest.fixture(scope="session")
def coco_tiny_root() -> Path:
    """``../shared/data/coco_tiny``; the test is skipped when it is absent."""
    if not (COCO_TINY / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"coco_tiny not found at {COCO_TINY}")
    return COCO_TINY


def tag_inputs(n: int = 2, size: int = 64, k: int = 5, seed: int = 0, tag_steps=(0,)):
    """``n`` model inputs (random uint8 images, ``size`` x ``size``): image i is tagged with the
    classes ``(i + step) % k`` for each step in ``tag_steps``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        tags = torch.zeros(k)
        for step in tag_steps:
            tags[(i + step) % k] = 1
        out.append(
            {
                "image": torch.randint(0, 255, (3, size, size), generator=g).to(torch.uint8),
                "tags": tags,
                "height": size,
                "width": size,
            }
        )
    return out


def make_cfg(*config_file_and_opts: str):
    """A frozen-free wsss_d2 config: ``make_cfg("configs/cam_toy.yaml", "KEY", "VALUE", ...)``."""

    from wsss_d2.config import get_wsss_cfg

    args = list(config_file_and_opts)
    config_file = str(REPO / args.pop(0)) if args and args[0].endswith(".yaml") else None
    return get_wsss_cfg(config_file, args)


@pytest.fixture
def cfg_factory():
    return make_cfg
