"""Benchmark stages: progress messages, and how busy the rest of the machine was.

On a shared machine a ratio is only as good as the conditions of its two runs. Each
stage therefore records, besides its duration, the CPU time the *other* processes of
the machine took meanwhile (machine-wide busy time minus this process tree's CPU time,
hypervisor steal included), as an average number of cores. A ratio whose stages saw
other processes take most of the cores says more about them than about streamnorm.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil
from rich.console import Console

from streamnorm.progress import stderr_console

T = TypeVar("T")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent not idle since boot (steal counts as busy)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    # Guest time is already part of user time on Linux.
    counted = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return float(counted - idle)


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of every child it has reaped.

    Worker processes of a LocalCluster and the benchmark's subprocesses are reaped by
    the end of the stage that started them, so their time is included.
    """
    times = psutil.Process().cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


@dataclass
class StageRecord:
    """Duration and machine conditions of one stage."""

    key: str
    title: str
    seconds: float
    own_cpu_seconds: float
    others_cpu_seconds: float

    @property
    def others_cores(self) -> float:
        """Average number of cores the other processes of the machine kept busy."""
        return self.others_cpu_seconds / max(self.seconds, 1e-9)

    @property
    def own_cores(self) -> float:
        """Average number of cores this process tree got."""
        return self.own_cpu_seconds / max(self.seconds, 1e-9)


class Stages:
    """Runs benchmark stages with numbered progress messages on stderr.

    Parameters
    ----------
    total : int
        Number of stages, for the ``[i/total]`` counter.
    enabled : bool
        Whether to print anything.
    """

    def __init__(self, total: int, enabled: bool, console: Console | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.console = console or stderr_console
        self.records: list[StageRecord] = []

    def run(self, key: str, title: str, work: Callable[[], T], summary: Callable[[T], str]) -> T:
        """Run one stage, announcing it before and summarizing it after.

        ``key`` groups the stages whose conditions are reported together (a line of the
        result table may rest on several stages).
        """
        if self.enabled:
            self.console.print(f"[bold][{len(self.records) + 1}/{self.total}][/bold] {title} ...")
        busy, own = machine_busy_seconds(), own_cpu_seconds()
        began = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - began
        own = own_cpu_seconds() - own
        others = max(0.0, machine_busy_seconds() - busy - own)
        record = StageRecord(key, title, seconds, own, others)
        self.records.append(record)
        if self.enabled:
            self.console.print(
                f"      {summary(result)}  [dim]({seconds:.1f} s, others "
                f"{record.others_cores:.1f} cores)[/dim]"
            )
        return result

    def others_cores(self, *keys: str) -> float:
        """The worst average load from other processes over the stages of ``keys``."""
        loads = [r.others_cores for r in self.records if r.key in keys]
        return max(loads, default=0.0)

    def as_dicts(self) -> list[dict[str, Any]]:
        """Every stage record, JSON-native."""
        return [
            {
                "key": r.key,
                "title": r.title,
                "seconds": r.seconds,
                "own_cpu_seconds": r.own_cpu_seconds,
                "others_cpu_seconds": r.others_cpu_seconds,
                "others_cores": r.others_cores,
                "own_cores": r.own_cores,
            }
            for r in self.records
        ]
