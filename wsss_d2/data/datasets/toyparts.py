"""``toyparts``: a generated dataset that is the WSSS problem in miniature.

Each image holds 1-3 objects on a cluttered background. An object is a large elliptical
**body** whose colour and stripe texture are the *same for every class*, plus a small round
**head** whose colour and pattern carry the class identity. Image-level tags name the classes
present; the ground-truth masks cover whole objects (body + head).

A classifier only needs the head to tell the classes apart, so its CAM fires on the head and
misses most of the body: exactly the "CAM finds the discriminative part, not the object" failure
that PLDA, CRF/PAMR refinement and CIAN are meant to fix. The body has a uniform colour that
differs from the background, so affinity-based refinement has something to propagate along.

The data are deterministic given (num_images, seed, image_size, num_classes) and are written on
first use under ``$DETECTRON2_DATASETS/toyparts/<variant>/`` (images/, masks/, tags.json) into a
temporary folder that is renamed into place when complete.
"""

from __future__ import annotations

import json
import logging
import os

import cv2
import numpy as np
from detectron2.data import DatasetCatalog

from ...io.files import atomic_directory, save_label_png
from .common import datasets_root, set_tag_metadata

logger = logging.getLogger(__name__)

__all__ = ["TOY_CLASSES", "register_toyparts", "generate_toyparts", "toyparts_dir"]

TOY_CLASSES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "violet")
# head colours (RGB), saturated; the background and bodies never use saturated colours
_HEAD_RGB = (
    (230, 30, 30), (30, 200, 40), (40, 70, 235), (235, 220, 30),
    (220, 40, 220), (30, 215, 220), (245, 140, 20), (140, 60, 230),
)  # fmt: skip
_BODY_RGB = (205, 175, 130)  # shared by all classes
_VERSION = 1  # bump when the generator changes, so old caches are not reused


