"""The pipeline's HTML report, and ``tools/visualize.py``'s panels.

``report.html`` (one self-contained file, images inlined) answers what a WSSS run is judged by:
the stages side by side on one axis (CAM -> pseudo labels -> segmentor -> retraining), per-class
IoU of every stage (pseudo-label stages included), the pseudo labels' precision / recall and
unsure share, the CAMs' background-threshold curve, every label round, confusion matrices,
training losses, samples of the training set (CAM, every round, prediction, ground truth) and of
the validation set with each image's IoU, including the worst images. Stage folders are
resolved to absolute paths, so the report can be written from any working directory.
"""

from __future__ import annotations

import glob
import html
import json
import logging
import os

import cv2
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..config import get_wsss_cfg
from ..data.mappers import build_mapper
from ..io.files import atomic_write_bytes, read_json
from ..io.rounds import list_complete_rounds, read_manifest
from .pipeline import primary_metric, summary_rows
from .report_charts import (
    confusion_base64,
    loss_plot_base64,
    stage_chart_base64,
    threshold_curve_base64,
)
from .report_html import html_table, page, panels_html
from .report_samples import (
    is_cam_model,
    is_seg_model,
    load_model,
    pick_samples,
    read_per_image,
    sample_panels,
)

logger = logging.getLogger(__name__)

__all__ = ["write_pipeline_report", "write_visualization", "per_class_columns"]

_LABEL_KINDS = ("pseudo_labels", "sam_labels")


def _task_of(key: str) -> tuple[str, str] | None:
    """``"cam/IoU-dog"`` -> ("cam", "dog"); a pseudo-label stage's flat ``"IoU-dog"`` ->
    ("pseudo_seg", "dog")."""
    if "/IoU-" in key:
        task, cls = key.split("/IoU-", 1)
        return task, cls
    if key.startswith("IoU-"):
        return "pseudo_seg", key[4:]
    return None


def per_class_columns(summaries: list[dict]) -> tuple[list[str], dict]:
    """Columns ``"<stage> (<task>)"`` and ``{class: {column: IoU}}`` of every stage."""
    columns, per_class = [], {}
    for s in summaries:
        for k, v in s["results"].items():
            found = _task_of(k)
            if found is None:
                continue
            col = f"{s['name']} ({found[0]})"
            if col not in columns:
                columns.append(col)
            per_class.setdefault(found[1], {})[col] = v
    return columns, per_class


def _fmt(v, digits: int = 1) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _stage_cfg(pipe, stage):
    return get_wsss_cfg(stage.config, pipe.stage_opts(stage))


def _stages_section(pipe, summaries) -> str:
    rows = summary_rows(summaries, digits=2, config=True)
    out = "<h2>Stages</h2>" + html_table(
        ["stage", "kind", "config", "metric", "mIoU %", "status", "seconds"], rows
    )
    points = []
    for s in summaries:
        m = primary_metric(s["results"])
        if m:
            task = m[0].split("/")[0] if "/" in m[0] else "pseudo_seg"
            points.append((s["name"], task, m[1]))
    chart = stage_chart_base64(points)
    if chart:
        out += (
            "<h2>Stage comparison</h2><p class='note'>Each stage's main number in pipeline "
            "order: CAMs (best background threshold), pseudo labels (unsure pixels count as "
            "errors), segmentors, retraining. Stages are scored on their own evaluation sets "
            f"(see the configs).</p><img src='{chart}'>"
        )
    return out


def _quality_sections(summaries) -> str:
    out = ""
    columns, per_class = per_class_columns(summaries)
    if columns:
        rows = [[c] + [_fmt(v.get(col)) for col in columns] for c, v in per_class.items()]
        out += "<h2>Per-class IoU (%)</h2>" + html_table(["class", *columns], rows)
    labels = [s for s in summaries if s["kind"] in _LABEL_KINDS and s["results"]]
    if labels:
        rows, head = [], ["stage", "mIoU", "mIoU labeled", "unsure %", "mPrecision", "mRecall"]
        for s in labels:
            r = {k.split("/", 1)[-1]: v for k, v in s["results"].items()}
            unsure = r.get("ignored_fraction", r.get("ignored_pixel_fraction"))
            rows.append([s["name"], _fmt(r.get("mIoU")), _fmt(r.get("mIoU_labeled")),
                         _fmt(100 * unsure if unsure is not None else None),
                         _fmt(r.get("mPrecision")), _fmt(r.get("mRecall", r.get("mACC")))])  # fmt: skip
        per = [[c] for c in per_class]
        cols = []
        for s in labels:
            r = {k.split("/", 1)[-1]: v for k, v in s["results"].items()}
            cols += [f"{s['name']} P", f"{s['name']} R"]
            for row in per:
                row += [_fmt(r.get(f"PREC-{row[0]}")),
                        _fmt(r.get(f"REC-{row[0]}", r.get(f"ACC-{row[0]}")))]  # fmt: skip
        out += (
            "<h2>Pseudo-label precision / recall (%)</h2><p class='note'>Precision over the "
            "labelled pixels; recall over every ground-truth pixel (unsure pixels are misses)."
            "</p>" + html_table(head, rows) + html_table(["class", *cols], per)
        )
    curves = {}
    for s in summaries:
        pts = [(float(k.split("@")[1]), v) for k, v in s["results"].items() if "/mIoU@" in k]
        if pts:
            curves[s["name"]] = pts
    chart = threshold_curve_base64(curves)
    if chart:
        out += f"<h2>CAM background threshold</h2><img src='{chart}'>"
    return out


