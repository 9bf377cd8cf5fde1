"""Running dask task lists on a chosen scheduler.

* ``threads`` (default), ``processes``, ``synchronous``: dask's local schedulers, with a
  pool owned here so that when a task fails the pool is shut down *with waiting*: no
  task is still writing when the caller starts cleaning up.
* ``local-cluster[:N]``: a dask.distributed ``LocalCluster`` of N worker processes
  (one thread each), started and closed here.
* ``tcp://HOST:PORT`` or ``tls://...``: an existing dask.distributed scheduler.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import dask

from streamnorm.errors import ConfigError
from streamnorm.progress import stderr_console

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
SCHEDULER_HELP = "threads, processes, synchronous, local-cluster[:N] or tcp://HOST:PORT"


def default_workers() -> int:
    """One task per core."""
    return os.cpu_count() or 1


def check_scheduler(scheduler: str) -> None:
    """Reject an unknown scheduler name with a one-line error."""
    if scheduler in LOCAL_SCHEDULERS or scheduler.startswith(("tcp://", "tls://")):
        return
    if scheduler == "local-cluster" or scheduler.startswith("local-cluster:"):
        _local_cluster_size(scheduler)
        return
    raise ConfigError(f"unknown scheduler {scheduler!r}; use {SCHEDULER_HELP}")


def _local_cluster_size(scheduler: str) -> int:
    _, _, count = scheduler.partition(":")
    if not count:
        return default_workers()
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"scheduler {scheduler!r}: the worker count must be a positive integer")
    return int(count)


def parallel_tasks(scheduler: str, workers: int | None) -> int:
    """How many tasks run at once on this machine (to size threads inside each task)."""
    if scheduler == "synchronous":
        return 1
    if scheduler.startswith("local-cluster"):
        return _local_cluster_size(scheduler)
    if scheduler.startswith(("tcp://", "tls://")):
        return default_workers()  # remote workers: one thread each is the safe choice
    return workers or default_workers()


def compute(
    tasks: Sequence[Any],
    scheduler: str = "threads",
    workers: int | None = None,
    description: str = "tasks",
    progress: bool = False,
) -> list[Any]:
    """Compute delayed tasks and return their results in order.

    Parameters
    ----------
    tasks : sequence of dask.delayed
    scheduler : str
        See the module docstring.
    workers : int, optional
        Pool size of the local schedulers; one per core by default.
    """
    check_scheduler(scheduler)
    if not tasks:
        return []
    if scheduler == "synchronous":
        return list(dask.compute(*tasks, scheduler="synchronous"))
    if scheduler in LOCAL_SCHEDULERS:
        size = workers or default_workers()
        with _local_pool(scheduler, size) as pool:
            return list(dask.compute(*tasks, scheduler=scheduler, pool=pool, num_workers=size))
    with _client(scheduler) as client:
        return _compute_distributed(client, tasks, progress)


@contextmanager
def _local_pool(scheduler: str, size: int) -> Iterator[Executor]:
    pool: Executor
    if scheduler == "threads":
        pool = ThreadPoolExecutor(size)
    else:
        # spawn, not fork: forking a process that already runs OpenMP threads can deadlock.
        pool = ProcessPoolExecutor(size, mp_context=multiprocessing.get_context("spawn"))
    with pool:
        yield pool


@contextmanager
def _client(scheduler: str) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler.startswith("local-cluster"):
        with (
            LocalCluster(
                n_workers=_local_cluster_size(scheduler),
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
            ) as cluster,
            Client(cluster) as client,
        ):
            stderr_console.print(f"dask dashboard: {client.dashboard_link}")
            yield client
    else:
        with Client(scheduler) as client:
            stderr_console.print(f"dask dashboard: {client.dashboard_link}")
            yield client


def _compute_distributed(client: Any, tasks: Sequence[Any], progress: bool) -> list[Any]:
    from distributed import progress as show_progress
    from distributed import wait

    futures = client.compute(list(tasks))
    try:
        if progress:
            show_progress(futures)
        return list(client.gather(futures))
    except BaseException:
        # Let running tasks finish before the caller cleans up what they write.
        client.cancel(futures)
        wait(futures)
        raise
