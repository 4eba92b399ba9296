"""Visual reports: image / CAM / pseudo label / prediction / GT panels, IoU tables, loss plots.

Everything is written into one self-contained HTML file (images inlined as base64 PNGs), so the
report opens in any browser without a server.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import os
from typing import Sequence

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from matplotlib.figure import Figure

from ..config import get_wsss_cfg
from ..data.mappers import build_mapper
from ..io.files import atomic_write_bytes, read_image_checked, read_label_png, voc_palette
from ..io.rounds import label_stem
from ..modeling.checkpoint import load_model_weights
from ..modeling.meta_arch.cam import CAMClassifier
from .pipeline import summary_rows

logger = logging.getLogger(__name__)

__all__ = [
    "colorize_label",
    "cam_overlay",
    "png_base64",
    "loss_plot_base64",
    "load_model",
    "sample_panels",
    "panels_html",
    "write_pipeline_report",
    "write_visualization",
]

_PALETTE = np.array(voc_palette(256), np.uint8)


def colorize_label(label: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) RGB in VOC colours (255 = ignore is near-white)."""
    return _PALETTE[label.astype(np.uint8)]


def cam_overlay(image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Jet heat-map of ``cam`` (H, W in [0, 1]) blended over an RGB image."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return (alpha * heat + (1 - alpha) * image_rgb).astype(np.uint8)


def png_base64(rgb: np.ndarray, min_side: int = 160) -> str:
    """RGB array -> ``data:`` URI of a PNG, upscaled (nearest) so small images stay visible."""
    h, w = rgb.shape[:2]
    f = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if f > 1:
        rgb = cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


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
    # a Figure without pyplot: no global backend state is touched
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load_model(config_file: str, opts: Sequence[str], weights: str):
    """Build a model from a wsss_d2 config and load ``weights`` (strictly, safely: the keys must
    fit); returns (cfg, model in eval)."""
    cfg = get_wsss_cfg(config_file, opts)
    model = build_model(cfg)
    load_model_weights(model, weights)
    return cfg, model.eval()


@torch.no_grad()
def sample_panels(
    dicts: Sequence[dict], cam_model=None, seg_model=None, mapper=None, round_dir: str | None = None
) -> list[dict]:
    """For each dict: RGB image, CAM overlay, pseudo label, prediction and GT (each optional).

    Returns ``[{"file_name", "tags", "image", "cam", "pseudo", "pred", "gt"}]`` of RGB arrays
    (``None`` where that source is not given or the image has none).
    """
    out = []
    for d in dicts:
        rgb = read_image_checked(d["file_name"], "RGB")
        hw = rgb.shape[:2]
        row = {"file_name": d["file_name"], "tags": d.get("tags", []), "image": rgb}
        inp = mapper(d) if mapper is not None and (cam_model or seg_model) else None
        row["cam"] = None
        if cam_model is not None:
            cam = cam_model([inp])[0]["cam"].cpu().numpy()
            row["cam"] = cam_overlay(rgb, cam.max(0) if len(cam) else np.zeros(hw))
        row["pred"] = None
        if seg_model is not None:
            pred = seg_model([inp])[0]["sem_seg"].argmax(0).cpu().numpy()
            row["pred"] = colorize_label(pred)
        row["pseudo"] = None
        if round_dir:
            p = os.path.join(round_dir, label_stem(d) + ".png")
            if os.path.isfile(p):
                row["pseudo"] = colorize_label(read_label_png(p, hw, d["file_name"]))
        gt = d.get("sem_seg_file_name")
        row["gt"] = colorize_label(read_label_png(gt, hw, d["file_name"])) if gt else None
        out.append(row)
    return out


_CSS = """
body{font-family:sans-serif;margin:24px;color:#222} h1{font-size:22px} h2{font-size:18px;
margin-top:28px} table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;
padding:3px 8px;font-size:13px;text-align:right} th{background:#f2f2f2} td.l,th.l{text-align:left}
.panels td{text-align:center;vertical-align:top;font-size:12px} .panels img{display:block}
.legend span{display:inline-block;padding:1px 6px;margin:2px;font-size:12px;border:1px solid #999}
"""


def _table(headers, rows) -> str:
    h = "".join(
        f"<th class='l'>{html.escape(str(x))}</th>" if i == 0 else f"<th>{html.escape(str(x))}</th>"
        for i, x in enumerate(headers)
    )
    body = ""
    for r in rows:
        body += (
            "<tr>"
            + "".join(
                (
                    f"<td class='l'>{html.escape(str(x))}</td>"
                    if i == 0
                    else f"<td>{html.escape(str(x))}</td>"
                )
                for i, x in enumerate(r)
            )
            + "</tr>"
        )
    return f"<table><tr>{h}</tr>{body}</table>"


def panels_html(panels: list[dict], class_names: Sequence[str] | None = None) -> str:
    """HTML table of sample panels (columns: image, CAM, pseudo label, prediction, GT)."""
    cols = [
        ("image", "image"),
        ("cam", "CAM"),
        ("pseudo", "pseudo label"),
        ("pred", "prediction"),
        ("gt", "ground truth"),
    ]
    cols = [c for c in cols if any(p[c[0]] is not None for p in panels)]
    head = "".join(f"<th>{t}</th>" for _, t in cols)
    rows = ""
    for p in panels:
        tags = ", ".join(class_names[t] if class_names else str(t) for t in p["tags"])
        cells = "".join(
            f"<td><img src='{png_base64(p[k])}'></td>" if p[k] is not None else "<td>-</td>"
            for k, _ in cols
        )
        rows += (
            f"<tr>{cells}</tr><tr><td colspan='{len(cols)}' class='l'>"
            f"{html.escape(os.path.basename(p['file_name']))} — tags: "
            f"{html.escape(tags)}</td></tr>"
        )
    legend = ""
    if class_names:
        spans = []
        for i, n in enumerate(class_names):
            r, g, b = (int(v) for v in _PALETTE[i])
            ink = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 110 else "#fff"  # readable text
            spans.append(
                f"<span style='background:rgb({r},{g},{b});color:{ink}'>" f"{html.escape(n)}</span>"
            )
        legend = "<div class='legend'>" + "".join(spans) + "</div>"
    return f"{legend}<table class='panels'><tr>{head}</tr>{rows}</table>"


def _stage_cfg(pipe, stage):
    return get_wsss_cfg(stage.config, pipe.stage_opts(stage))


def write_pipeline_report(pipe, summaries: list[dict], num_samples: int = 6) -> str:
    """Write ``report.html`` for a pipeline run into its OUTPUT_DIR; returns its path."""
    parts = [
        f"<h1>wsss_d2 pipeline report</h1><p>pipeline: {html.escape(pipe.source)}<br>"
        f"output: {html.escape(os.path.abspath(pipe.output_dir))}</p>"
    ]
    rows = summary_rows(summaries, digits=2, config=True)
    parts.append(
        "<h2>Stages</h2>"
        + _table(["stage", "kind", "config", "metric", "mIoU %", "status", "seconds"], rows)
    )

    # per-class IoU: one row per class, one column per stage (and task) that reports them
    columns, per_class = [], {}
    for s in summaries:
        for k, v in s["results"].items():
            if "/IoU-" not in k:
                continue
            task, cls = k.split("/IoU-", 1)
            col = f"{s['name']} ({task})"
            if col not in columns:
                columns.append(col)
            per_class.setdefault(cls, {})[col] = v
    if columns:
        rows = [
            [cls] + [f"{vals[c]:.1f}" if c in vals else "-" for c in columns]
            for cls, vals in per_class.items()
        ]
        parts.append("<h2>Per-class IoU (%)</h2>" + _table(["class", *columns], rows))

    # training curves
    for s in summaries:
        if s["kind"] != "train":
            continue
        img = loss_plot_base64(os.path.join(s["folder"], "metrics.json"), s["name"])
        if img:
            parts.append(f"<h2>{html.escape(s['name'])}: training losses</h2><img src='{img}'>")

    # sample panels: CAM model, latest round, last segmentor, on the round's images
    try:
        parts.append(_samples_section(pipe, summaries, num_samples))
    except Exception as e:  # a report must not fail a finished pipeline
        logger.exception("sample panels skipped")
        parts.append(f"<h2>Samples</h2><p>skipped: {html.escape(str(e))}</p>")

    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>wsss_d2 report</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    path = os.path.join(pipe.output_dir, "report.html")
    atomic_write_bytes(path, doc.encode())
    logger.info("report written to %s", path)
    return path


def _samples_section(pipe, summaries, num_samples) -> str:
    by_name = {s.name: s for s in pipe.stages}
    cam_stage = seg_stage = round_stage = None
    for s in summaries:
        st = by_name[s["name"]]
        if st.kind in ("pseudo_labels", "sam_labels"):
            round_stage = st
        elif st.kind == "train":
            cfg = _stage_cfg(pipe, st)
            if issubclass(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE), CAMClassifier):
                cam_stage = cam_stage or st
            else:
                seg_stage = st
    ref = round_stage or cam_stage or seg_stage
    if ref is None:
        return ""
    cfg = _stage_cfg(pipe, ref)
    name = cfg.DATASETS.TRAIN[0]
    dicts = DatasetCatalog.get(name)[:num_samples]
    meta = MetadataCatalog.get(name)

    def model_of(st):
        if st is None:
            return None, None
        c = _stage_cfg(pipe, st)
        w = os.path.join(pipe.stage_dir(st.name), "model_final.pth")
        if not os.path.isfile(w):
            return None, None
        return load_model(st.config, pipe.stage_opts(st) + ["MODEL.DEVICE", "cpu"], w)[1], c

    cam_model, cam_cfg = model_of(cam_stage)
    seg_model, seg_cfg = model_of(seg_stage)
    mapper = build_mapper(cam_cfg or seg_cfg or cfg, False)
    round_dir = pipe.round_of(round_stage.name) if round_stage else None
    panels = sample_panels(dicts, cam_model, seg_model, mapper, round_dir)
    what = ", ".join(
        f"{t}: {s.name}"
        for t, s in (("CAM", cam_stage), ("pseudo label", round_stage), ("prediction", seg_stage))
        if s
    )
    return f"<h2>Samples ({html.escape(name)}; {html.escape(what)})</h2>" + panels_html(
        panels, getattr(meta, "stuff_classes", None)
    )


