"""The README's COCO-format flow: ``--eval-only`` with COCOSemSegJSONEvaluator (or Detectron2's
SemSegEvaluator), then ``tools/coco_semantic_eval.py`` on the JSON it wrote."""

import json

import numpy as np
import pytest
import torch
from conftest import MINI_TOY_OPTS, REPO, load_script, make_cfg
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.evaluation import SemSegEvaluator
from detectron2.modeling import build_model

from wsss_d2.evaluation import COCOSemSegJSONEvaluator, score_coco_semantic_json

# a random tiny CAM model for the 80 COCO classes, evaluated at a small test size
TINY80 = ["INPUT.TAGS.NUM_CLASSES", "80", "MODEL.TINY.WIDTHS", "(8, 8, 16, 16)"]


def _coco_tree(tmp_path):
    """Two 40x30 images, categories with non-contiguous ids 5 ('cat') and 9 ('dog')."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    images, anns = [], []
    for i, cat in ((1, 5), (2, 9)):
        Image.fromarray(np.full((30, 40, 3), 100 * i, np.uint8)).save(tmp_path / "img" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 30, "width": 40})
        anns.append({
            "id": i, "image_id": i, "category_id": cat, "iscrowd": 0, "area": 200,
            "bbox": [0, 0, 20, 10], "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]],
        })  # fmt: skip
    cats = [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, tmp_path / "img"


def test_detectron2_semseg_json_scores_like_ours(tmp_path):
    """Detectron2's SemSegEvaluator, on a COCO dataset of ours, writes COCO ids (metadata
    stuff_dataset_id_to_contiguous_id) keyed by file_name; the scorer reads it."""
    from wsss_d2.data.datasets.coco import register_coco_tags

    js, img_root = _coco_tree(tmp_path)
    register_coco_tags("d2json_rt", str(js), str(img_root), sem_seg_root=str(tmp_path / "sem"))
    dicts = DatasetCatalog.get("d2json_rt")
    assert MetadataCatalog.get("d2json_rt").stuff_dataset_id_to_contiguous_id == {0: 0, 5: 1, 9: 2}
    rng = np.random.default_rng(0)
    outputs = [
        {"sem_seg": torch.from_numpy(rng.random((3, 30, 40)).astype(np.float32))} for _ in dicts
    ]
    ours = COCOSemSegJSONEvaluator(
        "d2json_rt", num_classes=3, output_dir=str(tmp_path / "a"), distributed=False
    )
    theirs = SemSegEvaluator("d2json_rt", distributed=False, output_dir=str(tmp_path / "b"))
    for ev in (ours, theirs):
        ev.reset()
        ev.process(dicts, outputs)
    in_memory = ours.evaluate()["sem_seg"]
    theirs.evaluate()
    d2_results = json.loads((tmp_path / "b" / "sem_seg_predictions.json").read_text())
    assert "file_name" in d2_results[0] and {r["category_id"] for r in d2_results} <= {0, 5, 9}
    scored = score_coco_semantic_json(str(tmp_path / "b" / "sem_seg_predictions.json"), str(js))
    for k in ("mIoU", "IoU-cat", "IoU-dog", "pACC"):
        assert scored["sem_seg"][k] == pytest.approx(in_memory[k], abs=1e-9), k
    # a file_name that names no image of the instances file is an error that says so
    (tmp_path / "bad.json").write_text(json.dumps([{**d2_results[0], "file_name": "x/7.jpg"}]))
    with pytest.raises(KeyError, match="7.jpg matches no image"):
        score_coco_semantic_json(str(tmp_path / "bad.json"), str(js))


def test_readme_coco_flow_on_coco_tiny(coco_tiny_root, tmp_path, monkeypatch):
    """coco_tiny_val_tags (builtin) --eval-only with COCOSemSegJSONEvaluator, then the scorer
    tool on the written JSON: COCO category ids, and the scorer's mIoU equals the run's."""
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "coco_tiny").symlink_to(coco_tiny_root)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "ds"))
    torch.manual_seed(0)
    DetectionCheckpointer(
        build_model(make_cfg("configs/cam_toy.yaml", *TINY80)), str(tmp_path)
    ).save("m")
    out = tmp_path / "ev"
    args = default_argument_parser().parse_args([
        "--config-file", str(REPO / "configs" / "cam_toy.yaml"), "--eval-only",
        *MINI_TOY_OPTS, *TINY80, "DATASETS.TEST", "('coco_tiny_val_tags',)",
        "WSSS.EVALUATORS", "('COCOSemSegJSONEvaluator',)", "INPUT.TAGS.TEST_LONG", "96",
        "MODEL.WEIGHTS", str(tmp_path / "m.pth"), "OUTPUT_DIR", str(out),
    ])  # fmt: skip
    res = load_script("tools/train_net.py").main(args)
    results = out / "inference" / "coco_tiny_val_tags" / "sem_seg_predictions.json"
    instances = coco_tiny_root / "annotations" / "instances_val2017.json"
    coco_ids = {c["id"] for c in json.loads(instances.read_text())["categories"]}
    written = {r["category_id"] for r in json.loads(results.read_text())}
    assert written <= coco_ids and max(written) > 80  # COCO ids (up to 90), not 1..80
    scored = load_script("tools/coco_semantic_eval.py").main(
        ["--results", str(results), "--instances", str(instances)]
    )
    assert scored["mIoU"] == pytest.approx(res["sem_seg"]["mIoU"], abs=1e-6)
