"""Running dask task lists on a chosen scheduler.

* ``threads`` (default), ``processes``, ``synchronous``: dask's local schedulers, with a
  pool owned here so that when a task fails the pool is shut down *with waiting*: no
  task is still writing when the caller starts cleaning up.
* ``local-cluster[:N]``: a dask.distributed ``LocalCluster`` of N worker processes
  (one thread each), started and closed here.
* ``tcp://HOST:PORT`` or ``tls://...``: an existing dask.distributed scheduler.

:func:`compute` runs one task list. A :class:`Runner` keeps its pool or cluster open
over several task lists (a command with several passes starts one cluster, not one per
pass) and hands large read-only task arguments to the workers once
(:meth:`Runner.share`, :func:`resolve`).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import dask

from streamnorm.allocator import release_memory_promptly
from streamnorm.errors import ConfigError
from streamnorm.progress import stderr_console

LOCAL_SCHEDULERS = ("threads", "processes", "synchronous")
SCHEDULER_HELP = "threads, processes, synchronous, local-cluster[:N] or tcp://HOST:PORT"


def default_workers() -> int:
    """One task per core."""
    return os.cpu_count() or 1


def check_scheduler(scheduler: str) -> None:
    """Reject an unknown scheduler name with a one-line error."""
    if not isinstance(scheduler, str):
        raise ConfigError(f"scheduler must be a string such as 'threads', not {scheduler!r}")
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
    scheduler: str | Runner = "threads",
    workers: int | None = None,
    description: str = "tasks",
    progress: bool = False,
) -> list[Any]:
    """Compute delayed tasks and return their results in order.

    Parameters
    ----------
    tasks : sequence of dask.delayed
    scheduler : str or Runner
        See the module docstring; an open :class:`Runner` is reused, not closed.
    workers : int, optional
        Pool size of the local schedulers; one per core by default.
    """
    with open_runner(scheduler, workers) as runner:
        return runner.compute(tasks, description, progress)


@contextmanager
def open_runner(
    scheduler: str | Runner = "threads", workers: int | None = None, threads: int | None = None
) -> Iterator[Runner]:
    """A runner for ``scheduler``, closed on exit; an open runner is handed back as is."""
    if isinstance(scheduler, Runner):
        yield scheduler
        return
    with Runner(scheduler, workers, threads) as runner:
        yield runner


class Runner:
    """A scheduler kept open over several task lists.

    The pool or cluster starts with the first :meth:`compute`, so a runner that is never
    asked to compute costs nothing.

    Parameters
    ----------
    scheduler : str
        See the module docstring.
    workers : int, optional
        Pool size of the local schedulers; one per core by default.
    threads : int, optional
        faiss/BLAS threads inside each task; by default the cores shared among the tasks
        that run at once.
    """

    def __init__(
        self, scheduler: str = "threads", workers: int | None = None, threads: int | None = None
    ) -> None:
        check_scheduler(scheduler)
        for name, value in (("workers", workers), ("threads", threads)):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, not {value}")
        self.scheduler = scheduler
        self.workers = workers
        self.threads = threads
        self._stack = ExitStack()
        self._pool: Executor | None = None
        self._client: Any = None
        self._folder: str | None = None

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def in_process(self) -> bool:
        """True for the default ``threads`` scheduler, which callers run in-process."""
        return self.scheduler == "threads"

    @property
    def parallel(self) -> int:
        """Tasks that run at once (see :func:`parallel_tasks`)."""
        return parallel_tasks(self.scheduler, self.workers)

    @property
    def task_threads(self) -> int:
        """faiss/BLAS threads per task: tasks x threads never exceeds the cores."""
        return self.threads or max(1, default_workers() // self.parallel)

    def compute(
        self, tasks: Sequence[Any], description: str = "tasks", progress: bool = False
    ) -> list[Any]:
        """Compute delayed tasks and return their results in order."""
        if not tasks:
            return []
        if self.scheduler == "synchronous":
            return list(dask.compute(*tasks, scheduler="synchronous"))
        if self.scheduler in LOCAL_SCHEDULERS:
            return self._compute_local(tasks)
        return _compute_distributed(self._distributed_client(), tasks, progress)

    def share(self, value: Any) -> Any:
        """A task argument standing for ``value``, sent to each worker process once.

        Tasks turn it back into the value with :func:`resolve`. Within this process
        (threads, synchronous) it is the value itself; for a process pool it is a file
        read once per process; on a distributed cluster, data scattered to every worker.
        """
        if self.scheduler in ("threads", "synchronous"):
            return value
        if self.scheduler == "processes":
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="streamnorm-shared-")
            handle, path = tempfile.mkstemp(dir=self._folder, suffix=".pickle")
            with os.fdopen(handle, "wb") as stream:
                pickle.dump(value, stream, protocol=pickle.HIGHEST_PROTOCOL)
            return SharedFile(path)
        return self._distributed_client().scatter(value, broadcast=True, hash=False)

    def send(self, value: Any) -> Any:
        """A task argument for one task's own data (a block of rows, say).

        On a distributed cluster the data go to one worker ahead of the task graph, which
        stays small; elsewhere the value itself is the argument.
        """
        if self.scheduler in LOCAL_SCHEDULERS:
            return value
        return self._distributed_client().scatter(value, hash=False)

    def close(self) -> None:
        """Stop the pool or cluster (waiting for running tasks) and remove shared files."""
        try:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._stack.close()
            self._client = None
        finally:
            if self._folder is not None:
                shutil.rmtree(self._folder, ignore_errors=True)
                self._folder = None

    def _compute_local(self, tasks: Sequence[Any]) -> list[Any]:
        size = self.workers or default_workers()
        if self._pool is None:
            self._pool = _local_pool(self.scheduler, size)
        try:
            return list(
                dask.compute(*tasks, scheduler=self.scheduler, pool=self._pool, num_workers=size)
            )
        except BaseException:
            # Wait for the tasks still running before the caller cleans up after them.
            self._pool.shutdown(wait=True)
            self._pool = None
            raise

    def _distributed_client(self) -> Any:
        if self._client is None:
            self._client = self._stack.enter_context(_client(self.scheduler))
        return self._client


def _local_pool(scheduler: str, size: int) -> Executor:
    if scheduler == "threads":
        return ThreadPoolExecutor(size)
    # spawn, not fork: forking a process that already runs OpenMP threads can deadlock.
    return ProcessPoolExecutor(
        size,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=release_memory_promptly,
    )


@contextmanager
def task_threads(threads: int) -> Iterator[None]:
    """Limit faiss and BLAS inside a task to ``threads`` threads.

    faiss's OpenMP setting belongs to the calling thread and BLAS pools to the process,
    so both are set in the task itself, where it runs.
    """
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(threads)
    with threadpool_limits(limits=threads, user_api="blas"):
        yield


@dataclass(frozen=True)
class SharedFile:
    """A value pickled to a local file by :meth:`Runner.share`, loaded once per process."""

    path: str


_SHARED: dict[str, Any] = {}
_SHARED_LOCK = threading.Lock()


def resolve(value: Any) -> Any:
    """The value behind a task argument made by :meth:`Runner.share`."""
    if not isinstance(value, SharedFile):
        return value
    with _SHARED_LOCK:
        if value.path not in _SHARED:
            with open(value.path, "rb") as stream:
                _SHARED[value.path] = pickle.load(stream)
        return _SHARED[value.path]


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
