"""Reading a pipeline YAML, with ``_BASE_`` inheritance.

A pipeline file may start from another one, as Detectron2 configs do::

    _BASE_: voc_mini_effnet.yaml        # relative to this file
    STAGES:                              # appended to the base's stages
      - {name: deeplab_s1, kind: train, config: configs/voc_mini/deeplabv2.yaml,
         round_from: [labels, labels_plda], opts: [SEED, 1]}

Its other top-level keys (``OUTPUT_DIR``, ``OPTS``) replace the base's. With the base's
``OUTPUT_DIR`` kept, the base's stages are the same stages (same folders, same hashes): a
finished run of the base pipeline is reused and only the added stages run.
"""

from __future__ import annotations

import os

import yaml
from detectron2.utils.file_io import PathManager

__all__ = ["read_pipeline_spec"]


def read_pipeline_spec(path: str, _children: tuple[str, ...] = ()) -> dict:
    """The pipeline spec of the YAML file ``path``, its ``_BASE_`` chain merged in."""
    with PathManager.open(path) as f:
        spec = yaml.safe_load(f) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: a pipeline file must be a mapping, got {type(spec).__name__}")
    base = spec.pop("_BASE_", None)
    if base is None:
        return spec
    if not isinstance(base, str):
        raise ValueError(f"{path}: _BASE_ must be one file name, got {base!r}")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
    base_path = os.path.normpath(base_path)
    chain = (*_children, os.path.normpath(path))
    if base_path in chain:
        raise ValueError(
            f"{path}: _BASE_ {base} makes a cycle: {' -> '.join(chain + (base_path,))}"
        )
    if not PathManager.isfile(base_path):
        raise FileNotFoundError(f"{path}: _BASE_ file not found: {base_path}")
    merged = read_pipeline_spec(base_path, chain)
    own_stages = spec.pop("STAGES", None) or []
    if not isinstance(own_stages, list):
        raise ValueError(f"{path}: STAGES must be a list")
    merged.update(spec)
    merged["STAGES"] = list(merged.get("STAGES") or []) + own_stages
    return merged
