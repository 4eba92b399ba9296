"""SAM-box labeling: box sources, overlap resolution, batched SAM, rounds, evaluator, tool."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from pycocotools import mask as mask_util
from sam_utils import FixedBoxes, random_boxes, write_images
from segment_anything import SamPredictor

from wsss_d2.evaluation import EVALUATOR_REGISTRY
from wsss_d2.evaluation.sam_eval import SamBoxLabelingEvaluator
from wsss_d2.io.files import read_label_png, save_label_png
from wsss_d2.io.rounds import RoundWriter, read_manifest
from wsss_d2.pseudo.sam.box_sources import CamBoxSource, GTBoxSource, boxes_from_cam
from wsss_d2.pseudo.sam.boxes import ImageBoxes, sanitize_boxes
from wsss_d2.pseudo.sam.file_boxes import ClassNameMapper, FileBoxSource
from wsss_d2.pseudo.sam.labeler import SamBoxLabeler, label_dataset
from wsss_d2.pseudo.sam.model import build_sam_tiny, load_sam
from wsss_d2.pseudo.sam.paste import paste_masks
from wsss_d2.pseudo.sam.records import RECORDS_DIR

CLASSES = ["background", "cat", "dog"]


@pytest.fixture(scope="module")
def sam():
    return build_sam_tiny()


def _labeler(sam, source, **kw):
    return SamBoxLabeler(sam=sam, box_source=source, num_classes=3, **kw)


# ---------------------------------------------------------------------------- pasting
def test_overlap_resolved_by_score_then_smaller_area():
    masks = np.zeros((3, 4, 6), bool)
    masks[0, :, 0:4] = True  # class 1, score 0.9, 16 px
    masks[1, :, 2:6] = True  # class 2, score 0.5, 16 px: loses columns 2-3 to mask 0
    masks[2, 1:3, 1:3] = True  # class 2, score 0.9 like mask 0 but smaller (4 px): wins there
    label, info = paste_masks(masks, [1, 2, 2], [0.9, 0.5, 0.9])
    expected = np.array([
        [1, 1, 1, 1, 2, 2],
        [1, 2, 2, 1, 2, 2],
        [1, 2, 2, 1, 2, 2],
        [1, 1, 1, 1, 2, 2],
    ])  # fmt: skip
    np.testing.assert_array_equal(label, expected)
    assert info["areas"].tolist() == [16, 16, 4]
    assert info["won"].tolist() == [12, 8, 4]
    # >= 2 masks: columns 2-3 (8 px) plus the 2 px of mask 2 in column 1
    assert info["overlap_pixels"] == 10
    # two classes: mask 0 with (mask 1 or mask 2): same 10 px
    assert info["conflict_pixels"] == 10
    # the reverse order of the inputs gives the same map: order never matters
    label_r, _ = paste_masks(masks[::-1], [2, 2, 1], [0.9, 0.5, 0.9])
    np.testing.assert_array_equal(label_r, expected)


def test_low_score_masks_dropped_or_ignored():
    masks = np.zeros((2, 3, 3), bool)
    masks[0, 0, :] = True
    masks[1, :2, :] = True  # dropped; its row 1 is explained by no kept mask
    label, _ = paste_masks(masks, [1, 2], [0.9, 0.2], keep=[True, False])
    assert label.tolist() == [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    label, _ = paste_masks(masks, [1, 2], [0.9, 0.2], keep=[True, False], ignore_dropped=True)
    assert label.tolist() == [[1, 1, 1], [255, 255, 255], [0, 0, 0]]


def test_paste_statistics_match_a_pixel_by_pixel_count():
    """Random masks (same-class and cross-class overlaps, dropped masks): label, won, overlap and
    conflict pixels equal a direct per-pixel computation."""
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 7))
        masks = np.zeros((n, 9, 11), bool)
        for m in masks:
            y0, x0 = rng.integers(0, 6, 2)
            m[y0 : y0 + rng.integers(2, 6), x0 : x0 + rng.integers(2, 8)] = True
        classes = rng.integers(1, 4, n)
        scores = rng.choice([0.3, 0.6, 0.9], n)
        keep = rng.random(n) < 0.8
        label, info = paste_masks(masks, classes, scores, keep)
        km = masks[keep]
        count = km.sum(0)
        assert info["overlap_pixels"] == int((count >= 2).sum()), trial
        ncls = sum((km[classes[keep] == c].any(0)).astype(int) for c in (1, 2, 3))
        assert info["conflict_pixels"] == int((ncls >= 2).sum()), trial
        for y, x in zip(*np.nonzero(count)):
            idx = np.flatnonzero(keep & masks[:, y, x])
            best = max(idx, key=lambda i: (scores[i], -masks[i].sum()))
            assert label[y, x] == classes[best] or (
                # equal score and area: either may win, but then with the same class
                any(
                    scores[j] == scores[best] and masks[j].sum() == masks[best].sum()
                    for j in idx
                    if classes[j] == label[y, x]
                )
            ), trial
        assert (label[count == 0] == 0).all()
        assert info["won"].sum() == int((count > 0).sum())
        assert (info["won"][~keep] == 0).all()


def test_paste_many_masks_uses_wide_owner_ids():
    """>= 255 masks do not fit the 8-bit owner map: the wide path gives the same answer."""
    n = 300
    masks = np.zeros((n, 20, 20), bool)
    for i in range(n):
        masks[i, (i // 20) % 20, i % 20] = True  # a pixel of its own
    classes = np.arange(n) % 7 + 1
    scores = np.linspace(0.1, 0.9, n)
    label, info = paste_masks(masks, classes, scores)
    expected = np.zeros(400, np.uint8)
    for i in np.argsort(scores):
        expected[i % 400] = classes[i]
    np.testing.assert_array_equal(label.ravel(), expected)
    assert info["overlap_pixels"] == 0 and info["won"].sum() == 300


# ---------------------------------------------------------------------------- boxes
def test_box_partly_outside_is_clipped_and_outside_box_names_image():
    out = sanitize_boxes(np.array([[-5, 2, 30, 70]]), 48, 64, "a.jpg")
    assert out.tolist() == [[0, 2, 30, 48]]
    with pytest.raises(ValueError, match="b.jpg.*outside"):
        sanitize_boxes(np.array([[70, 2, 90, 20]]), 48, 64, "b.jpg")
    with pytest.raises(ValueError, match="c.jpg.*inverted"):
        sanitize_boxes(np.array([[10, 20, 5, 30]]), 48, 64, "c.jpg")


def test_gt_boxes_from_annotations_and_voc_xml(tmp_path):
    d = {"file_name": "x/img.jpg", "height": 40, "width": 50, "tags": [1], "annotations": [
        {"bbox": [1, 2, 10, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1},
        {"bbox": [5, 5, 10, 10], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2},  # untagged
        {"bbox": [0, 0, 50, 40], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 1},
    ]}  # fmt: skip
    src = GTBoxSource(CLASSES[1:])
    b = src(d)
    assert b.boxes.tolist() == [[1, 2, 11, 22]] and b.classes.tolist() == [1]
    assert b.instance_ids.tolist() == [0] and src.last_untagged == 1
    (tmp_path / "img.xml").write_text(
        "<annotation><object><name>dog</name><bndbox><xmin>3</xmin><ymin>4</ymin>"
        "<xmax>20</xmax><ymax>30</ymax></bndbox></object></annotation>"
    )
    voc = GTBoxSource(CLASSES[1:], annotations_path=str(tmp_path))
    b = voc({**{k: v for k, v in d.items() if k != "annotations"}, "tags": [2]})
    assert b.boxes.tolist() == [[2, 3, 20, 30]] and b.classes.tolist() == [2]


def test_cam_boxes_from_connected_components():
    cam = np.zeros((2, 10, 20), np.float32)
    cam[0, 1:4, 1:5] = 1.0  # component A of class 1 (peak 1.0)
    cam[0, 6:9, 12:18] = 0.5  # component B of class 1 (peak 0.5)
    cam[0, 0, 19] = 0.9  # a 1-pixel speck, under min_area
    cam[1, 2:5, 2:5] = 0.8  # class 2 is not tagged: ignored
    b = boxes_from_cam(cam, [1], threshold=0.3, min_area=0.02, image_hw=(20, 40))
    assert b.classes.tolist() == [1, 1]
    assert b.boxes.tolist() == [[2, 2, 10, 8], [24, 12, 36, 18]]  # x2 scale
    assert b.scores.tolist() == [1.0, 0.5]
    one = boxes_from_cam(cam, [1], threshold=0.3, min_area=0.02, max_boxes_per_class=1)
    assert one.scores.tolist() == [1.0]
    src = CamBoxSource(CLASSES[1:], threshold=0.3, min_area=0.02)
    got = src({"file_name": "i.jpg", "height": 10, "width": 20, "tags": [2], "cam": cam})
    assert got.classes.tolist() == [2] and got.labels == ["dog"]


def test_file_boxes_with_assist_words_and_formats(tmp_path, caplog):
    mapper = ClassNameMapper(
        ["diningtable", "horse"],
        class_text=["diningtable:dining table"],
        assist_words=["horse:saddle,halter", "diningtable:plate"],
    )
    assert mapper("Dining Table(0.42)") == 1 and mapper("plate") == 1
    assert mapper("saddle") == 2 and mapper("car") is None
    assert mapper("table") == 1  # a grounded part of the class text
    two = ClassNameMapper(["dining table", "side table"])
    assert two("table") is None and two("side") == 2  # ambiguous parts match nothing
    assert mapper.prompts([1, 2]) == ["dining table", "plate", "horse", "saddle", "halter"]
    (tmp_path / "im.json").write_text(json.dumps({"box_format": "cxcywh_norm", "boxes": [
        {"label": "saddle", "box": [0.5, 0.5, 0.2, 0.4], "score": 0.8},
        {"label": "spaceship", "box": [0.5, 0.5, 0.1, 0.1], "score": 0.9},
        {"label": "dining table", "box": [0.5, 0.5, 0.1, 0.1], "score": 0.1},
    ]}))  # fmt: skip
    src = FileBoxSource(
        ["diningtable", "horse"], str(tmp_path), assist_words=["horse:saddle"], min_score=0.3
    )
    d = {"file_name": "a/im.jpg", "height": 100, "width": 200, "tags": [1, 2]}
    b = src(d)
    assert b.classes.tolist() == [2] and np.allclose(b.boxes, [[80, 30, 120, 70]])
    assert src.last_unmatched == 1
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        src({**d, "file_name": "a/nothere.jpg"})


# ---------------------------------------------------------------------------- SAM
@pytest.mark.parametrize("multimask", [False, True])
def test_batched_prediction_matches_predict_torch(sam, multimask):
    img = (np.random.RandomState(1).rand(48, 64, 3) * 255).astype(np.uint8)
    boxes = np.array(
        [[2, 3, 30, 40], [10, 10, 60, 45], [0, 0, 64, 48], [40, 5, 55, 20], [5, 30, 25, 47]],
        np.float32,
    )
    lab = _labeler(sam, None, boxes_per_batch=2, multimask=multimask)  # several decoder chunks
    feats, sizes = lab.encode([img])
    masks, scores = lab.predict(feats, torch.from_numpy(boxes), sizes[0], img.shape[:2])
    pred = SamPredictor(sam)
    pred.set_image(img)
    tb = pred.transform.apply_boxes_torch(torch.from_numpy(boxes), img.shape[:2])
    ref, iou, _ = pred.predict_torch(None, None, tb, multimask_output=multimask)
    best = iou.argmax(1)
    assert torch.equal(masks, ref[torch.arange(5), best])
    assert torch.allclose(scores, iou.max(1).values)


def test_image_without_boxes_is_background_and_logged(sam, tmp_path, caplog):
    dicts = write_images(str(tmp_path), 2)
    src = FixedBoxes({1: ImageBoxes(np.array([[5, 5, 40, 30]]), [1])})
    with caplog.at_level(logging.WARNING, logger="wsss_d2.pseudo.sam.labeler"):
        res = _labeler(sam, src).label(dicts)
    assert res[0].label.shape == (48, 64) and not res[0].label.any()
    assert "no boxes for image" in caplog.text and dicts[0]["file_name"] in caplog.text
    assert dicts[1]["file_name"] not in caplog.text
    assert res[1].label.max() <= 1 and len(res[1].masks_rle) == 1


def test_out_of_memory_halves_the_batches(sam, tmp_path, monkeypatch):
    dicts = write_images(str(tmp_path), 3)
    src = FixedBoxes(random_boxes(dicts, per_image=5))
    expected = [r.label for r in _labeler(sam, src).label(dicts)]
    lab = _labeler(sam, src, images_per_batch=4, boxes_per_batch=8)
    encode, predict = lab.encode, lab.predict

    def small_encode(images):
        if len(images) > 1:
            raise torch.OutOfMemoryError("simulated")
        return encode(images)

    def small_predict(features, boxes, *args):
        if min(len(boxes), lab.boxes_per_batch) > 2:
            raise torch.OutOfMemoryError("simulated")
        return predict(features, boxes, *args)

    monkeypatch.setattr(lab, "encode", small_encode)
    monkeypatch.setattr(lab, "predict", small_predict)
    got = [r.label for r in lab.label(dicts)]
    assert lab.images_per_batch == 1 and lab.boxes_per_batch == 2
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_roundtrip_and_errors(tmp_path, sam):
    path = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), path)
    loaded = load_sam("tiny", str(path))
    for (k, a), b in zip(sam.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match=r"missing\.pth.*vit_b"):
        load_sam("vit_b", str(tmp_path / "missing.pth"))
    with pytest.raises(FileNotFoundError, match="CHECKPOINT is empty.*vit_h"):
        load_sam("vit_h", "")
    with pytest.raises(ValueError, match=r"tiny\.pth.*'vit_b'.*looks like tiny"):
        load_sam("vit_b", str(path))
    wide = tmp_path / "wide.pth"  # same type name, other shapes: caught by the strict load
    torch.save(build_sam_tiny(embed_dim=48).state_dict(), wide)
    with pytest.raises(ValueError, match=r"wide\.pth.*'tiny'.*encoder width 48.*size mismatch"):
        load_sam("tiny", str(wide))
    with pytest.raises(ValueError, match="MODEL_TYPE 'vit_x'"):
        load_sam("vit_x", str(path))


# ---------------------------------------------------------------------------- evaluator
def _rle(m: np.ndarray) -> dict:
    r = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": r["size"], "counts": r["counts"].decode("ascii")}


def test_evaluator_numbers_by_hand(tmp_path):
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 0, 0], [2, 2, 0, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1], [0, 2, 255, 0], [2, 2, 0, 0]], np.uint8)
    save_label_png(str(tmp_path / "gt.png"), gt)
    cat_inst = np.zeros((4, 4), bool)
    cat_inst[:2, 2:] = True
    mask_cat = np.zeros((4, 4), bool)
    mask_cat[:2, 1:] = True  # 6 px, 4 of them the instance: IoU 4/6
    d = {
        "file_name": "im.jpg",
        "height": 4,
        "width": 4,
        "tags": [1, 2],
        "sem_seg_file_name": str(tmp_path / "gt.png"),
        "annotations": [
            {
                "bbox": [2, 0, 2, 2],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 1,
                "segmentation": _rle(cat_inst),
            }
        ],
    }
    rec = {
        "classes": [1, 1],
        "kept": [True, False],
        "boxes": [[1, 0, 4, 2], [0, 0, 1, 1]],
        "instance_ids": [-1, -1],
        "mask_scores": [0.9, 0.1],
        "overlap_pixels": 3,
        "conflict_pixels": 0,
        "masks_rle": [_rle(mask_cat), _rle(np.zeros((4, 4), bool))],
    }
    ev = SamBoxLabelingEvaluator(
        "unused_sam_eval_ds", num_classes=3, class_names=CLASSES, output_dir=str(tmp_path / "out")
    )
    ev.reset()
    ev.process([d], [{"sam_label": pred, "sam_record": rec}])
    res = ev.evaluate()
    # 255 in the prediction counts as background; gt 255 is skipped. By class:
    # bg: gt 7 px, pred 7 px (one of them the 255 at (2, 2)), tp 6 -> IoU 6/8;
    # cat: gt 4, pred 5, tp 4 -> 4/5; dog: gt 4, pred 3, tp 3 -> 3/4
    iou = res["sem_seg"]
    assert iou["IoU-background"] == pytest.approx(100 * 6 / 8)
    assert iou["IoU-cat"] == pytest.approx(100 * 4 / 5)
    assert iou["IoU-dog"] == pytest.approx(100 * 3 / 4)
    assert iou["mIoU"] == pytest.approx(100 * (6 / 8 + 4 / 5 + 3 / 4) / 3)
    box = res["sam_boxes"]
    assert box["boxes"] == 2 and box["masks_kept"] == 1 and box["masks_dropped_low_score"] == 1
    assert box["missed_tags"] == 1 and box["missed-dog"] == 1  # dog tagged, no box
    assert box["missed_tag_rate"] == pytest.approx(50.0)
    assert box["overlap_pixels"] == 3
    assert box["ignored_pixel_fraction"] == pytest.approx(100 / 16)
    # mask 0 matches the cat instance by box IoU (4/6 >= 0.5); mask 1's box does not
    assert box["instance_matched_masks"] == 1
    assert box["mask_instance_mIoU"] == pytest.approx(100 * 4 / 6)
    saved = json.loads((tmp_path / "out" / "sam_box_labeling.json").read_text())
    assert saved["sam_boxes"]["missed_tags"] == 1


def test_evaluator_is_registered_and_built_from_config(cfg_factory, tmp_path):
    cfg = cfg_factory("configs/sam_boxes_voc.yaml", "OUTPUT_DIR", str(tmp_path))
    MetadataCatalog.get("sam_eval_reg_ds").set(stuff_classes=["background"] + ["c"] * 20)
    ev = EVALUATOR_REGISTRY.get("SamBoxLabelingEvaluator")(
        cfg, dataset_name="sam_eval_reg_ds", output_dir=str(tmp_path)
    )
    assert ev.num_classes == 21
    assert ev.round_dir == str(tmp_path / "pseudo_labels" / "round_01")


# ---------------------------------------------------------------------------- rounds
def _round_files(folder: Path) -> dict:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def test_interrupted_run_resumes_to_the_same_files(sam, tmp_path):
    dicts = write_images(str(tmp_path / "img"), 5)
    boxes = random_boxes(dicts)
    full = RoundWriter(str(tmp_path / "a"), 1, 3)
    label_dataset(_labeler(sam, FixedBoxes(boxes), images_per_batch=2), dicts, full, progress=False)
    full_dir = Path(full.finalize(dicts))

    part = RoundWriter(str(tmp_path / "b"), 1, 3)
    crashing = _labeler(sam, FixedBoxes(boxes, fail_on=3), images_per_batch=2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        label_dataset(crashing, dicts, part, progress=False)
    done = sorted(p.name for p in Path(part.partial_dir).glob("*.png"))
    assert done == ["img_000.png", "img_001.png"]  # the batch before the crash
    with pytest.raises(RuntimeError, match="incomplete"):
        part.finalize(dicts)
    ev = SamBoxLabelingEvaluator("unused_sam_eval_ds", num_classes=3, class_names=CLASSES)
    again = RoundWriter(str(tmp_path / "b"), 1, 3)
    # same config as the first run (an image batch of 2): floats of a batched encoder call may
    # differ in the last bits from those of another batch size
    rerun = _labeler(sam, FixedBoxes(boxes), images_per_batch=2)
    n = label_dataset(rerun, dicts, again, ev, progress=False)
    assert n == 3  # only the images the crash left undone
    part_dir = Path(again.finalize(dicts))
    assert _round_files(part_dir) == _round_files(full_dir)
    assert ev.evaluate()["sam_boxes"]["images"] == 5  # resumed images are scored too
    assert (
        read_manifest(str(part_dir))["pixels_per_class"]
        == read_manifest(str(full_dir))["pixels_per_class"]
    )
    rec = json.loads((part_dir / RECORDS_DIR / "img_000.json").read_text())
    assert len(rec["boxes"]) == 5 and len(rec["masks_rle"]) == 5
    with pytest.raises(FileExistsError, match="overwrite"):
        RoundWriter(str(tmp_path / "b"), 1, 3)


# ---------------------------------------------------------------------------- tool
def _run_tool(cfg_file: str, tmp_path: Path, *opts: str, flags=()):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_sam_labels
    finally:
        sys.path.pop(0)
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(
        ["--config-file", cfg_file, *flags, "OUTPUT_DIR", str(tmp_path), *opts]
    )
    return make_sam_labels.main(args)


def test_tool_on_coco_tiny_end_to_end(coco_tiny_root, tmp_path):
    """coco_tiny + GT boxes + the tiny random SAM: the pipeline runs; numbers mean nothing."""
    from wsss_d2.data.datasets import register_coco_tiny

    register_coco_tiny(
        str(coco_tiny_root), sem_seg_root=str(tmp_path / "gt"), prefix="sam_test_coco_tiny"
    )
    full = DatasetCatalog.get("sam_test_coco_tiny_train_tags")
    subset = "sam_test_coco_tiny_subset"
    if subset in DatasetCatalog.list():
        DatasetCatalog.remove(subset)
    DatasetCatalog.register(subset, lambda: full[:4])
    MetadataCatalog.get(subset).set(
        **{
            k: v
            for k, v in MetadataCatalog.get("sam_test_coco_tiny_train_tags").as_dict().items()
            if k != "name"
        }
    )
    opts = ("DATASETS.TRAIN", f"('{subset}',)", "DATASETS.TEST", f"('{subset}',)")
    res = _run_tool(str(REPO / "configs/sam_boxes_coco_tiny.yaml"), tmp_path, *opts)
    box = res["sam_boxes"]
    n_boxes = sum(sum(1 for a in d["annotations"] if not a["iscrowd"]) for d in full[:4])
    assert box["images"] == 4 and box["boxes"] == n_boxes and box["missed_tags"] == 0
    assert 0 <= res["sem_seg"]["mIoU"] <= 100
    assert box["instance_matched_masks"] == n_boxes  # every GT box has its instance
    round_dir = tmp_path / "pseudo_labels" / "round_01"
    man = read_manifest(str(round_dir))
    assert man["num_images"] == 4 and man["source"] == "sam_boxes"
    for d in full[:4]:
        stem = os.path.splitext(os.path.basename(d["file_name"]))[0]
        assert read_label_png(str(round_dir / f"{stem}.png")).shape == (d["height"], d["width"])
    assert json.loads((tmp_path / "sam_box_labeling.json").read_text())["sam_boxes"]["images"] == 4
    with pytest.raises(FileExistsError, match="overwrite"):
        _run_tool(str(REPO / "configs/sam_boxes_coco_tiny.yaml"), tmp_path, *opts)
    again = _run_tool(
        str(REPO / "configs/sam_boxes_coco_tiny.yaml"), tmp_path, *opts, flags=("--eval-only",)
    )
    assert again["sem_seg"]["mIoU"] == pytest.approx(res["sem_seg"]["mIoU"])
    assert again["sam_boxes"] == pytest.approx(res["sam_boxes"], nan_ok=True)


def test_cam_boxes_from_the_pseudo_label_tool_cams_end_to_end(tmp_path):
    """CAM model -> make_pseudo_labels (CAM files .npz) -> CamBoxSource -> SAM round: the CAM
    files our own CAM inference writes are the box source's input."""
    from conftest import MINI_TOY_OPTS, load_script, make_cfg
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from wsss_d2.runs import label_argument_parser

    cfg = make_cfg("configs/cam_toy.yaml", *MINI_TOY_OPTS)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(tmp_path)).save("cam")
    pseudo = load_script("tools/make_pseudo_labels.py")
    args = label_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs/pseudo_toy.yaml"), *MINI_TOY_OPTS,
         "MODEL.WEIGHTS", str(tmp_path / "cam.pth"), "WSSS.PSEUDO.METHOD", "threshold",
         "WSSS.PSEUDO.SCALES", "(1.0,)", "OUTPUT_DIR", str(tmp_path / "pseudo")]
    )  # fmt: skip
    pseudo.main(args)
    cam_dir = tmp_path / "pseudo" / "pseudo_labels" / "cams" / "round_01"
    assert any(f.endswith(".npz") for f in os.listdir(cam_dir))
    res = _run_tool(
        str(REPO / "configs/sam_boxes_coco_tiny.yaml"),
        tmp_path / "sam",
        "INPUT.TAGS.NUM_CLASSES", "5",
        "DATASETS.TRAIN", "('toyparts_mini_train',)",
        "DATASETS.TEST", "('toyparts_mini_train',)",
        "WSSS.SAM.BOX_SOURCE", "CamBoxSource",
        "WSSS.SAM.CAM_DIR", str(cam_dir),
        "WSSS.SAM.CAM_THRESHOLD", "0.2",
    )  # fmt: skip
    n = len(DatasetCatalog.get("toyparts_mini_train"))
    assert res["sam_boxes"]["images"] == n and res["sam_boxes"]["boxes"] > 0
    assert read_manifest(str(tmp_path / "sam" / "pseudo_labels" / "round_01"))["num_images"] == n
    # a CAM file of another image size is refused, naming the file
    d = DatasetCatalog.get("toyparts_mini_train")[0]
    src = CamBoxSource([str(i) for i in range(5)], cam_dir=str(cam_dir))
    with pytest.raises(ValueError, match=r"\.npz"):
        src.load_cam({**d, "height": d["height"] + 1})
