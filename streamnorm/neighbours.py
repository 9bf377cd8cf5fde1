"""Exact, deterministic top-k search: faiss proposes, the exact kernel decides.

faiss finds candidates quickly but its float32 scores wobble in the last bits with the
batch. The final neighbours and similarities are therefore recomputed with
:mod:`streamnorm.kernel` and selected by ``(score desc, tie key asc)``. A certificate
proves that no vector outside the candidate set could have made the cut: faiss's error
is bounded, so if the k-th exact score beats the lowest candidate's faiss score by more
than that bound, the selection is the true one. Rows without the certificate are searched
again with more candidates, and finally against the whole database with the exact kernel.
The answer is thus the unique exact top-k, whatever path produced it.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from streamnorm.kernel import (
    Float32Array,
    Float64Array,
    IndexArray,
    all_scores,
    candidate_scores,
)

_UNIT_ROUNDOFF = 2.0**-24
# Above this many candidates per row, the exhaustive exact pass is cheaper than faiss.
_EXHAUSTIVE_FRACTION = 0.25


def float32_dot_error_bound(dim: int, max_norm_product: float) -> float:
    """Upper bound on the error of any float32 dot-product evaluation order.

    The classical bound is ``gamma_d * sum|a_i b_i| <= gamma_d * |a| |b|`` with
    ``gamma_d = d u / (1 - d u)``. It is doubled to cover faiss's own norm handling and
    the (much smaller) rounding of the float64 reference.
    """
    gamma = dim * _UNIT_ROUNDOFF / (1.0 - dim * _UNIT_ROUNDOFF)
    return 2.0 * gamma * max_norm_product + 1e-12


@dataclass
class ExactTopK:
    """Exact top-k inner-product search over a fixed float32 database.

    Parameters
    ----------
    database : ndarray of float32, shape (n, d)
        The vectors searched, C-contiguous.
    index : faiss.Index, optional
        An exact inner-product index over ``database`` used to propose candidates.
        Built on demand when omitted.
    tie_keys : ndarray of int64, shape (n,), optional
        Keys that break exact score ties (smaller wins); the row number by default.
    margin : int
        Extra candidates fetched beyond k, so the certificate usually holds first time.
    """

    database: Float32Array
    index: faiss.Index | None = None
    tie_keys: IndexArray | None = None
    margin: int = 8

    def __post_init__(self) -> None:
        self.database = np.ascontiguousarray(self.database, dtype=np.float32)
        if self.index is None:
            self.index = faiss.IndexFlatIP(self.database.shape[1])
            self.index.add(self.database)
        if self.tie_keys is None:
            self.tie_keys = np.arange(self.database.shape[0], dtype=np.int64)
        norms = np.sqrt(np.einsum("ij,ij->i", self.database, self.database, dtype=np.float64))
        self._max_norm = float(norms.max()) if norms.size else 0.0
        self.fallback_rows = 0

    @property
    def size(self) -> int:
        """Number of database vectors."""
        return int(self.database.shape[0])

    def search(self, queries: Float32Array, k: int) -> tuple[Float64Array, IndexArray]:
        """Exact top-k rows of the database for each query.

        Parameters
        ----------
        queries : ndarray of float32, shape (b, d)
        k : int
            Number of neighbours, at most the number of vectors searched.

        Returns
        -------
        scores : ndarray of float64, shape (b, k)
            Exact similarities, descending.
        rows : ndarray of int64, shape (b, k)
            Database row numbers, ties ordered by ``tie_keys``.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        context = self._prepare(queries)
        sizes = self._searchable_sizes(queries.shape[0], context)
        if k < 1 or (sizes.size and k > sizes.min()):
            raise ValueError(f"k={k} must be between 1 and the number of vectors searched")
        count = queries.shape[0]
        scores = np.empty((count, k), dtype=np.float64)
        rows = np.empty((count, k), dtype=np.int64)
        query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        bound = float32_dot_error_bound(queries.shape[1], 1.0)
        pending = np.arange(count)
        fetch = k + self.margin
        while pending.size:
            complete = fetch >= sizes[pending]
            wide = ~complete & (fetch >= sizes[pending] * _EXHAUSTIVE_FRACTION)
            for row in pending[wide]:
                self.fallback_rows += 1
                scores[row], rows[row] = self._exhaustive(queries[row], int(row), k, context)
            pending = pending[~wide]
            if not pending.size:
                break
            approx, found = self._propose(queries[pending], pending, fetch, context)
            valid = found >= 0  # faiss pads with -1 when fewer vectors than asked exist
            exact = candidate_scores(queries[pending], self.database, np.where(valid, found, 0))
            exact[~valid] = -np.inf
            top_scores, top_rows = self._select(exact, found, k)
            scores[pending], rows[pending] = top_scores, top_rows
            # The lowest faiss score among the candidates caps every unseen vector.
            lowest = np.where(valid, approx, np.inf).min(axis=1).astype(np.float64)
            margin = bound * query_norms[pending] * self._max_norm
            certified = complete[~wide] | (top_scores[:, -1] > lowest + margin)
            pending = pending[~certified]
            fetch *= 4
        return scores, rows

    # -- hooks that an index with restricted search sets (IVF) overrides ----------------
    def _prepare(self, queries: Float32Array) -> object:
        return None

    def _searchable_sizes(self, count: int, context: object) -> IndexArray:
        return np.full(count, self.size, dtype=np.int64)

    def _propose(
        self, queries: Float32Array, rows: IndexArray, fetch: int, context: object
    ) -> tuple[Float32Array, IndexArray]:
        assert self.index is not None
        approx, found = self.index.search(queries, min(fetch, self.size))
        return approx, found.astype(np.int64, copy=False)

    def _select(
        self, exact: Float64Array, found: IndexArray, k: int
    ) -> tuple[Float64Array, IndexArray]:
        assert self.tie_keys is not None
        keys = np.where(found >= 0, self.tie_keys[np.maximum(found, 0)], np.iinfo(np.int64).max)
        order = np.lexsort((keys, -exact), axis=-1)[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(found, order, 1)

    def _exhaustive(
        self, query: Float32Array, row: int, k: int, context: object
    ) -> tuple[Float64Array, IndexArray]:
        return self._exhaustive_over(query, None, k)

    def _exhaustive_over(
        self, query: Float32Array, members: IndexArray | None, k: int
    ) -> tuple[Float64Array, IndexArray]:
        """Exact top-k over some database rows (all of them when ``members`` is None)."""
        assert self.tie_keys is not None
        if members is None:
            exact, keys = all_scores(query, self.database), self.tie_keys
            members = np.arange(self.size, dtype=np.int64)
        else:
            exact, keys = all_scores(query, self.database[members]), self.tie_keys[members]
        order = np.lexsort((keys, -exact))[:k]
        return exact[order], members[order]
