"""tools/run_pipeline.py: tiny stages end to end, crash + --resume, config changes, Ctrl-C."""

import os
import re
import signal

import pytest
import yaml
from conftest import MINI_TOY_OPTS, REPO, load_script
from detectron2.engine import HookBase

from wsss_d2.config import get_wsss_cfg
from wsss_d2.engine import HOOK_REGISTRY
from wsss_d2.engine.pipeline import DONE_FILE, load_pipeline


def _tool():
    return load_script("tools/run_pipeline.py")


@HOOK_REGISTRY.register()
class _CrashOnce(HookBase):
    """Raises at iteration 2 while ``armed`` (a test switch; no checkpoint exists yet)."""

    armed = False

    def __init__(self, cfg):
        super().__init__()

    def before_step(self):
        if type(self).armed and self.trainer.iter == 2:
            type(self).armed = False
            raise RuntimeError("simulated crash in stage 3")


MINI = MINI_TOY_OPTS


def _write_pipeline(tmp_path, seg_lr="0.02", crash_hook=True):
    seg_opts = MINI + [
        "SOLVER.MAX_ITER",
        "5",
        "MODEL.SEG_HEAD.CONV_DIMS",
        "16",
        "MODEL.SEG_HEAD.TEST_FLIP",
        "False",
        "SOLVER.BASE_LR",
        seg_lr,
    ]
    if crash_hook:
        seg_opts += ["WSSS.HOOKS", "('_CrashOnce',)"]
    spec = {
        "OUTPUT_DIR": str(tmp_path / "out"),
        "STAGES": [
            {
                "name": "cam",
                "kind": "train",
                "config": "configs/cam_toy.yaml",
                "opts": MINI + ["SOLVER.MAX_ITER", "6"],
            },
            {
                "name": "labels",
                "kind": "pseudo_labels",
                "config": "configs/pseudo_toy.yaml",
                "weights_from": "cam",
                "opts": MINI
                + [
                    "WSSS.PSEUDO.METHOD",
                    "threshold",
                    "WSSS.PSEUDO.SCALES",
                    "(1.0,)",
                    "WSSS.PSEUDO.FLIP",
                    "False",
                    "WSSS.PSEUDO.NUM_WORKERS",
                    "1",
                ],
            },
            {
                "name": "seg",
                "kind": "train",
                "config": "configs/deeplabv2_toy.yaml",
                "round_from": "labels",
                "opts": seg_opts,
            },
        ],
    }
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _mtimes(folder):
    return {
        os.path.join(r, f): os.path.getmtime(os.path.join(r, f))
        for r, _, fs in os.walk(folder)
        for f in fs
    }


