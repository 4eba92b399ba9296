"""VOC, COCO-format and folder tag datasets, on tiny trees built in tmp_path (+ coco_tiny)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
from conftest import COCO_TINY, VOC_MINI
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from wsss_d2.data.datasets import (
    VOC_CLASSES,
    VOC_COCO_NAMES,
    register_coco_tags,
    register_coco_tiny,
    register_folder_tags,
    register_voc_tags,
)
from wsss_d2.data.datasets.coco_sem_seg import default_sem_seg_root, instances_to_label
from wsss_d2.data.datasets.voc import voc_split_ids
from wsss_d2.io.files import read_label_png, save_label_png
from wsss_d2.pseudo.sam.box_sources import GTBoxSource

VOC_ID = {c: i + 1 for i, c in enumerate(VOC_CLASSES)}


def _name(tag: str) -> str:
    return f"test_{tag}_{uuid.uuid4().hex[:8]}"


def _get(name: str) -> list[dict]:
    try:
        return DatasetCatalog.get(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.fixture
def logs(caplog):
    """caplog that also sees wsss_d2 records when a trainer set-up stopped their propagation."""
    lg = logging.getLogger("wsss_d2")
    old = lg.propagate
    lg.propagate = True
    caplog.set_level(logging.INFO, logger="wsss_d2")
    yield caplog
    lg.propagate = old


def _jpeg(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


# ------------------------------------------------------------------------------------- VOC
def _voc_xml(path: Path, w: int, h: int, objects: list[tuple[str, tuple[int, int, int, int]]]):
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
        f"{objs}</annotation>"
    )


def _write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(i + "\n" for i in ids))


@pytest.fixture
def voc_base(tmp_path) -> Path:
    """datasets/ with VOC2012 (ids a-f) and SBD lists; train_aug = {a, b, e, f} - f(no tag)."""
    base = tmp_path / "datasets"
    voc = base / "VOC2012"
    for i, img_id in enumerate("abcdef"):
        _jpeg(voc / "JPEGImages" / f"{img_id}.jpg", 12, 10, seed=i)
    _voc_xml(
        voc / "Annotations" / "a.xml", 12, 10, [("dog", (2, 3, 5, 6)), ("person", (1, 1, 12, 10))]
    )
    _voc_xml(voc / "Annotations" / "b.xml", 12, 10, [("cat", (1, 1, 4, 4))])
    _voc_xml(voc / "Annotations" / "c.xml", 12, 10, [("car", (1, 1, 4, 4))])
    _voc_xml(voc / "Annotations" / "d.xml", 12, 10, [("bus", (1, 1, 4, 4))])
    _voc_xml(voc / "Annotations" / "f.xml", 12, 10, [])  # no object: excluded
    # e has no XML: tags come from its SegmentationClassAug mask (bird + an ignore border)
    mask_e = np.zeros((10, 12), np.uint8)
    mask_e[2:5, 2:5] = VOC_ID["bird"]
    mask_e[0, :] = 255
    save_label_png(str(voc / "SegmentationClassAug" / "e.png"), mask_e)
    save_label_png(str(voc / "SegmentationClassAug" / "a.png"), np.zeros((10, 12), np.uint8))
    save_label_png(str(voc / "SegmentationClass" / "b.png"), np.zeros((10, 12), np.uint8))
    _write_list(voc / "ImageSets" / "Segmentation" / "train.txt", ["a", "b"])
    _write_list(voc / "ImageSets" / "Segmentation" / "val.txt", ["c", "d"])
    _write_list(base / "SBD" / "dataset" / "train.txt", ["b", "c", "e"])
    _write_list(base / "SBD" / "dataset" / "val.txt", ["f", "d"])
    return base


def test_voc_train_aug_set_arithmetic(voc_base):
    voc = str(voc_base / "VOC2012")
    # (SBD train ∪ SBD val ∪ VOC train) − VOC val
    assert voc_split_ids(voc, "train_aug") == ["a", "b", "e", "f"]
    assert voc_split_ids(voc, "val") == ["c", "d"]
    # an explicit train_aug.txt wins over the computed set
    _write_list(voc_base / "VOC2012" / "ImageSets" / "Segmentation" / "train_aug.txt", ["b", "a"])
    assert voc_split_ids(voc, "train_aug") == ["a", "b"]


def test_voc_train_aug_without_sbd_names_the_places(voc_base):
    import shutil

    shutil.rmtree(voc_base / "SBD")
    with pytest.raises(FileNotFoundError, match="SBD"):
        voc_split_ids(str(voc_base / "VOC2012"), "train_aug")


def test_voc_builtin_train_aug(voc_base, monkeypatch, logs):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(voc_base))
    dicts = DatasetCatalog.get("voc_2012_train_aug_tags")  # builtin, registered on import
    by_id = {d["image_id"]: d for d in dicts}
    assert sorted(by_id) == ["a", "b", "e"]  # f has no object
    assert "excluded 1 of 4 images" in logs.text
    a, b, e = by_id["a"], by_id["b"], by_id["e"]
    assert a["tags"] == sorted([VOC_ID["dog"], VOC_ID["person"]])
    assert (a["height"], a["width"]) == (10, 12)
    assert a["sem_seg_file_name"].endswith(os.path.join("SegmentationClassAug", "a.png"))
    assert b["sem_seg_file_name"].endswith(os.path.join("SegmentationClass", "b.png"))
    assert e["tags"] == [VOC_ID["bird"]] and "annotations" not in e
    dog = next(o for o in a["annotations"] if o["category_id"] == VOC_ID["dog"])
    assert dog["bbox"] == [1.0, 2.0, 5.0, 6.0] and dog["bbox_mode"] == BoxMode.XYXY_ABS
    assert dog["iscrowd"] == 0
    meta = MetadataCatalog.get("voc_2012_train_aug_tags")
    assert meta.stuff_classes[0] == "background" and meta.ignore_label == 255


def test_voc_vocdevkit_layout_and_val(voc_base, monkeypatch):
    (voc_base / "VOCdevkit").mkdir()
    (voc_base / "VOC2012").rename(voc_base / "VOCdevkit" / "VOC2012")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(voc_base))
    dicts = DatasetCatalog.get("voc_2012_val_tags")
    assert [d["image_id"] for d in dicts] == ["c", "d"]
    assert all("sem_seg_file_name" not in d for d in dicts)  # no mask -> no key


def test_voc_missing_root_mentions_env(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nothing_here"))
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        DatasetCatalog.get("voc_2012_train_tags")


def test_voc_unknown_class_names_class_and_file(voc_base):
    xml = voc_base / "VOC2012" / "Annotations" / "b.xml"
    _voc_xml(xml, 12, 10, [("unicorn", (1, 1, 3, 3))])
    name = _name("voc")
    register_voc_tags(name, str(voc_base / "VOC2012"), "train")
    with pytest.raises(ValueError, match="unicorn") as err:
        _get(name)
    assert str(xml) in str(err.value)


def test_voc_folder_without_masks_or_xml_names_the_folder(voc_base):
    voc = voc_base / "VOC2012"
    for sub in ("Annotations", "SegmentationClassAug", "SegmentationClass"):
        shutil.rmtree(voc / sub)
    name = _name("voc")
    register_voc_tags(name, str(voc), "train")
    with pytest.raises(FileNotFoundError, match="neither Annotations/") as err:
        _get(name)
    assert str(voc) in str(err.value) and "SegmentationClass" in str(err.value)


def test_voc_list_id_without_image_names_the_id_and_the_list(voc_base):
    voc = voc_base / "VOC2012"
    listed = voc / "ImageSets" / "Segmentation" / "train.txt"
    _write_list(listed, ["a", "b", "ghost"])
    _voc_xml(voc / "Annotations" / "ghost.xml", 12, 10, [("dog", (1, 1, 4, 4))])  # XML, no JPEG
    name = _name("voc")
    register_voc_tags(name, str(voc), "train")
    with pytest.raises(FileNotFoundError, match="'ghost'") as err:
        _get(name)
    assert str(listed) in str(err.value) and "ghost.jpg" in str(err.value)


@pytest.mark.skipif(not (VOC_MINI / "VOC2012").is_dir(), reason="voc_mini is not available")
def test_voc_mini_tags_from_masks_and_no_boxes(monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(VOC_MINI))
    train, val = (DatasetCatalog.get(f"voc_2012_{s}_tags") for s in ("train", "val"))
    assert (len(train), len(val)) == (330, 173)
    for d in train[:5] + val[:5]:
        mask = read_label_png(d["sem_seg_file_name"])
        assert mask.shape == (d["height"], d["width"])
        assert d["tags"] == sorted(int(c) for c in np.unique(mask) if 0 < c < 255)
        assert "annotations" not in d
    with pytest.raises(KeyError, match="no boxes") as err:
        GTBoxSource(class_names=VOC_CLASSES).get_boxes(train[0])
    assert train[0]["file_name"] in str(err.value) and "Annotations" in str(err.value)


# ------------------------------------------------------------------------------------ COCO
def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE (column-major runs, starting with a run of zeros)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def _box_poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


H, W = 30, 40


@pytest.fixture
def coco_tree(tmp_path) -> tuple[str, str]:
    """Images 1-3 (40x30); categories person(1), car(3), dog(18): ids 1, 2, 3 after mapping.

    Image 1: a small dog listed before a big car that contains it; a crowd person region that
    half overlaps the car. Image 2: one person. Image 3: no annotation.
    """
    img_root = tmp_path / "coco" / "images"
    for i in (1, 2, 3):
        _jpeg(img_root / f"{i:03d}.jpg", W, H, seed=i)
    crowd = np.zeros((H, W), bool)
    crowd[15:30, 25:40] = True  # overlaps the car (x < 30, y < 20) at x 25..30, y 15..20
    anns = [
        {"id": 10, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 25.0,
         "bbox": [10, 5, 5, 5], "segmentation": _box_poly(10, 5, 15, 10)},
        {"id": 11, "image_id": 1, "category_id": 3, "iscrowd": 0, "area": 600.0,
         "bbox": [0, 0, 30, 20], "segmentation": _box_poly(0, 0, 30, 20)},
        {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": float(crowd.sum()),
         "bbox": [25, 15, 15, 15], "segmentation": _uncompressed_rle(crowd)},
        {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 0, "area": 100.0,
         "bbox": [5, 5, 10, 10], "segmentation": _box_poly(5, 5, 15, 15)},
    ]  # fmt: skip
    data = {
        "images": [
            {"id": i, "file_name": f"{i:03d}.jpg", "height": H, "width": W} for i in (1, 2, 3)
        ],
        "annotations": anns,
        "categories": [
            {"id": 18, "name": "dog"},
            {"id": 1, "name": "person"},
            {"id": 3, "name": "car"},
        ],
    }
    json_file = tmp_path / "coco" / "annotations" / "instances_tiny.json"
    json_file.parent.mkdir(parents=True)
    json_file.write_text(json.dumps(data))
    return str(json_file), str(img_root)


def test_coco_tags_and_semantic_gt(coco_tree, tmp_path, logs):
    json_file, img_root = coco_tree
    name = _name("coco")
    register_coco_tags(name, json_file, img_root, sem_seg_root=str(tmp_path / "gt"))
    dicts = DatasetCatalog.get(name)
    meta_names = MetadataCatalog.get(name).stuff_classes[1:]
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    assert meta_names == ["person", "car", "dog"]  # sorted by category id
    assert [d["image_id"] for d in dicts] == [1, 2]
    assert "excluded 1 of 3 images" in logs.text
    d1 = dicts[0]
    assert d1["tags"] == [1, 2, 3]  # crowd person counts as a tag
    assert {a["category_id"] for a in d1["annotations"]} == {1, 2, 3}
    assert all(a["bbox_mode"] == BoxMode.XYWH_ABS for a in d1["annotations"])
    assert [a["iscrowd"] for a in d1["annotations"]] == [0, 0, 1]

    label = read_label_png(d1["sem_seg_file_name"], (H, W))
    assert label[7, 12] == 3  # the small dog inside the car stays visible
    assert label[2, 2] == 2 and label[17, 27] == 2  # car, also where the crowd overlaps it
    assert label[25, 37] == 255  # crowd only
    assert label[17, 37] == 255  # crowd only (the car ends at x = 30)
    assert label[25, 5] == 0  # background
    assert set(np.unique(label).tolist()) == {0, 2, 3, 255}
    label2 = read_label_png(dicts[1]["sem_seg_file_name"], (H, W))
    assert label2[10, 10] == 1 and label2[25, 30] == 0


def test_instances_to_label_order_independent_of_json_order():
    big = {"category_id": 1, "iscrowd": 0, "segmentation": _box_poly(0, 0, 20, 20)}
    small = {"category_id": 2, "iscrowd": 0, "segmentation": _box_poly(5, 5, 10, 10)}
    for anns in ([big, small], [small, big]):
        lab = instances_to_label(anns, 25, 25)
        assert lab[7, 7] == 2 and lab[15, 15] == 1 and lab[22, 22] == 0


def test_coco_cache_reused_and_size_mismatch(coco_tree, tmp_path, monkeypatch):
    json_file, img_root = coco_tree
    gt = tmp_path / "gt"
    name = _name("coco")
    register_coco_tags(name, json_file, img_root, sem_seg_root=str(gt))
    _get(name)
    # a second load reuses the PNGs: painting is never called
    import wsss_d2.data.datasets.coco_sem_seg as sem_seg_mod

    def boom(*a, **k):
        raise AssertionError("repainted a cached mask")

    monkeypatch.setattr(sem_seg_mod, "instances_to_label", boom)
    name = _name("coco")
    register_coco_tags(name, json_file, img_root, sem_seg_root=str(gt))
    assert len(_get(name)) == 2
    # a stale PNG of another size is an error naming the PNG and the image
    save_label_png(str(gt / "002.png"), np.zeros((7, 9), np.uint8))
    name = _name("coco")
    register_coco_tags(name, json_file, img_root, sem_seg_root=str(gt))
    with pytest.raises(ValueError) as err:
        _get(name)
    assert str(gt / "002.png") in str(err.value)
    assert os.path.join(img_root, "002.jpg") in str(err.value)


def test_coco_class_subset_and_unknown_name(coco_tree, tmp_path, logs):
    json_file, img_root = coco_tree
    name = _name("coco")
    register_coco_tags(name, json_file, img_root, sem_seg_root=str(tmp_path / "g"),
                       class_names=["dog", "car"])  # fmt: skip
    dicts = _get(name)
    assert [d["image_id"] for d in dicts] == [1]  # image 2 (person only) has no tag left
    assert dicts[0]["tags"] == [1, 2]  # dog=1, car=2 in the order given
    label = read_label_png(dicts[0]["sem_seg_file_name"], (H, W))
    assert label[7, 12] == 1 and label[2, 2] == 2
    assert label[25, 37] == 0  # person (crowd) is not a class of this dataset
    assert "excluded 2 of 3 images" in logs.text

    name = _name("coco")
    register_coco_tags(name, json_file, img_root, sem_seg_root=str(tmp_path / "h"),
                       class_names=["dog", "zebra"])  # fmt: skip
    with pytest.raises(KeyError, match="zebra"):
        _get(name)


def test_coco_default_sem_seg_root(coco_tree, tmp_path, monkeypatch):
    """Generated masks go under DETECTRON2_DATASETS (or OUTPUT_DIR), never next to the images."""
    from wsss_d2.data.datasets.coco_sem_seg import set_generated_fallback

    json_file, img_root = coco_tree
    monkeypatch.delenv("WSSS_D2_CACHE", raising=False)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "d2"))
    root = default_sem_seg_root(json_file, img_root, 3)
    assert root.startswith(str(tmp_path / "d2" / "wsss_d2_generated" / "coco_sem_seg"))
    assert os.path.basename(root).startswith("instances_tiny_")
    assert not root.startswith(os.path.dirname(img_root))
    sub = default_sem_seg_root(json_file, img_root, 2, ["dog", "car"])
    assert os.path.basename(os.path.dirname(sub)).startswith("sem_seg_tags_2_") and sub != root
    # a read-only datasets root: the running tool's OUTPUT_DIR
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "ro"))
    set_generated_fallback(str(tmp_path / "out"))
    try:
        root = default_sem_seg_root(json_file, img_root, 3)
    finally:
        set_generated_fallback(None)
        os.chmod(tmp_path / "ro", 0o755)
    assert root.startswith(str(tmp_path / "out" / "wsss_d2_generated"))


def test_coco_image_size_differs_from_json(coco_tree, tmp_path):
    json_file, img_root = coco_tree
    _jpeg(Path(img_root) / "002.jpg", 20, 10)
    name = _name("coco")
    register_coco_tags(name, json_file, img_root, sem_seg_root=str(tmp_path / "g"))
    with pytest.raises(ValueError, match="002.jpg") as err:
        _get(name)
    assert json_file in str(err.value)


# ---------------------------------------------------------------------------------- folder
CLASSES = ("cat", "dog", "car")


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    _jpeg(root / "x.jpg", 16, 12)
    _jpeg(root / "sub" / "y.jpg", 20, 8)
    _jpeg(root / "z.jpg", 10, 10)
    return root


def test_folder_csv_and_json(folder, tmp_path, logs):
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("file_name,tags\nx.jpg,dog;cat\nsub/y.jpg,car\nz.jpg,\n")
    masks = tmp_path / "masks"
    save_label_png(str(masks / "x.png"), np.zeros((12, 16), np.uint8))
    name = _name("folder")
    register_folder_tags(name, str(folder), str(csv_file), CLASSES, sem_seg_root=str(masks))
    dicts = _get(name)
    assert [d["image_id"] for d in dicts] == ["x", os.path.join("sub", "y")]
    assert dicts[0]["tags"] == [1, 2] and dicts[1]["tags"] == [3]
    assert (dicts[1]["height"], dicts[1]["width"]) == (8, 20)
    assert dicts[0]["sem_seg_file_name"] == str(masks / "x.png")
    assert "sem_seg_file_name" not in dicts[1]
    assert "excluded 1 of 3 images" in logs.text

    json_file = tmp_path / "tags.json"
    json_file.write_text(json.dumps({"x.jpg": ["cat"], "sub/y.jpg": ["car", "dog"], "z.jpg": []}))
    name = _name("folder")
    register_folder_tags(name, str(folder), str(json_file), CLASSES)
    dicts = _get(name)
    assert [d["tags"] for d in dicts] == [[1], [2, 3]]


def test_folder_unknown_class_names_class_file_and_line(folder, tmp_path):
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("file_name,tags\nx.jpg,dog\nsub/y.jpg,car;horse\n")
    name = _name("folder")
    register_folder_tags(name, str(folder), str(csv_file), CLASSES)
    with pytest.raises(ValueError, match="horse") as err:
        _get(name)
    assert str(csv_file) in str(err.value) and "line 3" in str(err.value)

    json_file = tmp_path / "tags.json"
    json_file.write_text('{\n  "x.jpg": ["dog"],\n  "z.jpg": ["cow"]\n}\n')
    name = _name("folder")
    register_folder_tags(name, str(folder), str(json_file), CLASSES)
    with pytest.raises(ValueError, match="cow") as err:
        _get(name)
    assert str(json_file) in str(err.value) and "line 3" in str(err.value)


def test_folder_missing_image_and_bad_mask(folder, tmp_path):
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("file_name,tags\nx.jpg,dog\nnope.jpg,cat\n")
    name = _name("folder")
    register_folder_tags(name, str(folder), str(csv_file), CLASSES)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        _get(name)

    csv_file.write_text("file_name,tags\nx.jpg,dog\n")
    masks = tmp_path / "masks"
    save_label_png(str(masks / "x.png"), np.zeros((5, 5), np.uint8))
    name = _name("folder")
    register_folder_tags(name, str(folder), str(csv_file), CLASSES, sem_seg_root=str(masks))
    with pytest.raises(ValueError) as err:
        _get(name)
    assert str(masks / "x.png") in str(err.value) and str(folder / "x.jpg") in str(err.value)


# ------------------------------------------------------------------------------- coco_tiny
@pytest.mark.skipif(not COCO_TINY.is_dir(), reason="coco_tiny is not available")
def test_coco_tiny_registration(tmp_path):
    register_coco_tiny(str(COCO_TINY), sem_seg_root=str(tmp_path), prefix="t_coco_tiny")
    with open(COCO_TINY / "annotations" / "instances_train2017.json") as f:
        data = json.load(f)
    cat_ids = sorted(c["id"] for c in data["categories"])
    contiguous = {cid: i + 1 for i, cid in enumerate(cat_ids)}
    expected: dict[int, set] = {}
    for a in data["annotations"]:
        expected.setdefault(a["image_id"], set()).add(contiguous[a["category_id"]])

    dicts = DatasetCatalog.get("t_coco_tiny_train_tags")
    assert len(dicts) == 80
    assert {d["image_id"]: d["tags"] for d in dicts} == {k: sorted(v) for k, v in expected.items()}
    d = dicts[0]
    label = read_label_png(d["sem_seg_file_name"], (d["height"], d["width"]))
    assert set(np.unique(label).tolist()) - {0, 255} <= set(d["tags"])

    name_to_id = {c["name"]: c["id"] for c in data["categories"]}
    voc_of = {name_to_id[n]: i + 1 for i, n in enumerate(VOC_COCO_NAMES)}
    expected_voc: dict[int, set] = {}
    for a in data["annotations"]:
        if a["category_id"] in voc_of:
            expected_voc.setdefault(a["image_id"], set()).add(voc_of[a["category_id"]])
    voc_dicts = DatasetCatalog.get("t_coco_tiny_voc_train_tags")
    assert {d["image_id"]: d["tags"] for d in voc_dicts} == {
        k: sorted(v) for k, v in expected_voc.items()
    }
    assert MetadataCatalog.get("t_coco_tiny_voc_train_tags").stuff_classes[1:] == list(VOC_CLASSES)


def test_coco_cache_variable_is_used_when_set(coco_tree, tmp_path, monkeypatch):
    json_file, img_root = coco_tree
    monkeypatch.setenv("WSSS_D2_CACHE", str(tmp_path / "cache"))
    assert default_sem_seg_root(json_file, img_root, 3).startswith(str(tmp_path / "cache"))


def test_coco_tiny_builtin_names_resolve_at_load_time(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="DETECTRON2_DATASETS"):
        DatasetCatalog.get("coco_tiny_val_tags")
    if not COCO_TINY.is_dir():
        pytest.skip("coco_tiny is not available")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "coco_tiny").symlink_to(COCO_TINY)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "ds"))
    monkeypatch.setenv("WSSS_D2_CACHE", str(tmp_path / "cache"))
    dicts = DatasetCatalog.get("coco_tiny_voc_val_tags")
    assert len(dicts) > 0 and all(1 <= t <= 20 for d in dicts for t in d["tags"])
    assert all(os.path.isfile(d["sem_seg_file_name"]) for d in dicts)


def test_coco_masks_painted_by_a_process_pool_match_serial(coco_tree, tmp_path, monkeypatch):
    import wsss_d2.data.datasets.coco as coco_mod
    import wsss_d2.data.datasets.coco_sem_seg as sem_seg_mod

    json_file, img_root = coco_tree
    serial = coco_mod.load_coco_tags(
        json_file, img_root, _name("s"), str(tmp_path / "s"), num_workers=1
    )
    monkeypatch.setattr(sem_seg_mod, "_POOL_MIN_IMAGES", 0)
    pooled = coco_mod.load_coco_tags(
        json_file, img_root, _name("p"), str(tmp_path / "p"), num_workers=2
    )
    for a, b in zip(serial, pooled):
        assert np.array_equal(
            read_label_png(a["sem_seg_file_name"]), read_label_png(b["sem_seg_file_name"])
        )


def test_detectron2_loaders_accept_annotations_of_the_last_class(tmp_path):
    """Annotations carry ids 1..K; Detectron2's dataset loading must not reject id K."""
    from detectron2.data import DatasetCatalog, get_detection_dataset_dicts

    from wsss_d2.data.datasets.common import set_tag_metadata

    dicts = [
        {
            "file_name": "a.jpg",
            "image_id": 0,
            "height": 4,
            "width": 4,
            "tags": [2],
            "annotations": [{"bbox": [0, 0, 2, 2], "bbox_mode": 0, "category_id": 2, "iscrowd": 0}],
        }
    ]
    DatasetCatalog.register("t_last_class", lambda: dicts)
    set_tag_metadata("t_last_class", ["a", "b"])
    assert get_detection_dataset_dicts(["t_last_class"], filter_empty=False)[0]["tags"] == [2]


