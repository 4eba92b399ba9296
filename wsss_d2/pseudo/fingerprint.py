"""What a pseudo-label round depends on, as a fingerprint stored with the round.

:func:`label_fingerprint` gives ``{"source", "settings", "weights", "dataset"}``:

- ``settings``: the config keys that change a label, flat (``{"WSSS.PSEUDO.METHOD": "crf",
  ...}``), so that a refused resume can name what differs. For CAM and segmentor rounds: the
  model's keys (``MODEL.*`` but the weights path and device), the test-time input keys and
  ``WSSS.PSEUDO.*``; for SAM rounds: ``WSSS.SAM.*``. Keys that only change speed or where files
  go (batch sizes, workers, folders, round numbers) are left out.
- ``weights``: the SHA-256 of the weights file (or, for a round written during training, the
  iteration and the training config's hash).
- ``dataset``: the dataset names, the number of images and a hash of their files and tags.
- ``cams`` (IRN rounds only): the fingerprint ``cams.json`` of the CAM folder the walk reads.

:class:`~wsss_d2.io.rounds.RoundWriter` compares it with the one stored in a partial round and
refuses to resume a round of another fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Sequence

import torch
from detectron2.modeling import SemanticSegmentor
from detectron2.utils.file_io import PathManager

from ..io.cam_files import read_cam_manifest
from ..io.files import file_sha256
from ..io.rounds import config_hash
from ..modeling.meta_arch.cam import CAMClassifier
from ..modeling.meta_arch.irn import IRNet
from ..modeling.utils import unwrap_model

__all__ = [
    "label_settings",
    "weights_fingerprint",
    "dataset_fingerprint",
    "label_fingerprint",
    "training_weights",
    "cam_fingerprint",
    "round_source",
    "check_method",
]

# keys under the prefixes below that do not change a label (speed, folders, round numbers)
_NOT_LABEL_KEYS = {
    "MODEL.WEIGHTS",
    "MODEL.DEVICE",
    "MODEL.CHANNELS_LAST",
    "WSSS.PSEUDO.DATASETS",
    "WSSS.PSEUDO.ROOT",
    "WSSS.PSEUDO.CAM_DIR",
    "WSSS.PSEUDO.ROUND",
    "WSSS.PSEUDO.IMS_PER_BATCH",
    "WSSS.PSEUDO.NUM_LOADER_WORKERS",
    "WSSS.PSEUDO.NUM_WORKERS",
    "WSSS.PSEUDO.CHANNELS_LAST",
    "WSSS.PSEUDO.FOLD_BN",
    "WSSS.PSEUDO.CPU_FUSE",
    "WSSS.PSEUDO.CPU_RETAIN_BUFFERS",
    "WSSS.PSEUDO.TRAIN_ROUND",
    "WSSS.SAM.CHECKPOINT",
    "WSSS.SAM.OUTPUT_ROOT",
    "WSSS.SAM.ROUND",
    "WSSS.SAM.BOXES_PER_BATCH",
    "WSSS.SAM.IMAGES_PER_BATCH",
}
_NOT_LABEL_PREFIXES = ("WSSS.PSEUDO.REFRESH.",)
_MODEL_INPUT_KEYS = (
    "INPUT.FORMAT",
    "INPUT.MAPPER",
    "INPUT.TAGS.NUM_CLASSES",
    "INPUT.TAGS.TEST_LONG",
)
_PREFIXES = {
    "cam": ("MODEL.", "WSSS.PSEUDO."),
    "segmentor": ("MODEL.", "WSSS.PSEUDO."),
    "irn": ("MODEL.", "WSSS.PSEUDO."),
    "sam_boxes": ("WSSS.SAM.",),
}


def _flat_cfg(node, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if hasattr(v, "items"):
            out.update(_flat_cfg(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def label_settings(cfg, source: str) -> dict:
    """The flat ``{key: value}`` of ``cfg``'s keys that change a label of ``source``
    ("cam" | "segmentor" | "irn" | "sam_boxes")."""
    if source not in _PREFIXES:
        raise ValueError(f"unknown label source '{source}'; expected one of {sorted(_PREFIXES)}")
    flat = _flat_cfg(cfg)
    keep = {
        k: v
        for k, v in flat.items()
        if k.startswith(_PREFIXES[source])
        and k not in _NOT_LABEL_KEYS
        and not k.startswith(_NOT_LABEL_PREFIXES)
    }
    keys = _MODEL_INPUT_KEYS if source != "sam_boxes" else ("INPUT.TAGS.NUM_CLASSES",)
    keep.update({k: flat[k] for k in keys if k in flat})
    return json.loads(json.dumps(keep, default=str))


_SHA_CACHE: dict[tuple, str] = {}


def weights_fingerprint(path: str) -> dict:
    """``{"sha256"}`` of a weights file, whatever its path (hashes cached per file, size and
    mtime); ``{"file": path}`` when there is no such file (an empty path, a model's own
    initialisation)."""
    local = PathManager.get_local_path(path) if path else ""
    if not local or not os.path.isfile(local):
        return {"file": path}
    st = os.stat(local)
    key = (os.path.abspath(local), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = file_sha256(local)
    return {"sha256": _SHA_CACHE[key]}


def dataset_fingerprint(dicts: Iterable[dict], names: Sequence[str] = ()) -> dict:
    """The dataset names, image count and a hash of every image's file, size and tags."""
    rows = sorted(
        (
            str(d["file_name"]),
            [int(t) for t in d.get("tags", [])],
            d.get("height"),
            d.get("width"),
        )
        for d in dicts
    )
    digest = hashlib.sha1(json.dumps(rows, default=str).encode()).hexdigest()[:16]
    return {"names": list(names), "num_images": len(rows), "hash": digest}


