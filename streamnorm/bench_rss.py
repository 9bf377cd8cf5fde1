"""Peak resident memory of a command, measured in a fresh child process.

The kernel's per-process accounting (``getrusage``/``wait4``: ``ru_maxrss``) cannot be
used here: Linux carries the high-water mark across ``exec``, so a child forked from a
large process reports at least the parent's size at fork time (a child of this 500 MB
benchmark "peaks" at 500 MB even if it runs ``python -c pass``), and
``RUSAGE_CHILDREN`` is moreover the maximum over every child reaped so far. Instead the
child's process tree is polled every 20 ms for ``VmHWM``, the high-water mark of each
process's *own* address space, which a fresh ``exec`` starts from zero; only growth in
the last 20 ms before exit could be missed. The summed current RSS of the tree is
polled as well, a lower bound that also works where ``/proc`` does not exist.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

POLL_SECONDS = 0.02


@dataclass(frozen=True)
class PeakMemory:
    """Memory and time of one finished command."""

    peak_bytes: int
    """The high-water mark when known, else the polled peak."""
    hwm_bytes: int | None
    """Sum over the process tree of each process's ``VmHWM`` (None without ``/proc``)."""
    polled_peak_bytes: int
    """Largest sum of the resident sizes of the process tree seen while polling."""
    seconds: float
    returncode: int


def high_water_mark(pid: int) -> int | None:
    """``VmHWM`` of a process in bytes, or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class _TreeWatcher:
    """Running maxima of a process tree's memory, one :meth:`sample` at a time."""

    def __init__(self, root: psutil.Process) -> None:
        self.root = root
        self.hwm: dict[int, int] = {}
        self.polled = 0

    def sample(self) -> None:
        try:
            members = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return  # the root has exited; its last sample stands
        total = 0
        for member in members:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                continue  # a descendant that just exited holds no memory any more
            mark = high_water_mark(member.pid)
            if mark is not None:
                self.hwm[member.pid] = max(self.hwm.get(member.pid, 0), mark)
        self.polled = max(self.polled, total)

    @property
    def hwm_total(self) -> int | None:
        return sum(self.hwm.values()) if self.hwm else None


def peak_memory(command: list[str], cwd: str | Path | None = None) -> PeakMemory:
    """Run ``command`` to completion and measure its peak resident memory.

    Parameters
    ----------
    command : list of str
        The program and its arguments.
    cwd : str or Path, optional
        Working directory of the child.

    Returns
    -------
    PeakMemory

    Raises
    ------
    RuntimeError
        When the command fails; the message ends with its last lines of stderr.
    """
    with tempfile.TemporaryFile() as errors:
        began = time.perf_counter()
        # stderr goes to a file, not a pipe: a full pipe would stall the child.
        child = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors)
        watcher = _TreeWatcher(psutil.Process(child.pid))
        while child.poll() is None:
            watcher.sample()
            time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - began
        if child.returncode != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(
                f"{' '.join(command)} failed ({child.returncode}): " + " | ".join(tail)
            )
    hwm = watcher.hwm_total
    peak = hwm if hwm is not None else watcher.polled
    return PeakMemory(peak, hwm, watcher.polled, seconds, child.returncode)
