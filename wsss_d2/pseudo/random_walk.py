"""IRN's random walk: CAMs propagated inside the regions an IRNet's class boundaries enclose.

Ahn, Cho & Kwak, CVPR 2019 (official ``make_sem_seg_labels`` / ``propagate_to_edge``). At stride 4:

- affinity of pixels ``i, j`` closer than ``radius``: ``a_ij = (1 - max_{k on the path ij} B_k)^beta``
  (``a_ii = 1``; pairs listed in both directions, so ``A`` is symmetric);
- transition ``T = D^-1 A`` (``D`` the row sums: each step replaces a pixel's score by the
  affinity-weighted mean of its neighbourhood; the official code normalises the columns of ``A``
  and multiplies row vectors from the left, the same operator);
- the CAMs of the image's tags, at stride 4, times ``1 - B`` (as the official code), are propagated
  ``2^exp_times`` steps: ``T^(2^exp_times) x``;
- upsampled to the image (bilinear, x stride), divided by their maximum over classes and pixels
  (``normalize="global"``, official; ``"class"``: each class by its own maximum, ours), a constant
  background channel ``bg_threshold`` is prepended, and the arg-max over background + the image's
  tags is the label. Ours (``MODEL.IRN.WALK_BG_POWER > 0``): the background is walked too, a
  channel ``(1 - max_c cam_c) ** power`` (AffinityNet's background score, Ahn & Kwak, CVPR 2018)
  propagated with the CAMs and scaled by ``bg_threshold`` (:func:`background_channel`).

Two ways to apply ``T^n`` (the same operator, float rounding apart): ``"sparse"`` multiplies the
scores ``2^exp_times`` times by ``T`` stored as one block-diagonal CSR matrix for the whole batch
(M = 69 non-zeros per row for radius 5; every row is summed in the same order whatever else is in
the batch, so an image's labels do not depend on its batch or rank), and ``"dense"`` builds the
N x N matrices and squares them ``exp_times`` times (the official way; memory N^2, time N^3).
``benchmarks/bench_irn.py`` measures both against a per-image version of the official loop. Both
work on a batch of images padded to one size (padding is boundary: no mass crosses into it).
The default arithmetic is float64: after 256 steps float32 differs from float64 by about 1e-6
relative, enough to flip an arg-max now and then between two ways of computing the same walk.

The functions here take tensors and plain arguments; :mod:`wsss_d2.pseudo.irn_round` writes the
label rounds from a config.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io.files import IGNORE_LABEL
from ..modeling.layers.pixel_pairs import PairPaths, pair_offsets

__all__ = [
    "WalkParams",
    "window_offsets",
    "walk_transition",
    "transition_matrix",
    "propagate",
    "random_walk",
    "cams_at_stride",
    "background_channel",
    "walk_to_label",
    "band_label",
]

WALK_METHODS = ("sparse", "dense")
WALK_NORMS = ("global", "class")
_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass(frozen=True)
class WalkParams:
    """Everything the random walk needs (``MODEL.IRN`` keys of the same names)."""

    radius: int = 5
    beta: float = 10.0
    exp_times: int = 8
    bg_threshold: float = 0.25
    method: str = "sparse"
    dtype: str = "float64"
    normalize: str = "global"
    # a second background score: pixels labelled differently at it and at ``bg_threshold`` are
    # unsure (255); 0 = off, every pixel labelled (the official walk)
    unsure_threshold: float = 0.0
    # > 0: the background is a walked channel ``(1 - max_c cam_c) ** bg_power`` (ours,
    # :func:`background_channel`) scaled by ``bg_threshold``; 0 = the official constant
    bg_power: float = 0.0

    def __post_init__(self):
        if not 0 <= self.bg_power:
            raise ValueError(f"MODEL.IRN.WALK_BG_POWER must be >= 0, got {self.bg_power}")
        if not 0 <= self.unsure_threshold:
            raise ValueError(f"MODEL.IRN.UNSURE_BG_THRES must be >= 0, got {self.unsure_threshold}")
        if self.normalize not in WALK_NORMS:
            raise ValueError(
                f"MODEL.IRN.WALK_NORM must be one of {WALK_NORMS}, got {self.normalize}"
            )
        if self.method not in WALK_METHODS:
            raise ValueError(
                f"MODEL.IRN.WALK_METHOD must be one of {WALK_METHODS}, got {self.method}"
            )
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"MODEL.IRN.WALK_DTYPE must be one of {tuple(_DTYPES)}, got {self.dtype}"
            )

    @classmethod
    def from_config(cls, cfg) -> "WalkParams":
        c = cfg.MODEL.IRN
        return cls(
            radius=c.RADIUS,
            beta=c.BETA,
            exp_times=c.EXP_TIMES,
            bg_threshold=c.SEM_SEG_BG_THRES,
            method=c.WALK_METHOD,
            dtype=c.WALK_DTYPE,
            normalize=c.WALK_NORM,
            unsure_threshold=c.UNSURE_BG_THRES,
            bg_power=c.WALK_BG_POWER,
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The background scores whose labels make an image's label (:func:`band_label`)."""
        if self.unsure_threshold > 0:
            return (self.bg_threshold, self.unsure_threshold)
        return (self.bg_threshold,)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]


