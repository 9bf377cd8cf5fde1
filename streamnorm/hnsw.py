"""An HNSW training index: graph-proposed candidates, exactly rescored.

faiss's HNSW search walks the graph from a fixed entry point, one query at a time, so the
candidates it proposes for a vector depend on that vector and the graph only, never on
the batch or the thread count. The candidates are then rescored with the exact kernel
and selected by ``(score desc, row asc)``, as for the exact index. What HNSW gives up is
completeness: a true neighbour the walk never reaches is missed, and no certificate can
say otherwise. The result is still a pure function of the vector and the saved graph.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from streamnorm.kernel import Float32Array, Float64Array, IndexArray, candidate_scores
from streamnorm.neighbours import ExactTopK

# Graph degree: faiss's usual choice for descriptors of a few hundred dimensions.
DEFAULT_NEIGHBOURS = 32
_BUILD_DEPTH = 40


def build_hnsw(vectors: Float32Array, neighbours: int = DEFAULT_NEIGHBOURS) -> faiss.IndexHNSWFlat:
    """Build an inner-product HNSW graph over unit-norm vectors.

    The graph built with several threads can differ from run to run; it is saved with
    the model, and the model's fingerprint covers it, so results never change silently.
    """
    index = faiss.IndexHNSWFlat(vectors.shape[1], neighbours, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = _BUILD_DEPTH
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


class HNSWTopK(ExactTopK):
    """Exact rescoring of the top candidates an HNSW walk proposes.

    Parameters
    ----------
    database : ndarray of float32, shape (n, d)
        The indexed vectors in row order.
    index : faiss.IndexHNSWFlat
    search_depth : int
        ``efSearch``: candidates the walk keeps; at least ``k + margin`` is used.
    margin : int
        Candidates rescored beyond k.
    """

    def __init__(
        self, database: Float32Array, index: faiss.IndexHNSWFlat, search_depth: int, margin: int = 8
    ):
        super().__init__(database, index=index, margin=margin)
        self.search_depth = search_depth

    def search(self, queries: Float32Array, k: int) -> tuple[Float64Array, IndexArray]:
        """Top-k of the walk's candidates by exact similarity, ties by row number.

        Parameters
        ----------
        queries : ndarray of float32, shape (b, d)
        k : int

        Returns
        -------
        scores : ndarray of float64, shape (b, k)
        rows : ndarray of int64, shape (b, k)
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if not 1 <= k <= self.size:
            raise ValueError(f"k={k} must be between 1 and the number of vectors searched")
        fetch = min(self.size, k + self.margin)
        # faiss's type stubs know neither the HNSW parameters nor the params keyword.
        parameters: Any = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
        parameters.efSearch = max(self.search_depth, fetch)
        walk: Any = self.index
        _, found = walk.search(queries, fetch, params=parameters)
        found = found.astype(np.int64, copy=False)
        valid = found >= 0
        exact = candidate_scores(queries, self.database, np.where(valid, found, 0))
        exact[~valid] = -np.inf
        scores, rows = self._select(exact, found, k)
        # A walk that found fewer than k vectors (a tiny or disconnected graph) falls
        # back to the whole database for that row; still a function of the row alone.
        for row in np.flatnonzero(~np.isfinite(scores[:, -1])):
            self.fallback_rows += 1
            scores[row], rows[row] = self._exhaustive_over(queries[row], None, k)
        return scores, rows