def test_pipeline_crash_resume_and_config_change(tmp_path):
    tool = _tool()
    # uninterrupted reference run
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = tool.main(["--config-file", _write_pipeline(ref_dir), "--no-report"])
    assert [s["status"] for s in ref] == ["ran"] * 3
    ref_seg = ref[2]["results"]
    assert "sem_seg/mIoU" in ref_seg and "cam/mIoU" in ref[0]["results"]
    assert "pseudo_seg/mIoU" in ref[1]["results"] or "mIoU" in ref[1]["results"]

    # the same pipeline, crashing inside stage 3
    pipe_file = _write_pipeline(tmp_path)
    _CrashOnce.armed = True
    with pytest.raises(RuntimeError, match="simulated crash in stage 3"):
        tool.main(["--config-file", pipe_file, "--no-report"])
    out = tmp_path / "out"
    assert (out / "cam" / DONE_FILE).is_file() and (out / "labels" / DONE_FILE).is_file()
    assert not (out / "seg" / DONE_FILE).is_file()
    before = {**_mtimes(out / "cam"), **_mtimes(out / "labels")}

    # without --resume, existing stages are never overwritten
    with pytest.raises(FileExistsError, match="--resume"):
        tool.main(["--config-file", pipe_file, "--no-report"])

    res = tool.main(["--config-file", pipe_file, "--resume"])
    assert [s["status"] for s in res] == ["skipped", "skipped", "ran"]
    assert {**_mtimes(out / "cam"), **_mtimes(out / "labels")} == before
    assert res[2]["results"]["sem_seg/mIoU"] == pytest.approx(ref_seg["sem_seg/mIoU"], abs=1e-9)
    # long loops leave their rate in the stage's log.txt, not only a bar on stderr
    log = (out / "labels" / "log.txt").read_text()
    assert "CAM inference: 24 img in" in log and "labels (threshold): 24 img in" in log
    # every round's background quality is in its log (too little background sinks segmentors)
    assert re.search(r"background IoU \d+\.\d, precision \d+\.\d, recall \d+\.\d", log)
    assert (out / "report.html").is_file()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Per-class IoU" in html
    for section in ("Stage comparison", "Pseudo-label precision / recall", "CAM background "
                    "threshold", "Label rounds", "Confusion matrices", "Samples: training set",
                    "Samples: validation set (toyparts_mini_val", "worst images by mIoU",
                    "labels round 1", "image mIoU", "ignore / unsure (255)"):  # fmt: skip
        assert section in html, section
    assert "labels (pseudo_seg)" in html  # the pseudo-label stage's per-class column

    # a complete pipeline resumes to nothing
    again = tool.main(["--config-file", pipe_file, "--resume", "--no-report"])
    assert [s["status"] for s in again] == ["skipped"] * 3

    # a changed stage config re-runs that stage (and what reads from it), not the earlier ones
    changed = _write_pipeline(tmp_path, seg_lr="0.01")
    res = tool.main(["--config-file", changed, "--resume", "--no-report"])
    assert [s["status"] for s in res] == ["skipped", "skipped", "ran"]
    assert (out / "seg.stale" / DONE_FILE).is_file()  # the old run is kept aside, not lost


def test_pipeline_validation_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "STAGES": [
                    {
                        "name": "a",
                        "kind": "train",
                        "config": "configs/cam_toy.yaml",
                        "weights_from": "b",
                    }
                ]
            }
        )
    )
    with pytest.raises(ValueError, match="weights_from 'b' is not an earlier stage"):
        load_pipeline(str(bad), repo_root=str(REPO))
    bad.write_text(
        yaml.safe_dump({"STAGES": [{"name": "a", "kind": "fly", "config": "configs/cam_toy.yaml"}]})
    )
    with pytest.raises(ValueError, match="kind 'fly'"):
        load_pipeline(str(bad), repo_root=str(REPO))
    bad.write_text(yaml.safe_dump({"STAGES": [{"name": "a", "kind": "train", "config": "x.yaml"}]}))
    with pytest.raises(FileNotFoundError, match="x.yaml"):
        load_pipeline(str(bad), repo_root=str(REPO))


def test_pipeline_base_file_adds_stages_and_keeps_the_base_ones(tmp_path):
    """``_BASE_``: the base's stages come first, unchanged (same folders and hashes), then the
    file's own; its top-level keys replace the base's; cycles and missing files are errors."""
    base = {
        "OUTPUT_DIR": str(tmp_path / "out"),
        "STAGES": [{"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml"}],
    }
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    seg = {"name": "seg", "kind": "train", "config": "configs/deeplabv2_toy.yaml",
           "weights_from": "cam", "opts": ["SEED", 1]}  # fmt: skip
    (tmp_path / "sub").mkdir()
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(yaml.safe_dump({"_BASE_": "../base.yaml", "STAGES": [seg]}))
    pipe, alone = (
        load_pipeline(str(p), repo_root=str(REPO)) for p in (child, tmp_path / "base.yaml")
    )
    assert [s.name for s in pipe.stages] == ["cam", "seg"]
    assert pipe.output_dir == alone.output_dir == str(tmp_path / "out")
    assert pipe.stage_hash(pipe.stages[0]) == alone.stage_hash(alone.stages[0])
    assert pipe.stages[1].weights_from == "cam" and pipe.stages[1].opts == ["SEED", "1"]
    child.write_text(yaml.safe_dump({"_BASE_": "../base.yaml", "OUTPUT_DIR": "elsewhere"}))
    assert load_pipeline(str(child), repo_root=str(REPO)).output_dir == os.path.abspath("elsewhere")
    child.write_text(yaml.safe_dump({"_BASE_": "../base.yaml", "STAGES": [base["STAGES"][0]]}))
    with pytest.raises(ValueError, match="stage name 'cam' is repeated"):
        load_pipeline(str(child), repo_root=str(REPO))
    child.write_text(yaml.safe_dump({"_BASE_": "child.yaml"}))
    with pytest.raises(ValueError, match="makes a cycle"):
        load_pipeline(str(child), repo_root=str(REPO))
    child.write_text(yaml.safe_dump({"_BASE_": "nowhere.yaml"}))
    with pytest.raises(FileNotFoundError, match="_BASE_ file not found: .*nowhere.yaml"):
        load_pipeline(str(child), repo_root=str(REPO))


