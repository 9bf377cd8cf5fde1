"""Exact per-query top-k over tiles of query blocks x reference blocks, on a thread pool.

Each reference block is read from its store once, turned into an exact searcher once
(:class:`streamnorm.neighbours.ExactTopK`: faiss proposes, the exact kernel decides) and
every query block is searched against it. Each tile yields the exact top-k of its
reference block for every query; a query's running list is merged with it under the
strict total order ``(score desc, reference key asc)``. Selecting the k best of a union
under a total order does not depend on how the union was split or in which order the
parts arrived, so the result is the same for any tile size, thread count or completion
order, and the scores are bit-for-bit those of the kernel.

Memory is bounded by the tiles in flight (about ``threads + 2`` reference blocks), the
query rows held at once (``query_memory_bytes``) and the ``n_queries x k`` result; never
by queries x references.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import faiss
import numpy as np

from streamnorm.kernel import Float32Array, Float64Array, IndexArray
from streamnorm.neighbours import ExactTopK
from streamnorm.progress import track

QUERY_BLOCK_ROWS = 8192
REFERENCE_BLOCK_ROWS = 65536
QUERY_MEMORY_BYTES = 1 << 30


class RowReader(Protocol):
    """Anything that hands out float32 rows ready for inner-product scoring."""

    @property
    def n_rows(self) -> int:
        """Number of rows."""
        ...

    def read(self, start: int, stop: int) -> Float32Array:
        """Rows ``[start, stop)``."""
        ...


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TilePlan:
    """How the work is cut and spread over threads.

    Attributes
    ----------
    threads : int
        Tiles searched at once.
    faiss_threads : int
        OpenMP threads of each faiss call; ``threads * faiss_threads`` never exceeds the
        cores, since oversubscribing halves the BLAS rate.
    query_rows, reference_rows : int
        Largest query and reference block. Blocks are cut evenly so that the last one is
        not a sliver that leaves threads idle.
    query_memory_bytes : int
        Query rows held in memory at once. When all queries fit, every reference block
        is read exactly once; otherwise once per group of queries.
    """

    threads: int
    faiss_threads: int
    query_rows: int = QUERY_BLOCK_ROWS
    reference_rows: int = REFERENCE_BLOCK_ROWS
    query_memory_bytes: int = QUERY_MEMORY_BYTES

    @classmethod
    def make(
        cls,
        n_tiles: int,
        threads: int | None = None,
        query_rows: int | None = None,
        reference_rows: int | None = None,
        query_memory_bytes: int | None = None,
    ) -> TilePlan:
        """A plan using every core: one thread per tile in flight, faiss gets the rest."""
        cores = available_cores()
        wanted = threads if threads is not None else cores
        if wanted < 1:
            raise ValueError(f"threads must be at least 1, got {wanted}")
        # More threads than tiles would only sit idle; give their cores to faiss instead.
        used = max(1, min(wanted, n_tiles))
        return cls(
            threads=used,
            faiss_threads=max(1, cores // used),
            query_rows=query_rows or QUERY_BLOCK_ROWS,
            reference_rows=reference_rows or REFERENCE_BLOCK_ROWS,
            query_memory_bytes=query_memory_bytes or QUERY_MEMORY_BYTES,
        )


def even_blocks(n_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of at most ``max_rows`` rows, all of nearly equal size."""
    if n_rows <= 0:
        return []
    count = -(-n_rows // max(1, max_rows))
    edges = [n_rows * i // count for i in range(count + 1)]
    return list(itertools.pairwise(edges))


def count_tiles(n_queries: int, n_references: int, query_rows: int, reference_rows: int) -> int:
    """Number of tiles of one pass (used to size the thread pool)."""
    return len(even_blocks(n_queries, query_rows)) * len(even_blocks(n_references, reference_rows))


@dataclass
class TopK:
    """Best references of every query.

    Attributes
    ----------
    scores : ndarray of float64, shape (n_queries, width)
        Exact scores, best first; ``width = min(k, n_references)``.
    rows : ndarray of int64, shape (n_queries, width)
        Reference row numbers.
    query_digest : str
        SHA-256 of the query rows as scored, in row order (independent of the blocks).
    """

    scores: Float64Array
    rows: IndexArray
    query_digest: str


def select_top(scores: Float64Array, keys: IndexArray, k: int) -> tuple[Float64Array, IndexArray]:
    """Per row, the ``k`` best scores under ``(score desc, key asc)`` and their positions.

    ``(score, key)`` is a strict total order when keys are unique within a row, so the
    selection is unique: the same whatever order the entries come in.
    """
    order = np.lexsort((keys, -scores), axis=-1)[:, :k]
    return np.take_along_axis(scores, order, 1), order.astype(np.int64, copy=False)


class _Running:
    """The running top-k of one query block, merged tile by tile under a lock."""

    def __init__(self, n_rows: int) -> None:
        self.scores = np.empty((n_rows, 0), dtype=np.float64)
        self.rows = np.empty((n_rows, 0), dtype=np.int64)
        self.lock = threading.Lock()

    def merge(self, scores: Float64Array, rows: IndexArray, keys: IndexArray, k: int) -> None:
        with self.lock:
            all_scores = np.concatenate([self.scores, scores], axis=1)
            all_rows = np.concatenate([self.rows, rows], axis=1)
            self.scores, order = select_top(all_scores, keys[all_rows], k)
            self.rows = np.take_along_axis(all_rows, order, 1)


def _searcher(block: Float32Array, keys: IndexArray) -> ExactTopK:
    """An exact searcher whose database is a view of the faiss index (one copy, not two)."""
    index = faiss.IndexFlatIP(block.shape[1])
    index.add(np.ascontiguousarray(block, dtype=np.float32))
    stored = faiss.rev_swig_ptr(index.get_xb(), block.size).reshape(block.shape)
    return ExactTopK(stored, index=index, tie_keys=keys)


def top_k_per_query(
    queries: RowReader,
    references: RowReader,
    reference_keys: IndexArray,
    k: int,
    plan: TilePlan,
    progress: bool = False,
) -> TopK:
    """Exact top-k references of every query, ties broken by ``reference_keys``.

    Parameters
    ----------
    queries, references : RowReader
        Rows already in the inner-product form of the score.
    reference_keys : ndarray of int64, shape (n_references,)
        Tie keys (smaller wins): the rank of each reference's id, so that ties follow
        the ids and not the rows.
    k : int
        Neighbours per query, at least 1.
    plan : TilePlan

    Returns
    -------
    TopK
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_queries = queries.n_rows
    width = min(k, references.n_rows)
    scores = np.empty((n_queries, width), dtype=np.float64)
    rows = np.empty((n_queries, width), dtype=np.int64)
    digest = hashlib.sha256()
    reference_blocks = even_blocks(references.n_rows, plan.reference_rows)
    with ThreadPoolExecutor(plan.threads, thread_name_prefix="match") as pool:
        for group_start, group_stop in _query_groups(queries, plan):
            query_blocks = [
                (group_start + start, group_start + stop)
                for start, stop in even_blocks(group_stop - group_start, plan.query_rows)
            ]
            blocks = list(pool.map(partial(_read_in_worker, plan, queries), query_blocks))
            for block in blocks:
                digest.update(np.ascontiguousarray(block).data)
            running = [_Running(len(block)) for block in blocks]
            tiles = _submit_tiles(
                pool, plan, references, reference_keys, reference_blocks, blocks, running, k
            )
            _wait(tiles, progress, f"match: {len(tiles)} tiles")
            for (start, stop), done in zip(query_blocks, running, strict=True):
                scores[start:stop], rows[start:stop] = done.scores, done.rows
    return TopK(scores, rows, digest.hexdigest())


def rows_digest(rows: RowReader, block_rows: int = QUERY_BLOCK_ROWS) -> str:
    """SHA-256 of all rows in order: :attr:`TopK.query_digest` without the search."""
    digest = hashlib.sha256()
    for start, stop in even_blocks(rows.n_rows, block_rows):
        digest.update(np.ascontiguousarray(rows.read(start, stop)).data)
    return digest.hexdigest()


def _query_groups(queries: RowReader, plan: TilePlan) -> list[tuple[int, int]]:
    """Query rows held at once: all of them unless they exceed the memory budget."""
    probe = queries.read(0, 1)
    row_bytes = max(1, probe.shape[1] * probe.itemsize)
    return even_blocks(queries.n_rows, max(1, plan.query_memory_bytes // row_bytes))


def _read_in_worker(plan: TilePlan, rows: RowReader, block: tuple[int, int]) -> Float32Array:
    # faiss's OpenMP thread count is a per-thread setting, so it is set in the worker.
    faiss.omp_set_num_threads(plan.faiss_threads)
    return rows.read(*block)


def _submit_tiles(
    pool: ThreadPoolExecutor,
    plan: TilePlan,
    references: RowReader,
    reference_keys: IndexArray,
    reference_blocks: list[tuple[int, int]],
    query_blocks: list[Float32Array],
    running: list[_Running],
    k: int,
) -> list[Future[None]]:
    """Queue, in order, each reference block's load and then its searches.

    The queue is first in, first out, so a block's load is always taken before any of
    its searches: a search that waits for its block waits for a load already running,
    never for one queued behind it. Loading block ``i + 1`` is queued before the
    searches of block ``i``, so reading overlaps searching. A block is dropped when its
    last search ends, which keeps about ``threads + 2`` blocks alive.
    """
    loads: dict[int, Future[ExactTopK]] = {}
    queued: set[int] = set()
    pending = dict.fromkeys(range(len(reference_blocks)), len(query_blocks))
    lock = threading.Lock()
    # One block read at a time: reading is short next to searching, and its scratch
    # space (decoding, normalizing) is the largest transient memory of the pass.
    reading = threading.Lock()

    def load(i: int) -> ExactTopK:
        start, stop = reference_blocks[i]
        faiss.omp_set_num_threads(plan.faiss_threads)
        with reading:
            block = references.read(start, stop)
        return _searcher(block, reference_keys[start:stop])

    def search(i: int, j: int) -> None:
        searcher = loads[i].result()
        faiss.omp_set_num_threads(plan.faiss_threads)
        found_scores, found_rows = searcher.search(query_blocks[j], min(k, searcher.size))
        running[j].merge(found_scores, found_rows + reference_blocks[i][0], reference_keys, k)
        with lock:
            pending[i] -= 1
            if pending[i] == 0:
                del loads[i]

    tiles: list[Future[None]] = []
    for i in range(len(reference_blocks)):
        for ahead in (i, i + 1):
            if ahead < len(reference_blocks) and ahead not in queued:
                queued.add(ahead)
                with lock:
                    loads[ahead] = pool.submit(load, ahead)
        tiles.extend(pool.submit(search, i, j) for j in range(len(query_blocks)))
    return tiles


def _wait(tiles: list[Future[None]], progress: bool, description: str) -> None:
    """Wait for every tile; on the first failure cancel the rest and re-raise."""
    try:
        for tile in track(tiles, description, enabled=progress):
            tile.result()
    except BaseException:
        for tile in tiles:
            tile.cancel()
        raise
