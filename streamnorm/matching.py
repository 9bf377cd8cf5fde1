"""Track-1 matching: per-query top-k over all references, then the global top N.

References are visited in blocks and every block is searched exactly (see
:class:`streamnorm.neighbours.ExactTopK`), so memory is bounded by the block sizes and
the result list, never by queries x references. Scores are the normalized ``s'(q, r)``
for normalized stores (computed as the exact inner product of the inner-product
encoding, whatever metric the stores were encoded for) and the inner product of the
L2-normalized vectors for raw stores. Ties are broken by query id, then reference id.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from streamnorm.atomic import atomic_output
from streamnorm.config import NormalizationParams, params_from_dict
from streamnorm.encoding import Role, encode
from streamnorm.errors import ModelMismatchError, OutputExistsError
from streamnorm.kernel import Float32Array, Float64Array, l2_normalize
from streamnorm.neighbours import ExactTopK
from streamnorm.progress import track
from streamnorm.sources import DescriptorSource, open_source

DEFAULT_K = 10
DEFAULT_MAX_RESULTS = 500_000
QUERY_BLOCK_ROWS = 16384
REFERENCE_BLOCK_ROWS = 65536


@dataclass
class ScoringSide:
    """Reads one side's rows in the inner-product form that defines the match score."""

    source: DescriptorSource
    role: Role
    params: NormalizationParams | None

    @classmethod
    def open(cls, path: str | Path, role: Role, ids_path: str | Path | None = None) -> ScoringSide:
        """Open a raw or normalized store for matching."""
        source = open_source(path, ids_path)
        params = params_from_dict(source.attrs["params"]) if source.is_normalized else None
        return cls(source, role, params)

    @property
    def n_rows(self) -> int:
        """Number of vectors."""
        return self.source.n_rows

    @property
    def base_dim(self) -> int:
        """Dimension of the vectors before any encoding."""
        if self.params is None:
            return self.source.dim
        return int(self.source.attrs["encoding"]["base_dim"])

    def read(self, start: int, stop: int) -> Float32Array:
        """Rows ``[start, stop)`` ready for inner-product scoring."""
        if self.params is None:
            return l2_normalize(self.source.read(start, stop))
        base = np.ascontiguousarray(self.source.vectors[start:stop, : self.base_dim])
        background = np.asarray(self.source.background[start:stop], dtype=np.float64)
        return encode(base, background, self.role, self.params, metric="ip")


def check_compatible(queries: ScoringSide, references: ScoringSide) -> None:
    """Refuse stores that cannot be scored against each other."""
    if (queries.params is None) != (references.params is None):
        raise ModelMismatchError(
            f"{queries.source.path} and {references.source.path}: one store is normalized "
            "and the other is raw; match two normalized or two raw stores"
        )
    q_print = queries.source.attrs.get("model_fingerprint")
    r_print = references.source.attrs.get("model_fingerprint")
    if q_print != r_print:
        raise ModelMismatchError(
            f"{queries.source.path} and {references.source.path} were normalized with "
            f"different models ({str(q_print)[:12]} vs {str(r_print)[:12]})"
        )
    if queries.base_dim != references.base_dim:
        raise ModelMismatchError(
            f"{queries.source.path} has dimension {queries.base_dim} but "
            f"{references.source.path} has {references.base_dim}"
        )


