"""Reliability of the tools and the pipeline: a refused run leaves the previous run's files as they
were, one writer per OUTPUT_DIR, numbered .stale folders, a label stage killed after its round was
complete resumes."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest
import yaml
from conftest import MINI_TOY_OPTS, REPO
from detectron2.engine import default_argument_parser

from wsss_d2 import runs
from wsss_d2.engine.pipeline import DONE_FILE

CAM = str(REPO / "configs" / "cam_toy.yaml")
TOY = MINI_TOY_OPTS + ["SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()"]
FAST_LABELS = [
    "WSSS.PSEUDO.METHOD", "threshold", "WSSS.PSEUDO.SCALES", "(1.0,)", "WSSS.PSEUDO.FLIP",
    "False", "WSSS.PSEUDO.NUM_WORKERS", "1",
]  # fmt: skip


def _train(*argv, parser=None):
    parser = parser or runs.train_argument_parser()
    return runs.train(parser.parse_args(list(argv)))


def _mtimes(folder):
    return {
        os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
        for r, _, fs in os.walk(folder)
        for f in fs
    }


def _marked_config(out):
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text("# the previous run's config\n")


# ---------------------------------------------------------------------- refused runs lose nothing
def test_a_refused_label_run_keeps_the_previous_config_yaml(tmp_path):
    out = tmp_path / "labels"
    final = out / "pseudo_labels" / "round_01"
    final.mkdir(parents=True)
    (final / "manifest.json").write_text('{"round": 1}')
    _marked_config(out)
    args = runs.label_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "pseudo_toy.yaml"), "OUTPUT_DIR", str(out)]
    )
    with pytest.raises(FileExistsError, match="already complete"):
        runs.make_pseudo_labels(args)
    assert (out / "config.yaml").read_text() == "# the previous run's config\n"
    sam = tmp_path / "sam"
    _marked_config(sam)
    args = runs.label_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs" / "sam_boxes_coco_tiny.yaml"),
         "DATASETS.TRAIN", "('toyparts_mini_train',)", "INPUT.TAGS.NUM_CLASSES", "5",
         "WSSS.SAM.MODEL_TYPE", "vit_b", "OUTPUT_DIR", str(sam)]
    )  # fmt: skip
    with pytest.raises(FileNotFoundError, match="WSSS.SAM.CHECKPOINT is empty"):
        runs.make_sam_labels(args)
    assert (sam / "config.yaml").read_text() == "# the previous run's config\n"


def test_training_into_a_finished_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    common = ["--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out)]
    _train(*common)
    before = _mtimes(out)
    with pytest.raises(FileExistsError, match=r"model_final\.pth.*--resume.*--overwrite"):
        _train(*common, parser=default_argument_parser())  # the parser other tools use, too
    assert _mtimes(out) == before  # nothing rewritten: checkpoints, config.yaml, metrics
    _train("--overwrite", *common)
    assert _mtimes(out)[str(out / "model_final.pth")] > before[str(out / "model_final.pth")]


def _lock(folder, pid):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".wsss_d2.lock", "w") as f:
        json.dump({"pid": pid, "host": socket.gethostname(), "started": "earlier"}, f)


def test_a_second_training_process_on_the_same_folder_fails_at_once(tmp_path):
    out = tmp_path / "run"
    _lock(out, os.getppid())  # a live process holds the folder
    with pytest.raises(RuntimeError, match=rf"in use by another process \(pid {os.getppid()}"):
        _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out))
    assert sorted(os.listdir(out)) == [".wsss_d2.lock"]  # no config.yaml, log or checkpoint


def test_an_evaluation_into_a_folder_in_training_fails_at_once(tmp_path):
    out = tmp_path / "run"
    _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out))
    weights = str(out / "model_final.pth")
    _lock(out, os.getppid())  # a live process (a training) holds the folder

    def files():  # log.txt aside: this process still holds the first run's log handler
        return {k: v for k, v in _mtimes(out).items() if not k.endswith("log.txt")}

    before = files()
    with pytest.raises(RuntimeError, match=rf"in use by another process \(pid {os.getppid()}"):
        _train("--eval-only", "--config-file", CAM, *TOY, "MODEL.WEIGHTS", weights,
               "OUTPUT_DIR", str(out))  # fmt: skip
    assert files() == before  # config.yaml and inference/ untouched
    os.remove(out / ".wsss_d2.lock")
    res = _train("--eval-only", "--config-file", CAM, *TOY, "MODEL.WEIGHTS", weights,
                 "OUTPUT_DIR", str(out))  # fmt: skip
    assert isinstance(res, dict) and not (out / ".wsss_d2.lock").exists()


def test_a_stale_training_lock_is_taken_over_and_logged(tmp_path, caplog, monkeypatch):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    _lock(out, dead.pid)
    monkeypatch.setattr(logging.getLogger("wsss_d2"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="wsss_d2"):
        _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(out))
    assert any("stale lock" in r.getMessage() for r in caplog.records)
    assert (out / "model_final.pth").is_file() and not (out / ".wsss_d2.lock").exists()


# ---------------------------------------------------------------------- the pipeline
def _pipeline(tmp_path, cam_iters="2", with_labels=False):
    stages = [
        {"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml",
         "opts": TOY + ["SOLVER.MAX_ITER", cam_iters]},
    ]  # fmt: skip
    if with_labels:
        stages.append(
            {"name": "labels", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml",
             "weights_from": "cam", "opts": MINI_TOY_OPTS + FAST_LABELS}
        )  # fmt: skip
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump({"OUTPUT_DIR": str(tmp_path / "out"), "STAGES": stages}))
    return str(path)


def _run(pipe, *flags):
    args = runs.pipeline_argument_parser().parse_args(
        ["--config-file", pipe, "--no-report", *flags]
    )
    return runs.run_pipeline(args, repo_root=str(REPO))[0]


def test_two_config_changes_keep_both_stale_folders(tmp_path):
    _run(_pipeline(tmp_path, "2"))
    _run(_pipeline(tmp_path, "3"), "--resume")
    res = _run(_pipeline(tmp_path, "4"), "--resume")
    assert res[0]["status"] == "ran"
    out = tmp_path / "out"
    assert (out / "cam.stale" / DONE_FILE).is_file() and (out / "cam.stale.2" / DONE_FILE).is_file()
    iters = [
        yaml.safe_load((out / f / "config.yaml").read_text())["SOLVER"]["MAX_ITER"]
        for f in ("cam.stale", "cam.stale.2", "cam")
    ]
    assert iters == [2, 3, 4]  # every older run kept, none overwritten


def test_a_label_stage_killed_after_its_round_completed_resumes(tmp_path):
    pipe = _pipeline(tmp_path, with_labels=True)
    res = _run(pipe)
    labels = tmp_path / "out" / "labels"
    os.remove(labels / DONE_FILE)  # the kill: round renamed into place, stage not marked done
    round_files = _mtimes(labels / "pseudo_labels" / "round_01")
    res2 = _run(pipe, "--resume")
    assert [s["status"] for s in res2] == ["skipped", "ran"]
    assert (labels / DONE_FILE).is_file()
    assert _mtimes(labels / "pseudo_labels" / "round_01") == round_files  # reused, not rewritten
    assert res2[1]["results"] == pytest.approx(res[1]["results"], nan_ok=True)


def test_one_pipeline_per_output_dir(tmp_path):
    pipe = _pipeline(tmp_path)
    _lock(tmp_path / "out", os.getppid())
    with pytest.raises(RuntimeError, match="in use by another process"):
        _run(pipe)
    assert sorted(os.listdir(tmp_path / "out")) == [".wsss_d2.lock"]


def test_a_stage_without_a_model_is_refused_before_any_stage_runs(tmp_path):
    path = tmp_path / "pipe.yaml"
    stages = [
        {"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml",
         "opts": TOY + ["SOLVER.MAX_ITER", "2"]},
        {"name": "val", "kind": "evaluate", "config": "configs/cam_toy.yaml", "opts": MINI_TOY_OPTS},
    ]  # fmt: skip
    path.write_text(yaml.safe_dump({"OUTPUT_DIR": str(tmp_path / "out"), "STAGES": stages}))
    with pytest.raises(ValueError, match=r"stage 'val' \(evaluate\) has no model"):
        _run(str(path))
    assert not (tmp_path / "out" / "cam").exists()
