"""Peak resident memory of a command, measured in a fresh child process.

``getrusage(RUSAGE_CHILDREN)`` reports the largest peak of *all* children reaped so far,
so a second, smaller measurement would be hidden behind the first. Each command is
therefore its own process, reaped with ``wait4``, which returns that one child's peak as
the kernel counted it. The process tree is also polled every 20 ms, which catches the
memory of grandchildren (worker pools) that ``wait4`` does not include.
"""

from __future__ import annotations

import os
import subprocess
import sys
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
    """The larger of the kernel's and the polled peak."""
    kernel_peak_bytes: int | None
    """``ru_maxrss`` of the child from ``wait4`` (None where unavailable)."""
    polled_peak_bytes: int
    """Largest sum of the resident sizes of the process tree seen while polling."""
    seconds: float
    returncode: int


def _tree_rss(process: psutil.Process) -> int:
    """Resident bytes of a process and all its descendants; 0 once it is gone."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue  # a descendant that just exited holds no memory any more
    return total


def _maxrss_bytes(maxrss: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def _wait(child: subprocess.Popen[bytes], watched: psutil.Process) -> tuple[int, int | None, int]:
    """Poll until the child exits; its exit code, kernel peak and polled peak."""
    polled = 0
    while True:
        if hasattr(os, "wait4"):
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                code = os.waitstatus_to_exitcode(status)
                # Tell Popen the child is reaped, so it does not try again.
                child.returncode = code
                return code, _maxrss_bytes(usage.ru_maxrss), polled
        elif child.poll() is not None:
            return child.returncode, None, polled
        polled = max(polled, _tree_rss(watched))
        time.sleep(POLL_SECONDS)


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
        code, kernel, polled = _wait(child, psutil.Process(child.pid))
        seconds = time.perf_counter() - began
        if code != 0:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{' '.join(command)} failed ({code}): " + " | ".join(tail))
    return PeakMemory(max(kernel or 0, polled), kernel, polled, seconds, code)