def id_ranks(ids: np.ndarray) -> np.ndarray:
    """Position of each id in sorted id order: a tie key that follows the ids, not the rows."""
    ranks = np.empty(len(ids), dtype=np.int64)
    ranks[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return ranks


@dataclass
class MatchResult:
    """Candidate pairs as row numbers into the query and reference stores."""

    query_rows: np.ndarray
    reference_rows: np.ndarray
    scores: Float64Array


def per_query_top_k(
    queries: ScoringSide, references: ScoringSide, k: int, progress: bool = False
) -> MatchResult:
    """Exact top-k references of every query, ties broken by reference id."""
    k = min(k, references.n_rows)
    ref_ranks = id_ranks(references.source.ids)
    query_rows, ref_rows, scores = [], [], []
    blocks = [
        (q_start, min(queries.n_rows, q_start + QUERY_BLOCK_ROWS))
        for q_start in range(0, queries.n_rows, QUERY_BLOCK_ROWS)
    ]
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    for q_start, q_stop in track(blocks, "match: query blocks", enabled=progress):
        query_block = queries.read(q_start, q_stop)
        best_scores = np.full((q_stop - q_start, 0), -np.inf)
        best_rows = np.zeros((q_stop - q_start, 0), dtype=np.int64)
        for r_start in range(0, references.n_rows, REFERENCE_BLOCK_ROWS):
            r_stop = min(references.n_rows, r_start + REFERENCE_BLOCK_ROWS)
            searcher = ExactTopK(
                references.read(r_start, r_stop), tie_keys=ref_ranks[r_start:r_stop]
            )
            found_scores, found_rows = searcher.search(query_block, min(k, r_stop - r_start))
            merged_scores = np.concatenate([best_scores, found_scores], axis=1)
            merged_rows = np.concatenate([best_rows, found_rows + r_start], axis=1)
            order = np.lexsort((ref_ranks[merged_rows], -merged_scores), axis=-1)[:, :k]
            best_scores = np.take_along_axis(merged_scores, order, 1)
            best_rows = np.take_along_axis(merged_rows, order, 1)
        query_rows.append(np.repeat(np.arange(q_start, q_stop), best_rows.shape[1]))
        ref_rows.append(best_rows.ravel())
        scores.append(best_scores.ravel())
    return MatchResult(np.concatenate(query_rows), np.concatenate(ref_rows), np.concatenate(scores))


def global_top(
    result: MatchResult, query_ids: np.ndarray, reference_ids: np.ndarray, max_results: int | None
) -> MatchResult:
    """Keep the best ``max_results`` pairs over all queries, ordered by score, then ids."""
    q_ranks = id_ranks(query_ids)[result.query_rows]
    r_ranks = id_ranks(reference_ids)[result.reference_rows]
    order = np.lexsort((r_ranks, q_ranks, -result.scores))
    if max_results is not None:
        order = order[:max_results]
    return MatchResult(result.query_rows[order], result.reference_rows[order], result.scores[order])


def write_predictions(
    path: str | Path, result: MatchResult, query_ids: np.ndarray, reference_ids: np.ndarray
) -> None:
    """Write ``query_id,reference_id,score`` as CSV (or Parquet for a ``.parquet`` path).

    The file appears under its name only once complete.
    """
    with atomic_output(path, overwrite=True) as staging:
        if Path(path).suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(
                {
                    "query_id": query_ids[result.query_rows].astype(str),
                    "reference_id": reference_ids[result.reference_rows].astype(str),
                    "score": result.scores,
                }
            )
            pq.write_table(table, staging)
        else:
            with open(staging, "w", newline="") as stream:
                writer = csv.writer(stream)
                writer.writerow(["query_id", "reference_id", "score"])
                writer.writerows(
                    zip(
                        query_ids[result.query_rows].tolist(),
                        reference_ids[result.reference_rows].tolist(),
                        map(repr, result.scores.tolist()),
                        strict=True,
                    )
                )


def match(
    queries_path: str | Path,
    references_path: str | Path,
    out: str | Path,
    *,
    k: int = DEFAULT_K,
    max_results: int | None = DEFAULT_MAX_RESULTS,
    overwrite: bool = False,
    progress: bool = False,
) -> MatchResult:
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

    Returns
    -------
    MatchResult
        The pairs written, in output order.
    """
    if Path(out).exists() and not overwrite:
        raise OutputExistsError(f"{out}: output already exists (use --overwrite to replace it)")
    queries = ScoringSide.open(queries_path, "query")
    references = ScoringSide.open(references_path, "reference")
    check_compatible(queries, references)
    candidates = per_query_top_k(queries, references, k, progress=progress)
    q_ids, r_ids = queries.source.ids, references.source.ids
    result = global_top(candidates, q_ids, r_ids, max_results)
    write_predictions(out, result, q_ids, r_ids)
    return result