@HOOK_REGISTRY.register()
class _SigintAt(HookBase):
    """Sends this process a real SIGINT (what Ctrl-C does) before iteration ``at``, once."""

    at = None

    def __init__(self, cfg):
        super().__init__()

    def before_step(self):
        if type(self).at is not None and self.trainer.iter == type(self).at:
            type(self).at = None
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_during_a_stage_then_resume(tmp_path):
    """Ctrl-C at a known iteration (12 of 20, checkpoints every 5): no timing involved."""
    pipe_file = _write_pipeline(tmp_path, crash_hook=False)
    spec = yaml.safe_load(open(pipe_file))
    spec["STAGES"][0]["opts"] = MINI + [
        "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "5", "WSSS.HOOKS", "('_SigintAt',)",
    ]  # fmt: skip
    spec["STAGES"] = spec["STAGES"][:1]
    with open(pipe_file, "w") as f:
        yaml.safe_dump(spec, f)
    stage = tmp_path / "out" / "cam"
    _SigintAt.at = 12
    # Python's own Ctrl-C handler: a shell's background job starts with SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _tool().main(["--config-file", pipe_file, "--no-report"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not (stage / DONE_FILE).exists() and not (stage / "model_final.pth").exists()
    assert (stage / "last_checkpoint").read_text().strip() == "model_0000009.pth"
    assert not [f for f in os.listdir(stage) if f.startswith(".tmp_")]  # no half-written file
    # the same pipeline with --resume continues the stage from its last checkpoint
    res = _tool().main(["--config-file", pipe_file, "--resume", "--no-report"])
    assert res[0]["status"] == "ran"
    assert "Starting training from iteration 10" in (stage / "log.txt").read_text()
    assert (stage / "model_final.pth").is_file() and not (tmp_path / "out" / "cam.stale").exists()


def test_visualize_tool_on_the_standard_setup(tmp_path):
    """tools/visualize.py: --config-file + KEY VALUE overrides (weights, device, a dataset
    registered by DATASETS.FOLDER_TAGS with its mask folder)."""
    import shutil

    from conftest import make_cfg
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from wsss_d2.data.datasets.toyparts import TOY_CLASSES

    cfg = make_cfg("configs/cam_toy.yaml")
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("cam")
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    rows = ["file_name,tags"]
    for i, d in enumerate(DatasetCatalog.get("toyparts_mini_val")[:2]):
        shutil.copy(d["file_name"], tmp_path / "imgs" / f"v{i}.png")
        shutil.copy(d["sem_seg_file_name"], tmp_path / "masks" / f"v{i}.png")
        rows.append(f"v{i}.png," + ";".join(TOY_CLASSES[t - 1] for t in d["tags"]))
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    folder = (f"(('vis_own', '{tmp_path / 'imgs'}', '{tmp_path / 'tags.csv'}', "
              f"'{';'.join(TOY_CLASSES)}', '{tmp_path / 'masks'}'),)")  # fmt: skip
    vis = load_script("tools/visualize.py")
    out = vis.main([
        "--config-file", str(REPO / "configs" / "cam_toy.yaml"), "--dataset", "vis_own",
        "--output", str(tmp_path / "v.html"), "DATASETS.FOLDER_TAGS", folder,
        "MODEL.WEIGHTS", str(tmp_path / "cam.pth"), "MODEL.DEVICE", "cpu",
    ])  # fmt: skip
    html = open(out).read()
    assert html.count("<img") == 8  # 2 images x (image, CAM, prediction, GT)
    assert "ignore / unsure (255)" in html
    assert sorted(os.listdir(tmp_path / "v_files")) == [
        f"{i:03d}_{k}.png" for i in range(2) for k in ("cam", "ground_truth", "image", "prediction")
    ]


