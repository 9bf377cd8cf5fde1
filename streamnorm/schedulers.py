"""Running dask task lists on a chosen scheduler.

Local schedulers get a pool owned here, so that when a task fails the pool is shut down
*with waiting*: no task is still writing when the caller starts cleaning up.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any

import dask

from streamnorm.errors import ConfigError

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")


def default_workers() -> int:
    """One task per core."""
    return os.cpu_count() or 1


def compute(
    tasks: Sequence[Any], scheduler: str = "threads", workers: int | None = None
) -> list[Any]:
    """Compute delayed tasks and return their results in order.

    Parameters
    ----------
    tasks : sequence of dask.delayed
    scheduler : {"threads", "processes", "synchronous"}
    workers : int, optional
        Pool size; one per core by default.
    """
    if scheduler not in LOCAL_SCHEDULERS:
        raise ConfigError(
            f"unknown scheduler {scheduler!r}; use one of {', '.join(LOCAL_SCHEDULERS)}"
        )
    if not tasks:
        return []
    if scheduler == "synchronous":
        return list(dask.compute(*tasks, scheduler="synchronous"))
    size = workers or default_workers()
    pool: Executor
    if scheduler == "threads":
        pool = ThreadPoolExecutor(size)
    else:
        # spawn, not fork: forking a process that already runs OpenMP threads can deadlock.
        pool = ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        return list(dask.compute(*tasks, scheduler=scheduler, pool=pool, num_workers=size))
