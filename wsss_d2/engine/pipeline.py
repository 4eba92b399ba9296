"""A resumable multi-stage WSSS pipeline made of ordinary Detectron2 runs.

A pipeline config (plain YAML, ``configs/pipelines/*.yaml``) lists stages; each is a normal run
of one of the project's tools in its own sub-folder of ``OUTPUT_DIR``::

    OUTPUT_DIR: output/pipeline_toy
    STAGES:
      - {name: cam, kind: train, config: configs/cam_toy.yaml}
      - {name: labels, kind: pseudo_labels, config: configs/pseudo_toy.yaml, weights_from: cam}
      - {name: deeplab, kind: train, config: configs/deeplabv2_toy.yaml, round_from: labels}
      - {name: deeplab_eval, kind: evaluate, config: configs/deeplabv2_toy.yaml,
         weights_from: deeplab, opts: [DATASETS.TEST, "('toyparts_val',)"]}

Kinds: ``train`` (tools/train_net.py), ``evaluate`` (train_net ``--eval-only``),
``pseudo_labels`` (tools/make_pseudo_labels.py), ``sam_labels`` (tools/make_sam_labels.py),
``gt_labels`` (tools/make_gt_round.py: the ground-truth masks as a round, for the fully
supervised ceiling of a segmentor trained with ``round_from`` it).
``weights_from`` sets ``MODEL.WEIGHTS`` to that stage's ``model_final.pth``; ``round_from`` sets
``WSSS.PSEUDO.TRAIN_ROUND`` to that stage's latest complete pseudo-label round; ``cams_from`` sets
``WSSS.PSEUDO.CAM_DIR`` to the CAM folder that stage's latest round was made from (its manifest's
``cam_dir``); ``opts`` are extra ``KEY VALUE`` overrides, after the pipeline's own ``OPTS`` (the
same overrides for every stage, e.g. another dataset: ``OPTS: [DATASETS.TRAIN, ...]``).
``weights_from`` and ``round_from`` may name a list of stages: the one whose primary metric
(:func:`primary_metric`) is highest is taken, the first on a tie (``round_from: [labels_cam,
labels_plda]``: train on the better pseudo labels). ``choose_by``, a list of earlier stages as long
as those lists, ranks the candidates by *its* stages' metrics instead: ``round_from: [labels,
irn_labels], choose_by: [deeplab_labels, deeplab_irn]`` takes the round whose segmentor scored
higher (e.g. on the train masks: a round's own mIoU does not say how well a segmentor learns from
it). ``tools/run_pipeline.py --jobs N`` runs
independent stages side by side (:mod:`wsss_d2.engine.pipeline_jobs`). A pipeline file with
``_BASE_: <another pipeline file>`` adds stages to that one (:mod:`.pipeline_spec`).

IRN (``configs/irn_*.yaml``) is two stages after a CAM labelling stage ``labels`` (the CRF band,
which also leaves the CAM files): ``{name: irn, kind: train, config: configs/irn_toy.yaml,
weights_from: cam, round_from: labels}`` trains IRNet on the band, and ``{name: irn_labels, kind:
pseudo_labels, config: configs/irn_toy.yaml, weights_from: irn, cams_from: labels}`` walks the
same CAMs with its boundaries.

Completion and resume: a stage is complete when its folder holds ``stage_done.json`` whose hash
matches the stage's current hash — the merged Detectron2 config of the stage (``_BASE_`` files and
overrides included), its kind, and the hashes of the stages it reads from. ``--resume`` skips
complete stages, resumes an interrupted one (train stages from their last checkpoint, label stages
from their last finished image) and re-runs a stage whose hash changed — and so every stage after
it that reads from it — after moving its old folder aside to ``<name>.stale``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from detectron2.utils.file_io import PathManager

from ..config import get_wsss_cfg
from ..io.files import atomic_write_bytes, read_json
from ..io.locks import FolderLock
from ..io.rounds import config_hash, latest_complete_round, read_manifest
from .pipeline_jobs import run_side_by_side
from .pipeline_results import flatten_results, primary_metric, summary_rows
from .pipeline_spec import read_pipeline_spec

logger = logging.getLogger(__name__)

__all__ = [
    "Stage",
    "Pipeline",
    "load_pipeline",
    "parse_pipeline",
    "STAGE_KINDS",
    "DONE_FILE",
    "primary_metric",
    "summary_rows",
]

STAGE_KINDS = ("train", "evaluate", "pseudo_labels", "sam_labels", "gt_labels")
DONE_FILE = "stage_done.json"
STARTED_FILE = "stage_started.json"
_CHOICE_REFS = ("weights_from", "round_from")  # may name a list: the best of those stages


@dataclass
class Stage:
    name: str
    kind: str
    config: str
    opts: list = field(default_factory=list)
    weights_from: str | tuple = ""  # a tuple: the best of these stages
    round_from: str | tuple = ""
    cams_from: str = ""
    choose_by: tuple = ()  # ranks the candidates of the list-valued refs, position by position

    @property
    def inputs(self) -> tuple[str, ...]:
        """The stages whose outputs this one reads (weights, rounds, CAM folders, the metrics it
        chooses by), in that order."""
        refs = (
            *_as_tuple(self.weights_from),
            *_as_tuple(self.round_from),
            self.cams_from,
            *self.choose_by,
        )
        return tuple(n for n in refs if n)


def load_pipeline(path: str, repo_root: str | None = None) -> "Pipeline":
    """Read (``_BASE_`` files merged: :mod:`.pipeline_spec`) and validate a pipeline YAML; config
    paths are relative to ``repo_root``."""
    return parse_pipeline(read_pipeline_spec(path), path, repo_root)


def parse_pipeline(spec: dict, path: str = "", repo_root: str | None = None) -> "Pipeline":
    """Validate a pipeline spec (``{"OUTPUT_DIR": ..., "STAGES": [...]}``, as in the YAML files;
    ``path`` names it in errors) and build the :class:`Pipeline`."""
    if not isinstance(spec.get("STAGES"), list) or not spec["STAGES"]:
        raise ValueError(f"{path}: needs a non-empty STAGES list")
    unknown = set(spec) - {"OUTPUT_DIR", "OPTS", "STAGES"}
    if unknown:
        raise KeyError(
            f"{path}: unknown key(s) {sorted(unknown)}; allowed: OUTPUT_DIR, OPTS, STAGES"
        )
    common = [str(o) for o in spec.get("OPTS") or []]
    if len(common) % 2:
        raise ValueError(f"{path}: OPTS must be KEY VALUE pairs, got {common}")
    stages, seen = [], set()
    allowed = {"name", "kind", "config", "opts", *_CHOICE_REFS, "cams_from", "choose_by"}
    for i, s in enumerate(spec["STAGES"]):
        where = f"{path}: STAGES[{i}]"
        unknown = set(s) - allowed
        if unknown:
            raise KeyError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in ("name", "kind", "config"):
            if key not in s:
                raise KeyError(f"{where}: missing '{key}'")
        if s["kind"] not in STAGE_KINDS:
            raise ValueError(f"{where}: kind '{s['kind']}' is not one of {STAGE_KINDS}")
        if s["name"] in seen or "/" in s["name"] or s["name"].startswith("."):
            raise ValueError(f"{where}: stage name '{s['name']}' is repeated or not a folder name")
        refs = {}
        for ref in ("weights_from", "round_from", "cams_from", "choose_by"):
            value = s.get(ref) or ""
            if ref == "choose_by" and value and not isinstance(value, list):
                raise ValueError(f"{where}: choose_by must be a list of stage names, got {value!r}")
            if ref in (*_CHOICE_REFS, "choose_by") and isinstance(value, list):
                value = tuple(value)
            for n in _as_tuple(value) if value else ():
                if not isinstance(n, str) or n not in seen:
                    raise ValueError(f"{where}: {ref} '{n}' is not an earlier stage")
            refs[ref] = value
        refs["choose_by"] = _one_judge_per_candidate(refs, where) if refs["choose_by"] else ()
        seen.add(s["name"])
        cfg_path = s["config"]
        if repo_root and not os.path.isabs(cfg_path):
            cfg_path = os.path.join(repo_root, cfg_path)
        if not PathManager.isfile(cfg_path):
            raise FileNotFoundError(f"{where}: config file not found: {cfg_path}")
        opts = [str(o) for o in s.get("opts", [])]
        if len(opts) % 2:
            raise ValueError(f"{where}: opts must be KEY VALUE pairs, got {opts}")
        stages.append(Stage(s["name"], s["kind"], cfg_path, common + opts, **refs))
    return Pipeline(spec.get("OUTPUT_DIR", "output/pipeline"), stages, source=path)


def _as_tuple(names: str | tuple) -> tuple:
    return names if isinstance(names, tuple) else (names,)


def _one_judge_per_candidate(refs: dict, where: str) -> tuple:
    """A stage's ``choose_by``, checked: one stage per candidate of each list-valued
    ``weights_from`` / ``round_from``, in the same order."""
    judges = refs["choose_by"]
    lists = {r: refs[r] for r in _CHOICE_REFS if isinstance(refs[r], tuple)}
    if not lists:
        raise ValueError(f"{where}: choose_by needs a list-valued weights_from or round_from")
    for ref, names in lists.items():
        if len(names) != len(judges):
            raise ValueError(
                f"{where}: choose_by names {len(judges)} stages but {ref} has {len(names)} "
                "candidates; give one per candidate, in the same order"
            )
    return judges


class Pipeline:
    """Stages run in order; see the module docstring for completion and resume rules."""

    def __init__(self, output_dir: str, stages: list[Stage], source: str = ""):
        self.output_dir = output_dir
        self.stages = stages
        self.source = source
        self._hashes: dict[str, str] = {}

    @property
    def output_dir(self) -> str:
        """Absolute (a relative OUTPUT_DIR is taken from the working directory when set), so
        that stage folders in summaries and the report resolve from anywhere."""
        return self._output_dir

    @output_dir.setter
    def output_dir(self, value: str) -> None:
        self._output_dir = os.path.abspath(value)

    def stage_dir(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    # ------------------------------------------------------------------ per-stage inputs
    def stage_opts(self, stage: Stage) -> list[str]:
        """The overrides a stage runs with: its own, its inputs, its OUTPUT_DIR."""
        opts = list(stage.opts)
        if stage.weights_from:
            opts += [
                "MODEL.WEIGHTS",
                os.path.join(
                    self.stage_dir(self.best_of(stage, stage.weights_from)), "model_final.pth"
                ),
            ]
        if stage.round_from:
            opts += [
                "WSSS.PSEUDO.TRAIN_ROUND",
                self.round_of(self.best_of(stage, stage.round_from)),
            ]
        if stage.cams_from:
            opts += ["WSSS.PSEUDO.CAM_DIR", self.cams_of(stage.cams_from)]
        return opts + ["OUTPUT_DIR", self.stage_dir(stage.name)]

    def best_of(self, stage: Stage, names: str | tuple) -> str:
        """``names`` itself, or of a tuple the finished stage with the highest primary metric
        (the first on a tie); with ``stage.choose_by``, the candidate whose ``choose_by`` stage
        (same position) has the highest one."""
        if isinstance(names, str):
            return names
        judges = stage.choose_by or names
        scored = [(self._metric_of(stage, judge), name) for judge, name in zip(judges, names)]
        best = max(scored, key=lambda t: t[0])  # max keeps the first of equal scores
        how = ", ".join(
            f"{n} {v:.2f}" if j == n else f"{n} (by {j}) {v:.2f}"
            for (v, n), j in zip(scored, judges)
        )
        logger.info("stage %s: input from %s, the best of %s", stage.name, best[1], how)
        return best[1]

    def _metric_of(self, stage: Stage, name: str) -> float:
        record = self.done_record(name)
        if record is None:
            raise FileNotFoundError(
                f"stage '{stage.name}': its input stage '{name}' has not finished "
                f"({os.path.join(self.stage_dir(name), DONE_FILE)} is missing)"
            )
        m = primary_metric(record.get("results", {}))
        if m is None:
            raise ValueError(
                f"stage '{stage.name}': its input stage '{name}' reported no metric to "
                "choose by (give its config an evaluator)"
            )
        return m[1]

    def round_of(self, name: str) -> str:
        """The latest complete pseudo-label round written by stage ``name``."""
        root = os.path.join(self.stage_dir(name), "pseudo_labels")
        found = latest_complete_round(root)
        if found is None:
            raise FileNotFoundError(f"stage '{name}' has no complete pseudo-label round in {root}")
        return found[1]

    def cams_of(self, name: str) -> str:
        """The CAM folder of stage ``name``'s latest complete round (its manifest's ``cam_dir``)."""
        folder = self.round_of(name)
        cam_dir = read_manifest(folder).get("cam_dir")
        if not cam_dir:
            raise FileNotFoundError(
                f"stage '{name}': round {folder} was not made from CAM files (no cam_dir in its "
                "manifest); cams_from needs a CAM model's labelling stage"
            )
        return cam_dir

    def stage_hash(self, stage: Stage) -> str:
        """Hash of the merged config (minus paths of this run), the kind and the inputs' hashes."""
        cfg = get_wsss_cfg(stage.config, stage.opts)
        upstream = [self._hashes[n] for n in stage.inputs]
        return config_hash({"cfg": cfg.dump(), "kind": stage.kind, "inputs": upstream})

    def done_record(self, name: str) -> dict | None:
        """Stage ``name``'s ``stage_done.json`` (hash, seconds, results), None if it has none."""
        return read_json(os.path.join(self.stage_dir(name), DONE_FILE))

    def is_complete(self, stage: Stage) -> bool:
        record = self.done_record(stage.name)
        return record is not None and record.get("hash") == self._hashes[stage.name]

    def _set_aside(self, folder: str) -> None:
        stale, n = folder + ".stale", 1
        while os.path.exists(stale):  # keep every older run: the first free numbered name
            n += 1
            stale = f"{folder}.stale.{n}"
        os.rename(folder, stale)
        logger.info("moved %s (an older configuration) to %s", folder, stale)

    # ------------------------------------------------------------------ running
    def run(
        self,
        executors: dict[str, Callable[[Stage, list, bool], dict]],
        resume: bool = False,
        jobs: int = 1,
    ) -> list[dict]:
        """Run (or resume) every stage. ``executors[kind](stage, opts, resume) -> results``.

        ``jobs`` > 1 runs independent stages side by side, each in its own process (the
        executors must then pickle; :func:`~wsss_d2.engine.pipeline_jobs.run_side_by_side`).
        Returns one summary dict per stage, in the file's order: name, kind, status ("ran" |
        "skipped"), seconds, results (flattened metrics), folder.
        """
        os.makedirs(self.output_dir, exist_ok=True)
        with FolderLock(self.output_dir, "running a pipeline"):
            return self._run(executors, resume, jobs)

    def check_models(self) -> None:
        """A stage that consumes a model (evaluate, pseudo labels, SAM labels) must be given
        one: checked for every stage before the first runs, not hours later."""
        for stage in self.stages:
            if stage.kind not in ("evaluate", "pseudo_labels", "sam_labels") or stage.weights_from:
                continue
            cfg = get_wsss_cfg(stage.config, stage.opts)
            if stage.kind == "sam_labels":
                missing = not cfg.WSSS.SAM.CHECKPOINT and cfg.WSSS.SAM.MODEL_TYPE != "tiny"
                what = "WSSS.SAM.CHECKPOINT"
            else:
                missing, what = not cfg.MODEL.WEIGHTS, "MODEL.WEIGHTS"
            if missing:
                raise ValueError(
                    f"{self.source}: stage '{stage.name}' ({stage.kind}) has no model: give it "
                    f"weights_from: <an earlier train stage> or {what} in its opts"
                )

    def _run(self, executors, resume: bool, jobs: int = 1) -> list[dict]:
        self.check_models()
        if not resume:
            existing = [s.name for s in self.stages if os.path.exists(self.stage_dir(s.name))]
            if existing:
                raise FileExistsError(
                    f"{self.output_dir} already has stage folders {existing}; pass --resume to "
                    "continue (complete stages are kept) or choose another OUTPUT_DIR"
                )
        summaries: dict[str, dict] = {}
        todo = []
        for stage in self.stages:  # in order: a stage's hash holds its inputs' hashes
            self._hashes[stage.name] = h = self.stage_hash(stage)
            if self.is_complete(stage):
                logger.info("stage %s: complete (hash %s), skipped", stage.name, h)
                summaries[stage.name] = {**self.done_record(stage.name), "status": "skipped"}
            else:
                todo.append(stage)
        if jobs <= 1:
            for stage in todo:
                opts, t0 = self._begin(stage), time.time()
                results = executors[stage.kind](stage, opts, resume) or {}
                summaries[stage.name] = self._finish(stage, results, time.time() - t0)
        else:
            run_side_by_side(self, executors, resume, jobs, todo, summaries)
        ordered = [summaries[s.name] for s in self.stages]
        summary_file = os.path.join(self.output_dir, "pipeline_summary.json")
        atomic_write_bytes(summary_file, json.dumps(ordered, indent=2).encode())
        return ordered

    def _begin(self, stage: Stage) -> list[str]:
        """Make the stage's folder (an older configuration's moved aside), mark it started and
        give the overrides it runs with."""
        h = self._hashes[stage.name]
        folder = self.stage_dir(stage.name)
        started = os.path.join(folder, STARTED_FILE)
        if os.path.exists(folder):
            if (read_json(started) or {}).get(
                "hash"
            ) != h:  # a different configuration ran here: keep it aside, start anew
                self._set_aside(folder)
        os.makedirs(folder, exist_ok=True)
        atomic_write_bytes(started, json.dumps({"hash": h, "time": time.time()}).encode())
        opts = self.stage_opts(stage)
        logger.info("stage %s (%s): %s %s", stage.name, stage.kind, stage.config, " ".join(opts))
        return opts

    def _finish(self, stage: Stage, results: dict, seconds: float) -> dict:
        """Write the stage's ``stage_done.json``; its summary."""
        folder = self.stage_dir(stage.name)
        done = {
            "name": stage.name,
            "kind": stage.kind,
            "config": stage.config,
            "hash": self._hashes[stage.name],
            "seconds": round(seconds, 1),
            "results": flatten_results(results),
            "folder": folder,
        }
        atomic_write_bytes(os.path.join(folder, DONE_FILE), json.dumps(done, indent=2).encode())
        return {**done, "status": "ran"}
