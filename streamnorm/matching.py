"""Track-1 matching: exact per-query top-k over all references, then the global top N.

How candidates are built
------------------------
1. **Per query**, the ``k`` best references (default 10) by score, ties broken by
   reference id. This is exact: the same list as sorting all ``n_references`` scores.
2. **Globally**, those ``n_queries x k`` candidate pairs are pooled and the best
   ``max_results`` (default 500,000) are kept, ordered by score descending, then query
   id, then reference id. This is the file written, best first.

This is the candidate list of the ISC21 k-NN evaluation (``compute_metrics.py --knn k``,
k-NN per query) capped, as the ISC21 submission rules cap every track-1 file, at 500,000
predictions. The ISC21 score-normalization baseline (``score_normalization.py``) instead
asks for the best ``max_results`` pairs over *all* query-reference pairs, with no limit
per query. The two lists are equal unless some query has more than ``k`` pairs among the
global best; :attr:`RankedMatches.capped_queries` counts the queries that might (those
whose k-th candidate still made the global list), so zero proves the output is also the
exact all-pairs global top ``max_results``. Raise ``k`` until it is zero if that is the
list wanted.

Scores
------
Normalized stores are scored with ``s'(q, r) = <q, r> - beta_q b(q) - beta_r b(r)``,
computed as the exact inner product of the inner-product encoding, whatever metric the
stores were encoded for; raw stores with the inner product of the L2-normalized
vectors. Every score comes from the deterministic kernel (:mod:`streamnorm.kernel`) via
:class:`streamnorm.neighbours.ExactTopK`, so it depends only on the two vectors. Ties
are broken by ids, never by row numbers, so the order in which references arrive does
not matter.

Streaming and incremental references
------------------------------------
The work runs over tiles of query blocks x reference blocks on a thread pool
(:mod:`streamnorm.match_tiles`); memory is bounded by the tiles in flight and the
result, never by queries x references. With another scheduler than ``threads`` (see
:mod:`streamnorm.schedulers`) the queries are cut into row blocks, one dask task each:
a task opens both stores by path itself and returns its queries' exact top-k, which
does not depend on where it was computed, so the files written are byte-identical.

``match(..., state=PATH)`` also saves the per-query top-k lists
(:mod:`streamnorm.match_state`); :func:`update_match` merges a new batch of references
into them and writes predictions over every reference seen so far, byte-identical to a
full run over all of them together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from streamnorm.config import NormalizationParams, params_from_dict
from streamnorm.encoding import Role, encode, extra_dims
from streamnorm.errors import ModelMismatchError, OutputExistsError, StreamnormError
from streamnorm.kernel import Float32Array, Float64Array, IndexArray, l2_normalize
from streamnorm.locations import Location, as_text, exists, is_url
from streamnorm.match_output import write_predictions
from streamnorm.match_state import MatchState, StateMismatchError, prefix_digest
from streamnorm.match_tiles import (
    QUERY_BLOCK_ROWS,
    REFERENCE_BLOCK_ROWS,
    TilePlan,
    TopK,
    count_tiles,
    even_blocks,
    rows_digest,
    top_k_per_query,
)
from streamnorm.progress import dask_progress
from streamnorm.schedulers import LOCAL_SCHEDULERS, Runner, open_runner, resolve, task_threads
from streamnorm.sources import DescriptorSource, open_source

DEFAULT_K = 10
DEFAULT_MAX_RESULTS = 500_000
# Rows encoded at a time: bounds the float64 scratch space of the kernel.
_ENCODE_ROWS = 4096
# Rows read from a store at a time (rounded up to whole chunks): bounds decoding buffers.
_READ_ROWS = 8192


@dataclass
class ScoringSide:
    """Reads one side's rows in the inner-product form that defines the match score."""

    source: DescriptorSource
    role: Role
    params: NormalizationParams | None

    @classmethod
    def open(cls, path: Location, role: Role, ids_path: Location | None = None) -> ScoringSide:
        """Open a raw or normalized store for matching."""
        source = open_source(path, ids_path)
        params = params_from_dict(source.attrs["params"]) if source.is_normalized else None
        return cls(source, role, params)

    @property
    def n_rows(self) -> int:
        """Number of vectors."""
        return self.source.n_rows

    @property
    def fingerprint(self) -> str | None:
        """Fingerprint of the model of a normalized store; None for raw inputs."""
        value = self.source.attrs.get("model_fingerprint")
        return None if value is None else str(value)

    @property
    def base_dim(self) -> int:
        """Dimension of the vectors before any encoding."""
        if self.params is None:
            return self.source.dim
        return int(self.source.attrs["encoding"]["base_dim"])

    @property
    def scored_dim(self) -> int:
        """Dimension of the rows as scored (the inner-product encoding for normalized)."""
        if self.params is None:
            return self.source.dim
        return self.base_dim + extra_dims(self.params)

    def read(self, start: int, stop: int) -> Float32Array:
        """Rows ``[start, stop)`` ready for inner-product scoring.

        The rows are read a store chunk (or a few) at a time and encoded in sub-blocks:
        each stored row is read once, and the transient memory of decoding and encoding
        stays a chunk's worth however large the block.
        """
        out = np.empty((stop - start, self.scored_dim), dtype=np.float32)
        for piece_start, piece_stop in _pieces(start, stop, _chunk_rows(self.source.vectors)):
            target = out[piece_start - start : piece_stop - start]
            if self.params is None:
                rows = self.source.read(piece_start, piece_stop)
                for s, e in _sub_blocks(len(rows)):
                    target[s:e] = l2_normalize(rows[s:e])
                continue
            stored = np.asarray(self.source.vectors[piece_start:piece_stop])
            base = np.ascontiguousarray(stored[:, : self.base_dim], dtype=np.float32)
            background = np.asarray(
                self.source.background[piece_start:piece_stop], dtype=np.float64
            )
            for s, e in _sub_blocks(len(base)):
                target[s:e] = encode(base[s:e], background[s:e], self.role, self.params, "ip")
        return out


