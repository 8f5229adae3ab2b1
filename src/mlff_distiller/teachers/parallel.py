"""Teacher engines running at once in threads.

A teacher whose engine releases the GIL and shares no state between instances
(``TeacherCalculator.concurrent_calls``: GFN2-xTB through tblite) can run one instance per
thread: the MD engine's force providers evaluate the structures of a batch this way, and
reference sampling runs its molecules and replicas this way. Each worker thread runs its
engine's OpenMP regions on its share of the CPUs (OpenMP's thread count is per calling
thread, so the main thread, and torch with it, is untouched); on 12-21-atom molecules one
OpenMP thread per call is as fast as two, so two structures at once nearly double the
throughput on two cores (``benchmarks/teacher_md.py``).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _limit_openmp(threads: int) -> None:
    """Worker-thread initializer: OpenMP regions started from this thread use at most
    ``threads`` threads."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="openmp")


def teacher_pool(n_jobs: int, workers: int | None = None) -> ThreadPoolExecutor | None:
    """A thread pool for ``n_jobs`` independent teacher jobs (None when one worker would do):
    ``workers`` threads (default: one per available CPU, at most one per job), each running
    its engine's OpenMP regions on ``CPUs // workers`` threads."""
    cpus = available_cpus()
    workers = min(n_jobs, cpus) if workers is None else min(workers, max(n_jobs, 1))
    if workers <= 1:
        return None
    return ThreadPoolExecutor(
        workers, thread_name_prefix="mlffd-teacher", initializer=_limit_openmp,
        initargs=(max(1, cpus // workers),),
    )  # fmt: skip