def _best_of_pipeline(tmp_path):
    from wsss_d2.engine.pipeline import parse_pipeline

    spec = {
        "OUTPUT_DIR": str(tmp_path / "out"),
        "STAGES": [
            {"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml"},
            {"name": "plda", "kind": "train", "config": "configs/plda_toy.yaml"},
            {"name": "labels", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml",
             "weights_from": ["cam", "plda"]},
            {"name": "labels_2", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml",
             "weights_from": "plda"},
            {"name": "seg", "kind": "train", "config": "configs/deeplabv2_toy.yaml",
             "round_from": ["labels", "labels_2"]},
        ],
    }  # fmt: skip
    return parse_pipeline(spec, "pipe.yaml", str(REPO))


@pytest.mark.parametrize(
    "scores, weights, labels",
    [((41.0, 43.5, 60.0, 59.0), "plda", "labels"), ((45.0, 43.5, 60.0, 61.0), "cam", "labels_2")],
)
def test_a_list_of_inputs_takes_the_better_stage(tmp_path, scores, weights, labels):
    pipe, seen = _best_of_pipeline(tmp_path), {}
    names = ["cam", "plda", "labels", "labels_2"]
    pipe.round_of = lambda name: f"round of {name}"

    def run(stage, opts, resume):
        seen[stage.name] = opts
        if stage.name == "seg":
            return {"sem_seg": {"mIoU": 1.0}}
        return {"cam": {"mIoU": scores[names.index(stage.name)]}}

    pipe.run({"train": run, "pseudo_labels": run})
    chosen = seen["labels"][seen["labels"].index("MODEL.WEIGHTS") + 1]
    assert chosen == str(tmp_path / "out" / weights / "model_final.pth")
    assert seen["seg"][seen["seg"].index("WSSS.PSEUDO.TRAIN_ROUND") + 1] == f"round of {labels}"


def test_weights_from_a_list_needs_metrics_and_earlier_stages(tmp_path):
    pipe = _best_of_pipeline(tmp_path)
    with pytest.raises(ValueError, match="'plda' reported no metric"):
        pipe.run({"train": lambda s, o, r: {"cam/mIoU": 1.0} if s.name == "cam" else {},
                  "pseudo_labels": lambda s, o, r: {}})  # fmt: skip
    from wsss_d2.engine.pipeline import parse_pipeline

    spec = {"STAGES": [{"name": "labels", "kind": "pseudo_labels",
                        "config": "configs/pseudo_toy.yaml", "weights_from": ["cam"]}]}  # fmt: skip
    with pytest.raises(ValueError, match="weights_from 'cam' is not an earlier stage"):
        parse_pipeline(spec, "pipe.yaml", str(REPO))


