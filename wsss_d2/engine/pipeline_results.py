"""What a pipeline stage is summarised by: its primary metric, the summary table's rows, and its
results flattened to ``{"a/b": number}`` for ``stage_done.json``."""

from __future__ import annotations

import os

__all__ = ["primary_metric", "summary_rows", "flatten_results"]


def primary_metric(results: dict) -> tuple[str, float] | None:
    """The number a stage is summarised by: CAM mIoU, segmentation mIoU or pseudo-label mIoU."""
    for key in ("cam/mIoU", "sem_seg/mIoU", "pseudo_seg/mIoU", "mIoU", "sam_labels/mIoU"):
        if key in results:
            return key, float(results[key])
    for key, v in results.items():
        if key.endswith("mIoU"):
            return key, float(v)
    return None


def summary_rows(summaries: list[dict], digits: int = 1, config: bool = False) -> list[list]:
    """One table row per stage summary: name, kind, (config,) metric, mIoU, status, seconds."""
    rows = []
    for s in summaries:
        m = primary_metric(s["results"])
        cfg = [os.path.relpath(s["config"]) if s["config"] else ""] if config else []
        rows.append(
            [s["name"], s["kind"], *cfg, m[0] if m else "-", f"{m[1]:.{digits}f}" if m else "-"]
            + [s["status"], s["seconds"]]
        )
    return rows


def flatten_results(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten_results(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out
