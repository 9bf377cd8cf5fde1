"""Benchmark of ``streamnorm match`` against the plain in-memory faiss search a user would write.

Random unit vectors are written to temporary zarr stores. Then:

* ``streamnorm match`` runs in this process (throughput);
* the same command runs in a child process, whose peak resident memory is read from
  the kernel's accounting for that one child (``os.wait4``), so nothing else this
  process did can inflate it;
* the baseline loads both stores into memory, adds the references to a
  ``faiss.IndexFlatIP`` and searches all queries for their top k, with faiss's default
  threads: exactly what the ISC21 scripts do.

Throughput is in query-reference pairs per second.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from streamnorm.bench_rss import peak_memory
from streamnorm.match_tiles import available_cores
from streamnorm.matching import match
from streamnorm.sources import open_source
from streamnorm.store import ChunkedStore, chunk_ranges, write_chunk

_STORE_CHUNK_ROWS = 32768


def write_random_store(path: Path, n_rows: int, dim: int, seed: int, prefix: str) -> Path:
    """A raw descriptor store of random unit vectors, generated one chunk at a time."""
    store = ChunkedStore.create(
        path, n_rows, dim, _STORE_CHUNK_ROWS, {"kind": "descriptors"}, with_background=False
    )
    for index, start, stop in chunk_ranges(n_rows, _STORE_CHUNK_ROWS):
        rng = np.random.default_rng([seed, index])
        block = rng.standard_normal((stop - start, dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        ids = np.array([f"{prefix}{row:08d}" for row in range(start, stop)])
        write_chunk(str(path), index, start, block, ids=ids)
    store.mark_complete()
    return path


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) used by this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class ChildRun:
    """Wall time, CPU time and peak resident memory of one child process."""

    seconds: float
    cpu_seconds: float
    peak_rss_bytes: int


def run_child(args: list[str]) -> ChildRun:
    """Run a command and measure it alone.

    Peak memory is the child's own ``VmHWM`` (``ru_maxrss`` would report the parent's
    high-water mark, which Linux carries through fork); CPU time is the children's
    accumulated CPU time, which does add up per child.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    measured = peak_memory(args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return ChildRun(measured.seconds, cpu, measured.peak_bytes)


def faiss_baseline(queries: Path, references: Path, k: int) -> dict[str, float]:
    """Load everything into memory and search with one ``IndexFlatIP``."""
    began = time.perf_counter()
    xq = np.ascontiguousarray(open_source(queries).vectors[:], dtype=np.float32)
    xb = np.ascontiguousarray(open_source(references).vectors[:], dtype=np.float32)
    loaded, cpu = time.perf_counter(), cpu_seconds()
    faiss.omp_set_num_threads(available_cores())
    index = faiss.IndexFlatIP(xb.shape[1])
    index.add(xb)
    index.search(xq, k)
    return {
        "load_seconds": loaded - began,
        "search_seconds": time.perf_counter() - loaded,
        "search_cpu_seconds": cpu_seconds() - cpu,
    }


def bench_match(
    n_queries: int,
    n_refs: int,
    dim: int,
    k: int,
    seed: int,
    *,
    max_results: int = 500_000,
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Time ``streamnorm match`` and a plain faiss search on the same random data.

    Parameters
    ----------
    n_queries, n_refs, dim : int
        Size of the problem.
    k : int
        Neighbours per query.
    seed : int
        Seed of the random data.
    max_results : int
        Global top N of the match.
    workdir : str or Path, optional
        Where the temporary stores go (default: the system temporary folder).

    Returns
    -------
    dict
        ``streamnorm_pairs_per_s``: the in-process ``match`` (reading the stores, writing
        the CSV); ``faiss_pairs_per_s``: index add + search, data already in memory;
        ``ratio``: streamnorm / faiss throughput (above 1: streamnorm is faster);
        ``streamnorm_peak_rss_mb``: the child process; the same rates per CPU second
        (``*_pairs_per_cpu_s``), which other load on the machine disturbs less; the
        seconds and CPU seconds behind them; ``in_memory_data_mb`` (what the baseline
        must hold); ``cores`` and the sizes.

    Notes
    -----
    Unix only (``os.wait4`` and ``resource``).
    """
    pairs = n_queries * n_refs
    with tempfile.TemporaryDirectory(prefix="streamnorm-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        queries = write_random_store(folder / "queries.zarr", n_queries, dim, seed, "Q")
        refs = write_random_store(folder / "refs.zarr", n_refs, dim, seed + 1, "R")
        # The child runs on its own, so its peak memory is that of the match alone.
        child = run_child(
            [
                sys.executable,
                "-m",
                "streamnorm",
                "match",
                str(queries),
                str(refs),
                "--out",
                str(folder / "child.csv"),
                "--k",
                str(k),
                "--max-results",
                str(max_results),
                "--quiet",
            ]
        )
        began, cpu = time.perf_counter(), cpu_seconds()
        match(queries, refs, folder / "predictions.csv", k=k, max_results=max_results)
        streamnorm_seconds = time.perf_counter() - began
        streamnorm_cpu = cpu_seconds() - cpu
        baseline = faiss_baseline(queries, refs, k)
    faiss_seconds = baseline["search_seconds"]
    return {
        # Rates and memory first (a summary line shows the first few), then the details.
        "streamnorm_pairs_per_s": pairs / streamnorm_seconds,
        "faiss_pairs_per_s": pairs / faiss_seconds,
        "ratio": faiss_seconds / streamnorm_seconds,
        "streamnorm_peak_rss_mb": child.peak_rss_bytes / 2**20,
        # Per CPU second: robust to other load on a shared machine.
        "streamnorm_pairs_per_cpu_s": pairs / streamnorm_cpu,
        "faiss_pairs_per_cpu_s": pairs / baseline["search_cpu_seconds"],
        "n_queries": n_queries,
        "n_refs": n_refs,
        "dim": dim,
        "k": k,
        "cores": available_cores(),
        "streamnorm_seconds": streamnorm_seconds,
        "streamnorm_cpu_seconds": streamnorm_cpu,
        "streamnorm_subprocess_seconds": child.seconds,
        "streamnorm_subprocess_cpu_seconds": child.cpu_seconds,
        "faiss_seconds": faiss_seconds,
        "faiss_cpu_seconds": baseline["search_cpu_seconds"],
        "faiss_load_seconds": baseline["load_seconds"],
        "in_memory_data_mb": (n_queries + n_refs) * dim * 4 / 2**20,
    }


if __name__ == "__main__":
    import json

    # python -m streamnorm.match_bench N_QUERIES N_REFS DIM K SEED
    sizes = [int(value) for value in sys.argv[1:6]] or [2000, 50000, 256, 10, 0]
    print(json.dumps(bench_match(*sizes), indent=2))
