"""Semantic and CAM evaluators on hand-made cases, and agreement with Detectron2's evaluator."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import SemSegEvaluator

from wsss_d2.data.datasets.common import set_tag_metadata
from wsss_d2.evaluation import (
    EVALUATOR_REGISTRY,
    CAMEvaluator,
    WSSSSemSegEvaluator,
    build_evaluators,
    confusion_matrix,
    metrics_from_confusion,
)
from wsss_d2.io.files import save_label_png


def test_metrics_on_hand_made_confusion():
    # rows = gt, cols = pred; 3 classes
    conf = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    r = metrics_from_confusion(conf, ["bg", "a", "b"])
    # IoU bg = 8 / (10 + 9 - 8) = 8/11 ; IoU a = 3 / (4 + 5 - 3) = 3/6 ; b absent -> NaN
    assert r["IoU-bg"] == pytest.approx(100 * 8 / 11)
    assert r["IoU-a"] == pytest.approx(50.0)
    assert np.isnan(r["IoU-b"])
    assert r["mIoU"] == pytest.approx(100 * (8 / 11 + 0.5) / 2)
    assert r["pACC"] == pytest.approx(100 * 11 / 14)
    assert r["fwIoU"] == pytest.approx(100 * (10 * 8 / 11 + 4 * 0.5) / 14)
    assert r["mACC"] == pytest.approx(100 * (0.8 + 0.75) / 2)


def test_confusion_matrix_skips_ignore_and_counts_out_of_range_predictions():
    gt = np.array([[0, 1, 255], [1, 1, 0]])
    pred = np.array([[0, 1, 1], [7, 0, 0]])
    conf = confusion_matrix(pred, gt, 2)
    assert conf.tolist() == [[2, 0], [1, 1]]  # the 7 is a miss for gt 1, in no column


def _register(name, tmp_path, gts):
    dicts = []
    for i, gt in enumerate(gts):
        p = tmp_path / f"{name}_{i}.png"
        save_label_png(str(p), gt)
        dicts.append(
            {
                "file_name": f"img{i}.jpg",
                "sem_seg_file_name": str(p),
                "height": gt.shape[0],
                "width": gt.shape[1],
                "tags": [1],
                "image_id": i,
            }
        )
    if name not in DatasetCatalog:
        DatasetCatalog.register(name, lambda: dicts)
        set_tag_metadata(name, ["a", "b"])
    return dicts


def test_semseg_evaluator_matches_detectron2(tmp_path):
    rng = np.random.default_rng(0)
    gts = [rng.integers(0, 3, (20, 30)).astype(np.uint8) for _ in range(3)]
    gts[0][:2] = 255
    dicts = _register("eval_cmp", tmp_path, gts)
    outputs = [{"sem_seg": torch.rand(3, 20, 30)} for _ in gts]
    ours = WSSSSemSegEvaluator("eval_cmp", num_classes=3, distributed=False)
    theirs = SemSegEvaluator("eval_cmp", distributed=False)
    for ev in (ours, theirs):
        ev.reset()
        ev.process(dicts, outputs)
    a, b = ours.evaluate()["sem_seg"], theirs.evaluate()["sem_seg"]
    for k in ("mIoU", "fwIoU", "mACC", "pACC", "IoU-a", "IoU-b"):
        assert a[k] == pytest.approx(b[k], abs=1e-6), k


def test_cam_evaluator_sweep_equals_brute_force(tmp_path):
    rng = np.random.default_rng(1)
    gts = [rng.integers(0, 3, (16, 16)).astype(np.uint8) for _ in range(2)]
    dicts = _register("eval_cam", tmp_path, gts)
    cams = [torch.rand(2, 16, 16) for _ in gts]
    thresholds = [0.0, 0.25, 0.5, 0.75]
    ev = CAMEvaluator("eval_cam", thresholds=thresholds, num_classes=3, distributed=False)
    ev.reset()
    ev.process(dicts, [{"cam": c} for c in cams])
    res = ev.evaluate()["cam"]
    for t in thresholds:
        conf = np.zeros((3, 3), np.int64)
        for c, gt in zip(cams, gts):
            pred = torch.cat([torch.full_like(c[:1], t), c]).argmax(0)
            conf += confusion_matrix(pred, gt, 3)
        assert res[f"mIoU@{t:.2f}"] == pytest.approx(metrics_from_confusion(conf)["mIoU"]), t
    best = max(thresholds, key=lambda t: res[f"mIoU@{t:.2f}"])
    assert res["best_threshold"] == best and res["mIoU"] == res[f"mIoU@{best:.2f}"]


def test_evaluator_gt_size_mismatch_names_both(tmp_path):
    dicts = _register("eval_bad", tmp_path, [np.zeros((10, 10), np.uint8)])
    ev = WSSSSemSegEvaluator("eval_bad", num_classes=3, distributed=False)
    with pytest.raises(ValueError, match=r"eval_bad_0\.png.*img0\.jpg"):
        ev.process(dicts, [{"sem_seg": torch.rand(3, 12, 10)}])


def test_registry_builds_from_config(cfg_factory, tmp_path):
    cfg = cfg_factory("configs/cam_toy.yaml")
    evs = build_evaluators(cfg, "toyparts_mini_val", str(tmp_path))
    names = [type(e).__name__ for e in evs._evaluators]
    assert names == list(cfg.WSSS.EVALUATORS)
    assert "CAMEvaluator" in EVALUATOR_REGISTRY
    assert MetadataCatalog.get("toyparts_mini_val").evaluator_type == "sem_seg"


def test_default_evaluator_is_ours_and_detectron2_names_are_allowed(tmp_path):
    """A config that names no evaluator (not built on a wsss base) evaluates; a Detectron2 name
    builds Detectron2's evaluator; an unknown name is an error naming both places."""
    from wsss_d2.config import get_wsss_cfg

    cfg = get_wsss_cfg()
    evs = build_evaluators(cfg, "toyparts_mini_val", str(tmp_path))._evaluators
    assert [type(e) for e in evs] == [WSSSSemSegEvaluator]
    cfg.WSSS.EVALUATORS = ("SemSegEvaluator", "CAMEvaluator")
    evs = build_evaluators(cfg, "toyparts_mini_val", str(tmp_path))._evaluators
    assert [type(e) for e in evs] == [SemSegEvaluator, CAMEvaluator]
    cfg.WSSS.EVALUATORS = ("NoSuchEvaluator",)
    with pytest.raises(KeyError, match="NoSuchEvaluator.*detectron2.evaluation"):
        build_evaluators(cfg, "toyparts_mini_val", str(tmp_path))


