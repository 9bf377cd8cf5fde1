"""An inverted-file (IVF) training index that keeps the per-vector guarantee.

An IVF search looks only at the vectors of the lists whose centroids are closest to the
query. Both steps are made batch-independent:

1. the probed lists are the *exact* top centroids: float32 scores decide every centroid
   that their bounded error cannot misplace, exact scores decide the few that are close;
   how many lists a query reads depends on its exact best centroid similarity;
2. inside those lists, grouped float32 GEMMs propose candidates, and the usual exact
   rescoring with a certificate (or an exhaustive pass over the probed lists) selects
   the result.

The answer is therefore the exact top-k over the union of the exactly chosen lists: a
pure function of the query vector, fast, and approximate only in which lists it reads.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from streamnorm.kernel import Float32Array, Float64Array, IndexArray, exact_dots
from streamnorm.neighbours import ExactTopK, float32_dot_error_bound

# k-means effort: enough to place centroids that only decide which lists are read.
_TRAINING_PER_LIST = 64
_KMEANS_ITERATIONS = 10


def default_nlist(n_train: int) -> int:
    """About 8 sqrt(n) lists, with at least 39 vectors per list.

    Twice faiss's usual 4 sqrt(n): on the synthetic DISC21-like data, many small lists
    with a proportionally larger ``nprobe`` estimate the n-th neighbour better than few
    large lists for the same number of vectors read.
    """
    return int(max(1, min(8 * np.sqrt(n_train), n_train // 39)))


def kmeans_rows(n_train: int, nlist: int, seed: int = 1234) -> IndexArray:
    """The training rows k-means sees: a fixed-seed sample of 64 per list."""
    sample = min(n_train, nlist * _TRAINING_PER_LIST)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_train, size=sample, replace=False))


def build_ivf(vectors: Float32Array, nlist: int, seed: int = 1234) -> faiss.IndexIVFFlat:
    """Train and fill an inner-product IVF index (k-means on a fixed-seed sample)."""
    dim = vectors.shape[1]
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.cp.niter = _KMEANS_ITERATIONS
    index.train(np.ascontiguousarray(vectors[kmeans_rows(vectors.shape[0], nlist, seed)]))
    index.add(vectors)
    return index


def wide_probe_threshold(
    vectors: Float32Array, index: faiss.IndexIVFFlat, share: float, sample: int = 20_000
) -> float | None:
    """The best-centroid similarity under which a share of vectors falls.

    Measured on training vectors that k-means did not see (their centroids were not
    pulled towards them, as for new queries), or on any when k-means saw them all.
    None when ``share`` is 0 (no query reads the wide probe).
    """
    if share <= 0.0:
        return None
    n_train = vectors.shape[0]
    unseen = np.setdiff1d(np.arange(n_train), kmeans_rows(n_train, index.nlist))
    pool = unseen if unseen.size else np.arange(n_train)
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(pool, size=min(sample, pool.size), replace=False))
    searcher = IVFExactTopK(vectors, index, nprobe=1)
    best = searcher.best_centroid_similarity(np.ascontiguousarray(vectors[rows]))
    return float(np.quantile(best, min(share, 1.0)))


# Scores per group whose maximum feeds the bar of the list scan: small groups give a
# bar close to the true fetch-th score, large ones a cheaper first pass.
_RUN = 8
# Lists per query whose scores set the bar: the nearest few hold most of the best scores.
_BAR_LISTS = 8


@dataclass
class _Assignment:
    lists: IndexArray  # [b, widest probe] probed list numbers, -1 after a row's own count
    sizes: IndexArray  # [b] vectors in the probed lists


class IVFExactTopK(ExactTopK):
    """Exact top-k within the exactly chosen lists of an IVF index.

    A query reads its ``nprobe`` nearest lists, or its ``wide_nprobe`` nearest when its
    best centroid similarity is below ``wide_below``: a query far from every centroid
    sits in a diffuse region, where its neighbours spread over many lists. Both steps
    use float32 GEMMs for speed and exact arithmetic only where the GEMM's bounded error
    could change the outcome, so the result is a pure function of the query.

    Parameters
    ----------
    database : ndarray of float32, shape (n, d)
        The indexed vectors in row order (the IVF ids are the row numbers).
    index : faiss.IndexIVFFlat
    nprobe : int
        Lists read per query.
    margin : int
        Extra candidates fetched beyond k.
    wide_nprobe : int, optional
        Lists read by queries below ``wide_below`` (``nprobe`` when omitted).
    wide_below : float, optional
        Best-centroid similarity under which a query reads ``wide_nprobe`` lists.
    """

    def __init__(
        self,
        database: Float32Array,
        index: faiss.IndexIVFFlat,
        nprobe: int,
        margin: int = 8,
        wide_nprobe: int | None = None,
        wide_below: float | None = None,
    ):
        super().__init__(database, index=index, margin=margin)
        self.nprobe = min(nprobe, index.nlist)
        self.wide_nprobe = min(max(wide_nprobe or nprobe, nprobe), index.nlist)
        self.wide_below = -np.inf if wide_below is None else float(wide_below)
        dim = database.shape[1]
        centroids = index.quantizer.reconstruct_n(0, index.nlist)
        self._centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self._centroid_norm = float(np.sqrt((self._centroids.astype(np.float64) ** 2).sum(1)).max())
        invlists = index.invlists
        assert invlists is not None
        self._members: list[IndexArray] = []
        # Views of faiss's own list storage: the scan reads each list contiguously.
        self._list_vectors: list[Float32Array] = []
        for i in range(index.nlist):
            size = invlists.list_size(i)
            self._members.append(faiss.rev_swig_ptr(invlists.get_ids(i), size).astype(np.int64))
            codes = faiss.rev_swig_ptr(invlists.get_codes(i), size * dim * 4)
            self._list_vectors.append(codes.view(np.float32).reshape(size, dim))
        # One extra zero for the -1 padding of the probed lists.
        self._list_sizes = np.array([*(m.size for m in self._members), 0], dtype=np.int64)

    def _prepare(self, queries: Float32Array) -> _Assignment:
        lists = self._nearest_lists(queries)
        return _Assignment(lists, self._list_sizes[lists].sum(axis=1))

    def best_centroid_similarity(self, queries: Float32Array) -> Float64Array:
        """Exact similarity of each query with its nearest centroid.

        The largest exact score among the centroids within 2e of the best float32 score
        (e bounds the float32 error); a row whose proposals all lie within 2e is scored
        against every centroid.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        fetch = min(8, self._centroids.shape[0])
        approx, columns = _best_centroids(queries, self._centroids, fetch)
        floor = approx[:, 0] - self._float32_error(queries)
        best = _exact_within(queries, self._centroids, approx, columns, floor)
        if fetch < self._centroids.shape[0]:
            for row in np.flatnonzero(approx[:, -1] >= floor):
                best[row] = exact_dots(queries[row], self._centroids).max()
        return best

    def _float32_error(self, queries: Float32Array) -> Float64Array:
        """Twice the bound on a float32 query-centroid score's error, per query."""
        norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        return 2.0 * float32_dot_error_bound(queries.shape[1], 1.0) * norms * self._centroid_norm

    def _nearest_lists(self, queries: Float32Array) -> IndexArray:
        """The exact top-``probe`` centroids of each query, as a set, nearest first.

        faiss proposes each query's best centroids by float32 score. The best exact
        similarity (which sets the query's probe count) is the largest exact score among
        the centroids within 2e of the best float32 score, e bounding the float32 error.
        Against the ``probe``-th float32 score t, a centroid above t + 2e is surely in
        the exact set and one below t - 2e surely out; only the few in between are
        scored exactly, and ties among them go to the smaller list number. Rows whose
        proposals do not reach below t - 2e are asked again, wider.
        """
        count, nlist = queries.shape[0], self._centroids.shape[0]
        widest = self.wide_nprobe
        error = self._float32_error(queries)
        chosen = np.full((count, widest), -1, dtype=np.int64)
        pending = np.arange(count)
        fetch = widest + 8
        while pending.size:
            fetch = min(fetch, nlist)
            approx, columns = _best_centroids(queries[pending], self._centroids, fetch)
            slack = error[pending]
            best = _exact_within(
                queries[pending], self._centroids, approx, columns, approx[:, 0] - slack
            )
            probe = np.where(best < self.wide_below, widest, self.nprobe)
            kth = np.take_along_axis(approx, probe[:, None] - 1, 1)[:, 0]
            # The floor lies below the best score's own band, so a settled row has its
            # best similarity (hence its probe count) and its set both decided.
            settled = (fetch == nlist) | (approx[:, -1] < kth - slack)
            rows = pending[settled]
            chosen[rows] = _exact_set(
                queries[rows], self._centroids, approx[settled], columns[settled],
                (kth - slack)[settled], (kth + slack)[settled], probe[settled], widest,
            )  # fmt: skip
            pending = pending[~settled]
            fetch *= 4
        return chosen

    def _searchable_sizes(self, count: int, context: object) -> IndexArray:
        assert isinstance(context, _Assignment)
        return context.sizes

    def _propose(
        self, queries: Float32Array, rows: IndexArray, fetch: int, context: object
    ) -> tuple[Float32Array, IndexArray]:
        """Each query's best ``fetch`` float32 scores over its probed lists.

        Queries are grouped by list, so each list is scored by one GEMM against all the
        queries that probe it. A first pass over each query's ``nprobe`` nearest lists
        takes the maximum of each disjoint group of at most ``_RUN`` scores; these are
        scores of distinct vectors, so the ``fetch``-th best of them is a bar that at
        least ``fetch`` vectors reach. A second pass scores all the probed lists and
        keeps what reaches the bar. (Scoring twice costs less than holding the scores
        or selecting within every list.) Whatever is not returned scores at most the
        lowest returned score, which is what the certificate in
        :meth:`ExactTopK.search` relies on.
        """
        assert isinstance(context, _Assignment)
        lists = context.lists[rows]
        count = lists.shape[0]
        # The bar comes from the nearest lists only (every query reads at least these):
        # any scores of distinct vectors give a valid bar, and these give a close one.
        near = lists[:, : min(self.nprobe, _BAR_LISTS)]
        sizes = self._list_sizes[near]
        group_counts = sizes // _RUN + sizes % _RUN
        offsets = (np.cumsum(group_counts, axis=1) - group_counts).ravel()
        width = int(group_counts.sum(axis=1).max())
        maxima = np.full((count, max(width, fetch)), -np.inf, dtype=np.float32)
        for slots, query_rows, number in _grouped(near):
            vectors = self._list_vectors[number]
            if vectors.shape[0]:
                found = _run_maxima(queries[query_rows] @ vectors.T)
                columns = offsets[slots, None] + np.arange(found.shape[1])
                maxima[query_rows[:, None], columns] = found
        width = maxima.shape[1]
        bar = np.partition(maxima, width - fetch, axis=1)[:, width - fetch]
        owners, values, ids = [], [], []
        for _, query_rows, number in _grouped(lists):
            members = self._members[number]
            if not members.size:
                continue
            block = queries[query_rows] @ self._list_vectors[number].T
            at, column = np.nonzero(block >= bar[query_rows, None])
            owners.append(query_rows[at])
            values.append(block[at, column])
            ids.append(members[column])
        return _best_per_row(count, fetch, owners, values, ids)

    def _exhaustive(
        self, query: Float32Array, row: int, k: int, context: object
    ) -> tuple[np.ndarray, IndexArray]:
        assert isinstance(context, _Assignment)
        lists = context.lists[row]
        members = np.sort(np.concatenate([self._members[i] for i in lists[lists >= 0]]))
        return self._exhaustive_over(query, members, k)


