"""Progress bars for long work: plain loops and dask computations.

Bars go to stderr through rich, so stdout stays clean for tables and JSON.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

from dask.callbacks import Callback
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")

stderr_console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr_console,
        transient=False,
    )


def track(items: Iterable[T], description: str, enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar (when enabled and the sequence has a length)."""
    if not enabled:
        yield from items
        return
    total = len(items) if isinstance(items, Sized) else None
    with _progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class _DaskBar(Callback):
    """Advances a rich bar each time a task whose key starts with ``prefix`` finishes."""

    def __init__(self, bar: Progress, task: Any, prefix: str) -> None:
        super().__init__()
        self._bar = bar
        self._task = task
        self._prefix = prefix

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if str(name).startswith(self._prefix):
            self._bar.advance(self._task)


@contextmanager
def dask_progress(
    description: str, total: int, prefix: str, enabled: bool = True
) -> Iterator[None]:
    """Show a bar over the tasks named ``prefix*`` of local-scheduler computations."""
    if not enabled:
        yield
        return
    with _progress() as bar:
        task = bar.add_task(description, total=total)
        with _DaskBar(bar, task, prefix):
            yield
