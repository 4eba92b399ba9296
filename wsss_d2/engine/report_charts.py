"""Charts of the pipeline report (matplotlib ``Figure`` objects, no pyplot state): the stage
comparison, the CAM background-threshold curve, confusion matrices, training losses."""

from __future__ import annotations

import base64
import io
import json
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

__all__ = [
    "fig_base64",
    "loss_plot_base64",
    "stage_chart_base64",
    "threshold_curve_base64",
    "confusion_base64",
]

# colour of a stage's bar by what its number measures
_TASK_COLORS = {"cam": "#4c72b0", "pseudo_seg": "#dd8452", "sam_labels": "#dd8452",
                "sem_seg": "#55a868"}  # fmt: skip
_TASK_NAMES = {"cam": "CAMs", "pseudo_seg": "pseudo labels", "sem_seg": "segmentation"}


def fig_base64(fig: Figure) -> str:
    """A figure as a ``data:`` URI of a PNG."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def loss_plot_base64(metrics_json: str, title: str = "") -> str | None:
    """Plot every ``*loss*`` series of a Detectron2 ``metrics.json``; ``None`` if there is none."""
    if not os.path.isfile(metrics_json):
        return None
    series: dict[str, list] = {}
    with open(metrics_json) as f:
        for line in f:
            row = json.loads(line)
            if "iteration" not in row:
                continue
            for k, v in row.items():
                if "loss" in k and isinstance(v, (int, float)):
                    series.setdefault(k, []).append((row["iteration"], v))
    if not series:
        return None
    fig = Figure(figsize=(6, 3.2), dpi=100)
    ax = fig.subplots()
    for k, pts in sorted(series.items()):
        it, v = zip(*pts)
        ax.plot(it, v, label=k, lw=1.5 if k == "total_loss" else 1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return fig_base64(fig)


def stage_chart_base64(points: Sequence[tuple[str, str, float]]) -> str | None:
    """Bars of ``(stage label, task, mIoU)`` in pipeline order on one axis (CAM -> labels ->
    segmentor -> retraining), coloured by what is measured."""
    if not points:
        return None
    fig = Figure(figsize=(max(5.0, 0.9 * len(points) + 2), 3.6), dpi=100)
    ax = fig.subplots()
    x = np.arange(len(points))
    colors = [_TASK_COLORS.get(t, "#8172b3") for _, t, _ in points]
    bars = ax.bar(x, [v for _, _, v in points], color=colors)
    for b, (_, _, v) in zip(bars, points):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.5, f"{v:.1f}", ha="center", fontsize=8)
    ax.set_xticks(x, [s for s, _, _ in points], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mIoU %")
    ax.set_ylim(0, max(100.0, max(v for _, _, v in points) + 8))
    ax.grid(axis="y", alpha=0.3)
    seen = {t for _, t, _ in points}
    handles = [
        Patch(color=_TASK_COLORS[t], label=_TASK_NAMES.get(t, t))
        for t in ("cam", "pseudo_seg", "sem_seg")
        if t in seen
    ]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper left")
    return fig_base64(fig)


def threshold_curve_base64(curves: dict[str, list[tuple[float, float]]]) -> str | None:
    """mIoU of the CAMs against the background threshold, one line per stage, best marked."""
    if not curves:
        return None
    fig = Figure(figsize=(6, 3.4), dpi=100)
    ax = fig.subplots()
    for name, pts in curves.items():
        t, v = zip(*sorted(pts))
        (line,) = ax.plot(t, v, marker=".", label=name)
        best = int(np.nanargmax(v))
        ax.plot([t[best]], [v[best]], "o", color=line.get_color(), ms=8, mfc="none")
        ax.annotate(f"{v[best]:.1f} @ {t[best]:.2f}", (t[best], v[best]), fontsize=8,
                    textcoords="offset points", xytext=(4, 6))  # fmt: skip
    ax.set_xlabel("background threshold")
    ax.set_ylabel("CAM mIoU %")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig_base64(fig)


def confusion_base64(data: dict, title: str) -> str:
    """Row-normalised confusion (each ground-truth class sums to 100 %) of a
    ``*_confusion.json`` written by the evaluators; counts annotated for up to 25 classes."""
    conf = np.asarray(data["confusion"], dtype=np.float64)
    rows, cols = data["classes"], data["columns"]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = 100 * conf / conf.sum(1, keepdims=True)
    n = len(cols)
    side = min(max(3.2, 0.32 * n + 1.5), 14)
    fig = Figure(figsize=(side + 0.6, side), dpi=90)
    ax = fig.subplots()
    im = ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=100)
    fs = 7 if n <= 12 else 5
    ax.set_xticks(range(n), cols, rotation=90, fontsize=fs)
    ax.set_yticks(range(len(rows)), rows, fontsize=fs)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(title, fontsize=9)
    if n <= 25:
        for i in range(len(rows)):
            for j in range(n):
                if np.isfinite(norm[i, j]) and norm[i, j] >= 0.5:
                    ink = "white" if norm[i, j] > 60 else "black"
                    ax.text(j, i, f"{norm[i, j]:.0f}", ha="center", va="center", fontsize=fs,
                            color=ink)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the GT class")
    return fig_base64(fig)