def test_config_registers_coco_class_subset_and_folder_masks(coco_tree, folder, tmp_path):
    """DATASETS.COCO_TAGS with a class subset and a mask folder, DATASETS.FOLDER_TAGS with a
    mask folder: a user evaluates their own data from the config alone."""
    from wsss_d2.config import get_wsss_cfg
    from wsss_d2.data.datasets import register_datasets_from_config
    from wsss_d2.data.datasets.from_config import coco_class_subset

    json_file, img_root = coco_tree
    csv_file = tmp_path / "tags.csv"
    csv_file.write_text("file_name,tags\nx.jpg,dog;cat\nsub/y.jpg,car\n")
    masks = tmp_path / "masks"
    save_label_png(str(masks / "x.png"), np.full((12, 16), 2, np.uint8))
    coco_name, folder_name = _name("cfg_coco"), _name("cfg_folder")
    cfg = get_wsss_cfg(None, [
        "DATASETS.COCO_TAGS",
        f"(('{coco_name}', '{json_file}', '{img_root}', 'dog;car', '{tmp_path / 'gt'}'),)",
        "DATASETS.FOLDER_TAGS",
        f"(('{folder_name}', '{folder}', '{csv_file}', 'cat;dog;car', '{masks}'),)",
        "OUTPUT_DIR", str(tmp_path / "out"),
    ])  # fmt: skip
    assert sorted(register_datasets_from_config(cfg)) == sorted([coco_name, folder_name])
    assert MetadataCatalog.get(coco_name).stuff_classes == ["background", "dog", "car"]
    dicts = _get(coco_name)
    assert [d["tags"] for d in dicts] == [[1, 2]]
    assert dicts[0]["sem_seg_file_name"].startswith(str(tmp_path / "gt"))
    dicts = _get(folder_name)
    assert dicts[0]["sem_seg_file_name"] == str(masks / "x.png")
    assert "sem_seg_file_name" not in dicts[1]
    assert coco_class_subset("voc") == (list(VOC_COCO_NAMES), list(VOC_CLASSES))
    assert coco_class_subset(" ") == (None, None)
    with pytest.raises(ValueError, match="FOLDER_TAGS entry"):
        register_datasets_from_config(
            get_wsss_cfg(None, ["DATASETS.FOLDER_TAGS", "(('a', 'b', 'c'),)"])
        )
