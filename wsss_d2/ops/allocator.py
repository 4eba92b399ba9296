"""Keep the large CPU buffers of repeated forwards instead of returning them to the OS.

glibc's ``malloc`` serves every allocation above its mmap threshold (128 KiB, raised dynamically
up to 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``. A CPU forward of a convolutional
network at several scales allocates and frees activations of tens of MB each time, so every
forward page-faults and zero-fills them again. Raising the mmap and trim thresholds lets the
heap keep those buffers for the next forward: in the multi-scale CAM inference of the voc_mini
EfficientNet-Lite0 model on one thread, ~15 % of the time with out-of-place activations, ~5 %
with the engine's in-place ones (projects/PseudoLabels/README.md, "Speed"). This is what PyTorch's CPU tuning guide gets by swapping in jemalloc or
tcmalloc, done with glibc's own ``mallopt``.

The setting is process-wide and lasts for the rest of the process (as ``torch.set_num_threads``
does); it changes no result, only where freed memory goes. Peak memory grows by about the largest
buffers held at once. On a C library other than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_DONE: dict[int, bool] = {}


def retain_freed_buffers(threshold_bytes: int = 1 << 30) -> bool:
    """Serve allocations below ``threshold_bytes`` from the heap and keep freed heap memory.

    Returns whether the setting is in force (glibc only). Calling it again is free.
    """
    if threshold_bytes in _DONE:
        return _DONE[threshold_bytes]
    ok = False
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        try:
            libc = ctypes.CDLL(None)
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold_bytes))) and bool(
                libc.mallopt(_M_TRIM_THRESHOLD, int(threshold_bytes))
            )
        except (OSError, AttributeError) as e:  # no mallopt in this process's C library
            logger.info("mallopt unavailable (%s): freed buffers go back to the OS", e)
    if ok:
        logger.info(
            "malloc keeps freed buffers below %d MiB for reuse (mmap/trim thresholds)",
            threshold_bytes >> 20,
        )
    _DONE[threshold_bytes] = ok
    return ok