def test_two_evaluators_of_the_same_results_are_refused_before_inference(tmp_path):
    from wsss_d2.config import get_wsss_cfg

    cfg = get_wsss_cfg()
    cfg.WSSS.EVALUATORS = ("WSSSSemSegEvaluator", "COCOSemSegJSONEvaluator")
    with pytest.raises(ValueError, match="WSSSSemSegEvaluator and COCOSemSegJSONEvaluator"):
        build_evaluators(cfg, "toyparts_mini_val", str(tmp_path))
    cfg.WSSS.EVALUATORS = ("CAMEvaluator", "CAMEvaluator")
    with pytest.raises(ValueError, match="both report 'cam'"):
        build_evaluators(cfg, "toyparts_mini_val", str(tmp_path))
    cfg.WSSS.EVALUATORS = ("SemSegEvaluator", "WSSSSemSegEvaluator")  # Detectron2's too
    with pytest.raises(ValueError, match="both report 'sem_seg'"):
        build_evaluators(cfg, "toyparts_mini_val", str(tmp_path))


def test_ground_truth_found_by_file_name_when_the_mapper_dropped_it(tmp_path):
    """Detectron2's DatasetMapper pops sem_seg_file_name; the evaluator finds the mask in the
    DatasetCatalog by file_name, as Detectron2's SemSegEvaluator does."""
    rng = np.random.default_rng(2)
    gts = [rng.integers(0, 3, (8, 8)).astype(np.uint8) for _ in range(2)]
    dicts = _register("eval_by_name", tmp_path, gts)
    outputs = [{"sem_seg": torch.rand(3, 8, 8)} for _ in gts]
    full = WSSSSemSegEvaluator("eval_by_name", num_classes=3, distributed=False)
    full.process(dicts, outputs)
    dropped = WSSSSemSegEvaluator("eval_by_name", num_classes=3, distributed=False)
    dropped.process(
        [{k: v for k, v in d.items() if k != "sem_seg_file_name"} for d in dicts], outputs
    )
    assert dropped.evaluate()["sem_seg"]["mIoU"] == full.evaluate()["sem_seg"]["mIoU"]
    with pytest.raises(KeyError, match="nowhere.jpg"):
        dropped.process([{"file_name": "nowhere.jpg"}], outputs[:1])