def toyparts_dir(
    num_images: int,
    seed: int,
    image_size: int,
    num_classes: int,
    root: str | None = None,
    body_cue: float = 0.0,
    head_drop: float = 0.0,
    body_scale: float = 1.0,
) -> str:
    root = root or os.path.join(datasets_root(), "toyparts")
    cue = f"_cue{int(round(body_cue * 100))}" if body_cue > 0 else ""
    cue += f"_hd{int(round(head_drop * 100))}" if head_drop > 0 else ""
    cue += f"_bs{int(round(body_scale * 100))}" if body_scale != 1.0 else ""
    return os.path.join(
        root, f"v{_VERSION}_n{num_images}_s{seed}_px{image_size}_k{num_classes}{cue}"
    )


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Low-saturation clutter: smooth noise, grey rectangles and lines."""
    base = rng.uniform(60, 150)
    noise = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1, 3))
    noise = cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC)
    img = base + 18 * noise + rng.normal(0, 6, (size, size, 3))
    for _ in range(rng.integers(3, 8)):
        g = rng.uniform(40, 170)
        col = tuple(float(g + rng.uniform(-12, 12)) for _ in range(3))
        x0, y0 = rng.integers(0, size, 2)
        w, h = rng.integers(size // 12, size // 4, 2)
        if rng.random() < 0.5:
            cv2.rectangle(img, (int(x0), int(y0)), (int(x0 + w), int(y0 + h)), col, -1)
        else:
            cv2.line(
                img, (int(x0), int(y0)), (int(x0 + w), int(y0 - h)), col, int(rng.integers(1, 3))
            )
    return img


def _draw_object(
    img, label, rng, size, cls, occupied, body_cue=0.0, num_classes=5, head_drop=0.0, body_scale=1.0
) -> bool:
    """Draw one object of class ``cls`` (1-based) where it barely overlaps others.

    ``body_cue`` > 0: the body's stripes run at a class-specific angle with that probability
    (else at another class's angle) - a weak, partly reliable class cue on the body.
    ``head_drop`` > 0: with that probability the object is drawn without its head (hidden, as
    real objects are often seen without their most telling part); its mask is then the body.
    ``body_scale``: the body's half-axes are multiplied by it (the head keeps its size).
    """
    s = size / 96.0
    for _ in range(30):
        a = rng.uniform(13, 22) * s * body_scale  # body half-axes
        b = rng.uniform(7, 11) * s * body_scale
        ang = rng.uniform(0, 180)
        cx, cy = rng.uniform(a * 0.8, size - a * 0.8, 2)
        body = np.zeros((size, size), np.uint8)
        cv2.ellipse(body, (int(cx), int(cy)), (int(a), int(b)), ang, 0, 360, 1, -1)
        t = np.deg2rad(ang)
        hx, hy = cx + np.cos(t) * a * 0.95, cy + np.sin(t) * a * 0.95
        r = max(3, int(rng.uniform(4.5, 6.0) * s))
        if not (r <= hx < size - r and r <= hy < size - r):
            continue  # the head (the only class evidence) must be fully visible
        head = np.zeros((size, size), np.uint8)
        cv2.circle(head, (int(hx), int(hy)), r, 1, -1)
        if head_drop > 0 and rng.random() < head_drop:
            head[:] = 0
        obj = (body | head).astype(bool)
        if obj.sum() < 30 * s * s or (obj & occupied).sum() > 0.1 * obj.sum():
            continue
        # body: shared colour with diagonal stripes (the texture every class has)
        yy, xx = np.mgrid[0:size, 0:size]
        period = max(2, int(3 * s))
        if body_cue > 0:
            k = cls if rng.random() < body_cue else int(rng.integers(1, num_classes + 1))
            a = np.pi * (k - 1) / num_classes
            stripes = (np.floor((xx * np.cos(a) + yy * np.sin(a)) / period)) % 2
            stripes = stripes.astype(np.float32)
        else:
            stripes = (((xx + yy) // period) % 2).astype(np.float32)
        body_col = np.array(_BODY_RGB, np.float32)[None, None] * (0.88 + 0.12 * stripes[..., None])
        m = body.astype(bool)
        img[m] = body_col[m] + rng.normal(0, 4, (m.sum(), 3))
        # head: class colour with a class-specific dot pattern
        hm = head.astype(bool)
        col = np.array(_HEAD_RGB[cls - 1], np.float32)
        dots = ((xx % (2 + cls % 3) == 0) & (yy % 2 == 0))[hm]
        img[hm] = col * np.where(dots, 0.75, 1.0)[:, None]
        label[obj] = cls
        occupied |= obj
        return True
    return False


def generate_toyparts(
    out_dir: str,
    num_images: int,
    seed: int,
    image_size: int = 96,
    num_classes: int = 5,
    body_cue: float = 0.0,
    head_drop: float = 0.0,
    body_scale: float = 1.0,
) -> None:
    """Write ``num_images`` images, masks and ``tags.json`` into ``out_dir`` (must not exist)."""
    if not 1 <= num_classes <= len(TOY_CLASSES):
        raise ValueError(f"toyparts supports 1..{len(TOY_CLASSES)} classes, got {num_classes}")
    rng = np.random.default_rng(seed)
    with atomic_directory(out_dir) as tmp:
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "masks"))
        records = []
        for i in range(num_images):
            img = _background(rng, image_size)
            label = np.zeros((image_size, image_size), np.uint8)
            occupied = np.zeros((image_size, image_size), bool)
            n_obj = int(rng.integers(1, 4))
            for _ in range(n_obj):
                _draw_object(
                    img,
                    label,
                    rng,
                    image_size,
                    int(rng.integers(1, num_classes + 1)),
                    occupied,
                    body_cue,
                    num_classes,
                    head_drop,
                    body_scale,
                )
            # a 1-pixel ignore band around objects, as VOC boundaries are ignored
            edge = cv2.morphologyEx(label, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
            gt = label.copy()
            gt[edge & (label == 0)] = 255
            stem = f"{i:06d}"
            bgr = np.clip(img, 0, 255).astype(np.uint8)[:, :, ::-1]
            cv2.imwrite(os.path.join(tmp, "images", stem + ".png"), bgr)
            save_label_png(os.path.join(tmp, "masks", stem + ".png"), gt)
            tags = sorted(int(c) for c in np.unique(label) if c != 0)
            records.append({"stem": stem, "tags": tags})
        with open(os.path.join(tmp, "tags.json"), "w") as f:
            json.dump({"classes": list(TOY_CLASSES[:num_classes]), "images": records}, f)


def _load_toyparts(name, num_images, seed, image_size, num_classes, root, **variant):
    folder = toyparts_dir(num_images, seed, image_size, num_classes, root, **variant)
    if not os.path.isfile(os.path.join(folder, "tags.json")):
        logger.info("generating %s (%d images) into %s", name, num_images, folder)
        generate_toyparts(folder, num_images, seed, image_size, num_classes, **variant)
    with open(os.path.join(folder, "tags.json")) as f:
        records = json.load(f)["images"]
    dicts = []
    for r in records:
        if not r["tags"]:
            continue  # every generated image has >= 1 object; kept for safety
        dicts.append(
            {
                "file_name": os.path.join(folder, "images", r["stem"] + ".png"),
                "sem_seg_file_name": os.path.join(folder, "masks", r["stem"] + ".png"),
                "image_id": r["stem"],
                "height": image_size,
                "width": image_size,
                "tags": r["tags"],
            }
        )
    return dicts


def register_toyparts(
    name: str,
    num_images: int,
    seed: int,
    image_size: int = 96,
    num_classes: int = 5,
    root: str | None = None,
    body_cue: float = 0.0,
    head_drop: float = 0.0,
    body_scale: float = 1.0,
) -> None:
    """Register a generated toyparts split; data are generated lazily on first load.

    ``body_cue``: probability that a body's stripe angle follows its class (0 = every body is
    the same, the default data). ``head_drop``: probability that an object has no head.
    ``body_scale``: bodies this many times larger (heads unchanged).
    """
    variant = dict(body_cue=body_cue, head_drop=head_drop, body_scale=body_scale)
    DatasetCatalog.register(
        name,
        lambda: _load_toyparts(name, num_images, seed, image_size, num_classes, root, **variant),
    )
    set_tag_metadata(
        name,
        TOY_CLASSES[:num_classes],
        toyparts=dict(num_images=num_images, seed=seed, image_size=image_size, **variant),
    )