def window_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """The walk's neighbourhood: ``(0, 0)``, the half-plane pair offsets, then their negatives."""
    offs = pair_offsets(radius)
    return ((0, 0),) + offs + tuple((-dy, -dx) for dy, dx in offs)


def walk_transition(
    edge: torch.Tensor, radius: int = 5, beta: float = 10.0, paths: PairPaths | None = None
) -> torch.Tensor:
    """Row-normalised transition weights over :func:`window_offsets`.

    Args:
        edge: (B, h, w) boundary probabilities in [0, 1].
    Returns:
        (B, M, h, w): ``T[b, m, p] = a(p, p + o_m) / sum_m' a(p, p + o_m')`` with M = 2D + 1
        offsets; zero where ``p + o_m`` is outside the map.
    """
    paths = paths or PairPaths(radius)
    b, h, w = edge.shape
    a = (1 - paths.path_max(edge, fill=1.0)).clamp(min=0) ** beta  # (B, D, h, w): p -> p + d
    a = a * paths.far_end_inside(h, w, edge.device).to(a.dtype)
    r = paths.pad
    ap = F.pad(a, (r, r, r, 0))  # row r + y, column r + x holds a[y, x]
    back = [
        ap[:, i, r - dy : r - dy + h, r - dx : r - dx + w]  # a(p - d, p) = a(p, p - d)
        for i, (dy, dx) in enumerate(paths.offsets.tolist())
    ]
    A = torch.cat([torch.ones_like(a[:, :1]), a, torch.stack(back, 1)], 1)
    return A / A.sum(1, keepdim=True)