def _chunk_rows(vectors: Any) -> int | None:
    """Rows per stored chunk (zarr, chunked HDF5), or None when unknown."""
    chunks = getattr(vectors, "chunks", None)
    return int(chunks[0]) if chunks else None


def _pieces(start: int, stop: int, chunk_rows: int | None) -> list[tuple[int, int]]:
    """Chunk-aligned ranges of at least ``_READ_ROWS`` rows (one range when unchunked)."""
    if chunk_rows is None:
        step = _READ_ROWS
        return [(s, min(stop, s + step)) for s in range(start, stop, step)]
    # Whole chunks per read: a chunk split between reads would be decoded twice.
    step = max(1, -(-_READ_ROWS // chunk_rows)) * chunk_rows
    edges = [start, *range((start // step + 1) * step, stop, step), stop]
    return list(itertools.pairwise(edges))


def _sub_blocks(n_rows: int) -> list[tuple[int, int]]:
    return [(s, min(n_rows, s + _ENCODE_ROWS)) for s in range(0, n_rows, _ENCODE_ROWS)]


def check_compatible(queries: ScoringSide, references: ScoringSide) -> None:
    """Refuse stores that cannot be scored against each other."""
    if (queries.params is None) != (references.params is None):
        raise ModelMismatchError(
            f"{queries.source.path} and {references.source.path}: one store is normalized "
            "and the other is raw; match two normalized or two raw stores"
        )
    if queries.fingerprint != references.fingerprint:
        raise ModelMismatchError(
            f"{queries.source.path} and {references.source.path} were normalized with "
            f"different models ({str(queries.fingerprint)[:12]} vs "
            f"{str(references.fingerprint)[:12]})"
        )
    if queries.base_dim != references.base_dim:
        raise ModelMismatchError(
            f"{queries.source.path} has dimension {queries.base_dim} but "
            f"{references.source.path} has {references.base_dim}"
        )


def id_ranks(ids: np.ndarray) -> IndexArray:
    """Position of each id in sorted id order: a tie key that follows the ids, not the rows."""
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return ranks


@dataclass
class RankedMatches:
    """Predictions in output order, kept as positions into the per-query candidates.

    Attributes
    ----------
    candidate_query_ids : ndarray of str, shape (n_queries,)
    candidate_reference_ids : ndarray of str, shape (n_queries * width,)
        Each query's candidates, best first, flattened row by row.
    candidate_scores : ndarray of float64, shape (n_queries * width,)
    width : int
        Candidates per query, ``min(k, n_references)``.
    order : ndarray of int64, shape (n,)
        Flat candidate positions of the predictions, best first.
    capped_queries : int
        Queries with more references than candidates whose last candidate is in the
        output: only these could have more pairs in the all-pairs global top list.
    n_references : int
        References matched (all batches so far for an update).
    """

    candidate_query_ids: np.ndarray
    candidate_reference_ids: np.ndarray
    candidate_scores: Float64Array
    width: int
    order: IndexArray
    capped_queries: int
    n_references: int

    def __len__(self) -> int:
        return int(self.order.shape[0])

    @property
    def candidates(self) -> int:
        """Candidate pairs the output was chosen from (``n_queries x width``)."""
        return int(self.candidate_scores.shape[0])

    def block(self, part: slice) -> tuple[np.ndarray, np.ndarray, Float64Array]:
        """Query ids, reference ids and scores of the predictions in ``part``."""
        positions = self.order[part]
        return (
            self.candidate_query_ids[positions // self.width],
            self.candidate_reference_ids[positions],
            self.candidate_scores[positions],
        )

    @property
    def scores(self) -> Float64Array:
        """Scores of all predictions, in output order."""
        return self.candidate_scores[self.order]

    @property
    def query_ids(self) -> np.ndarray:
        """Query id of every prediction."""
        return self.candidate_query_ids[self.order // self.width]

    @property
    def reference_ids(self) -> np.ndarray:
        """Reference id of every prediction."""
        return self.candidate_reference_ids[self.order]


def rank_globally(
    query_ids: np.ndarray,
    scores: Float64Array,
    reference_ids: np.ndarray,
    max_results: int | None,
    n_references: int,
) -> RankedMatches:
    """Pool the per-query candidates and keep the best ``max_results`` pairs.

    Parameters
    ----------
    query_ids : ndarray of str, shape (n_queries,)
    scores : ndarray of float64, shape (n_queries, width)
    reference_ids : ndarray of str, shape (n_queries, width)
        Each query's candidates, best first.
    max_results : int or None
        None keeps every candidate.
    n_references : int
        References the candidates were chosen from.

    Returns
    -------
    RankedMatches
        Ordered by score descending, then query id, then reference id.
    """
    n_queries, width = scores.shape
    flat_scores = np.ascontiguousarray(scores).ravel()
    flat_ids = np.ascontiguousarray(reference_ids).ravel()
    query_keys = np.repeat(id_ranks(query_ids), width)
    reference_keys = np.unique(flat_ids, return_inverse=True)[1].ravel()
    order = np.lexsort((reference_keys, query_keys, -flat_scores))
    if max_results is not None:
        order = order[:max_results]
    capped = 0
    if width < n_references and width > 0:
        kept = np.zeros(n_queries * width, dtype=bool)
        kept[order] = True
        capped = int(np.count_nonzero(kept[width - 1 :: width]))
    return RankedMatches(
        candidate_query_ids=np.asarray(query_ids),
        candidate_reference_ids=flat_ids,
        candidate_scores=flat_scores,
        width=width,
        order=order.astype(np.int64, copy=False),
        capped_queries=capped,
        n_references=n_references,
    )


@dataclass(frozen=True)
class Tiling:
    """Tile sizes and threads; None picks the defaults (every core).

    With another scheduler than ``threads``, ``threads`` is the faiss/BLAS threads of
    each query-block task, ``workers`` the tasks run at once by a local pool, and
    ``query_block_rows`` the largest block of a task.
    """

    threads: int | None = None
    query_block_rows: int | None = None
    reference_block_rows: int | None = None
    query_memory_bytes: int | None = None
    workers: int | None = None

    def plan(self, n_queries: int, n_references: int) -> TilePlan:
        """The plan for a pass of ``n_queries x n_references``."""
        for name in ("threads", "query_block_rows", "reference_block_rows", "workers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise StreamnormError(f"{name.replace('_', '-')} must be at least 1, not {value}")
        tiles = count_tiles(
            n_queries,
            n_references,
            self.query_block_rows or QUERY_BLOCK_ROWS,
            self.reference_block_rows or REFERENCE_BLOCK_ROWS,
        )
        return TilePlan.make(
            tiles,
            self.threads,
            self.query_block_rows,
            self.reference_block_rows,
            self.query_memory_bytes,
        )


def _check_options(k: int | None, max_results: int | None) -> None:
    if k is not None and k < 1:
        raise StreamnormError(f"k must be at least 1, not {k}")
    if max_results is not None and max_results < 1:
        raise StreamnormError(
            f"max_results must be at least 1 (or None for all), not {max_results}"
        )


def _refuse_existing(overwrite: bool, *paths: Location | None) -> None:
    for path in paths:
        if path is not None and exists(path) and not overwrite:
            raise OutputExistsError(
                f"{path}: output already exists (use --overwrite to replace it)"
            )


def absolute(location: Location) -> str:
    """A location that still names the same data from another working directory."""
    return as_text(location) if is_url(location) else str(Path(location).resolve())


def _batch(side: ScoringSide, start: int = 0) -> dict[str, Any]:
    """What the state records about merged reference rows ``[start, n_rows)``."""
    return {
        **side.source.identity(),
        "path": absolute(side.source.path),
        "start": start,
        "stop": side.n_rows,
        "prefix_sha256": prefix_digest(side.source.ids, side.source.vectors, side.n_rows),
    }


@dataclass
class RowRange:
    """Rows ``[start, stop)`` of a side (to its end by default), renumbered from 0."""

    side: ScoringSide
    start: int
    stop: int | None = None

    @property
    def n_rows(self) -> int:
        """Rows in the range."""
        return (self.side.n_rows if self.stop is None else self.stop) - self.start

    def read(self, start: int, stop: int) -> Float32Array:
        """Rows ``[start, stop)`` of the range."""
        return self.side.read(self.start + start, self.start + stop)


@dataclass(frozen=True)
class QueryBlockJob:
    """What a task needs to search query blocks; small and picklable (paths, not rows).

    Attributes
    ----------
    queries_path, references_path : str
        The stores, opened by each task itself (a path every worker sees, or a URL).
    reference_start, reference_stop : int
        The reference rows searched (an update searches only the new ones).
    k : int
    reference_rows : int
        Rows per reference block inside a task.
    threads : int
        faiss/BLAS threads of each task.
    """

    queries_path: str
    references_path: str
    reference_start: int
    reference_stop: int
    k: int
    reference_rows: int
    threads: int


def search_query_block(
    job: QueryBlockJob, reference_keys: Any, start: int, stop: int
) -> tuple[Float64Array, IndexArray]:
    """Exact top-k of queries ``[start, stop)``: one task of a non-threads match.

    Returns
    -------
    scores : ndarray of float64, shape (stop - start, width)
    rows : ndarray of int64, same shape
        Reference rows counted from ``job.reference_start``.
    """
    queries = ScoringSide.open(job.queries_path, "query")
    references = ScoringSide.open(job.references_path, "reference")
    plan = TilePlan(
        threads=1,
        faiss_threads=job.threads,
        query_rows=stop - start,
        reference_rows=job.reference_rows,
    )
    # Sized here, where the task runs, so that tasks x threads stays within the cores.
    with task_threads(job.threads):
        top = top_k_per_query(
            RowRange(queries, start, stop),
            RowRange(references, job.reference_start, job.reference_stop),
            resolve(reference_keys),
            job.k,
            plan,
        )
    return top.scores, top.rows


_TASK_PREFIX = "match-query-block"


def _search_in_tasks(
    queries: ScoringSide,
    references: RowRange,
    reference_keys: IndexArray,
    k: int,
    tiling: Tiling,
    runner: Runner,
    progress: bool,
    digest: bool,
) -> TopK:
    """The exact top-k of every query, one dask task per query block.

    Blocks hold at most ``query_block_rows`` rows and there are at least as many as
    tasks run at once. Each task reads every reference row, so blocks are not cut finer
    than that.
    """
    job = QueryBlockJob(
        queries_path=absolute(queries.source.path),
        references_path=absolute(references.side.source.path),
        reference_start=references.start,
        reference_stop=references.start + references.n_rows,
        k=k,
        reference_rows=tiling.reference_block_rows or REFERENCE_BLOCK_ROWS,
        threads=tiling.threads or runner.task_threads,
    )
    most = min(tiling.query_block_rows or QUERY_BLOCK_ROWS, -(-queries.n_rows // runner.parallel))
    blocks = even_blocks(queries.n_rows, max(1, most))
    keys = runner.share(reference_keys)
    tasks = [
        dask.delayed(search_query_block, pure=False)(
            job, keys, start, stop, dask_key_name=f"{_TASK_PREFIX}-{index}"
        )
        for index, (start, stop) in enumerate(blocks)
    ]
    description = f"match: {len(tasks)} query blocks"
    local_bar = progress and runner.scheduler in LOCAL_SCHEDULERS
    with dask_progress(description, len(tasks), _TASK_PREFIX, enabled=local_bar):
        found = runner.compute(tasks, description, progress)
    width = min(k, references.n_rows)
    scores = np.concatenate([part[0] for part in found]).reshape(-1, width)
    rows = np.concatenate([part[1] for part in found]).reshape(-1, width)
    # The digest of the rows as scored, read here in order: tasks hash only their block.
    return TopK(scores, rows, rows_digest(queries) if digest else "")


def _top_k(
    queries: ScoringSide,
    references: RowRange,
    reference_keys: IndexArray,
    k: int,
    tiling: Tiling | None,
    scheduler: str | Runner,
    progress: bool,
    digest: bool,
) -> TopK:
    """Per-query exact top-k on the tiled thread pool (``threads``) or as dask tasks."""
    tiling = tiling or Tiling()
    plan = tiling.plan(queries.n_rows, references.n_rows)  # also checks the sizes
    with open_runner(scheduler, tiling.workers) as runner:
        if runner.in_process:
            return top_k_per_query(queries, references, reference_keys, k, plan, progress)
        return _search_in_tasks(
            queries, references, reference_keys, k, tiling, runner, progress, digest
        )


def match(
    queries_path: Location,
    references_path: Location,
    out: Location,
    *,
    k: int = DEFAULT_K,
    max_results: int | None = DEFAULT_MAX_RESULTS,
    overwrite: bool = False,
    state: Location | None = None,
    tiling: Tiling | None = None,
    scheduler: str | Runner = "threads",
    progress: bool = False,
) -> RankedMatches:
    """Match queries against references and write track-1 predictions.

    Parameters
    ----------
    queries_path, references_path : str or Path
        Two normalized stores made with the same model, or two raw inputs.
    out : str or Path
        Predictions file (``.csv`` or ``.parquet``).
    k : int
        Candidates kept per query.
    max_results : int or None
        Size of the global top list over all queries (None keeps all candidates).
    overwrite : bool
        Replace existing outputs (predictions and state).
    state : str or Path, optional
        Also save the match state here, for :func:`update_match` to merge references
        that arrive later.
    tiling : Tiling, optional
        Block sizes and threads; the result does not depend on them.
    scheduler : str or Runner
        ``threads`` (default): tiles on a thread pool here; anything else (see
        :mod:`streamnorm.schedulers`): one dask task per query block. The files written
        are byte-identical.

    Returns
    -------
    RankedMatches
        The pairs written, in output order.
    """
    _check_options(k, max_results)
    _refuse_existing(overwrite, out, state)
    queries = ScoringSide.open(queries_path, "query")
    references = ScoringSide.open(references_path, "reference")
    check_compatible(queries, references)
    reference_ids = references.source.ids
    top = _top_k(
        queries,
        RowRange(references, 0),
        id_ranks(reference_ids),
        k,
        tiling,
        scheduler,
        progress,
        digest=state is not None,
    )
    candidate_ids = reference_ids[top.rows]
    result = rank_globally(
        queries.source.ids, top.scores, candidate_ids, max_results, references.n_rows
    )
    write_predictions(out, result, overwrite=overwrite)
    if state is not None:
        MatchState(
            k=k,
            model_fingerprint=queries.fingerprint,
            base_dim=queries.base_dim,
            queries_path=absolute(queries_path),
            queries_identity=queries.source.identity(),
            queries_digest=top.query_digest,
            scores=top.scores,
            reference_ids=candidate_ids,
            seen_ids=np.sort(reference_ids),
            batches=[_batch(references)],
        ).save(state, overwrite=overwrite)
    return result


def update_match(
    state_path: Location,
    references_path: Location,
    out: Location,
    *,
    k: int | None = None,
    max_results: int | None = DEFAULT_MAX_RESULTS,
    overwrite: bool = False,
    state_out: Location | None = None,
    tiling: Tiling | None = None,
    scheduler: str | Runner = "threads",
    progress: bool = False,
) -> RankedMatches:
    """Merge a new batch of references into a match state and write predictions.

    The queries are re-read from the path recorded in the state; their ids and vectors
    must be unchanged. Only the new references are searched. The predictions cover
    every reference seen so far and are byte-identical to those of a single
    :func:`match` over all of them together. Nothing is written when the batch is
    refused.

    Parameters
    ----------
    state_path : str or Path
        A state saved by ``match(..., state=...)`` or by an earlier update.
    references_path : str or Path
        A store of new references, or a store merged before that has since grown by
        appending: then only the rows after the merged prefix are new. A new row whose
        id was seen before is refused.
    out : str or Path
        Predictions file (``.csv`` or ``.parquet``).
    k : int, optional
        Must equal the state's k when given.
    max_results : int or None
        Size of the global top list (None keeps all candidates).
    overwrite : bool
        Replace an existing predictions file (and ``state_out``).
    state_out : str or Path, optional
        Where the updated state goes; by default it replaces ``state_path``.
    tiling : Tiling, optional
    scheduler : str or Runner
        Where the search runs, as for :func:`match`.

    Raises
    ------
    StateMismatchError
        A different k, an id already merged (or a store with no new rows), or queries
        that changed.
    ModelMismatchError
        References made with another model than the state.
    """
    _check_options(k, max_results)
    target = as_text(state_out if state_out is not None else state_path)
    _refuse_existing(overwrite, out, None if target == as_text(state_path) else target)
    state = MatchState.load(state_path)
    state.check_k(k, state_path)
    references = ScoringSide.open(references_path, "reference")
    state.check_model(references.fingerprint, references.base_dim, str(references_path))
    source = references.source
    first = state.first_new_row(absolute(source.path), source.ids, source.vectors)
    new_ids = source.ids[first:]
    if not len(new_ids):
        raise StateMismatchError(
            f"{references_path}: all {first} references were already merged into the match "
            "state; nothing new to add"
        )
    state.check_new_ids(new_ids, str(references_path))
    queries = ScoringSide.open(state.queries_path, "query")
    state.check_model(queries.fingerprint, queries.base_dim, state.queries_path)
    state.check_queries(queries.source.identity())
    check_compatible(queries, references)
    top = _top_k(
        queries,
        RowRange(references, first),
        id_ranks(new_ids),
        state.k,
        tiling,
        scheduler,
        progress,
        digest=True,
    )
    if top.query_digest != state.queries_digest:
        raise StateMismatchError(
            f"{state.queries_path}: the query vectors changed since the match state was made"
        )
    updated = state.merged(top.scores, new_ids[top.rows], new_ids, _batch(references, first))
    result = rank_globally(
        queries.source.ids, updated.scores, updated.reference_ids, max_results, updated.n_seen
    )
    # Predictions first: if the state write were lost, re-running the update redoes both.
    write_predictions(out, result, overwrite=overwrite)
    updated.save(target, overwrite=True)
    return result


__all__ = [
    "DEFAULT_K",
    "DEFAULT_MAX_RESULTS",
    "QueryBlockJob",
    "RankedMatches",
    "ScoringSide",
    "Tiling",
    "check_compatible",
    "id_ranks",
    "match",
    "rank_globally",
    "search_query_block",
    "update_match",
]
