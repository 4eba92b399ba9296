"""COCO-format semantic results: writer -> scorer round trip, RLE decoding, error cases."""

import json

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog

from wsss_d2.data.datasets.coco import register_coco_tags
from wsss_d2.evaluation import COCOSemSegJSONEvaluator, score_coco_semantic_json
from wsss_d2.evaluation.coco_json import coco_results_to_label, label_to_coco_results


def _coco_tree(tmp_path):
    """Two 40x30 images; categories with non-contiguous ids 5 ('cat') and 9 ('dog')."""
    from PIL import Image

    (tmp_path / "img").mkdir()
    images, anns = [], []
    for i in (1, 2):
        Image.fromarray(np.full((30, 40, 3), 100 * i, np.uint8)).save(tmp_path / "img" / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "height": 30, "width": 40})
    anns.append(
        {
            "id": 1,
            "image_id": 1,
            "category_id": 5,
            "iscrowd": 0,
            "area": 200,
            "bbox": [0, 0, 20, 10],
            "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10]],
        }
    )
    anns.append(
        {
            "id": 2,
            "image_id": 2,
            "category_id": 9,
            "iscrowd": 0,
            "area": 300,
            "bbox": [10, 10, 30, 10],
            "segmentation": [[10, 10, 40, 10, 40, 20, 10, 20]],
        }
    )
    js = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(js))
    return path, tmp_path / "img"


def test_label_rle_round_trip():
    label = np.zeros((7, 9), np.uint8)
    label[1:3, 2:6] = 2
    label[4:, :3] = 1
    label[0, 0] = 255
    res = label_to_coco_results(label, 42, {1: 5, 2: 9})
    assert sorted(r["category_id"] for r in res) == [5, 9]
    for r in res:
        assert isinstance(r["segmentation"]["counts"], str)
        json.dumps(r)  # serialisable
    back = coco_results_to_label(res, 7, 9, {5: 1, 9: 2})
    expected = label.copy()
    expected[expected == 255] = 0  # ignore is not written: it comes back as background
    assert np.array_equal(back, expected)


def test_writer_then_scorer_equals_in_memory_miou(tmp_path):
    js, img_root = _coco_tree(tmp_path)
    register_coco_tags("cocojson_rt", str(js), str(img_root), sem_seg_root=str(tmp_path / "sem"))
    dicts = DatasetCatalog.get("cocojson_rt")
    assert [d["tags"] for d in dicts] == [[1], [2]]
    rng = np.random.default_rng(0)
    outputs = [
        {"sem_seg": torch.from_numpy(rng.random((3, 30, 40)).astype(np.float32))} for _ in dicts
    ]
    ev = COCOSemSegJSONEvaluator(
        "cocojson_rt", num_classes=3, output_dir=str(tmp_path / "out"), distributed=False
    )
    ev.reset()
    ev.process(dicts, outputs)
    in_memory = ev.evaluate()["sem_seg"]
    pred_file = tmp_path / "out" / "sem_seg_predictions.json"
    results = json.loads(pred_file.read_text())
    assert {r["category_id"] for r in results} <= {5, 9}  # COCO ids, not contiguous ones
    for r in results:  # pycocotools decodes every RLE
        seg = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
        assert mask_util.decode(seg).shape == (30, 40)
    scored = score_coco_semantic_json(str(pred_file), str(js))["sem_seg"]
    for k in ("mIoU", "fwIoU", "pACC", "IoU-cat", "IoU-dog"):
        assert scored[k] == pytest.approx(in_memory[k], abs=1e-9), k


def test_scorer_errors_name_the_problem(tmp_path):
    js, _ = _coco_tree(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [{"image_id": 77, "category_id": 5, "segmentation": {"size": [30, 40], "counts": ""}}]
        )
    )
    with pytest.raises(KeyError, match="image_id 77"):
        score_coco_semantic_json(str(bad), str(js))
    rle = mask_util.encode(np.asfortranarray(np.ones((30, 40), np.uint8)))
    rle["counts"] = rle["counts"].decode()
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 3, "segmentation": rle}]))
    with pytest.raises(KeyError, match="category_id 3"):
        score_coco_semantic_json(str(bad), str(js))


def test_perfect_results_score_100(tmp_path):
    js, _ = _coco_tree(tmp_path)
    from pycocotools.coco import COCO

    coco = COCO(str(js))
    results = []
    for a in coco.dataset["annotations"]:
        rle = coco.annToRLE(a)
        rle["counts"] = rle["counts"].decode()
        results.append(
            {"image_id": a["image_id"], "category_id": a["category_id"], "segmentation": rle}
        )
    f = tmp_path / "perfect.json"
    f.write_text(json.dumps(results))
    assert score_coco_semantic_json(str(f), str(js))["sem_seg"]["mIoU"] == pytest.approx(100.0)
