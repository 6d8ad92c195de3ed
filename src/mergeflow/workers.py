"""Independent CPU jobs in worker processes: one per core, each with its share of the threads.

Small models do not spread over threads: one fine-tuning step of the offline ViT gains little from a
second thread, while two one-thread processes do twice the steps (docs/benchmarks.md). Whole jobs spread
well, so stages with independent jobs (one expert per task) run them side by side.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def cpu_cores() -> int:
    """The cores this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Threads for each of ``jobs`` concurrent jobs: the cores shared out, at least one."""
    cores = cpu_cores()
    return max(1, cores // max(1, min(jobs, cores)))


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``[fn(*args) for args in jobs]`` over ``workers`` spawned processes (in this process when one).

    The first failure is raised once the running jobs end; queued jobs are cancelled.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*args) for args in jobs]
    # spawn, not fork: a forked child inherits the parent's OpenMP pool, which can hang it
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = [pool.submit(fn, *args) for args in jobs]
        return [f.result() for f in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