def _choose_by_spec(tmp_path, **seg):
    return {
        "OUTPUT_DIR": str(tmp_path / "out"),
        "STAGES": [
            {"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml"},
            {"name": "labels", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml",
             "weights_from": "cam"},
            {"name": "irn_labels", "kind": "pseudo_labels", "config": "configs/pseudo_toy.yaml",
             "weights_from": "cam"},
            {"name": "seg_labels", "kind": "train", "config": "configs/deeplabv2_toy.yaml",
             "round_from": "labels"},
            {"name": "seg_irn", "kind": "train", "config": "configs/deeplabv2_toy.yaml",
             "round_from": "irn_labels"},
            {"name": "seg", "kind": "evaluate", "config": "configs/deeplabv2_toy.yaml",
             "weights_from": ["seg_labels", "seg_irn"]},
            {"name": "cian", "kind": "train", "config": "configs/cian_toy.yaml", **seg},
        ],
    }  # fmt: skip


@pytest.mark.parametrize("seg_scores, chosen", [((30.0, 24.0), "labels"), ((30.0, 31.0), "irn")])
def test_choose_by_takes_the_round_whose_segmentor_scored_higher(tmp_path, seg_scores, chosen):
    """irn_labels scores higher as a round (40.7 > 39.0), but the round taken is the one whose
    segmentor scored higher: the choice follows choose_by, position by position."""
    from wsss_d2.engine.pipeline import parse_pipeline

    spec = _choose_by_spec(tmp_path, round_from=["labels", "irn_labels"],
                           choose_by=["seg_labels", "seg_irn"])  # fmt: skip
    pipe, seen = parse_pipeline(spec, "pipe.yaml", str(REPO)), {}
    assert pipe.stages[-1].inputs == ("labels", "irn_labels", "seg_labels", "seg_irn")
    pipe.round_of = lambda name: f"round of {name}"
    metrics = {"cam": 35.6, "labels": 39.0, "irn_labels": 40.7, "seg_labels": seg_scores[0],
               "seg_irn": seg_scores[1], "seg": 1.0, "cian": 1.0}  # fmt: skip

    def run(stage, opts, resume):
        seen[stage.name] = opts
        return {"sem_seg": {"mIoU": metrics[stage.name]}}

    pipe.run({"train": run, "pseudo_labels": run, "evaluate": run})
    round_taken = seen["cian"][seen["cian"].index("WSSS.PSEUDO.TRAIN_ROUND") + 1]
    assert round_taken == ("round of labels" if chosen == "labels" else "round of irn_labels")
    weights = seen["seg"][seen["seg"].index("MODEL.WEIGHTS") + 1]
    assert weights == str(tmp_path / "out" / f"seg_{chosen}" / "model_final.pth")


@pytest.mark.parametrize(
    "seg, match",
    [
        ({"round_from": ["labels", "irn_labels"], "choose_by": ["seg_labels"]},
         "choose_by names 1 stages but round_from has 2 candidates"),
        ({"round_from": ["labels", "irn_labels"], "choose_by": ["seg_labels", "later"]},
         "choose_by 'later' is not an earlier stage"),
        ({"round_from": "labels", "choose_by": ["seg_labels"]},
         "choose_by needs a list-valued weights_from or round_from"),
        ({"round_from": ["labels", "irn_labels"], "choose_by": "seg_labels"},
         "choose_by must be a list of stage names"),
    ],
)  # fmt: skip
def test_choose_by_is_checked_when_the_pipeline_is_read(tmp_path, seg, match):
    from wsss_d2.engine.pipeline import parse_pipeline

    with pytest.raises(ValueError, match=match):
        parse_pipeline(_choose_by_spec(tmp_path, **seg), "pipe.yaml", str(REPO))


