"""Name OpenBLAS's kernels from the CPU's instruction sets before faiss loads its own.

faiss-cpu wheels bundle an OpenBLAS that picks its kernels by CPU model. On a model it
does not know it falls back to generic SSE3 kernels ("Prescott"): measured on a Xeon
of model 207 (Emerald Rapids), every exact faiss search ran about 5x slower (31 against
157 GFLOP/s for 4096 x 100k x 256). OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when it
is loaded, so streamnorm sets it on import, from the instruction sets the CPU reports,
and only when the user has not set it.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

CORETYPE_VARIABLE = "OPENBLAS_CORETYPE"
# Kernel families by the instruction sets they need, best first.
_KERNELS: tuple[tuple[str, frozenset[str]], ...] = (
    ("SkylakeX", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})),
    ("Haswell", frozenset({"avx2", "fma"})),
)


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU listed (empty where unreadable)."""
    try:
        with open(cpuinfo) as listing:
            for line in listing:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def kernels_for(flags: frozenset[str]) -> str | None:
    """The best OpenBLAS kernel family these instruction sets can run, if any."""
    for name, needed in _KERNELS:
        if needed <= flags:
            return name
    return None


def choose_openblas_kernels(
    environ: MutableMapping[str, str] | None = None, cpuinfo: str | Path = "/proc/cpuinfo"
) -> str | None:
    """Set ``OPENBLAS_CORETYPE`` from the CPU's flags unless it is set already.

    Parameters
    ----------
    environ : mapping, optional
        The environment to change (``os.environ`` by default, so child processes
        inherit the choice).
    cpuinfo : str or Path
        Where the CPU's flags are listed.

    Returns
    -------
    str or None
        The kernel family set, or None when nothing was changed.
    """
    environ = os.environ if environ is None else environ
    if CORETYPE_VARIABLE in environ:
        return None
    chosen = kernels_for(cpu_flags(cpuinfo))
    if chosen is not None:
        environ[CORETYPE_VARIABLE] = chosen
    return chosen
