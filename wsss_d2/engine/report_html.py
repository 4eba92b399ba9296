"""HTML pieces of the reports: colours, inlined PNGs, tables, the class legend, sample panels."""

from __future__ import annotations

import base64
import html
import os
from typing import Sequence

import cv2
import numpy as np

from ..io.files import IGNORE_LABEL, voc_palette

__all__ = [
    "colorize_label",
    "cam_overlay",
    "png_base64",
    "html_table",
    "legend_html",
    "panels_html",
    "page",
]

_PALETTE = np.array(voc_palette(256), np.uint8)

CSS = """
body{font-family:sans-serif;margin:24px;color:#222;max-width:1500px} h1{font-size:22px}
h2{font-size:18px;margin-top:30px;border-bottom:1px solid #ddd} h3{font-size:15px}
p.note{color:#555;font-size:13px;max-width:1000px} table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}
th{background:#f2f2f2} td.l,th.l{text-align:left} td.worst{background:#fde8e8}
.panels td{text-align:center;vertical-align:top;font-size:12px} .panels img{display:block}
.legend span{display:inline-block;padding:1px 6px;margin:2px;font-size:12px;border:1px solid #999}
.grid{display:flex;flex-wrap:wrap;gap:12px} .grid figure{margin:0} figcaption{font-size:12px}
"""


def colorize_label(label: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) RGB in VOC colours (255 = ignore is near-white)."""
    return _PALETTE[label.astype(np.uint8)]


def cam_overlay(image_rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Jet heat-map of ``cam`` (H, W in [0, 1]) blended over an RGB image."""
    heat = cv2.applyColorMap((np.clip(cam, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    return (alpha * heat + (1 - alpha) * image_rgb).astype(np.uint8)


def png_base64(rgb: np.ndarray, min_side: int = 160, max_side: int = 320) -> str:
    """RGB array -> ``data:`` URI of a PNG: small images upscaled (nearest) so they stay
    visible, large ones downscaled so that a report of real photos stays light."""
    h, w = rgb.shape[:2]
    f = max(1, int(np.ceil(min_side / max(1, min(h, w)))))
    if f > 1:
        rgb = cv2.resize(rgb, (w * f, h * f), interpolation=cv2.INTER_NEAREST)
    elif max(h, w) > max_side:
        s = max_side / max(h, w)
        rgb = cv2.resize(rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_NEAREST)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def html_table(headers: Sequence, rows: Sequence[Sequence], marked: Sequence[int] = ()) -> str:
    """A table whose first column is left-aligned; rows with index in ``marked`` are shaded."""
    esc = lambda x: html.escape(str(x))  # noqa: E731
    head = "".join(
        f"<th{' class=l' if i == 0 else ''}>{esc(h)}</th>" for i, h in enumerate(headers)
    )
    body = ""
    for n, r in enumerate(rows):
        cls = " class=worst" if n in marked else ""
        cells = "".join(f"<td{' class=l' if i == 0 else ''}>{esc(x)}</td>" for i, x in enumerate(r))
        body += f"<tr{cls}>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _chip(rgb, text: str) -> str:
    r, g, b = (int(v) for v in rgb)
    ink = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 110 else "#fff"  # readable text
    return f"<span style='background:rgb({r},{g},{b});color:{ink}'>{html.escape(text)}</span>"


def legend_html(class_names: Sequence[str] | None) -> str:
    """One colour chip per class (background first) and one for ignored pixels (255)."""
    if not class_names:
        return ""
    chips = [_chip(_PALETTE[i], n) for i, n in enumerate(class_names)]
    chips.append(_chip(_PALETTE[IGNORE_LABEL], f"ignore / unsure ({IGNORE_LABEL})"))
    return "<div class='legend'>" + "".join(chips) + "</div>"


def panels_html(panels: list[dict], class_names: Sequence[str] | None = None) -> str:
    """Rows of images: ``panels[i]["columns"]`` maps a column title to an RGB array (or None);
    a caption row gives the file name, its tags and, when known, ``panels[i]["note"]``."""
    if not panels:
        return ""
    titles = []
    for p in panels:
        titles += [t for t, img in p["columns"].items() if img is not None and t not in titles]
    head = "".join(f"<th>{html.escape(t)}</th>" for t in titles)
    rows = ""
    for p in panels:
        cells = "".join(
            (
                f"<td><img src='{png_base64(p['columns'][t])}'></td>"
                if p["columns"].get(t) is not None
                else "<td>-</td>"
            )
            for t in titles
        )
        names = [class_names[t] if class_names else str(t) for t in p.get("tags", [])]
        note = f" — {html.escape(p['note'])}" if p.get("note") else ""
        rows += (
            f"<tr>{cells}</tr><tr><td colspan='{len(titles)}' class='l'>"
            f"{html.escape(os.path.basename(p['file_name']))} — tags: "
            f"{html.escape(', '.join(names))}{note}</td></tr>"
        )
    return f"{legend_html(class_names)}<table class='panels'><tr>{head}</tr>{rows}</table>"


def page(title: str, body: str) -> str:
    """A complete self-contained HTML document."""
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>"
    )
