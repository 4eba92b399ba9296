"""Security: no code runs from a config or a weights file, and names taken from users' files
never make the project write outside its output and cache folders."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
import yaml
from conftest import MINI_TOY_OPTS, REPO, make_cfg
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from PIL import Image

from wsss_d2 import runs
from wsss_d2.data.datasets.coco import load_coco_tags
from wsss_d2.io import rounds
from wsss_d2.pseudo.make_round import make_round

CAM = str(REPO / "configs" / "cam_toy.yaml")
TOY = MINI_TOY_OPTS + ["SOLVER.CHECKPOINT_PERIOD", "100", "DATASETS.TEST", "()"]


def _train(*argv):
    return runs.train(default_argument_parser().parse_args(list(argv)))


class _MakeDir:
    """Unpickling this calls ``os.mkdir(path)``: a stand-in for any code a file could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


# ---------------------------------------------------------------------- weights files
def test_pkl_weights_that_run_code_are_refused(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "R-50.pkl"
    with open(evil, "wb") as f:
        pickle.dump({"model": {"backbone.x": _MakeDir(str(marker))}, "__author__": "x"}, f)
    with pytest.raises(pickle.UnpicklingError, match=r"R-50\.pkl wants to load 'posix\.mkdir'"):
        _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR",
               str(tmp_path / "out"), "MODEL.WEIGHTS", str(evil))  # fmt: skip
    assert not marker.exists()


def test_pkl_weights_of_numpy_arrays_still_load(tmp_path):
    """Detectron2's model-zoo format: a dict of numpy arrays (here the tiny backbone's)."""
    cfg = make_cfg("configs/cam_toy.yaml", *MINI_TOY_OPTS)
    state = {k: v.numpy() for k, v in build_model(cfg).state_dict().items() if "backbone" in k}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": state, "__author__": "test", "extra": [1, 2.0, "s", None]}, f)
    _train("--config-file", CAM, *TOY, "SOLVER.MAX_ITER", "1", "OUTPUT_DIR",
           str(tmp_path / "out"), "MODEL.WEIGHTS", str(tmp_path / "zoo.pkl"))  # fmt: skip
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_pth_that_runs_code_is_refused_naming_it(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": _MakeDir(str(marker))}, evil)
    with pytest.raises(OSError, match=r"evil\.pth: it is not a plain weights file"):
        _train("--config-file", CAM, "--eval-only", *TOY, "OUTPUT_DIR", str(tmp_path / "e"),
               "MODEL.WEIGHTS", str(evil))  # fmt: skip
    assert not marker.exists()


# ---------------------------------------------------------------------- config files
def _evil_yaml(path, marker, base=None):
    text = f"!!python/object/apply:os.mkdir ['{marker}']\n"
    if base is not None:  # the tag in a _BASE_ file
        path.write_text(f'_BASE_: "{base}"\nSOLVER:\n  MAX_ITER: 1\n')
        return
    path.write_text(f"_BASE_: {CAM}\nSOLVER:\n  MAX_ITER: {text}")


def test_config_with_python_tags_runs_no_code_in_any_entry_point(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.yaml"
    _evil_yaml(evil, marker)
    leaf = tmp_path / "leaf.yaml"
    _evil_yaml(leaf, marker, base=str(evil))
    for cfg_file in (evil, leaf):
        with pytest.raises(Exception, match="python/object"):
            _train("--config-file", str(cfg_file), "OUTPUT_DIR", str(tmp_path / "t"))
        args = runs.label_argument_parser().parse_args(["--config-file", str(cfg_file)])
        with pytest.raises(Exception, match="python/object"):
            runs.make_pseudo_labels(args)
        with pytest.raises(Exception, match="python/object"):
            runs.make_sam_labels(args)
    pipe = tmp_path / "pipe.yaml"
    stages = [{"name": "cam", "kind": "train", "config": str(leaf)}]
    pipe.write_text(yaml.safe_dump({"OUTPUT_DIR": str(tmp_path / "p"), "STAGES": stages}))
    args = runs.pipeline_argument_parser().parse_args(["--config-file", str(pipe), "--no-report"])
    with pytest.raises(Exception, match="python/object"):
        runs.run_pipeline(args)
    assert not marker.exists()


# ---------------------------------------------------------------------- paths from users' files
def _coco_with_names(tmp_path, names):
    root = tmp_path / "data" / "images"
    root.mkdir(parents=True)
    images = []
    for i, name in enumerate(names):
        path = name if os.path.isabs(name) else str(root / name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(path)
        images.append({"id": i + 1, "file_name": name, "height": 16, "width": 16})
    anns = [
        {"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0,
         "segmentation": [[2, 2, 10, 2, 10, 10, 2, 10]], "area": 64}
        for i in range(len(names))
    ]  # fmt: skip
    js = tmp_path / "data" / "ann.json"
    cats = [{"id": 1, "name": "thing"}]
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(js), str(root)


def _files_under(folder):
    return {os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs}


def test_coco_file_names_with_dotdot_or_absolute_paths_stay_inside(tmp_path):
    outside = tmp_path / "outside"
    names = ["../../outside/a.png", str(tmp_path / "elsewhere" / "b.png"), "sub/c.png"]
    js, root = _coco_with_names(tmp_path, names)
    gt = tmp_path / "gt"
    before = _files_under(tmp_path)
    dicts = load_coco_tags(js, root, name="rel_dotdot", sem_seg_root=str(gt), num_workers=1)
    written = _files_under(tmp_path) - before
    assert written and all(str(p).startswith(str(gt) + os.sep) for p in written), written
    assert os.listdir(outside) == ["a.png"]  # the image itself, nothing written next to it
    # and a label round of these images stays inside its root too
    cfg = make_cfg("configs/pseudo_toy.yaml", *MINI_TOY_OPTS, "INPUT.TAGS.NUM_CLASSES", "1",
                   "WSSS.PSEUDO.METHOD", "threshold", "WSSS.PSEUDO.SCALES", "(1.0,)",
                   "WSSS.PSEUDO.FLIP", "False", "WSSS.PSEUDO.NUM_WORKERS", "1",
                   "MODEL.WEIGHTS", "")  # fmt: skip
    model = build_model(cfg).eval()
    labels = tmp_path / "labels"
    before = _files_under(tmp_path)
    folder = make_round(cfg, model, dicts, 1, root=str(labels), progress=False)
    written = _files_under(tmp_path) - before
    assert written and all(str(p).startswith(str(labels) + os.sep) for p in written), written
    assert sorted(rounds.label_stem(d) for d in dicts) == sorted(
        ["outside/a", os.path.join(str(tmp_path / "elsewhere").lstrip(os.sep), "b"), "sub/c"]
    )
    assert os.path.isfile(os.path.join(folder, "sub", "c.png"))


def test_label_files_are_joined_safely_even_from_a_crafted_dict(tmp_path):
    """The last line of defence: a ``label_stem`` that tries to leave the round (a dict built by
    user code) is cleaned, and ``safe_join`` refuses a name that would leave its folder."""
    from wsss_d2.io.files import safe_join

    w = rounds.RoundWriter(str(tmp_path / "labels"), 1, num_classes=2)
    d = {"file_name": "x.png", "label_stem": "../../../evil", "height": 2, "width": 2}
    assert w.label_path(d).startswith(w.partial_dir + os.sep)
    assert safe_join(str(tmp_path), "a/b.png") == os.path.join(str(tmp_path), "a/b.png")
    for bad in ("../x.png", "/etc/x.png", "a/../../x.png"):
        with pytest.raises(ValueError, match="outside"):
            safe_join(str(tmp_path), bad)
