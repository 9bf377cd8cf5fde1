"""The throughput measurements of the benchmark, one function per line item.

Each function does its work on the data of :mod:`streamnorm.bench_data` and returns a
plain dict of figures. Rates are in vectors per second and in *effective* GFLOP/s, the
``2 * n_train * d`` flops of one vector's brute-force search divided by the time; that
makes the pipeline, a hand-written faiss search and a GEMM directly comparable.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from streamnorm.bench_data import BenchData, BenchSizes
from streamnorm.bench_rss import peak_memory
from streamnorm.encoding import Role
from streamnorm.kernel import Float32Array, l2_normalize
from streamnorm.model import Normalizer
from streamnorm.neighbours import ExactTopK
from streamnorm.pipeline import normalize
from streamnorm.schedulers import default_workers
from streamnorm.sources import open_source
from streamnorm.store import chunk_ranges

ROLE: Role = "query"


def rates(rows: int, seconds: float, sizes: BenchSizes) -> dict[str, float]:
    """Vectors/s and effective GFLOP/s of ``rows`` searched in ``seconds``."""
    seconds = max(seconds, 1e-9)
    return {
        "seconds": seconds,
        "rows": rows,
        "vectors_per_s": rows / seconds,
        "gflops": rows * sizes.flops_per_vector / seconds / 1e9,
    }


def search_depth(model: Normalizer) -> tuple[int, int]:
    """The statistic's depth and faiss's candidate count (depth plus margin)."""
    depth = model.params.depth
    return depth, min(model.n_train_, depth + model.params.candidate_margin)


def plain_faiss(data: BenchData, sizes: BenchSizes) -> dict[str, Any]:
    """What a user would write by hand: every vector in memory, one ``index.search`` call.

    The candidate depth is streamnorm's (``depth + margin``) so both do the same search;
    loading and normalizing the vectors is timed apart and left out of the rate, which
    favours this baseline.
    """
    model = Normalizer.load(data.model)
    _, fetch = search_depth(model)
    # The model's index is the IndexFlatIP a user would build over the training vectors.
    index = model.index_
    assert index is not None
    began = time.perf_counter()
    vectors = np.ascontiguousarray(open_source(data.vectors).vectors[:], dtype=np.float32)
    faiss.normalize_L2(vectors)
    loaded = time.perf_counter() - began
    began = time.perf_counter()
    index.search(vectors, fetch)
    searched = time.perf_counter() - began
    return {
        **rates(len(vectors), searched, sizes),
        "load_seconds": loaded,
        "k": fetch,
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def pipeline_run(
    source: Path, model: Path, out: Path, sizes: BenchSizes, **options: Any
) -> dict[str, Any]:
    """One ``streamnorm.pipeline.normalize`` call; its rate over the rows it added."""
    result = normalize(source, model, ROLE, out, chunk_rows=sizes.chunk_rows, **options)
    return {
        **rates(result.rows_added, result.seconds, sizes),
        "chunks_computed": result.chunks_computed,
        "chunks_reused": result.chunks_reused,
    }


def task_threads(threads: int) -> None:
    """Size faiss's OpenMP team inside a task, as the pipeline's tasks do.

    OpenMP thread counts belong to the calling thread, so this is safe from concurrent
    tasks. Neither path of the comparison calls numpy's BLAS, whose thread count is
    process-global, so it is left alone.
    """
    faiss.omp_set_num_threads(threads)


def _timed_pool(
    pool: ThreadPoolExecutor, work: Callable[[Float32Array], object], blocks: Sequence[Any]
) -> float:
    began = time.perf_counter()
    list(pool.map(work, blocks))
    return time.perf_counter() - began


def determinism_cost(data: BenchData, sizes: BenchSizes) -> dict[str, Any]:
    """Deterministic search (faiss candidates + exact rescoring + certificate) vs raw faiss.

    Both search the same pipeline-sized blocks with the pipeline's parallel layout (one
    task per core, the cores shared out as threads inside each task). Repetitions are
    interleaved and alternate which path goes first, so drift in the machine's load
    hits both; the best time of each path counts.
    """
    model = Normalizer.load(data.model)
    depth, fetch = search_depth(model)
    source = open_source(data.vectors)
    ranges = list(chunk_ranges(source.n_rows, sizes.chunk_rows))[: sizes.determinism_blocks]
    blocks = [l2_normalize(source.read(start, stop)) for _, start, stop in ranges]
    index = model.index_
    assert index is not None
    searcher = ExactTopK(model.training_vectors, index, margin=model.params.candidate_margin)
    tasks = default_workers()
    threads = max(1, default_workers() // tasks)

    def raw(block: Float32Array) -> object:
        task_threads(threads)
        return index.search(block, fetch)

    def exact(block: Float32Array) -> object:
        task_threads(threads)
        return searcher.search(block, depth)

    times: dict[str, list[float]] = {"raw": [], "exact": []}
    with ThreadPoolExecutor(tasks) as pool:
        for rep in range(max(1, sizes.determinism_reps)):
            order = [("raw", raw), ("exact", exact)]
            for name, work in order if rep % 2 == 0 else order[::-1]:
                times[name].append(_timed_pool(pool, work, blocks))
    rows = sum(len(block) for block in blocks)
    raw_rate = rates(rows, min(times["raw"]), sizes)
    exact_rate = rates(rows, min(times["exact"]), sizes)
    ratio = exact_rate["vectors_per_s"] / raw_rate["vectors_per_s"]
    return {
        "raw": raw_rate,
        "exact": exact_rate,
        "throughput_ratio": ratio,
        "cost": 1.0 - ratio,
        "times": times,
        "blocks": len(blocks),
        "block_rows": sizes.chunk_rows,
        "tasks": tasks,
        "threads_per_task": threads,
        "k": depth,
        "faiss_k": fetch,
        "rows_widened_to_exhaustive": searcher.fallback_rows,
    }


def _local_cluster(workers: int) -> Any:
    """A LocalCluster shaped like the pipeline's ``local-cluster:N``."""
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        # Workers log a heartbeat error when the scheduler closes first; that is harmless.
        silence_logs=logging.CRITICAL,
    )


