"""Pixel pairs within a radius and the straight paths between them (IRN's inter-pixel relations).

Ahn, Cho & Kwak, "Weakly Supervised Learning of Instance Segmentation with Inter-pixel
Relations", CVPR 2019. A pair is a pixel ``p`` and ``p + d`` for an offset ``d`` with
``|d| < radius`` taken from one half plane (``dy > 0``, or ``dy == 0`` and ``dx > 0``), so every
unordered pair appears once. The *path* of ``d`` holds the grid points ``o`` of the bounding box of
``0`` and ``d`` whose distance to the line through them is below one pixel, both ends included.
The class-boundary evidence of a pair is the largest boundary score on its path: IRN's affinity
is ``1 - max_{o on path} B(p + o)``.

:class:`PairPaths` computes, for every pixel and offset at once, that maximum (and the labels or
values at the far end), by gathering from a map padded with ``radius - 1`` pixels left, right and
below (the offsets never point up). Paths of the same length are gathered together, so the memory
of one gather is ``batch x offsets of that length x length x pixels``.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["pair_offsets", "path_points", "PairPaths"]


@functools.lru_cache(maxsize=None)
def pair_offsets(radius: int) -> tuple[tuple[int, int], ...]:
    """The half-plane offsets ``(dy, dx)`` with ``dy**2 + dx**2 < radius**2``, pairs listed once.

    Order: ``(0, 1) .. (0, r-1)``, then row by row ``dy = 1 .. r-1``, ``dx`` ascending.
    """
    r = int(radius)
    if r < 2:
        raise ValueError(f"pair radius must be >= 2 (offsets |d| < radius), got {radius}")
    out = [(0, dx) for dx in range(1, r)]
    out += [(dy, dx) for dy in range(1, r) for dx in range(-r + 1, r) if dx * dx + dy * dy < r * r]
    return tuple(out)


@functools.lru_cache(maxsize=None)
def path_points(dy: int, dx: int) -> tuple[tuple[int, int], ...]:
    """Grid points of the segment from ``(0, 0)`` to ``(dy, dx)``: those of the bounding box whose
    squared distance to the line, ``(dy x - dx y)^2 / (dy^2 + dx^2)``, is below 1 (ends included).
    """
    n2 = dy * dy + dx * dx
    if n2 == 0:
        return ((0, 0),)
    return tuple(
        (y, x)
        for y in range(min(0, dy), max(0, dy) + 1)
        for x in range(min(0, dx), max(0, dx) + 1)
        if (dy * x - dx * y) ** 2 < n2
    )


class PairPaths:
    """Every pixel's pairs within ``radius``: path maxima and far-end values, batched.

    Shapes: maps are (B, h, w); results are (B, D, h, w) for the D offsets of
    :func:`pair_offsets` (``self.offsets`` (D, 2) long, in the same order). Far ends outside the
    map get ``fill`` (:meth:`path_max`) or ``fill`` (:meth:`at_far_end`); :meth:`far_end_inside`
    says which pairs are real.
    """

    def __init__(self, radius: int):
        self.radius = int(radius)
        self.pad = self.radius - 1  # offsets reach |dx| <= r - 1 sideways, dy <= r - 1 down
        offs = pair_offsets(self.radius)
        paths = [path_points(dy, dx) for dy, dx in offs]
        lengths = sorted({len(p) for p in paths})
        # groups of offsets whose paths have the same length (one gather each)
        self._groups = [[i for i, p in enumerate(paths) if len(p) == n] for n in lengths]
        order = [i for g in self._groups for i in g]
        self._order_inv = torch.empty(len(order), dtype=torch.long)
        self._order_inv[torch.tensor(order)] = torch.arange(len(order))
        self._paths = paths
        self.offsets = torch.tensor(offs, dtype=torch.long)
        self._cache: dict = {}

    def __len__(self) -> int:
        return len(self.offsets)

    # ------------------------------------------------------------------ index tables
    def _padded_hw(self, h: int, w: int) -> tuple[int, int]:
        return h + self.pad, w + 2 * self.pad

    def _indices(self, h: int, w: int, device) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Flat indices into the padded map: per group (n, length, h*w), far ends (D, h*w)."""
        key = (h, w, str(device))
        if key not in self._cache:
            _, wp = self._padded_hw(h, w)
            ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            base = (ys * wp + xs + self.pad).reshape(-1)  # pixel p in padded coordinates
            groups = []
            for g in self._groups:
                pts = torch.tensor([self._paths[i] for i in g], dtype=torch.long)  # (n, len, 2)
                shift = pts[..., 0] * wp + pts[..., 1]
                groups.append((base[None, None, :] + shift[..., None]).to(device))
            far = self.offsets[:, 0] * wp + self.offsets[:, 1]
            far = (base[None, :] + far[:, None]).to(device)
            self._cache[key] = (groups, far)
        return self._cache[key]

    def _pad(self, x: torch.Tensor, fill: float) -> torch.Tensor:
        p = self.pad
        return torch.nn.functional.pad(x, (p, p, 0, p), value=fill)

    # ------------------------------------------------------------------ queries
    def path_max(self, edge: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
        """(B, h, w) boundary scores -> (B, D, h, w): max over the path from p to p + d.

        Differentiable: the gradient goes to the arg-max point of each path (the first one on a
        tie). Points outside the map count as ``fill``.
        """
        b, h, w = edge.shape
        padded = self._pad(edge, fill)
        if not (torch.is_grad_enabled() and edge.requires_grad):
            return self._path_max_values(padded, h, w)
        # the arg-max point of every path without autograd (cheap element-wise passes), then
        # one gather: its backward is a single scatter of B x D x h x w gradients
        with torch.no_grad():
            idx = self._path_argmax(padded, h, w)
        return padded.reshape(b, -1).gather(1, idx.reshape(b, -1)).reshape(b, len(self), h, w)

    def _views(self, padded: torch.Tensor, h: int, w: int, dy: int, dx: int):
        p = self.pad
        for oy, ox in path_points(dy, dx):
            yield oy, ox, padded[:, oy : oy + h, p + ox : p + ox + w]

    def _path_max_values(self, padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
        out = []
        for dy, dx in self.offsets.tolist():
            m = None
            for _, _, v in self._views(padded, h, w, dy, dx):
                m = v.clone() if m is None else torch.maximum(m, v, out=m)
            out.append(m)
        return torch.stack(out, 1)

    def _path_argmax(self, padded: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(B, D, h, w) flat index into ``padded`` of each path's (first) maximum."""
        b, dev = padded.shape[0], padded.device
        wp = padded.shape[-1]
        ys, xs = torch.meshgrid(
            torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij"
        )
        base = ys * wp + xs + self.pad  # (h, w) pixel p in the padded map
        out = torch.empty(b, len(self), h, w, dtype=torch.long, device=dev)
        for d, (dy, dx) in enumerate(self.offsets.tolist()):
            # k: number of the path point holding the running maximum (paths have < 256 points)
            m = k = None
            shifts = []
            for j, (oy, ox, v) in enumerate(self._views(padded, h, w, dy, dx)):
                shifts.append(oy * wp + ox)
                if m is None:
                    m, k = v.clone(), torch.zeros(b, h, w, dtype=torch.uint8, device=dev)
                    continue
                better = v > m
                m = torch.maximum(m, v, out=m)
                k.masked_fill_(better, j)
            table = torch.tensor(shifts, dtype=torch.long, device=dev)
            out[:, d] = base + table[k.long()]
        return out

    def at_far_end(self, x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, D, h, w): the value at p + d (``fill`` outside the map)."""
        b, c, h, w = x.shape
        flat = self._pad(x, fill).reshape(b, c, -1)
        _, far = self._indices(h, w, x.device)
        return flat[:, :, far].reshape(b, c, len(self), h, w)

    def far_end_inside(self, h: int, w: int, device=None) -> torch.Tensor:
        """(D, h, w) bool: p + d lies inside the (h, w) map."""
        ys = torch.arange(h, device=device)[None, :, None] + self.offsets[:, 0, None, None].to(
            device
        )
        xs = torch.arange(w, device=device)[None, None, :] + self.offsets[:, 1, None, None].to(
            device
        )
        return (ys < h) & (xs >= 0) & (xs < w)
