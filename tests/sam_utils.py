"""Fixtures for the SAM-box labeling tests: tiny images on disk, fixed box sources."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from wsss_d2.io.files import save_label_png
from wsss_d2.pseudo.sam.boxes import BoxSource, ImageBoxes


def write_images(folder: str, n: int, hw=(48, 64), seed: int = 0) -> list[dict]:
    """``n`` random RGB PNG images + all-background GT PNGs; dataset dicts (tags filled later)."""
    rng = np.random.RandomState(seed)
    os.makedirs(folder, exist_ok=True)
    dicts = []
    for i in range(n):
        path = os.path.join(folder, f"img_{i:03d}.png")
        Image.fromarray(rng.randint(0, 255, (*hw, 3), dtype=np.uint8)).save(path)
        gt = os.path.join(folder, f"img_{i:03d}_gt.png")
        save_label_png(gt, np.zeros(hw, np.uint8))
        dicts.append(
            {
                "file_name": path,
                "image_id": i,
                "height": hw[0],
                "width": hw[1],
                "tags": [1, 2],
                "sem_seg_file_name": gt,
            }
        )
    return dicts


class FixedBoxes(BoxSource):
    """Boxes looked up by image id: ``{image_id: ImageBoxes}``; optionally fail on one id."""

    def __init__(self, table: dict, fail_on=None):
        super().__init__(only_tagged=True)
        self.table = table
        self.fail_on = fail_on

    def get_boxes(self, d: dict) -> ImageBoxes:
        if d["image_id"] == self.fail_on:
            raise RuntimeError(f"simulated crash on {d['file_name']}")
        b = self.table.get(d["image_id"])
        return ImageBoxes() if b is None else ImageBoxes(b.boxes.copy(), b.classes, b.scores)


def random_boxes(dicts: list[dict], per_image: int = 5, seed: int = 0) -> dict:
    """``per_image`` random boxes of classes 1/2 inside each image."""
    rng = np.random.RandomState(seed)
    out = {}
    for d in dicts:
        h, w = d["height"], d["width"]
        x0 = rng.uniform(0, w * 0.6, per_image)
        y0 = rng.uniform(0, h * 0.6, per_image)
        bw = rng.uniform(w * 0.1, w * 0.4, per_image)
        bh = rng.uniform(h * 0.1, h * 0.4, per_image)
        boxes = np.stack([x0, y0, x0 + bw, y0 + bh], 1)
        out[d["image_id"]] = ImageBoxes(boxes, rng.randint(1, 3, per_image))
    return out
