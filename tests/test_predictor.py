"""WSSSPredictor (one image + tags -> CAMs and the semantic map) and tools/predict.py."""

import numpy as np
import pytest
import torch
from conftest import MINI_TOY_OPTS, REPO, load_script, make_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.data import detection_utils as d2_utils
from detectron2.modeling import build_model

from wsss_d2.data.mappers import build_mapper
from wsss_d2.engine.predictor import WSSSPredictor


def _save_random(cfg, folder) -> str:
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), str(folder)).save("model")
    return str(folder / "model.pth")


@pytest.mark.parametrize(
    "config", ["configs/deeplabv2_effnet_coco_tiny.yaml", "configs/pseudo_coco_tiny_voc.yaml"]
)
def test_predictor_equals_the_evaluation_path_on_coco_tiny(
    config, coco_tiny_root, tmp_path, monkeypatch
):
    """Same pixels as --eval-only's path (test mapper: TEST_LONG resize; the model's own
    multi-scale / flip), on real photos; the CAM model gets the image's tags."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "coco_tiny").symlink_to(coco_tiny_root)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "ds"))
    cfg = make_cfg(config, "MODEL.DEVICE", "cpu")
    cfg.MODEL.WEIGHTS = _save_random(cfg, tmp_path)
    predictor = WSSSPredictor(cfg)
    assert predictor.class_names[0] == "aeroplane"
    model, mapper = predictor.model, build_mapper(cfg, False)
    for d in DatasetCatalog.get("coco_tiny_voc_val_tags")[:2]:
        with torch.no_grad():
            ref = model([mapper(d)])[0]
        out = predictor(d2_utils.read_image(d["file_name"], "BGR"), d["tags"])
        assert out["sem_seg"].shape[1:] == (d["height"], d["width"])
        assert torch.equal(out["sem_seg"], ref["sem_seg"])
        assert np.array_equal(out["labels"], ref["sem_seg"].argmax(0).numpy())
        if "cam" in ref:
            assert torch.equal(out["cam"], ref["cam"])


def test_predict_tool_writes_label_ids_and_overlays(tmp_path):
    cfg_file = str(REPO / "configs" / "cam_toy.yaml")
    cfg = make_cfg("configs/cam_toy.yaml", *MINI_TOY_OPTS)
    weights = _save_random(cfg, tmp_path)
    dicts = DatasetCatalog.get("toyparts_mini_val")[:2]
    import shutil

    (tmp_path / "in").mkdir()
    for d in dicts:
        shutil.copy(d["file_name"], tmp_path / "in")
    tool = load_script("tools/predict.py")
    written = tool.main([
        "--config-file", cfg_file, "--input", str(tmp_path / "in"), "--output",
        str(tmp_path / "out"), "--tags", "red;blue", *MINI_TOY_OPTS, "MODEL.WEIGHTS", weights,
    ])  # fmt: skip
    assert len(written) == 2
    cfg.MODEL.WEIGHTS = weights
    predictor = WSSSPredictor(cfg)
    for d, png in zip(dicts, written):
        ids = d2_utils.read_image(png, "L")[..., 0]  # Detectron2's own reader
        ref = predictor(d2_utils.read_image(d["file_name"], "BGR"), ["red", "blue"])["labels"]
        assert np.array_equal(ids, ref) and set(np.unique(ids)) <= {0, 1, 3}
        assert (tmp_path / "out" / (png.split("/")[-1][:-4] + "_overlay.jpg")).is_file()
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        predictor(d2_utils.read_image(dicts[0]["file_name"], "BGR"), ["zebra"])
