"""Array operations shared by the models and the pseudo-label tools: dense CRF, PAMR, a pool,
inference autocast, progress logging."""

from .amp import amp_active, autocast_name, inference_autocast
from .crf import CRFParams, crf_from_config, crf_inference_label, crf_inference_prob, local_ids
from .pamr import PAMR
from .pool import default_num_workers, map_in_pool
from .progress import Progress, load_line

__all__ = [
    "CRFParams",
    "amp_active",
    "autocast_name",
    "inference_autocast",
    "PAMR",
    "Progress",
    "crf_from_config",
    "crf_inference_label",
    "crf_inference_prob",
    "default_num_workers",
    "load_line",
    "local_ids",
    "map_in_pool",
]