def test_gt_labels_stage_trains_a_segmentor_on_the_masks(tmp_path):
    seg_opts = MINI + ["SOLVER.MAX_ITER", "2", "MODEL.SEG_HEAD.CONV_DIMS", "16",
                       "MODEL.SEG_HEAD.TEST_FLIP", "False"]  # fmt: skip
    spec = {
        "OUTPUT_DIR": str(tmp_path / "out"),
        "STAGES": [
            {"name": "gt", "kind": "gt_labels", "config": "configs/deeplabv2_toy.yaml",
             "opts": MINI},
            {"name": "seg_gt", "kind": "train", "config": "configs/deeplabv2_toy.yaml",
             "round_from": "gt", "opts": seg_opts},
        ],
    }  # fmt: skip
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = _tool().main(["--config-file", str(path)])
    assert [s["status"] for s in res] == ["ran", "ran"] and "sem_seg/mIoU" in res[1]["results"]
    from wsss_d2.io.rounds import read_manifest

    round_dir = tmp_path / "out" / "gt" / "pseudo_labels" / "round_01"
    assert read_manifest(str(round_dir))["source"] == "ground_truth"
    cfg_used = yaml.safe_load((tmp_path / "out" / "seg_gt" / "config.yaml").read_text())
    assert cfg_used["WSSS"]["PSEUDO"]["TRAIN_ROUND"] == str(round_dir)


def test_pipeline_opts_apply_to_every_stage_before_its_own(tmp_path):
    from wsss_d2.engine.pipeline import parse_pipeline

    spec = {
        "OPTS": ["DATASETS.TRAIN", "('toyparts_large_train',)", "SOLVER.MAX_ITER", 7],
        "STAGES": [
            {"name": "cam", "kind": "train", "config": "configs/cam_toy.yaml"},
            {"name": "seg", "kind": "train", "config": "configs/deeplabv2_toy.yaml",
             "opts": ["SOLVER.MAX_ITER", 3]},
        ],
    }  # fmt: skip
    pipe = parse_pipeline(spec, "pipe.yaml", str(REPO))
    cfgs = {s.name: get_wsss_cfg(s.config, s.opts) for s in pipe.stages}
    assert cfgs["cam"].DATASETS.TRAIN == cfgs["seg"].DATASETS.TRAIN == ("toyparts_large_train",)
    assert (cfgs["cam"].SOLVER.MAX_ITER, cfgs["seg"].SOLVER.MAX_ITER) == (7, 3)  # the stage's last
    with pytest.raises(ValueError, match="OPTS must be KEY VALUE pairs"):
        parse_pipeline({**spec, "OPTS": ["SOLVER.MAX_ITER"]}, "pipe.yaml", str(REPO))
    with pytest.raises(KeyError, match=r"pipe.yaml: unknown key\(s\) \['OTPS'\]"):
        parse_pipeline({"OTPS": [], "STAGES": spec["STAGES"]}, "pipe.yaml", str(REPO))


# ---------------------------------------------------------------------- side by side (--jobs)
_SCORES = {"cam": 41.0, "plda": 43.5, "labels": 60.0, "labels_2": 59.0, "seg": 1.0}


def _timed_stage(stage, opts, resume):
    """A stage in its own process: leaves when it ran, on which cores, with how many threads."""
    import json
    import time

    import torch

    folder = opts[-1]
    start = time.time()
    if stage.name == os.environ.get("WSSS_TEST_FAIL_STAGE"):
        raise ValueError(f"stage {stage.name} broke")
    time.sleep(float(os.environ.get("WSSS_TEST_STAGE_SECONDS", "1")))
    info = {"start": start, "end": time.time(), "cores": sorted(os.sched_getaffinity(0)),
            "threads": torch.get_num_threads(), "opts": opts}  # fmt: skip
    with open(os.path.join(folder, "timing.json"), "w") as f:
        json.dump(info, f)
    return {"cam": {"mIoU": _SCORES[stage.name]}}


def _timing(tmp_path, name):
    import json

    with open(tmp_path / "out" / name / "timing.json") as f:
        return json.load(f)


