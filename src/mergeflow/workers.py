"""Independent CPU jobs in worker processes: one per core, each with its share of the threads.

Small models do not spread over threads: one fine-tuning step of the offline ViT gains little from a
second thread, while two one-thread processes do twice the steps (docs/benchmarks.md). Whole jobs spread
well, so stages with independent jobs (one expert per task) run them side by side.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

# How often a worker looks whether its parent still lives (seconds).
_PARENT_POLL_S = 0.5
_RETRY_S = 0.05  # how soon a SIGTERM that arrived during an import is taken again


def cpu_cores() -> int:
    """The cores this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Threads for each of ``jobs`` concurrent jobs: the cores shared out, at least one."""
    cores = cpu_cores()
    return max(1, cores // max(1, min(jobs, cores)))


def _exit_on_sigterm(signum, frame) -> None:
    """SIGTERM as ``SystemExit``, so that a job's ``finally`` removes its temporary files; but never in the
    middle of an import (a job's module is imported when its first job is unpickled): an exception raised
    into a half-imported NumPy or SciPy sends their cleanup code into an endless recursion and a traceback,
    so the signal is sent again shortly, once the import is done."""
    if _importing(frame):
        again = threading.Timer(_RETRY_S, os.kill, (os.getpid(), signum))
        again.daemon = True
        again.start()
        return
    raise SystemExit(128 + signum)


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _end_with_parent(parent: int) -> None:
    """Worker initializer: leave Ctrl-C to the parent and exit as soon as the parent is gone.

    Ctrl-C reaches every process of the terminal's group; the parent alone reports it (one line) and
    ends the workers. A parent killed outright (``kill -9``, an engine's timeout) cannot end them, so each
    worker watches its parent id and exits when it changes: a finished job of a dead stage has nobody to
    hand its result to. The multiprocessing resource tracker exits once the last worker has.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since birth: see run_jobs
    # the parent ends workers with SIGTERM: as an exception, so that a job's `finally` removes its
    # temporary files (nothing half-written is left beside the outputs)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _terminate(pool: ProcessPoolExecutor) -> None:
    """End the pool's workers now (their jobs are abandoned), rather than wait for the running jobs."""
    if hasattr(pool, "terminate_workers"):  # Python 3.14
        pool.terminate_workers()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_jobs(fn: Callable[..., Any], jobs: Sequence[tuple], workers: int) -> list[Any]:
    """``[fn(*args) for args in jobs]`` over ``workers`` spawned processes (in this process when one).

    The first failure (or an interrupt) is raised at once: the other workers are ended, queued jobs
    cancelled. Workers also end when this process dies (:func:`_end_with_parent`).
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*args) for args in jobs]
    # spawn, not fork: a forked child inherits the parent's OpenMP pool, which can hang it
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_end_with_parent, initargs=(os.getpid(),))
    try:
        # Submitting spawns the workers. A Ctrl-C reaches every process of the terminal's group, and a worker
        # still starting (importing, before its initializer ignores SIGINT) would print a traceback of its
        # own: so they are spawned with SIGINT blocked (the mask survives fork and exec; multiprocessing's
        # resource tracker is started the same way), and this process takes a Ctrl-C that came meanwhile
        # when it unblocks it
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            futures = [pool.submit(fn, *args) for args in jobs]
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        results = [f.result() for f in futures]
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)
    return results
