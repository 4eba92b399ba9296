"""CAMs -> pseudo-label maps: the refiners, registered in :data:`REFINER_REGISTRY`.

``WSSS.PSEUDO.METHOD`` names one (by its short name or its class name):

- ``"threshold"`` (:class:`ThresholdRefiner`): a pixel is background when every CAM is <=
  ``BG_THRESHOLD``, else the arg-max tag — the raw CAM seeds.
- ``"crf"`` (:class:`CRFRefiner`, IRN's ``cam_to_ir_label``): two thresholded maps, one with a
  high background score ``CONF_FG`` (confident foreground) and one with a low one ``CONF_BG``
  (confident background), each refined by a dense CRF over the image's tags + background.
  Foreground where the first says foreground, background where both say background, 255 (unsure,
  ignored by the losses) between. With ``CONF_FG == CONF_BG`` there is no unsure band: one
  CRF-refined map.
- ``"pamr"`` (:class:`PAMRRefiner`): the same scheme with PAMR (pixel-adaptive mask refinement)
  instead of the CRF, run on the soft scores ``[bg, CAMs]``.

A refiner is called as ``refiner(image, cams, keys) -> (H, W) uint8 label`` with the image
(H, W, 3) RGB uint8 (None when ``needs_image`` is False), the (k, H, W) max-normalised CAMs of the
image's tags and their class ids ``keys``. Every refiner only ever assigns the image's tags or
background; an image without tags is all background (there is nothing else it could be labelled
with). Refiners hold plain attributes only, so that process pools can ship them to workers.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.utils.registry import Registry

from ..io.files import IGNORE_LABEL
from ..ops.crf import CRFParams, crf_inference_label, local_ids
from ..ops.pamr import PAMR

__all__ = [
    "REFINER_REGISTRY",
    "Refiner",
    "ThresholdRefiner",
    "CRFRefiner",
    "PAMRRefiner",
    "refiner_class",
    "build_refiner",
    "threshold_labels",
]

REFINER_REGISTRY = Registry("WSSS_REFINER")
REFINER_REGISTRY.__doc__ = """
CAM -> label refiners, built as ``REFINER_REGISTRY.get(name)(cfg)`` (``@configurable``); each has
a short ``method`` name that ``WSSS.PSEUDO.METHOD`` may use instead of the class name.
"""


def _with_bg(cams: np.ndarray, bg: float) -> np.ndarray:
    """(k, H, W) -> (k+1, H, W) with a constant background score first."""
    return np.concatenate(
        [np.full((1, *cams.shape[1:]), bg, dtype=np.float32), cams.astype(np.float32)]
    )


def threshold_labels(cams: np.ndarray, keys: Sequence[int], bg_threshold: float) -> np.ndarray:
    """(k, H, W) normalised CAMs of classes ``keys`` -> (H, W) uint8 class ids (0 = background).

    Ties go to background (a CAM must exceed the threshold).
    """
    ids = local_ids(keys)
    return ids[_with_bg(cams, bg_threshold).argmax(0)].astype(np.uint8)


def _combine(fg: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Confident foreground from ``fg``, background where both agree, the rest unsure (255)."""
    out = fg.astype(np.uint8).copy()
    out[fg == 0] = IGNORE_LABEL
    out[(fg == 0) & (bg == 0)] = 0
    return out


def _check_band(conf_fg: float, conf_bg: float) -> None:
    if conf_bg > conf_fg:
        raise ValueError(f"WSSS.PSEUDO.CONF_BG ({conf_bg}) must be <= CONF_FG ({conf_fg})")


class Refiner:
    """Base of the refiners (module docstring)."""

    method = ""  # short name for WSSS.PSEUDO.METHOD
    needs_image = True  # whether __call__ reads the image
    pooled = False  # CPU-heavy per image: worth a process pool of WSSS.PSEUDO.NUM_WORKERS

    def __call__(
        self, image: np.ndarray | None, cams: np.ndarray, keys: Sequence[int]
    ) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict:
        """What a label round's manifest records about how its labels were made."""
        out = {"method": self.method}
        for k, v in vars(self).items():
            out[k] = asdict(v) if isinstance(v, CRFParams) else v
        return out


@REFINER_REGISTRY.register()
class ThresholdRefiner(Refiner):
    """Background where every CAM is <= ``bg_threshold``, else the arg-max tag."""

    method = "threshold"
    needs_image = False

    @configurable
    def __init__(self, *, bg_threshold: float = 0.15):
        self.bg_threshold = float(bg_threshold)

    @classmethod
    def from_config(cls, cfg):
        return {"bg_threshold": cfg.WSSS.PSEUDO.BG_THRESHOLD}

    def __call__(self, image, cams, keys):
        return threshold_labels(cams, keys, self.bg_threshold)