def write_visualization(
    dataset: str,
    output: str,
    num: int = 8,
    cam: tuple[str, str] | None = None,
    seg: tuple[str, str] | None = None,
    round_dir: str | None = None,
) -> str:
    """Panels of the first ``num`` images of ``dataset`` into one HTML file ``output``, plus one
    PNG per image and column in ``<output stem>_files/``.

    ``cam`` / ``seg``: ``(config file, weights)`` of a CAM model / segmentor (run on CPU);
    ``round_dir``: a pseudo-label round folder. Every source is optional. Returns ``output``.
    """
    cam_model = seg_model = mapper = None
    if cam:
        cfg, cam_model = load_model(cam[0], ["MODEL.DEVICE", "cpu"], cam[1])
        mapper = build_mapper(cfg, False)
    if seg:
        cfg, seg_model = load_model(seg[0], ["MODEL.DEVICE", "cpu"], seg[1])
        mapper = mapper or build_mapper(cfg, False)
    dicts = DatasetCatalog.get(dataset)[:num]
    panels = sample_panels(dicts, cam_model, seg_model, mapper, round_dir or None)
    files = os.path.splitext(output)[0] + "_files"
    os.makedirs(files, exist_ok=True)
    for i, p in enumerate(panels):
        for key in ("image", "cam", "pseudo", "pred", "gt"):
            if p[key] is not None:
                ok, buf = cv2.imencode(".png", cv2.cvtColor(p[key], cv2.COLOR_RGB2BGR))
                atomic_write_bytes(os.path.join(files, f"{i:03d}_{key}.png"), buf.tobytes())
    body = panels_html(panels, getattr(MetadataCatalog.get(dataset), "stuff_classes", None))
    doc = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{dataset}</title>"
        f"<style>{_CSS}</style></head><body><h1>{dataset}</h1>{body}</body></html>"
    )
    atomic_write_bytes(output, doc.encode())
    logger.info("wrote %s and %s", output, files)
    return output
