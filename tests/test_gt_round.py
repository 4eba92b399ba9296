"""The ground-truth round: the masks, byte for byte, in a complete fingerprinted round; bad input
refused; the tool on voc_mini (skipped without it)."""

import json
import os

import numpy as np
import pytest
from conftest import REPO, VOC_MINI, load_script

from wsss_d2.io.files import read_label_png, save_label_png
from wsss_d2.io.rounds import attach_round, read_manifest
from wsss_d2.pseudo.gt_round import gt_fingerprint, write_gt_round


def _dicts(tmp_path, n=3):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        mask = rng.integers(0, 4, (5, 7)).astype(np.uint8)
        mask[0, 0] = 255
        save_label_png(str(tmp_path / f"gt_{i}.png"), mask)
        out.append({"file_name": f"img/{i:03d}.jpg", "height": 5, "width": 7,
                    "sem_seg_file_name": str(tmp_path / f"gt_{i}.png")})  # fmt: skip
    return out


def test_gt_round_holds_the_masks(tmp_path):
    dicts = _dicts(tmp_path)
    folder = write_gt_round(dicts, str(tmp_path / "labels"), 1, num_classes=4, names=("x",))
    manifest = read_manifest(folder)
    assert manifest["source"] == "ground_truth"
    assert manifest["fingerprint"] == json.loads(json.dumps(gt_fingerprint(dicts, 4, ("x",))))
    for d in attach_round(dicts, folder):
        assert np.array_equal(
            read_label_png(d["pseudo_seg_file_name"]), read_label_png(d["sem_seg_file_name"])
        )
    with pytest.raises(FileExistsError, match="--resume"):
        write_gt_round(dicts, str(tmp_path / "labels"), 1, num_classes=4, names=("x",))
    # same masks: reused; other masks: refused naming the difference, unless overwritten
    assert write_gt_round(dicts, str(tmp_path / "labels"), 1, 4, names=("x",), reuse=True) == folder
    save_label_png(dicts[2]["sem_seg_file_name"], np.zeros((5, 7), np.uint8))
    with pytest.raises(FileExistsError, match="weights.masks"):
        write_gt_round(dicts, str(tmp_path / "labels"), 1, 4, names=("x",), reuse=True)
    write_gt_round(dicts, str(tmp_path / "labels"), 1, 4, names=("x",), overwrite=True)
    assert not read_label_png(os.path.join(folder, "002.png")).any()


def test_gt_round_refuses_images_without_masks_and_wrong_ids(tmp_path):
    dicts = _dicts(tmp_path)
    del dicts[1]["sem_seg_file_name"]
    with pytest.raises(KeyError, match="img/001.jpg"):
        write_gt_round(dicts, str(tmp_path / "a"), 1, num_classes=4)
    with pytest.raises(ValueError, match="class id 3"):  # ids 0..3 but only 3 classes
        write_gt_round(_dicts(tmp_path), str(tmp_path / "b"), 1, num_classes=3)
    assert not (tmp_path / "b" / "round_01").exists()


@pytest.mark.skipif(not (VOC_MINI / "README.md").is_file(), reason="voc_mini not found")
def test_tool_writes_the_voc_mini_train_masks(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(VOC_MINI))
    tool = load_script("tools/make_gt_round.py")
    args = tool.runs.label_argument_parser().parse_args(
        ["--config-file", str(REPO / "configs/voc_mini/deeplabv2.yaml"),
         "OUTPUT_DIR", str(tmp_path / "gt")]  # fmt: skip
    )
    folder = tool.main(args)
    manifest = read_manifest(folder)
    assert manifest["num_images"] == 330 and manifest["ignored_fraction"] > 0