# Float32 scores against all centroids held at once, per block of queries (16 MB).
_CENTROID_SCORES_PER_BLOCK = 1 << 22


def _best_centroids(
    queries: Float32Array, centroids: Float32Array, fetch: int
) -> tuple[Float64Array, IndexArray]:
    """Each query's ``fetch`` best centroids by float32 score, best first.

    A plain GEMM and a partial sort through numpy: as fast as faiss's flat search for
    thousands of centroids and a hundred per query (about 0.5 s for 8,192 queries and
    8,000 centroids on one thread), and twice as fast where faiss's bundled OpenBLAS
    runs generic kernels. Float32 scores only propose; the callers decide with exact
    scores wherever the bounded float32 error could matter, so the GEMM's summation
    order (which may depend on the batch) never reaches a result.
    """
    count, nlist = queries.shape[0], centroids.shape[0]
    fetch = min(fetch, nlist)
    approx = np.empty((count, fetch), dtype=np.float64)
    columns = np.empty((count, fetch), dtype=np.int64)
    step = max(1, _CENTROID_SCORES_PER_BLOCK // nlist)
    for start in range(0, count, step):
        scores = queries[start : start + step] @ centroids.T
        if fetch < nlist:
            top = np.argpartition(scores, nlist - fetch, axis=1)[:, nlist - fetch :]
        else:
            top = np.broadcast_to(np.arange(nlist), scores.shape)
        picked = np.take_along_axis(scores, top, 1)
        order = np.lexsort((top, -picked), axis=1)
        approx[start : start + step] = np.take_along_axis(picked, order, 1)
        columns[start : start + step] = np.take_along_axis(top, order, 1)
    return approx, columns


def _exact_within(
    queries: Float32Array,
    centroids: Float32Array,
    approx: Float64Array,
    columns: IndexArray,
    floor: Float64Array,
) -> Float64Array:
    """Per row, the largest exact score among the proposed centroids at or above floor.

    Where every proposal is at or above the floor the row is not settled by the caller,
    which asks again with more proposals; its value here is then provisional.
    """
    rows, slots = np.nonzero(approx >= floor[:, None])
    exact = np.full(approx.shape, -np.inf)
    exact[rows, slots] = exact_dots(queries[rows], centroids[columns[rows, slots]])
    return exact.max(axis=1)


def _exact_set(
    queries: Float32Array,
    centroids: Float32Array,
    approx: Float64Array,
    columns: IndexArray,
    floor: Float64Array,
    ceiling: Float64Array,
    probe: IndexArray,
    widest: int,
) -> IndexArray:
    """Each row's exact top-``probe`` centroids from its proposals, nearest first.

    Proposals above ``ceiling`` are in, below ``floor`` out, and those between are ranked
    by exact score and then list number. Slots past a row's own probe count hold -1.
    """
    priority = np.where(approx >= floor[:, None], approx, -np.inf)
    priority[approx > ceiling[:, None]] = np.inf
    band_rows, band_slots = np.nonzero(np.isfinite(priority))
    priority[band_rows, band_slots] = exact_dots(
        queries[band_rows], centroids[columns[band_rows, band_slots]]
    )
    order = np.lexsort((columns, -priority), axis=-1)[:, :widest]
    # The set is decided; list it in faiss's order, nearest first, for the scan.
    beyond = np.arange(widest) >= probe[:, None]
    order = np.sort(np.where(beyond, columns.shape[1], order), axis=1)
    padded = np.concatenate([columns, np.full((len(columns), 1), -1, np.int64)], axis=1)
    return np.take_along_axis(padded, order, 1)


def _run_maxima(block: Float32Array) -> Float32Array:
    """Maxima of disjoint groups of at most ``_RUN`` columns each.

    With g = width // _RUN, group j holds the columns j, j + g, ..., j + (_RUN - 1) g,
    a reduction numpy does in one call; the few columns past _RUN * g are groups of
    their own.
    """
    count, width = block.shape
    whole = width // _RUN * _RUN
    if not whole:
        return block
    maxima = block[:, :whole].reshape(count, _RUN, -1).max(axis=1)
    return np.concatenate([maxima, block[:, whole:]], axis=1) if whole < width else maxima


def _grouped(lists: IndexArray) -> list[tuple[IndexArray, IndexArray, int]]:
    """Per list number in ``lists`` (-1 skipped): its flat slots, their rows, the number."""
    flat = lists.ravel()
    order = np.argsort(flat, kind="stable")
    numbers = flat[order]
    rows = order // lists.shape[1]
    cuts = np.flatnonzero(np.diff(numbers)) + 1
    starts, stops = np.r_[0, cuts].tolist(), np.r_[cuts, numbers.size].tolist()
    # Plain slices (views): thousands of groups per call, so np.split's overhead shows.
    return [
        (order[start:stop], rows[start:stop], int(numbers[start]))
        for start, stop in zip(starts, stops, strict=True)
        if start < stop and numbers[start] >= 0
    ]


def _best_per_row(
    count: int,
    fetch: int,
    owners: list[IndexArray],
    values: list[Float32Array],
    ids: list[IndexArray],
) -> tuple[Float32Array, IndexArray]:
    """The ``fetch`` best ``(value, id)`` entries of each row, padded with -inf and -1.

    Entries of equal value at a row's cut may be taken in any order: the certificate
    only needs every entry left out to score at most the lowest one kept.
    """
    scores = np.full((count, fetch), -np.inf, dtype=np.float32)
    found = np.full((count, fetch), -1, dtype=np.int64)
    if not owners:
        return scores, found
    owner, value, row_id = np.concatenate(owners), np.concatenate(values), np.concatenate(ids)
    # One sort on a 64-bit key, row then descending value, instead of a three-key lexsort.
    order = np.argsort((owner.astype(np.uint64) << np.uint64(32)) | _descending_bits(value))
    owner, value, row_id = owner[order], value[order], row_id[order]
    rank = np.arange(owner.size) - np.searchsorted(owner, owner)
    keep = rank < fetch
    scores[owner[keep], rank[keep]] = value[keep]
    found[owner[keep], rank[keep]] = row_id[keep]
    return scores, found


def _descending_bits(values: Float32Array) -> np.ndarray:
    """Unsigned 32-bit keys whose ascending order is the values' descending order."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    # The usual float-to-sortable-integer map (flip negatives, set the sign of positives),
    # inverted so that larger values come first.
    ascending = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    return (~ascending).astype(np.uint64)
