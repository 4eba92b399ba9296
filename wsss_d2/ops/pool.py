"""A process pool that maps a function over items in input order (CRFs, mask painting).

Each item is an independent, deterministic computation and results come back in input order, so
the output is the same for any number of workers; ``num_workers=1`` runs inline, the reference
the pool is tested against.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Callable, Iterable, Iterator

import torch

from .progress import Progress

__all__ = ["map_in_pool", "default_num_workers"]


def default_num_workers() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init() -> None:
    # one CRF per core: keep any BLAS/OpenMP inside a worker single-threaded
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"
    torch.set_num_threads(1)


def map_in_pool(
    fn: Callable,
    items: Iterable,
    num_workers: int = 0,
    total: int | None = None,
    desc: str = "crf",
    start_method: str | None = None,
    progress: bool = True,
) -> Iterator:
    """``fn(item)`` for every item, in input order, over a process pool.

    Args:
        fn: a picklable (module-level) function.
        num_workers: pool size; 0 = every core (:func:`default_num_workers`), 1 = run inline in
            this process (no pool), which is also the reference the pool is tested against.
        start_method: multiprocessing start method (default: "fork" where available — workers
            then inherit the imported modules instead of importing them again).
    Yields:
        the results, in the order of ``items``.
    """
    items = list(items)
    total = len(items) if total is None else total
    n = default_num_workers() if num_workers <= 0 else num_workers
    n = max(1, min(n, len(items)))
    bar = Progress(total, desc, enabled=progress)  # a bar + rate / ETA lines in the log
    try:
        if n == 1:
            for it in items:
                res = fn(it)
                bar.update(1)  # before the yield: a consumer may stop after the last item
                yield res
            return
        if start_method is None:
            start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        with ctx.Pool(n, initializer=_worker_init) as pool:
            # chunksize 1: one CRF is seconds of work, far above the messaging cost
            for res in pool.imap(fn, items, chunksize=1):
                bar.update(1)
                yield res
    finally:
        bar.close()