def cluster_startup_seconds(workers: int) -> float:
    """Start, connect to and close a cluster shaped like ``local-cluster:<workers>``."""
    from distributed import Client

    began = time.perf_counter()
    with _local_cluster(workers) as cluster, Client(cluster):
        pass
    return time.perf_counter() - began


def cluster_run(data: BenchData, sizes: BenchSizes, workers: int, out: Path) -> dict[str, Any]:
    """Normalize on ``local-cluster:<workers>``; the compute phase excludes start-up.

    The pipeline starts and closes its own cluster inside the call, so the start-up and
    shutdown of an identical cluster are timed alone just before and subtracted.
    """
    startup = cluster_startup_seconds(workers)
    scheduler = f"local-cluster:{workers}"
    run = pipeline_run(data.vectors, data.model, out, sizes, scheduler=scheduler)
    compute = max(run["seconds"] - startup, 1e-9)
    return {
        "total": run,
        "startup_seconds": startup,
        "compute": rates(run["rows"], compute, sizes),
        "threads_per_task": max(1, default_workers() // workers),
    }


def one_thread_cluster_run(
    data: BenchData, sizes: BenchSizes, workers: int, out: Path
) -> dict[str, Any]:
    """Normalize on an already running cluster of one-thread workers, by its address.

    For a scheduler address the pipeline gives every task one thread, so one worker
    uses exactly one core: this isolates scaling with cores, which ``local-cluster:1``
    (one task with every core's threads) does not. The cluster starts before the timed
    call, so the time is the compute phase.
    """
    with _local_cluster(workers) as cluster:
        run = pipeline_run(
            data.scaling, data.model, out, sizes, scheduler=cluster.scheduler_address
        )
    return {"total": run, "startup_seconds": 0.0, "compute": run, "threads_per_task": 1}


def normalize_command(source: Path, model: Path, out: Path, sizes: BenchSizes) -> list[str]:
    """The ``python -m streamnorm normalize`` command line of one memory measurement."""
    return [
        sys.executable,
        "-m",
        "streamnorm",
        "normalize",
        str(source),
        "--model",
        str(model),
        "--role",
        ROLE,
        "--out",
        str(out),
        "--chunk-rows",
        str(sizes.chunk_rows),
        "--quiet",
    ]


def peak_rss(source: Path, data: BenchData, sizes: BenchSizes, out: Path) -> dict[str, Any]:
    """Peak RSS of ``streamnorm normalize`` of one input, in a fresh process.

    A fresh process inherits nothing from this one or from an earlier measurement;
    see :mod:`streamnorm.bench_rss`.
    """
    measured = peak_memory(normalize_command(source, data.model, out, sizes))
    return {
        "rows": open_source(source).n_rows,
        "peak_bytes": measured.peak_bytes,
        "hwm_bytes": measured.hwm_bytes,
        "polled_peak_bytes": measured.polled_peak_bytes,
        "seconds": measured.seconds,
    }


def match_line(sizes: BenchSizes) -> dict[str, Any]:
    """The matching benchmark of ``streamnorm.match_bench``, when that module exists."""
    try:
        from streamnorm.match_bench import bench_match
    except ImportError as error:
        return {"skipped": f"streamnorm.match_bench.bench_match is not available ({error})"}
    result = bench_match(
        n_queries=sizes.match_queries,
        n_refs=sizes.match_refs,
        dim=sizes.dim,
        k=sizes.match_k,
        seed=sizes.seed,
    )
    return {"result": dict(result)}