def test_side_by_side_stages_overlap_and_wait_for_their_inputs(tmp_path, monkeypatch):
    from wsss_d2.engine.pipeline_jobs import chain_lengths, core_shares

    # each stage lasts longer than a loaded machine takes to start the other's process (1 s did
    # not: cam had ended before plda's process began)
    monkeypatch.setenv("WSSS_TEST_STAGE_SECONDS", "5")
    pipe = _best_of_pipeline(tmp_path)
    pipe.round_of = lambda name: f"round of {name}"
    assert chain_lengths(pipe.stages) == {"cam": 3, "plda": 3, "labels": 2, "labels_2": 2, "seg": 1}
    summaries = pipe.run({"train": _timed_stage, "pseudo_labels": _timed_stage}, jobs=2)
    assert [s["name"] for s in summaries] == ["cam", "plda", "labels", "labels_2", "seg"]
    t = {n: _timing(tmp_path, n) for n in _SCORES}
    assert t["cam"]["start"] < t["plda"]["end"] and t["plda"]["start"] < t["cam"]["end"]
    for stage, inputs in {"labels": ("cam", "plda"), "labels_2": ("plda",),
                          "seg": ("labels", "labels_2")}.items():  # fmt: skip
        assert all(t[stage]["start"] > t[i]["end"] for i in inputs), stage
    shares = core_shares(2)
    for n in _SCORES:  # each stage on its share of the cores, one thread per core
        assert tuple(t[n]["cores"]) in shares and t[n]["threads"] == len(t[n]["cores"])
    # the choices are made as in one process: the better CAM's weights, the better round
    opts = t["labels"]["opts"]
    assert opts[opts.index("MODEL.WEIGHTS") + 1] == str(
        tmp_path / "out" / "plda" / "model_final.pth"
    )
    opts = t["seg"]["opts"]
    assert opts[opts.index("WSSS.PSEUDO.TRAIN_ROUND") + 1] == "round of labels"


def test_side_by_side_failure_lets_the_running_stage_finish_and_resumes(tmp_path, monkeypatch):
    pipe = _best_of_pipeline(tmp_path)
    pipe.round_of = lambda name: f"round of {name}"
    run = {"train": _timed_stage, "pseudo_labels": _timed_stage}
    monkeypatch.setenv("WSSS_TEST_FAIL_STAGE", "cam")  # fails at once, plda is still running
    monkeypatch.setenv("WSSS_TEST_STAGE_SECONDS", "4")
    with pytest.raises(RuntimeError, match=r"stage 'cam' failed(.|\n)*ValueError: stage cam broke"):
        pipe.run(run, jobs=2)
    out = tmp_path / "out"
    assert (out / "plda" / DONE_FILE).is_file()  # ran beside the failing one: kept
    assert not (out / "cam" / DONE_FILE).is_file()
    assert not any((out / n).exists() for n in ("labels", "labels_2", "seg"))  # none started
    monkeypatch.delenv("WSSS_TEST_FAIL_STAGE")
    monkeypatch.setenv("WSSS_TEST_STAGE_SECONDS", "0")
    pipe2 = _best_of_pipeline(tmp_path)
    pipe2.round_of = lambda name: f"round of {name}"
    summaries = pipe2.run(run, resume=True, jobs=2)
    assert [s["status"] for s in summaries] == ["ran", "skipped", "ran", "ran", "ran"]


def test_core_shares_deal_every_core_once():
    from wsss_d2.engine.pipeline_jobs import core_shares

    cores = sorted(os.sched_getaffinity(0))
    for jobs in (1, 2, 3):
        shares = core_shares(jobs)
        assert len(shares) == jobs and all(shares)
        if jobs <= len(cores):
            assert sorted(c for s in shares for c in s) == cores


def test_real_stages_side_by_side_through_the_tool(tmp_path):
    """tools/run_pipeline.py --jobs 2: the stage executor pickles into the stages' processes;
    a second run with --resume skips them all."""
    pipe_file = _write_pipeline(tmp_path, crash_hook=False)
    res = _tool().main(["--config-file", pipe_file, "--no-report", "--jobs", "2"])
    assert [s["status"] for s in res] == ["ran"] * 3
    assert "cam/mIoU" in res[0]["results"] and "sem_seg/mIoU" in res[2]["results"]
    again = _tool().main(["--config-file", pipe_file, "--no-report", "--jobs", "2", "--resume"])
    assert [s["status"] for s in again] == ["skipped"] * 3
