"""An inverted-file (IVF) training index that keeps the per-vector guarantee.

An IVF search looks only at the vectors of the ``nprobe`` lists whose centroids are
closest to the query. Both steps are made batch-independent:

1. the probed lists are the *exact* top-``nprobe`` centroids, found with
   :class:`~streamnorm.neighbours.ExactTopK` over the centroid matrix;
2. inside those lists, faiss proposes candidates, and the usual exact rescoring with
   a certificate (or an exhaustive pass over the probed lists) selects the result.

The answer is therefore the exact top-k over the union of the exactly chosen lists: a
pure function of the query vector, fast, and approximate only in which lists it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from streamnorm.kernel import Float32Array, IndexArray
from streamnorm.neighbours import ExactTopK


def default_nlist(n_train: int) -> int:
    """About 4 sqrt(n) lists, the usual faiss rule, with at least 39 vectors per list."""
    return int(max(1, min(4 * np.sqrt(n_train), n_train // 39)))


def build_ivf(vectors: Float32Array, nlist: int, seed: int = 1234) -> faiss.IndexIVFFlat:
    """Train and fill an inner-product IVF index (k-means on a fixed-seed sample)."""
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    # faiss samples 256 vectors per centroid for training by default; pass it that many.
    sample = min(vectors.shape[0], nlist * 256)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(vectors.shape[0], size=sample, replace=False))
    index.train(np.ascontiguousarray(vectors[picked]))
    index.add(vectors)
    return index


@dataclass
class _Assignment:
    lists: IndexArray  # [b, nprobe] probed list numbers
    scores: Float32Array  # [b, nprobe] their similarities, for faiss
    sizes: IndexArray  # [b] vectors in the probed lists


class IVFExactTopK(ExactTopK):
    """Exact top-k within the exactly chosen ``nprobe`` lists of an IVF index.

    Parameters
    ----------
    database : ndarray of float32, shape (n, d)
        The indexed vectors in row order (the IVF ids are the row numbers).
    index : faiss.IndexIVFFlat
    nprobe : int
        Lists read per query.
    """

    def __init__(
        self, database: Float32Array, index: faiss.IndexIVFFlat, nprobe: int, margin: int = 8
    ):
        super().__init__(database, index=index, margin=margin)
        self.nprobe = min(nprobe, index.nlist)
        index.nprobe = self.nprobe
        centroids = index.quantizer.reconstruct_n(0, index.nlist)
        self._centroids = ExactTopK(np.ascontiguousarray(centroids, dtype=np.float32))
        # faiss's type stubs describe the C++ signature of search_preassigned, not the
        # numpy wrapper used here.
        self._ivf: Any = index
        invlists = index.invlists
        assert invlists is not None
        self._members = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).astype(np.int64)
            for i in range(index.nlist)
        ]
        self._list_sizes = np.array([m.size for m in self._members], dtype=np.int64)

    def _prepare(self, queries: Float32Array) -> _Assignment:
        scores, lists = self._centroids.search(queries, self.nprobe)
        return _Assignment(lists, scores.astype(np.float32), self._list_sizes[lists].sum(axis=1))

    def _searchable_sizes(self, count: int, context: object) -> IndexArray:
        assert isinstance(context, _Assignment)
        return context.sizes

    def _propose(
        self, queries: Float32Array, rows: IndexArray, fetch: int, context: object
    ) -> tuple[Float32Array, IndexArray]:
        assert isinstance(context, _Assignment)
        approx, found = self._ivf.search_preassigned(
            queries, fetch, context.lists[rows], context.scores[rows]
        )
        return approx, found.astype(np.int64, copy=False)

    def _exhaustive(
        self, query: Float32Array, row: int, k: int, context: object
    ) -> tuple[np.ndarray, IndexArray]:
        assert isinstance(context, _Assignment)
        members = np.sort(np.concatenate([self._members[i] for i in context.lists[row]]))
        return self._exhaustive_over(query, members, k)
