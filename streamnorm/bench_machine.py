"""What the benchmark ran on, and the machine's own matrix-multiply limit.

Every throughput the benchmark reports is compared against the float32 GEMM rate that
numpy reaches on the same machine in the same run: on a shared machine absolute numbers
drift from minute to minute, ratios measured side by side do not.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from threadpoolctl import threadpool_info, threadpool_limits

from streamnorm import provenance

_PACKAGES = ("streamnorm", "numpy", "faiss-cpu", "zarr", "dask", "distributed", "threadpoolctl")


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo``, or what :mod:`platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    return platform.processor() or platform.machine()


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose code does the measured work."""
    return {"python": platform.python_version(), **provenance.package_versions(_PACKAGES)}


def machine_description() -> dict[str, Any]:
    """Cores, memory, CPU model, BLAS/OpenMP pools and package versions.

    Returns
    -------
    dict
        JSON-serializable description; ``threadpools`` is
        :func:`threadpoolctl.threadpool_info` after numpy and faiss are imported, so it
        shows both libraries' BLAS and OpenMP pools and their default thread counts.
    """
    import faiss  # noqa: F401  (imported so that its BLAS and OpenMP pools are listed)

    memory = psutil.virtual_memory()
    return {
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model(),
        "memory_bytes": int(memory.total),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threadpools": threadpool_info(),
        "versions": package_versions(),
    }


def sgemm_rate(size: int, reps: int, seed: int = 0) -> dict[str, float]:
    """Best float32 GEMM rate numpy reaches on square ``size`` matrices.

    Every core is used: this is the ceiling every other figure is held against, so it
    must be the machine's, not a restricted one.

    Parameters
    ----------
    size : int
        Rows, columns and inner dimension of the product.
    reps : int
        Timed repetitions after one warm-up; the fastest counts (noise only slows).

    Returns
    -------
    dict
        ``gflops`` (best), ``median_gflops``, ``seconds`` (best), ``size``, ``reps``,
        ``threads``.
    """
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((size, size), dtype=np.float32)
    right = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), dtype=np.float32)
    threads = os.cpu_count() or 1
    times = []
    # Every core, explicitly: concurrent threadpool_limits contexts elsewhere in this
    # process (one per pipeline task) can leave OpenBLAS's global count lowered.
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(left, right, out=out)  # warm-up: thread pool start, page faults
        for _ in range(max(1, reps)):
            began = time.perf_counter()
            np.matmul(left, right, out=out)
            times.append(time.perf_counter() - began)
    flops = 2.0 * size**3
    return {
        "gflops": flops / min(times) / 1e9,
        "median_gflops": flops / float(np.median(times)) / 1e9,
        "seconds": min(times),
        "size": size,
        "reps": len(times),
        "threads": threads,
    }