@REFINER_REGISTRY.register()
class CRFRefiner(Refiner):
    """IRN-style confident labels: a dense CRF on the ``conf_fg`` and ``conf_bg`` seeds."""

    method = "crf"
    pooled = True

    @configurable
    def __init__(
        self, *, conf_fg: float = 0.30, conf_bg: float = 0.05, crf: CRFParams = CRFParams()
    ):
        _check_band(conf_fg, conf_bg)
        self.conf_fg, self.conf_bg, self.crf = float(conf_fg), float(conf_bg), crf

    @classmethod
    def from_config(cls, cfg):
        p = cfg.WSSS.PSEUDO
        return {"conf_fg": p.CONF_FG, "conf_bg": p.CONF_BG, "crf": CRFParams.from_config(cfg)}

    def __call__(self, image, cams, keys):
        """image (H, W, 3) uint8 RGB; cams (k, H, W) max-normalised CAMs of the classes ``keys``
        (ids 1..K) -> (H, W) uint8: 0 background, class ids, 255 unsure."""
        if len(keys) == 0:
            return np.zeros(cams.shape[1:], dtype=np.uint8)
        ids = local_ids(keys)
        n = len(ids)
        fg = ids[crf_inference_label(image, _with_bg(cams, self.conf_fg).argmax(0), n, self.crf)]
        if self.conf_bg == self.conf_fg:
            return fg.astype(np.uint8)
        bg = ids[crf_inference_label(image, _with_bg(cams, self.conf_bg).argmax(0), n, self.crf)]
        return _combine(fg, bg)


@REFINER_REGISTRY.register()
class PAMRRefiner(Refiner):
    """As :class:`CRFRefiner` with PAMR on the soft scores ``[bg, CAMs]`` instead of a CRF."""

    method = "pamr"

    @configurable
    def __init__(
        self,
        *,
        conf_fg: float = 0.30,
        conf_bg: float = 0.05,
        iterations: int = 10,
        dilations: Sequence[int] = (1, 2, 4, 8, 12, 24),
        downscale: float = 1.0,
    ):
        _check_band(conf_fg, conf_bg)
        self.conf_fg, self.conf_bg = float(conf_fg), float(conf_bg)
        self.iterations = int(iterations)
        self.dilations = tuple(int(d) for d in dilations)
        self.downscale = float(downscale)

    @classmethod
    def from_config(cls, cfg):
        p = cfg.WSSS.PSEUDO
        return {
            "conf_fg": p.CONF_FG,
            "conf_bg": p.CONF_BG,
            "iterations": p.PAMR.ITERATIONS,
            "dilations": tuple(p.PAMR.DILATIONS),
            "downscale": p.PAMR.DOWNSCALE,
        }

    def __call__(self, image, cams, keys):
        if len(keys) == 0:
            return np.zeros(cams.shape[1:], dtype=np.uint8)
        ids = local_ids(keys)
        H, W = cams.shape[1:]
        pamr = PAMR(num_iter=self.iterations, dilations=self.dilations)
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
        bands = (self.conf_fg, self.conf_bg) if self.conf_fg != self.conf_bg else (self.conf_fg,)
        maps = []
        for bg in bands:
            s = torch.from_numpy(_with_bg(cams, bg))[None]
            if self.downscale != 1.0:
                size = (max(1, round(H * self.downscale)), max(1, round(W * self.downscale)))
                s = F.interpolate(s, size=size, mode="bilinear", align_corners=False)
            r = pamr(img, s)
            if r.shape[-2:] != (H, W):
                r = F.interpolate(r, size=(H, W), mode="bilinear", align_corners=False)
            maps.append(ids[r[0].argmax(0).numpy()])
        if len(maps) == 1:
            return maps[0].astype(np.uint8)
        return _combine(*maps)


def refiner_class(method: str) -> type[Refiner]:
    """The refiner registered as ``method`` (a class name) or whose short name is ``method``."""
    by_method = {cls.method: cls for _, cls in REFINER_REGISTRY}
    if method in by_method:
        return by_method[method]
    if method in REFINER_REGISTRY:
        return REFINER_REGISTRY.get(method)
    raise KeyError(
        f"WSSS.PSEUDO.METHOD '{method}' is not a refiner; registered: "
        f"{sorted(by_method)} (or their class names {sorted(n for n, _ in REFINER_REGISTRY)})"
    )


def build_refiner(cfg) -> Refiner:
    """The refiner of ``cfg.WSSS.PSEUDO.METHOD``."""
    return refiner_class(cfg.WSSS.PSEUDO.METHOD)(cfg)