def _columns(h: int, w: int, offsets: Sequence[tuple[int, int]], device):
    """Column of every (pixel, offset) entry: (N, M) flat index of ``p + o``, and if it is inside."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    o = torch.tensor(offsets, dtype=torch.long, device=device)
    ty = ys.reshape(-1, 1) + o[None, :, 0]
    tx = xs.reshape(-1, 1) + o[None, :, 1]
    inside = (ty >= 0) & (ty < h) & (tx >= 0) & (tx < w)
    return ty.clamp(0, h - 1) * w + tx.clamp(0, w - 1), inside


def transition_matrix(
    T: torch.Tensor, offsets: Sequence[tuple[int, int]], layout: str = "sparse"
) -> torch.Tensor:
    """(B, M, h, w) stencil weights -> the transition matrix with ``Tm[p, p + o_m] = T[m, p]``.

    ``layout`` "sparse": one block-diagonal (B N, B N) CSR matrix, each row's entries in offset
    order; "dense": (B, N, N).
    """
    b, m, h, w = T.shape
    n = h * w
    cols, inside = _columns(h, w, offsets, T.device)  # (N, M)
    vals = T.reshape(b, m, n).transpose(1, 2)  # (B, N, M)
    if layout == "dense":
        out = torch.zeros(b, n, n, dtype=T.dtype, device=T.device)
        rows = torch.arange(n, device=T.device)[:, None].expand(n, m)
        out[:, rows[inside], cols[inside]] = vals[:, inside]
        return out
    inside_b = inside[None].expand(b, n, m)
    cols_b = cols[None] + (torch.arange(b, device=T.device) * n)[:, None, None]
    crow = torch.zeros(b * n + 1, dtype=torch.long, device=T.device)
    crow[1:] = inside_b.reshape(b * n, m).sum(1).cumsum(0)
    with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow, cols_b[inside_b], vals[inside_b], size=(b * n, b * n), dtype=T.dtype
        )


def propagate(
    x: torch.Tensor,
    T: torch.Tensor,
    offsets: Sequence[tuple[int, int]],
    exp_times: int = 8,
    method: str = "sparse",
) -> torch.Tensor:
    """``T^(2^exp_times) x`` for (B, C, h, w) scores and (B, M, h, w) stencil weights."""
    b, c, h, w = x.shape
    if method == "dense":
        Tm = transition_matrix(T, offsets, "dense")
        for _ in range(exp_times):
            Tm = torch.bmm(Tm, Tm)
        y = torch.bmm(Tm, x.reshape(b, c, h * w).transpose(1, 2))  # (B, N, C)
        return y.transpose(1, 2).reshape(x.shape)
    Tm = transition_matrix(T, offsets, "sparse")
    y = x.reshape(b, c, h * w).transpose(1, 2).reshape(b * h * w, c).contiguous()
    for _ in range(2**exp_times):
        y = Tm @ y
    return y.reshape(b, h * w, c).transpose(1, 2).reshape(x.shape)


def random_walk(
    cams: torch.Tensor,
    edge: torch.Tensor,
    radius: int = 5,
    beta: float = 10.0,
    exp_times: int = 8,
    method: str = "sparse",
) -> torch.Tensor:
    """The official ``propagate_to_edge`` for a batch.

    Args:
        cams: (B, C, h, w) non-negative scores at the boundary map's resolution (zero channels
            for padding).
        edge: (B, h, w) boundary probabilities (1 on padding).
    Returns:
        (B, C, h, w): ``T^(2^exp_times) (cams * (1 - edge))``, in the dtype of ``cams``.
    """
    if method not in WALK_METHODS:
        raise ValueError(f"random walk method must be one of {WALK_METHODS}, got {method}")
    edge = edge.to(cams.dtype)
    offsets = window_offsets(radius)
    T = walk_transition(edge, radius, beta)
    return propagate(cams * (1 - edge[:, None]), T, offsets, exp_times, method)


def cams_at_stride(
    cams: torch.Tensor, size: tuple[int, int], stride: int, input_hw: tuple[int, int] | None = None
) -> torch.Tensor:
    """Full-resolution CAMs (k, H, W) -> (k, h, w) at ``stride``, max-normalised per class.

    The maps are first resized to ``input_hw`` (the network's input size) when it differs, padded
    (edge values) to ``(h * stride, w * stride)`` and averaged over ``stride x stride`` cells,
    so cell ``i`` covers input pixels ``stride * i .. stride * i + stride - 1`` like the IRNet's
    output; then divided by their maximum + 1e-5 (the official strided CAMs' normalisation).
    """
    k = cams.shape[0]
    if k == 0:
        return cams.new_zeros(0, *size)
    x = cams[None].float()
    if input_hw is not None and tuple(input_hw) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=tuple(input_hw), mode="bilinear", align_corners=False)
    ph, pw = size[0] * stride - x.shape[-2], size[1] * stride - x.shape[-1]
    if ph < 0 or pw < 0:
        raise ValueError(f"CAMs of size {tuple(x.shape[-2:])} exceed the map {size} x {stride}")
    x = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
    x = F.avg_pool2d(x, stride)[0]
    return x / (x.flatten(1).amax(1)[:, None, None] + 1e-5)


def background_channel(cams: torch.Tensor, power: float) -> torch.Tensor:
    """(..., k, h, w) max-normalised CAMs -> (..., 1, h, w) ``(1 - max_c cam_c) ** power``.

    AffinityNet's background score (Ahn & Kwak, CVPR 2018), walked with the CAMs when
    ``MODEL.IRN.WALK_BG_POWER > 0`` (ours): the background then spreads inside the regions the
    boundaries enclose as the classes do, instead of IRN's constant score after the walk. No
    classes (``k = 0``): all ones.
    """
    if cams.shape[-3] == 0:
        return cams.new_ones(*cams.shape[:-3], 1, *cams.shape[-2:])
    return (1 - cams.amax(-3, keepdim=True)).clamp(min=0) ** power


def walk_to_label(
    rw: torch.Tensor,
    keys: Sequence[int],
    stride: int,
    input_hw: tuple[int, int],
    out_hw: tuple[int, int],
    bg_threshold: float = 0.25,
    normalize: str = "global",
    bg: torch.Tensor | None = None,
) -> np.ndarray:
    """(k, h, w) walked scores of classes ``keys`` -> (H, W) uint8 label (0 background).

    Upsampled by ``stride`` (bilinear), cropped to ``input_hw``, resized to ``out_hw`` when it
    differs, divided by the maximum (``"global"``: over classes and pixels, the official
    ``make_sem_seg_labels``; ``"class"``: each class by its own, so a class whose walked scores
    are weaker than another tag's is not pushed under the background), background
    ``bg_threshold`` first, arg-max (ties go to the background). ``bg``: an (h, w) walked
    background (``MODEL.IRN.WALK_BG_POWER``, :func:`background_channel`), resized as the classes
    and divided by their global maximum, times ``bg_threshold``, instead of the constant. No
    tags, or nothing left after the walk: all background.
    """
    ids = np.concatenate([[0], np.asarray(keys, dtype=np.int64)])
    if len(keys) == 0:
        return np.zeros(out_hw, dtype=np.uint8)
    if normalize not in WALK_NORMS:
        raise ValueError(f"normalize must be one of {WALK_NORMS}, got {normalize}")
    x = rw if bg is None else torch.cat([bg[None].to(rw.dtype), rw])
    up = F.interpolate(x[None], scale_factor=stride, mode="bilinear", align_corners=False)[0]
    up = up[:, : input_hw[0], : input_hw[1]]
    if tuple(input_hw) != tuple(out_hw):
        up = F.interpolate(up[None], size=tuple(out_hw), mode="bilinear", align_corners=False)[0]
    back, up = (None, up) if bg is None else (up[:1], up[1:])
    top = up.max()
    if not top > 0:
        return np.zeros(out_hw, dtype=np.uint8)
    peak = up.flatten(1).amax(1)[:, None, None] if normalize == "class" else top
    back = torch.full_like(up[:1], bg_threshold) if back is None else bg_threshold * back / top
    # a class with nothing left (peak 0) stays at 0, under any background score
    scores = torch.cat([back, up / peak.clamp_min(1e-12)])
    return ids[scores.argmax(0).cpu().numpy()].astype(np.uint8)


def band_label(labels: Sequence[np.ndarray], ignore: int = IGNORE_LABEL) -> np.ndarray:
    """The first of an image's labels at :attr:`WalkParams.thresholds`; with a second (the
    unsure threshold), the pixels where the two differ become ``ignore``: those whose best class
    score lies between the two background scores (the walk's analogue of the CRF band's unsure
    pixels), and, after a CRF of each, where the CRFs disagree."""
    label = np.array(labels[0], dtype=np.uint8, copy=True)
    for other in labels[1:]:
        label[label != other] = ignore
    return label
