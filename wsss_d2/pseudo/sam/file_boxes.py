"""Boxes from files, e.g. an open-vocabulary detector's output, and text labels -> classes.

:class:`FileBoxSource`: one JSON file per image, e.g. the output of an open-vocabulary
  detector (Grounding-DINO style). Format::

      [{"label": "dog", "box": [x0, y0, x1, y1], "score": 0.81}, ...]

  or ``{"box_format": "xyxy" | "xywh" | "cxcywh_norm", "boxes": [...same entries...]}``.
  ``xyxy``/``xywh`` are absolute pixels of the original image; ``cxcywh_norm`` is
  Grounding-DINO's raw output (centre and size divided by the image width/height). ``label`` is
  a text phrase mapped to a class by name (case, spaces and ``_`` ignored, a trailing
  ``"(0.43)"`` logit suffix dropped), by the class's assist words, or by an explicit name map;
  an integer ``category_id`` (1..K) may be given instead. ``score`` defaults to 1.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Sequence

import numpy as np
from detectron2.config import configurable
from detectron2.utils.file_io import PathManager

from ...io.files import safe_join
from ...io.rounds import label_stem
from .boxes import BOX_SOURCE_REGISTRY, BoxSource, ImageBoxes

logger = logging.getLogger(__name__)

__all__ = ["FileBoxSource", "ClassNameMapper"]


def _norm(text: str) -> str:
    return re.sub(r"[\s_\-]+", "", text.strip().lower())


def _parse_word_map(entries: Sequence[str], key: str) -> dict[str, list[str]]:
    """Parse ``("class:word one,word two", ...)`` config entries into ``{class: [words]}``."""
    out: dict[str, list[str]] = {}
    for e in entries:
        if ":" not in e:
            raise ValueError(f"{key} entry '{e}' must look like 'class_name:word,word'")
        cls, words = e.split(":", 1)
        out.setdefault(cls.strip(), []).extend(w.strip() for w in words.split(",") if w.strip())
    return out


class ClassNameMapper:
    """Map a text label of a box (a detector phrase) to a class id in 1..K.

    A class is matched by its own name, by its text name (``CLASS_TEXT``: how the class is
    written in a text prompt, e.g. ``diningtable -> dining table``), or by one of its assist
    words (``ASSIST_WORDS``: extra prompt words whose boxes count as the class, as the study does
    for "horse: halter, saddle" and "diningtable: bowl, plate, food"). Matching ignores case,
    spaces, ``_`` and ``-``.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        class_text: Sequence[str] = (),
        assist_words: Sequence[str] = (),
    ):
        self.class_names = list(class_names)
        index = {n: i + 1 for i, n in enumerate(self.class_names)}
        self.text = {n: n for n in self.class_names}
        for cls, words in _parse_word_map(class_text, "WSSS.SAM.CLASS_TEXT").items():
            if cls not in index:
                raise ValueError(f"WSSS.SAM.CLASS_TEXT names unknown class '{cls}'")
            self.text[cls] = words[0]
        self.assist = {n: [] for n in self.class_names}
        for cls, words in _parse_word_map(assist_words, "WSSS.SAM.ASSIST_WORDS").items():
            if cls not in index:
                raise ValueError(f"WSSS.SAM.ASSIST_WORDS names unknown class '{cls}'")
            self.assist[cls].extend(words)
        self._lookup: dict[str, int] = {}
        for n, k in index.items():  # assist words first, so a class name always wins
            for w in self.assist[n]:
                self._lookup.setdefault(_norm(w), k)
        for n, k in index.items():
            self._lookup[_norm(n)] = k
            self._lookup[_norm(self.text[n])] = k
        # words of each multi-word class text, for detector phrases that ground only part of it
        self._words = {k: set(self.text[n].lower().split()) for n, k in index.items()}

    def __call__(self, label: str) -> int | None:
        """Class id of ``label`` or None.

        An exact match (after normalisation) first; otherwise the one class whose text contains
        every word of the label ("potted" -> "potted plant", as the study maps a grounded
        sub-word to its parent class); None when no class, or several, fit.
        """
        label = re.sub(r"\(\s*[-+0-9.eE]+\s*\)\s*$", "", str(label))  # "dog(0.43)" -> "dog"
        k = self._lookup.get(_norm(label))
        if k is not None:
            return k
        words = set(label.lower().split())
        fits = [c for c, ws in self._words.items() if words and words <= ws]
        return fits[0] if len(fits) == 1 else None

    def prompts(self, tags: Sequence[int]) -> list[str]:
        """Text prompts of an image's tags (class text + assist words): what to feed a detector."""
        out = []
        for k in tags:
            name = self.class_names[int(k) - 1]
            out.append(self.text[name])
            out.extend(self.assist[name])
        return out


