"""Reliability of weights: runs that consume a model refuse to run without weights, with weights of
another architecture, or with a file that is not a checkpoint; training from partial (ImageNet)
weights stays tolerant."""

import os

import pytest
import torch
from conftest import MINI_TOY_OPTS, REPO, make_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model

from wsss_d2 import runs

CAM = str(REPO / "configs" / "cam_toy.yaml")
PSEUDO = str(REPO / "configs" / "pseudo_toy.yaml")
TOY = MINI_TOY_OPTS + ["SOLVER.CHECKPOINT_PERIOD", "100"]


def _train(*argv):
    return runs.train(default_argument_parser().parse_args(list(argv)))


def _labels(*argv):
    return runs.make_pseudo_labels(runs.label_argument_parser().parse_args(list(argv)))


def _save(tmp_path, name, *opts, config="configs/cam_toy.yaml"):
    cfg = make_cfg(config, *MINI_TOY_OPTS, *opts)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save(name)
    return str(tmp_path / f"{name}.pth")


def test_eval_only_without_weights_is_refused(tmp_path):
    out = tmp_path / "ev"
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        _train("--config-file", CAM, "--eval-only", *TOY, "OUTPUT_DIR", str(out))
    assert not (out / "config.yaml").exists()


def test_pseudo_labels_without_weights_are_refused(tmp_path):
    out = tmp_path / "pl"
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty"):
        _labels("--config-file", PSEUDO, *TOY, "OUTPUT_DIR", str(out))
    assert not (out / "pseudo_labels").exists() and not (out / "config.yaml").exists()


def test_checkpoint_of_another_architecture_is_refused_naming_file_and_keys(tmp_path):
    seg = _save(tmp_path, "deeplab", config="configs/deeplabv2_toy.yaml")
    with pytest.raises(ValueError, match=r"deeplab\.pth does not fit.*missing: classifier"):
        _train("--config-file", CAM, "--eval-only", *TOY, "OUTPUT_DIR", str(tmp_path / "e"),
               "MODEL.WEIGHTS", seg)  # fmt: skip
    with pytest.raises(ValueError, match=r"deeplab\.pth does not fit.*unexpected: sem_seg_head"):
        _labels("--config-file", PSEUDO, *TOY, "OUTPUT_DIR", str(tmp_path / "p"),
                "MODEL.WEIGHTS", seg)  # fmt: skip
    assert not (tmp_path / "p" / "pseudo_labels").exists()


def test_checkpoint_with_other_layer_shapes_is_refused(tmp_path):
    wide = _save(tmp_path, "wide", "MODEL.TINY.WIDTHS", "(8, 8, 16, 32)")
    with pytest.raises(ValueError, match=r"wide\.pth does not fit.*of another shape: backbone"):
        _train("--config-file", CAM, "--eval-only", *TOY, "OUTPUT_DIR", str(tmp_path / "e"),
               "MODEL.WEIGHTS", wide)  # fmt: skip


def test_training_from_partial_weights_stays_tolerant(tmp_path):
    """ImageNet-style weights: a backbone only, the heads missing — Detectron2 loads what fits."""
    full = torch.load(_save(tmp_path, "full"), map_location="cpu", weights_only=True)["model"]
    backbone = {k: v for k, v in full.items() if k.startswith("backbone.")}
    torch.save({"model": backbone}, tmp_path / "backbone.pth")
    _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "1", "DATASETS.TEST", "()",
           "OUTPUT_DIR", str(tmp_path / "t"), "MODEL.WEIGHTS", str(tmp_path / "backbone.pth"))  # fmt: skip
    assert (tmp_path / "t" / "model_final.pth").is_file()


def test_truncated_checkpoint_is_named_for_eval_and_on_resume(tmp_path):
    out = tmp_path / "run"
    _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
           "OUTPUT_DIR", str(out))  # fmt: skip
    final = out / "model_final.pth"
    data = final.read_bytes()
    final.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"cannot read checkpoint .*model_final\.pth"):
        _train("--config-file", CAM, "--eval-only", *TOY, "OUTPUT_DIR", str(tmp_path / "e"),
               "MODEL.WEIGHTS", str(final))  # fmt: skip
    with pytest.raises(OSError, match=r"cannot read checkpoint .*model_final\.pth"):
        _train("--config-file", CAM, "--resume", *TOY, "SOLVER.MAX_ITER", "4",
               "DATASETS.TEST", "()", "OUTPUT_DIR", str(out))  # fmt: skip


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    bogus = tmp_path / "notes.pth"
    bogus.write_text("these are not weights\n")
    with pytest.raises(OSError, match=r"notes\.pth"):
        _train("--config-file", CAM, "--eval-only", *TOY, "OUTPUT_DIR", str(tmp_path / "e"),
               "MODEL.WEIGHTS", str(bogus))  # fmt: skip
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match=r"tensor\.pth holds a Tensor"):
        _train("--config-file", CAM, "--eval-only", *TOY, "OUTPUT_DIR", str(tmp_path / "e"),
               "MODEL.WEIGHTS", str(tensor))  # fmt: skip


def test_resume_with_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.replace(_save(tmp_path, "model_0000004", "MODEL.TINY.WIDTHS", "(8, 8, 16, 32)"),
               out / "model_0000004.pth")  # fmt: skip
    (out / "last_checkpoint").write_text("model_0000004.pth")
    with pytest.raises(ValueError, match=r"model_0000004\.pth does not fit"):
        _train("--config-file", CAM, "--resume", *TOY, "SOLVER.MAX_ITER", "8",
               "DATASETS.TEST", "()", "OUTPUT_DIR", str(out))  # fmt: skip


def test_resume_when_last_checkpoint_names_a_missing_file(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000004.pth")
    with pytest.raises(FileNotFoundError, match=r"last_checkpoint names .*model_0000004\.pth"):
        _train("--config-file", CAM, "--resume", *TOY, "SOLVER.MAX_ITER", "8",
               "DATASETS.TEST", "()", "OUTPUT_DIR", str(out))  # fmt: skip


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """A kill while a checkpoint is written leaves no truncated model_*.pth behind."""
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        real_save(obj, f, *a, **k)
        raise KeyboardInterrupt("killed while saving")

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD",
               "2", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out))  # fmt: skip
    assert not any(f.endswith(".pth") for f in os.listdir(out))


def test_eval_only_resume_when_last_checkpoint_names_a_missing_file(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last_checkpoint").write_text("model_0000004.pth")
    with pytest.raises(FileNotFoundError, match=r"last_checkpoint names .*model_0000004\.pth"):
        _train("--config-file", CAM, "--eval-only", "--resume", *TOY, "OUTPUT_DIR", str(out))