def _rounds_of(pipe, stage, cfg) -> list[tuple[int, str]]:
    roots = {cfg.WSSS.PSEUDO.ROOT or os.path.join(pipe.stage_dir(stage.name), "pseudo_labels")}
    roots.add(cfg.WSSS.SAM.OUTPUT_ROOT or os.path.join(pipe.stage_dir(stage.name), "pseudo_labels"))
    return sorted({r for root in roots for r in list_complete_rounds(root)})


def _round_metrics(pipe, stage, k: int, folder: str) -> dict:
    for path in (
        os.path.join(pipe.stage_dir(stage.name), f"pseudo_round_{k:02d}.json"),
        os.path.join(
            os.path.dirname(folder), f"eval_round_{k:02d}", "pseudo_label_evaluation.json"
        ),
    ):
        data = read_json(path)
        if data is not None:
            return data.get("metrics", data)
    return read_manifest(folder).get("scores", {}).get("sem_seg", {})


def _rounds_section(pipe, summaries) -> tuple[str, list[tuple[str, str]]]:
    rows, rounds = [], []
    by_name = {s.name: s for s in pipe.stages}
    for s in summaries:
        st = by_name[s["name"]]
        for k, folder in _rounds_of(pipe, st, _stage_cfg(pipe, st)):
            man, m = read_manifest(folder), _round_metrics(pipe, st, k, folder)
            rows.append([st.name, k, man.get("num_images", "-"),
                         _fmt(100 * man.get("ignored_fraction", float("nan"))), _fmt(m.get("mIoU")),
                         _fmt(m.get("mPrecision")), _fmt(m.get("mRecall", m.get("mACC"))),
                         os.path.abspath(folder)])  # fmt: skip
            rounds.append((f"{st.name} round {k}", folder))
    if not rows:
        return "", rounds
    head = ["stage", "round", "images", "unsure %", "mIoU", "mPrecision", "mRecall", "folder"]
    return "<h2>Label rounds</h2>" + html_table(head, rows), rounds


def _confusion_section(pipe, summaries) -> str:
    figs = []
    for s in summaries:
        folder = pipe.stage_dir(s["name"])
        for path in sorted(
            glob.glob(os.path.join(folder, "**", "*_confusion.json"), recursive=True)
        ):
            with open(path) as f:
                data = json.load(f)
            what = os.path.basename(path)[: -len("_confusion.json")]
            where = os.path.basename(os.path.dirname(path))
            title = f"{s['name']}: {what}" + (f" ({where})" if where != s["name"] else "")
            figs.append(f"<figure><img src='{confusion_base64(data, title)}'></figure>")
    if not figs:
        return ""
    return (
        "<h2>Confusion matrices</h2><p class='note'>Rows: ground truth, normalised to 100 %; "
        "columns: prediction (and unsure for pseudo labels).</p><div class='grid'>"
        + "".join(figs) + "</div>"
    )  # fmt: skip


def _stage_model(pipe, stage):
    """(cfg, model on CPU) of a train / evaluate stage with weights, else (None, None)."""
    cfg = _stage_cfg(pipe, stage)
    cfg.MODEL.DEVICE = "cpu"
    w = os.path.join(pipe.stage_dir(stage.name), "model_final.pth")
    w = w if stage.kind == "train" else cfg.MODEL.WEIGHTS
    if not w or not os.path.isfile(w):
        return None, None
    return cfg, load_model(cfg, w)


