"""Side-by-side stages of a :class:`~wsss_d2.engine.pipeline.Pipeline`.

Side by side (``tools/run_pipeline.py --jobs N``): up to N stages run at once, each in a fresh
process pinned to its share of the cores, with one torch thread (and one CRF worker) per core of
the share. A stage starts when every stage it reads from (``weights_from``, ``round_from``,
``cams_from``) is done; among ready stages, the one heading the longest chain of readers first.
On a CPU, where a second thread speeds a stage up far less than a second stage on the other core
does, this shortens a pipeline with independent branches (CAM and PLDA, their label rounds, the
segmentors and the ceiling). One stage failing lets the running ones finish; ``--resume`` goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import time
import traceback

logger = logging.getLogger(__name__)

__all__ = ["run_side_by_side", "core_shares", "chain_lengths"]


def chain_lengths(stages) -> dict[str, int]:
    """Per stage, the number of stages on the longest chain of readers starting at it
    (itself included): what side-by-side runs start first, the longest chain first."""
    length: dict[str, int] = {}
    for stage in reversed(stages):  # readers come after the stages they read
        readers = [length[s.name] for s in stages if stage.name in s.inputs]
        length[stage.name] = 1 + max(readers, default=0)
    return length


def run_side_by_side(pipe, executors, resume, jobs, todo, summaries) -> None:
    """``Pipeline.run(..., jobs)``: up to ``jobs`` stages at once, each in a fresh process
    pinned to its share of this process's cores (torch threads and CRF workers follow the
    share). Ready stages start by the longest chain of readers, then file order. When a stage
    fails, the running ones finish (kept for ``--resume``), none starts, and the failure is
    raised naming the stage."""
    chain = chain_lengths(pipe.stages)
    order = {s.name: i for i, s in enumerate(pipe.stages)}
    slots = core_shares(jobs)
    free = list(range(len(slots)))
    running: dict = {}  # result connection -> (stage, process, slot, start time)
    failed: list[str] = []
    ctx = multiprocessing.get_context("spawn")
    try:
        while todo or running:
            ready = [s for s in todo if set(s.inputs) <= set(summaries)] if not failed else []
            ready.sort(key=lambda s: (-chain[s.name], order[s.name]))
            for stage in ready[: len(free)]:
                opts = pipe._begin(stage)
                slot = free.pop(0)
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(
                    target=_run_stage_in_child,
                    args=(send, slots[slot], executors[stage.kind], stage, opts, resume),
                    name=f"stage-{stage.name}",
                )
                proc.start()
                send.close()
                running[recv] = (stage, proc, slot, time.time())
                todo.remove(stage)
                logger.info("stage %s: started on cores %s", stage.name, list(slots[slot]))
            if not running:
                if todo and not failed:  # not reachable: inputs are earlier stages
                    raise RuntimeError(f"stages {[s.name for s in todo]} cannot start")
                break
            for recv in multiprocessing.connection.wait(list(running)):
                stage, proc, slot, t0 = running.pop(recv)
                try:
                    status, payload = recv.recv()
                except EOFError:
                    status, payload = "error", "the stage's process ended without a result"
                recv.close()
                proc.join()
                free.append(slot)
                if status == "ok":
                    summaries[stage.name] = pipe._finish(stage, payload, time.time() - t0)
                    logger.info("stage %s: done in %.0f s", stage.name, time.time() - t0)
                else:
                    msg = f"stage '{stage.name}' failed (exit code {proc.exitcode}):\n{payload}"
                    failed.append(msg)
                    logger.error("stage %s failed; running stages finish, none starts", stage.name)
    except BaseException:  # Ctrl-C or an error here: the stages' processes go too
        for _, proc, _, _ in running.values():
            proc.terminate()
        for _, proc, _, _ in running.values():
            proc.join()
        raise
    if failed:
        raise RuntimeError("\n".join(failed))


def core_shares(jobs: int) -> list[tuple[int, ...]]:
    """This process's cores dealt into ``jobs`` shares (a core shared when jobs exceed cores)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no pinning, every share is every core
        return [tuple(range(os.cpu_count() or 1))] * jobs
    if jobs >= len(cores):
        return [(cores[i % len(cores)],) for i in range(jobs)]
    return [tuple(cores[i::jobs]) for i in range(jobs)]


def _run_stage_in_child(conn, cores, execute, stage, opts, resume) -> None:
    """A side-by-side stage's process: pinned to ``cores``, one torch thread per core; sends
    ``("ok", results)`` or ``("error", traceback)``."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(len(cores))
    import torch

    torch.set_num_threads(len(cores))
    try:
        conn.send(("ok", execute(stage, opts, resume) or {}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        conn.close()
