"""Reliability of the data: ground truth with ids outside 0..K, 16-bit masks and images, EXIF
orientation, COCO JSON without masks or boxes, tags files from Excel or with non-string tags,
images of the same name in sub-folders, a corrupt image mid-dataset."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import MINI_TOY_OPTS, make_cfg
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from PIL import Image

from wsss_d2.data.datasets.coco import load_coco_tags
from wsss_d2.data.datasets.folder import load_folder_tags, read_tags_file
from wsss_d2.data.mappers import TagDatasetMapper
from wsss_d2.evaluation.sem_seg import WSSSSemSegEvaluator
from wsss_d2.io import rounds
from wsss_d2.io.files import read_image_checked, read_label_png
from wsss_d2.pseudo.make_round import make_round

CLASSES = ["a", "b", "c", "d", "e"]  # K = 5


def _png(path, array, mode=None):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return str(path)


def _score(tmp_path, gt, tags=(1,), **kw):
    """The evaluator on one all-background prediction against ground truth ``gt``."""
    path = _png(tmp_path / "gt.png", gt)
    ev = WSSSSemSegEvaluator("", num_classes=6, class_names=["bg", *CLASSES], **kw)
    pred = torch.zeros(6, *gt.shape)
    pred[0] = 1
    tags_t = torch.zeros(5)
    tags_t[[t - 1 for t in tags]] = 1
    inp = {"file_name": "img.png", "sem_seg_file_name": path, "tags": tags_t}
    ev.process([inp], [{"sem_seg": pred}])
    return ev.evaluate()["sem_seg"]


# ---------------------------------------------------------------------- ground truth
def test_gt_ids_outside_0_to_k_are_an_error_naming_file_and_values(tmp_path):
    gt = np.zeros((8, 8), np.uint8)
    gt[:4] = 1
    gt[0, 0], gt[1, 1] = 7, 9  # not classes of K = 5, not 255
    with pytest.raises(ValueError, match=r"gt\.png holds ids 7, 9 outside 0\.\.5"):
        _score(tmp_path, gt)
    # the documented opt-out counts them as ignored
    res = _score(tmp_path, gt, invalid_gt="ignore")
    assert res["pACC"] == pytest.approx(100 * 32 / 62)


def test_16bit_masks_are_read_without_wraparound(tmp_path):
    lab = np.zeros((4, 4), np.uint16)
    lab[0, 0], lab[1, 1] = 256, 3  # 256 would wrap to 0 (background) in uint8
    path = _png(tmp_path / "m16.png", lab)
    with pytest.raises(ValueError, match=r"m16\.png is a I;16 image with ids outside 0\.\.255"):
        read_label_png(path)
    ok = np.zeros((4, 4), np.uint16)
    ok[2, 2], ok[3, 3] = 3, 255
    np.testing.assert_array_equal(read_label_png(_png(tmp_path / "ok16.png", ok)), ok)


def test_binary_0_255_masks_are_explained(tmp_path):
    blob = np.zeros((8, 8), np.uint8)
    blob[2:6, 2:6] = 255  # the object stored as 255 (which means ignore)
    with pytest.raises(ValueError, match="binary 0/255 mask"):
        _score(tmp_path, blob)
    blob[2, 2:6] = 128  # anti-aliased edges
    with pytest.raises(ValueError, match="holds ids 128 .*binary"):
        _score(tmp_path, blob)


# ---------------------------------------------------------------------- images
def test_16bit_images_are_scaled_not_saturated(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = _png(tmp_path / "g16.png", ramp)
    img = read_image_checked(path, "RGB")
    assert img.dtype == np.uint8 and img.shape == (64, 64, 3)
    np.testing.assert_allclose(img[..., 0], ramp / 257.0, atol=1)  # 65535 -> 255, not clipped


def _exif_jpeg(path, hw=(40, 64), orientation=6):
    img = np.zeros((*hw, 3), np.uint8)
    img[:, : hw[1] // 2] = (200, 30, 30)
    exif = Image.Exif()
    exif[0x0112] = orientation  # stored landscape, shown rotated by 90 degrees
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(img).save(path, "JPEG", exif=exif)


def test_exif_rotated_jpeg_has_one_size_at_registration_and_in_the_pixels(tmp_path):
    _exif_jpeg(tmp_path / "imgs" / "p.jpg")
    (tmp_path / "tags.csv").write_text("file_name,tags\np.jpg,a\n")
    (d,) = load_folder_tags(str(tmp_path / "imgs"), str(tmp_path / "tags.csv"), CLASSES)
    assert (d["height"], d["width"]) == (64, 40)
    cfg = make_cfg("configs/cam_toy.yaml", *MINI_TOY_OPTS)
    for is_train in (True, False):  # Detectron2's size check passes in both mappers
        x = TagDatasetMapper(cfg, is_train)(d)
        assert x["image"].shape[0] == 3
    assert TagDatasetMapper(cfg, False)(d)["image"].shape[1:] == (64, 40)


# ---------------------------------------------------------------------- COCO JSON
def _coco(tmp_path, anns, name="ann.json"):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    images = []
    for i in range(3):
        Image.fromarray(np.full((16, 20, 3), 50 * i, np.uint8)).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "height": 16, "width": 20})
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    js = tmp_path / name
    js.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return str(js), str(root)


def test_coco_json_with_boxes_but_no_segmentation_loads_as_tags(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [2, 2, 6, 6], "iscrowd": 0,
         "segmentation": []},
        {"id": 3, "image_id": 3, "category_id": 3, "bbox": [0, 0, 4, 4], "iscrowd": 0,
         "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]]},
    ]  # fmt: skip
    js, root = _coco(tmp_path, anns)
    dicts = load_coco_tags(js, root, "rel_coco_boxes", sem_seg_root=str(tmp_path / "gt"))
    assert [d["tags"] for d in dicts] == [[1], [2], [1]]
    assert [len(d["annotations"]) for d in dicts] == [1, 1, 1]  # boxes kept for GT boxes
    assert ["sem_seg_file_name" in d for d in dicts] == [False, False, True]  # no mask, no GT


def test_image_level_only_coco_json_loads_as_tags(tmp_path):
    anns = [  # categories per image, no boxes, no masks, no ids
        {"image_id": 1, "category_id": 3},
        {"image_id": 1, "category_id": 7},
        {"image_id": 3, "category_id": 7},
    ]
    js, root = _coco(tmp_path, anns)
    dicts = load_coco_tags(js, root, "rel_coco_tags_only", sem_seg_root=str(tmp_path / "gt"))
    assert [(d["image_id"], d["tags"]) for d in dicts] == [(1, [1, 2]), (3, [2])]
    assert all(not d["annotations"] and "sem_seg_file_name" not in d for d in dicts)


# ---------------------------------------------------------------------- tags files
def test_csv_tags_file_written_by_excel_with_a_bom(tmp_path):
    (tmp_path / "tags.csv").write_bytes("file_name,tags\r\nx.png,a;c\r\n".encode("utf-8-sig"))
    assert read_tags_file(str(tmp_path / "tags.csv"), CLASSES) == [("x.png", [1, 3], 2)]


def test_json_tags_that_are_not_strings_are_a_clear_error(tmp_path):
    (tmp_path / "tags.json").write_text('{\n "x.png": ["a"],\n "y.png": [1, 2]\n}\n')
    with pytest.raises(ValueError, match=r"tag 1 of image 'y.png' in .*tags\.json line 3 is a int"):
        read_tags_file(str(tmp_path / "tags.json"), CLASSES)


def _label_cfg(tmp_path):
    return make_cfg(
        "configs/pseudo_toy.yaml", *MINI_TOY_OPTS, "WSSS.PSEUDO.METHOD", "threshold",
        "WSSS.PSEUDO.SCALES", "(1.0,)", "WSSS.PSEUDO.FLIP", "False", "WSSS.PSEUDO.NUM_WORKERS",
        "1", "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip


def test_same_file_name_in_two_subfolders_gets_two_label_and_cam_files(tmp_path):
    src = DatasetCatalog.get("toyparts_mini_train")[:2]
    rows = ["file_name,tags"]
    for sub, d in zip(("a", "b"), src):
        os.makedirs(tmp_path / "imgs" / sub)
        shutil.copy(d["file_name"], tmp_path / "imgs" / sub / "000.png")
        rows.append(f"{sub}/000.png," + ";".join(CLASSES[t - 1] for t in d["tags"]))
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    dicts = load_folder_tags(str(tmp_path / "imgs"), str(tmp_path / "tags.csv"), CLASSES)
    cfg = _label_cfg(tmp_path)
    folder = make_round(cfg, build_model(cfg).eval(), dicts, 1, root=str(tmp_path / "r"))
    for sub in ("a", "b"):
        assert os.path.isfile(os.path.join(folder, sub, "000.png"))
        assert os.path.isfile(os.path.join(tmp_path, "r", "cams", "round_01", sub, "000.npz"))
    assert rounds.read_manifest(folder)["num_images"] == 2


def test_a_label_file_collision_is_found_before_the_work_naming_both(tmp_path):
    src = DatasetCatalog.get("toyparts_mini_train")[0]
    os.makedirs(tmp_path / "imgs")
    for ext in ("png", "jpg"):
        Image.open(src["file_name"]).convert("RGB").save(tmp_path / "imgs" / f"x.{ext}")
    tags = ";".join(CLASSES[t - 1] for t in src["tags"])
    (tmp_path / "tags.csv").write_text(f"file_name,tags\nx.png,{tags}\nx.jpg,{tags}\n")
    dicts = load_folder_tags(str(tmp_path / "imgs"), str(tmp_path / "tags.csv"), CLASSES)
    cfg = _label_cfg(tmp_path)
    with pytest.raises(ValueError, match=r"x\.png and .*x\.jpg would share the label file"):
        make_round(cfg, build_model(cfg).eval(), dicts, 1, root=str(tmp_path / "r"))
    assert not (tmp_path / "r" / "cams").exists()  # no CAM was computed


def test_a_corrupt_image_mid_dataset_is_named_and_resumes_after_the_fix(tmp_path):
    src = DatasetCatalog.get("toyparts_mini_train")[:4]
    dicts = []
    for i, d in enumerate(src):  # a private copy of 4 images, the third one corrupt
        dst = tmp_path / f"im{i}.png"
        shutil.copy(d["file_name"], dst)
        dicts.append({**d, "file_name": str(dst)})
    good = (tmp_path / "im2.png").read_bytes()
    (tmp_path / "im2.png").write_bytes(good[: len(good) // 3])  # truncated PNG
    cfg = _label_cfg(tmp_path)
    model = build_model(cfg).eval()
    root = str(tmp_path / "out" / "pseudo_labels")
    with pytest.raises(OSError, match="im2.png"):
        make_round(cfg, model, dicts, 1, root=root, progress=False)
    assert rounds.latest_complete_round(root) is None
    (tmp_path / "im2.png").write_bytes(good)
    folder = make_round(cfg, model, dicts, 1, root=root, progress=False)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".png")) == [
        f"im{i}.png" for i in range(4)
    ]


def test_sam_cam_and_box_files_of_same_named_images_are_their_own(tmp_path):
    from wsss_d2.pseudo.sam.box_sources import CamBoxSource
    from wsss_d2.pseudo.sam.file_boxes import FileBoxSource

    dicts = [
        {"file_name": f"/data/{s}/000.png", "label_stem": f"{s}/000", "height": 8, "width": 8,
         "tags": [1]}
        for s in ("a", "b")
    ]  # fmt: skip
    for i, s in enumerate(("a", "b")):
        cam = np.zeros((2, 8, 8), np.float32)
        cam[0, 4 * i : 4 * i + 4, :4] = 1.0  # a: top rows, b: bottom rows
        os.makedirs(tmp_path / "cams" / s)
        np.save(tmp_path / "cams" / s / "000.npy", cam)
        os.makedirs(tmp_path / "boxes" / s)
        (tmp_path / "boxes" / s / "000.json").write_text(
            json.dumps([{"box": [0, 4 * i, 4, 4 * i + 4], "label": "a", "score": 1.0}])
        )
    cams = CamBoxSource(["a", "b"], cam_dir=str(tmp_path / "cams"), min_area=0.0)
    files = FileBoxSource(["a", "b"], box_dir=str(tmp_path / "boxes"))
    for source in (cams, files):
        tops = [float(source(d).boxes[0][1]) for d in dicts]
        assert tops[0] < 2 <= tops[1], (type(source).__name__, tops)


def test_a_tags_file_that_is_not_utf8_is_a_clear_error(tmp_path):
    (tmp_path / "tags.csv").write_bytes("file_name,tags\ncaf\xe9.png,a\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"tags\.csv is not UTF-8 text"):
        read_tags_file(str(tmp_path / "tags.csv"), CLASSES)
