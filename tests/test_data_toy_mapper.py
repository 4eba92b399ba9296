"""Toy dataset generation, the tag mapper, and bad-input handling of images and labels."""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog

from wsss_d2.data import TagDatasetMapper, build_mapper
from wsss_d2.data.datasets.toyparts import generate_toyparts, toyparts_dir
from wsss_d2.io.files import read_label_png, save_label_png, voc_palette


def test_toyparts_registered_and_deterministic(tmp_path):
    dicts = DatasetCatalog.get("toyparts_mini_train")
    assert len(dicts) == 24
    d = dicts[0]
    assert {"file_name", "image_id", "height", "width", "tags", "sem_seg_file_name"} <= set(d)
    assert d["tags"] == sorted(d["tags"]) and all(1 <= t <= 5 for t in d["tags"])
    gt = read_label_png(d["sem_seg_file_name"])
    present = sorted(int(c) for c in np.unique(gt) if c not in (0, 255))
    assert present == d["tags"]  # tags are exactly the classes in the mask
    meta = MetadataCatalog.get("toyparts_mini_train")
    assert meta.stuff_classes[0] == "background" and len(meta.stuff_classes) == 6
    assert meta.ignore_label == 255
    # same seed -> identical files; the generator writes into a temp folder then renames
    a, b = tmp_path / "a", tmp_path / "b"
    generate_toyparts(str(a), 4, seed=7)
    generate_toyparts(str(b), 4, seed=7)
    for name in ("images/000003.png", "masks/000003.png", "tags.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_toyparts_head_is_small_part_of_object():
    """The premise of the toy data: the class-specific head is a small part of each object."""
    d = DatasetCatalog.get("toyparts_mini_train")[0]
    folder = os.path.dirname(os.path.dirname(d["file_name"]))
    assert folder == toyparts_dir(24, 2, 96, 5)
    with open(os.path.join(folder, "tags.json")) as f:
        assert json.load(f)["classes"] == ["red", "green", "blue", "yellow", "magenta"]
    import cv2

    img = cv2.imread(d["file_name"])[:, :, ::-1].astype(int)
    gt = read_label_png(d["sem_seg_file_name"])
    obj = (gt != 0) & (gt != 255)
    saturated = (img.max(-1) - img.min(-1)) > 120  # heads are the only saturated pixels
    assert 0.03 < (saturated & obj).sum() / obj.sum() < 0.4


def test_mapper_train_outputs(cfg_factory, tmp_path):
    cfg = cfg_factory("configs/cam_toy.yaml", "INPUT.TAGS.CROP_SIZE", "64")
    mapper = build_mapper(cfg, is_train=True)
    assert isinstance(mapper, TagDatasetMapper)
    d = dict(DatasetCatalog.get("toyparts_mini_train")[0])
    # a pseudo label makes "sem_seg"; ground truth must never be read in training
    label = np.zeros((96, 96), np.uint8)
    label[10:20, 10:20] = d["tags"][0]
    save_label_png(str(tmp_path / "p.png"), label)
    d["pseudo_seg_file_name"] = str(tmp_path / "p.png")
    d["sem_seg_file_name"] = str(tmp_path / "does_not_exist.png")
    out = mapper(d)
    assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
    assert max(out["image"].shape[1:]) <= 64
    assert out["sem_seg"].shape == out["image"].shape[1:] and out["sem_seg"].dtype == torch.long
    assert out["tags"].shape == (5,) and out["tags"].dtype == torch.float32
    assert out["tags"][[t - 1 for t in d["tags"]]].eq(1).all() and out["tags"].sum() == len(
        d["tags"]
    )


def test_mapper_test_keeps_size_and_has_no_sem_seg(cfg_factory):
    cfg = cfg_factory("configs/cam_toy.yaml")
    mapper = build_mapper(cfg, is_train=False)
    d = DatasetCatalog.get("toyparts_mini_val")[0]
    out = mapper(d)
    assert tuple(out["image"].shape[1:]) == (96, 96)
    assert "sem_seg" not in out


def test_corrupt_and_missing_image_errors_name_the_file(cfg_factory, tmp_path):
    mapper = build_mapper(cfg_factory("configs/cam_toy.yaml"), is_train=False)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(OSError, match="broken.jpg"):
        mapper({"file_name": str(bad), "tags": [1], "height": 10, "width": 10})
    with pytest.raises(FileNotFoundError, match="missing.png"):
        mapper({"file_name": str(tmp_path / "missing.png"), "tags": [1]})


def test_pseudo_label_size_mismatch_names_both_files(cfg_factory, tmp_path):
    mapper = build_mapper(cfg_factory("configs/cam_toy.yaml"), is_train=True)
    d = dict(DatasetCatalog.get("toyparts_mini_train")[0])
    save_label_png(str(tmp_path / "small.png"), np.zeros((50, 40), np.uint8))
    d["pseudo_seg_file_name"] = str(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small\.png.*40x50.*" + os.path.basename(d["file_name"])):
        mapper(d)


def test_tag_outside_range_is_an_error(cfg_factory):
    mapper = build_mapper(cfg_factory("configs/cam_toy.yaml"), is_train=False)
    d = dict(DatasetCatalog.get("toyparts_mini_val")[0])
    d["tags"] = [9]
    with pytest.raises(ValueError, match="tag 9 .* outside 1..5"):
        mapper(d)


def test_palette_preview_uses_voc_palette(tmp_path):
    from PIL import Image

    from wsss_d2.io.files import save_palette_png

    lab = np.array([[0, 1], [15, 255]], np.uint8)
    save_palette_png(str(tmp_path / "l.png"), lab)
    im = Image.open(tmp_path / "l.png")
    assert im.mode == "P"
    assert np.array_equal(np.array(im), lab) and np.array_equal(read_label_png(im.filename), lab)
    assert tuple(im.convert("RGB").getpixel((0, 1))) == voc_palette()[15] == (192, 128, 128)


def test_toyparts_cue_variant_is_generated_into_its_own_folder(tmp_path):
    """body_cue > 0 draws class-dependent body stripes into a folder of its own."""
    import cv2

    generate_toyparts(str(tmp_path / "plain"), 3, seed=5)
    generate_toyparts(str(tmp_path / "cue"), 3, seed=5, body_cue=1.0)
    for i in range(3):
        a = cv2.imread(str(tmp_path / "plain" / "images" / f"{i:06d}.png"))
        b = cv2.imread(str(tmp_path / "cue" / "images" / f"{i:06d}.png"))
        assert a.shape == b.shape
    assert (tmp_path / "plain" / "tags.json").read_text() != "" and not np.array_equal(a, b)
    assert toyparts_dir(10, 0, 96, 5, "r") != toyparts_dir(10, 0, 96, 5, "r", body_cue=0.6)


def test_toyparts_head_drop_leaves_headless_objects(tmp_path):
    """head_drop = 1: no object has its saturated head; the masks still cover the bodies."""
    import cv2
    from PIL import Image

    generate_toyparts(str(tmp_path / "hd"), 4, seed=5, body_cue=1.0, head_drop=1.0)
    generate_toyparts(str(tmp_path / "with"), 4, seed=5, body_cue=1.0)
    for name, heads in (("hd", False), ("with", True)):
        hsv = [
            cv2.cvtColor(
                cv2.imread(str(tmp_path / name / "images" / f"{i:06d}.png")), cv2.COLOR_BGR2HSV
            )
            for i in range(4)
        ]
        saturated = sum(int(((h[..., 1] > 150) & (h[..., 2] > 180)).sum()) for h in hsv)
        assert (saturated > 0) == heads, name
        masks = [np.array(Image.open(tmp_path / name / "masks" / f"{i:06d}.png")) for i in range(4)]
        assert all(((m > 0) & (m < 255)).any() for m in masks)
    assert toyparts_dir(10, 0, 96, 5, "r", 1.0) != toyparts_dir(10, 0, 96, 5, "r", 1.0, 0.35)


def test_toyparts_body_scale_enlarges_bodies_not_heads(tmp_path):
    """body_scale 1.6: the objects' area grows about 1.6**2 times per head pixel (saturated)."""
    import cv2
    from PIL import Image

    def object_per_head_pixel(name, **kw):
        generate_toyparts(str(tmp_path / name), 6, seed=5, body_cue=1.0, **kw)
        obj = head = 0
        for i in range(6):
            m = np.array(Image.open(tmp_path / name / "masks" / f"{i:06d}.png"))
            img = cv2.imread(str(tmp_path / name / "images" / f"{i:06d}.png"))
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            obj += int(((m > 0) & (m < 255)).sum())
            head += int(((hsv[..., 1] > 150) & (hsv[..., 2] > 180)).sum())
        return obj / head

    ratio = object_per_head_pixel("large", body_scale=1.6) / object_per_head_pixel("plain")
    assert 1.8 < ratio < 3.5, ratio
    assert toyparts_dir(10, 0, 96, 5, "r", 1.0) != toyparts_dir(
        10, 0, 96, 5, "r", 1.0, body_scale=1.6
    )


def test_resize_scales_draw_from_the_list():
    """INPUT.TAGS.RESIZE_SCALES (CIAN's scale pool) resizes by one of the listed factors."""
    from wsss_d2.data.mappers import RandomScaleChoice

    aug = RandomScaleChoice((0.5, 1.5))
    img = np.zeros((40, 60, 3), np.uint8)
    seen = set()
    np.random.seed(0)
    for _ in range(20):
        t = aug.get_transform(img)
        seen.add(t.apply_image(img).shape[:2] if hasattr(t, "new_h") else img.shape[:2])
    assert seen == {(20, 30), (60, 90)}
    with pytest.raises(ValueError, match="RESIZE_SCALES"):
        RandomScaleChoice((0.0, 1.0))


def test_mapper_uses_resize_scales_when_set():
    from conftest import make_cfg

    from wsss_d2.data.mappers import RandomScaleChoice, ResizeLongestEdgeRange

    cfg = make_cfg("configs/cam_toy.yaml")
    first = build_mapper(cfg, True).augmentations.augs[0]
    assert isinstance(first, ResizeLongestEdgeRange)
    cfg.INPUT.TAGS.RESIZE_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5)
    first = build_mapper(cfg, True).augmentations.augs[0]
    assert isinstance(first, RandomScaleChoice) and first.scales[-1] == 1.5