def _samples_sections(pipe, summaries, rounds, num_samples, worst_k) -> str:
    by_name = {s.name: s for s in pipe.stages}
    run = [by_name[s["name"]] for s in summaries]
    models = [st for st in run if st.kind in ("train", "evaluate")]
    cam_st = next((st for st in models if is_cam_model(_stage_cfg(pipe, st))), None)
    seg_st = next((st for st in reversed(models) if is_seg_model(_stage_cfg(pipe, st))), None)
    cam_cfg, cam_model = _stage_model(pipe, cam_st) if cam_st else (None, None)
    seg_cfg, seg_model = _stage_model(pipe, seg_st) if seg_st else (None, None)
    ref = next((st for st in run if st.kind in _LABEL_KINDS), cam_st or seg_st)
    if ref is None:
        return ""
    cfg = cam_cfg or seg_cfg or _stage_cfg(pipe, ref)
    mapper, k1 = build_mapper(cfg, False), cfg.INPUT.TAGS.NUM_CLASSES + 1
    out = ""
    train = _stage_cfg(pipe, ref).DATASETS.TRAIN[0]
    names = MetadataCatalog.get(train).get("stuff_classes")
    panels = sample_panels(
        DatasetCatalog.get(train)[:num_samples], cam_model, seg_model, mapper, rounds, k1
    )
    what = ", ".join(f"{t}: {s.name}" for t, s in (("CAM", cam_st), ("prediction", seg_st)) if s)
    out += f"<h2>Samples: training set ({html.escape(train)}; {html.escape(what)})</h2>"
    out += panels_html(panels, names)
    val_st = seg_st or cam_st
    val_cfg = _stage_cfg(pipe, val_st) if val_st else None
    if val_cfg is None or not val_cfg.DATASETS.TEST:
        return out
    val = val_cfg.DATASETS.TEST[0]
    inference = os.path.join(pipe.stage_dir(val_st.name), "inference", val)
    scores = read_per_image(os.path.join(inference, "sem_seg_per_image.json"))
    first, worst = pick_samples(DatasetCatalog.get(val), scores, num_samples, worst_k)
    names = MetadataCatalog.get(val).get("stuff_classes")
    out += (
        f"<h2>Samples: validation set ({html.escape(val)}; scores of {html.escape(val_st.name)}"
        f"'s evaluation)</h2>"
        + panels_html(sample_panels(first, cam_model, seg_model, mapper, (), k1, scores), names)
    )
    if worst:
        out += f"<h3>The {len(worst)} worst images by mIoU</h3>" + panels_html(
            sample_panels(worst, cam_model, seg_model, mapper, (), k1, scores), names
        )
    return out


def write_pipeline_report(pipe, summaries: list[dict], num_samples: int = 6, worst_k: int = 4):
    """Write ``report.html`` for a pipeline run into its OUTPUT_DIR; returns its path."""
    parts = [
        f"<h1>wsss_d2 pipeline report</h1><p>pipeline: {html.escape(pipe.source)}<br>"
        f"output: {html.escape(os.path.abspath(pipe.output_dir))}</p>",
        _stages_section(pipe, summaries),
        _quality_sections(summaries),
    ]
    rounds_html, rounds = _rounds_section(pipe, summaries)
    parts += [rounds_html, _confusion_section(pipe, summaries)]
    for s in summaries:
        if s["kind"] == "train":
            img = loss_plot_base64(
                os.path.join(pipe.stage_dir(s["name"]), "metrics.json"), s["name"]
            )
            if img:
                parts.append(f"<h2>{html.escape(s['name'])}: training losses</h2><img src='{img}'>")
    try:
        parts.append(_samples_sections(pipe, summaries, rounds, num_samples, worst_k))
    except Exception as e:  # a report must not fail a finished pipeline
        logger.exception("sample panels skipped")
        parts.append(f"<h2>Samples</h2><p>skipped: {html.escape(str(e))}</p>")
    path = os.path.join(pipe.output_dir, "report.html")
    atomic_write_bytes(path, page("wsss_d2 report", "".join(parts)).encode())
    logger.info("report written to %s", path)
    return path


def write_visualization(
    dataset: str,
    output: str,
    num: int = 8,
    model_cfg=None,
    seg_cfg=None,
    round_dir: str | None = None,
) -> str:
    """Panels of the first ``num`` images of ``dataset`` into one HTML file ``output``, plus one
    PNG per image and column in ``<output stem>_files/``.

    ``model_cfg``: a config whose model (CAM model or segmentor, by its meta-architecture) is
    loaded from its ``MODEL.WEIGHTS`` on its ``MODEL.DEVICE``; ``seg_cfg``: a segmentor's, shown
    too; ``round_dir``: a pseudo-label round folder. Every source is optional.
    """
    cam_model = seg_model = mapper = None
    for cfg in (c for c in (model_cfg, seg_cfg) if c is not None):
        model = load_model(cfg)
        if is_cam_model(cfg) and cam_model is None:
            cam_model = model
        else:
            seg_model = model
        mapper = mapper or build_mapper(cfg, False)
    rounds = [("pseudo label", round_dir)] if round_dir else []
    panels = sample_panels(DatasetCatalog.get(dataset)[:num], cam_model, seg_model, mapper, rounds)
    files = os.path.splitext(output)[0] + "_files"
    os.makedirs(files, exist_ok=True)
    for i, p in enumerate(panels):
        for title, rgb in p["columns"].items():
            if rgb is not None:
                ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                key = title.replace(" ", "_").lower()
                atomic_write_bytes(os.path.join(files, f"{i:03d}_{key}.png"), buf.tobytes())
    body = f"<h1>{html.escape(dataset)}</h1>" + panels_html(
        panels, MetadataCatalog.get(dataset).get("stuff_classes")
    )
    atomic_write_bytes(output, page(dataset, body).encode())
    logger.info("wrote %s and %s", output, files)
    return output