_BOX_FORMATS = ("xyxy", "xywh", "cxcywh_norm")


@BOX_SOURCE_REGISTRY.register()
class FileBoxSource(BoxSource):
    """Boxes from ``<box_dir>/<stem>.json`` files (see the module docstring for the format).

    A label that maps to no class is skipped and logged (counted in ``last_unmatched``). An
    image without a file is an error: write ``[]`` for an image where the detector found
    nothing.
    """

    @configurable
    def __init__(
        self,
        class_names: Sequence[str],
        box_dir: str,
        class_text: Sequence[str] = (),
        assist_words: Sequence[str] = (),
        min_score: float = 0.0,
        only_tagged: bool = True,
    ):
        super().__init__(only_tagged=only_tagged, min_score=min_score)
        self.box_dir = box_dir
        self.mapper = ClassNameMapper(class_names, class_text, assist_words)
        self.last_unmatched = 0

    @classmethod
    def from_config(cls, cfg, class_names):
        s = cfg.WSSS.SAM
        return {
            "class_names": class_names,
            "box_dir": s.BOX_DIR,
            "class_text": s.CLASS_TEXT,
            "assist_words": s.ASSIST_WORDS,
            "min_score": s.BOX_MIN_SCORE,
            "only_tagged": s.ONLY_TAGGED,
        }

    def get_boxes(self, d: dict) -> ImageBoxes:
        # named like the image's label file: sub-folder images of the same name get their own
        path = safe_join(self.box_dir, label_stem(d) + ".json", "box file")
        try:
            with PathManager.open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"FileBoxSource: no box file {path} for image {d['file_name']} (write [] for an "
                "image without detections)"
            ) from None
        except json.JSONDecodeError as e:
            raise ValueError(f"FileBoxSource: {path} is not valid JSON: {e}") from e
        fmt = "xyxy"
        if isinstance(data, dict):
            fmt = data.get("box_format", "xyxy")
            data = data.get("boxes", [])
        if fmt not in _BOX_FORMATS or not isinstance(data, list):
            raise ValueError(f"{path}: box_format must be one of {_BOX_FORMATS} and boxes a list")
        h, w = float(d["height"]), float(d["width"])
        boxes, classes, scores, labels = [], [], [], []
        self.last_unmatched = 0
        for i, e in enumerate(data):
            try:
                b = [float(v) for v in e["box"]]
                if len(b) != 4:
                    raise ValueError
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: entry {i} needs 'box': [4 numbers], got {e}") from None
            if "category_id" in e:
                k = int(e["category_id"])
                label = str(e.get("label", k))
            else:
                label = str(e.get("label", ""))
                k = self.mapper(label)
            if k is None or not 0 < k <= len(self.mapper.class_names):
                self.last_unmatched += 1
                logger.info("%s: label '%s' matches no class; box skipped", path, label)
                continue
            if fmt == "xywh":
                b = [b[0], b[1], b[0] + b[2], b[1] + b[3]]
            elif fmt == "cxcywh_norm":
                cx, cy, bw, bh = b[0] * w, b[1] * h, b[2] * w, b[3] * h
                b = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
            boxes.append(b)
            classes.append(k)
            scores.append(float(e.get("score", 1.0)))
            labels.append(label)
        return ImageBoxes(np.asarray(boxes, np.float32), classes, scores, None, labels)
