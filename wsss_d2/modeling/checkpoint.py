"""Loading weights safely and strictly: :class:`WSSSCheckpointer`, :func:`load_model_weights`.

Detectron2's ``DetectionCheckpointer`` reads ``.pkl`` files (its ImageNet / model-zoo format)
with ``pickle.load``, which runs whatever code a crafted file names, and loads any checkpoint
tolerantly: keys that do not fit the model are only logged, so a checkpoint of another
architecture gives an untrained model and a plausible-looking result. Here:

- ``.pkl`` files go through :class:`RestrictedUnpickler`, which builds numpy arrays, dicts,
  lists and scalars only; anything else is an error naming the file and the refused global.
- ``.pth`` files are read with ``torch.load(weights_only=True)``.
- A file that cannot be read (truncated, not a checkpoint) is an ``OSError`` naming it.
- ``strict=True`` (evaluation, labeling, resuming a training run): missing, unexpected or
  shape-skipped keys are a ``ValueError`` naming the file and the first keys of each kind.
  ``strict=False`` (training from ImageNet weights) keeps Detectron2's tolerant loading.
- Checkpoints are saved through a temporary file and a rename, so a kill never leaves a
  truncated ``model_*.pth`` behind.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)

__all__ = [
    "RestrictedUnpickler",
    "load_pickle_weights",
    "WSSSCheckpointer",
    "load_model_weights",
    "require_weights",
]

# the globals a pickle of numpy arrays in dicts / lists needs (numpy 1 and 2 module names)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
}
_SCALARS = (str, bytes, int, float, bool, type(None), np.generic)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dicts, lists, tuples and scalars, nothing else."""

    def __init__(self, file, name: str = "", **kwargs):
        super().__init__(file, **kwargs)
        self.name = name

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS or (
            module in ("numpy", "numpy.core.numerictypes", "numpy._core.numerictypes")
            and name.endswith("Dtype")  # numpy 2's dtype classes
        ):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"weights file {self.name} wants to load '{module}.{name}'; only numpy arrays, dicts, "
            "lists and scalars are allowed in .pkl weights"
        )


def _check_plain(obj, name: str, where: str = "") -> None:
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise ValueError(f"weights file {name}: {where or 'a value'} is an object array")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(v, name, f"{where}.{k}" if where else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, name, f"{where}[{i}]")
    elif not isinstance(obj, _SCALARS):
        raise ValueError(f"weights file {name}: {where or 'its content'} is a {type(obj).__name__}")


def load_pickle_weights(path: str) -> dict:
    """A ``.pkl`` weights file (Detectron2 / Caffe2 model zoo) through :class:`RestrictedUnpickler`."""
    with PathManager.open(path, "rb") as f:
        data = f.read()
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), name=path, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if "only numpy arrays" in str(e):
            raise
        raise OSError(f"cannot read weights file {path} (truncated or not a pickle?): {e}") from e
    except Exception as e:  # pickle raises many types for truncated / foreign files
        raise OSError(f"cannot read weights file {path} (truncated or not a pickle?): {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"weights file {path} holds a {type(obj).__name__}, not a dict of weights")
    _check_plain(obj, path)
    return obj


def require_weights(path: str, what: str = "MODEL.WEIGHTS", purpose: str = "") -> None:
    """Refuse an empty weights path (a model would run with random weights) or a missing file."""
    if not path:
        raise ValueError(
            f"{what} is empty: {purpose or 'this run'} needs trained weights (an untrained model "
            f"would give meaningless results); pass {what} <checkpoint>"
        )
    if "://" not in path and not PathManager.exists(path):
        raise FileNotFoundError(f"{what} file not found: '{path}'")


def _first(keys, n: int = 5) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


class WSSSCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with safe reading, optional strict key checks, atomic saves."""

    def __init__(self, model, save_dir: str = "", *, strict: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._file = ""

    def _load_file(self, filename: str):
        self._file = filename
        if not os.path.isfile(filename):
            raise FileNotFoundError(f"checkpoint file not found: {filename}")
        if filename.endswith(".pkl"):
            data = load_pickle_weights(filename)
            if "model" in data and "__author__" in data:
                return data
            if "blobs" in data:  # Caffe2 detection models
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        loaded = super()._load_file(filename)
        if not isinstance(loaded.get("model"), dict):
            raise ValueError(f"checkpoint {filename} holds no weights (no 'model' state dict)")
        return loaded

    def _torch_load(self, f: str):
        try:
            loaded = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            raise OSError(
                f"cannot read checkpoint {f}: it is not a plain weights file (weights_only "
                f"loading refused it: {str(e).splitlines()[0]})"
            ) from e
        except Exception as e:  # torch raises many types for truncated / foreign files
            raise OSError(
                f"cannot read checkpoint {f} (truncated or not a checkpoint?): "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from e
        if not isinstance(loaded, dict):
            raise ValueError(f"checkpoint {f} holds a {type(loaded).__name__}, not weights")
        return loaded

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        if self.strict:
            missing = sorted(k for k in incompatible.missing_keys if "num_batches_tracked" not in k)
            unexpected = sorted(incompatible.unexpected_keys)
            shapes = [
                f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes
            ]
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing: {_first(missing)}")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected: {_first(unexpected)}")
            if shapes:
                problems.append(f"{len(shapes)} of another shape: {_first(shapes, 3)}")
            if problems:
                raise ValueError(
                    f"checkpoint {self._file} does not fit the model "
                    f"{type(self.model).__name__} ({'; '.join(problems)}): weights of another "
                    "architecture or config?"
                )
        return incompatible

    def save(self, name: str, **kwargs) -> None:
        """Detectron2's ``save``, written through a temporary file and a rename."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        os.makedirs(self.save_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.save_dir, prefix=f".tmp_{name}_", suffix=".pth")
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(data, f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, save_file)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """``last_checkpoint``, written atomically (a kill leaves the previous name, not none)."""
        fd, tmp = tempfile.mkstemp(dir=self.save_dir, prefix=".tmp_last_checkpoint_")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(last_filename_basename)
            os.chmod(tmp, 0o644)
            os.replace(tmp, os.path.join(self.save_dir, "last_checkpoint"))
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise


def load_model_weights(model, path: str, strict: bool = True, what: str = "MODEL.WEIGHTS") -> None:
    """Load ``path`` into ``model`` for inference: refuses an empty path, a missing or unreadable
    file and (``strict``) keys that do not fit (see the module docstring)."""
    require_weights(path, what)
    WSSSCheckpointer(model, strict=strict).load(path, checkpointables=[])