def label_fingerprint(
    cfg,
    dicts: Iterable[dict],
    source: str,
    weights: dict | None = None,
    names: Sequence[str] = (),
) -> dict:
    """The fingerprint of a round (module docstring). ``weights`` defaults to the hash of
    ``MODEL.WEIGHTS`` (CAM / segmentor rounds)."""
    if weights is None:
        weights = weights_fingerprint(cfg.MODEL.WEIGHTS)
    out = {
        "source": source,
        "settings": label_settings(cfg, source),
        "weights": weights,
        "dataset": dataset_fingerprint(dicts, names),
    }
    if source == "irn":  # the walked CAMs: their folder's own fingerprint (model, weights, ...)
        out["cams"] = read_cam_manifest(cfg.WSSS.PSEUDO.CAM_DIR)
    return out


def training_weights(cfg, iteration: int) -> dict:
    """The ``weights`` entry of a round written during training: the iteration and the hash of
    the training config (without the round it trains on, which the refresh itself changes)."""
    c = cfg.clone()
    c.defrost()
    c.WSSS.PSEUDO.TRAIN_ROUND = ""
    return {"training_iteration": int(iteration), "training_config": config_hash(c)}


def cam_fingerprint(cfg, model: torch.nn.Module, engine, meta: dict | None = None) -> dict:
    """What a folder of CAMs depends on: the network (class and parameter shapes), its weights
    (the file's SHA-256; the training iteration for a refresh), input normalisation and size, and
    the inference protocol. Config keys that do not change the CAMs (new defaults elsewhere,
    label thresholds) are left out, so adding a key to the config does not invalidate caches."""
    shapes = repr([(k, tuple(v.shape)) for k, v in model.state_dict().items()])
    # a model whose CAMs depend on an inference switch names it (ReCAM: re-activated or plain)
    settings = getattr(unwrap_model(model), "cam_settings", None)
    return {
        **(settings() if callable(settings) else {}),
        **engine.fingerprint(next(model.parameters()).device),
        "model": type(model).__name__,
        "structure": hashlib.sha1(shapes.encode()).hexdigest()[:12],
        "weights": weights_fingerprint(cfg.MODEL.WEIGHTS),
        "iteration": (meta or {}).get("iteration"),
        "pixel_mean_std": [list(cfg.MODEL.PIXEL_MEAN), list(cfg.MODEL.PIXEL_STD)],
        "input_format": cfg.INPUT.FORMAT,
        "test_long": cfg.INPUT.TAGS.TEST_LONG,
    }


def round_source(model: torch.nn.Module) -> str:
    """ "cam" for a CAM model, "segmentor" for a segmentor, "irn" for an IRNet; ``TypeError``
    for anything else."""
    net = unwrap_model(model)
    if isinstance(net, CAMClassifier):
        return "cam"
    if isinstance(net, SemanticSegmentor):
        return "segmentor"
    if isinstance(net, IRNet):
        return "irn"
    raise TypeError(
        f"cannot write pseudo labels with a {type(net).__name__}: expected a CAM model "
        "(CAMClassifier or a subclass), a segmentor (SemanticSegmentor or a subclass) or an IRNet"
    )


def check_method(cfg, source: str) -> None:
    """``WSSS.PSEUDO.METHOD "irn"`` exactly when the model is an IRNet (and ``SEG_METHOD`` is
    known for a segmentor): a ``ValueError`` naming the key otherwise, before any work."""
    p = cfg.WSSS.PSEUDO
    if (p.METHOD == "irn") != (source == "irn"):
        raise ValueError(
            "WSSS.PSEUDO.METHOD 'irn' and MODEL.META_ARCHITECTURE 'IRNet' go together (the "
            f"random walk needs an IRNet's boundaries): got METHOD '{p.METHOD}' with a {source} "
            "model"
        )
    if source == "segmentor" and p.SEG_METHOD not in ("argmax", "crf"):
        raise ValueError(f"WSSS.PSEUDO.SEG_METHOD must be 'argmax' or 'crf', got '{p.SEG_METHOD}'")
    if source == "segmentor" and not 0.0 <= p.SEG_CONF < 1.0:
        raise ValueError(f"WSSS.PSEUDO.SEG_CONF must lie in [0, 1), got {p.SEG_CONF}")
