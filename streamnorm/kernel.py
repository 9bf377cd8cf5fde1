"""A similarity kernel whose result depends only on the two vectors involved.

BLAS and faiss sum dot products in an order that changes with the batch size, the
position of a vector in the batch and the thread count, so their float32 results
differ in the last bits between calls. Here every float32 product is formed exactly in
float64 (24-bit mantissas multiply into at most 48 bits) and the products are added in
one fixed pairwise tree of element-wise additions. IEEE element-wise addition is
correctly rounded, so the sum is a pure function of the two vectors: any chunking, order,
scheduler or thread count gives the same bits.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

# Bound on the float64 scratch space of one rescoring step (bytes); keeps memory flat.
_SCRATCH_BYTES = 32 * 2**20


def tree_sum(values: Float64Array) -> Float64Array:
    """Sum over the last axis in a fixed pairwise tree.

    Parameters
    ----------
    values : ndarray of float64, shape (..., d)
        The terms. The array is not modified.

    Returns
    -------
    ndarray of float64, shape (...)
        The sums. Each depends only on its own row of terms.
    """
    width = values.shape[-1]
    if width == 0:
        return np.zeros(values.shape[:-1], dtype=np.float64)
    padded = 1 << (width - 1).bit_length()
    buffer = np.zeros((*values.shape[:-1], padded), dtype=np.float64)
    buffer[..., :width] = values
    return _tree_sum_in_place(buffer)


def _tree_sum_in_place(buffer: Float64Array) -> Float64Array:
    """Pairwise tree sum over a last axis whose length is a power of two."""
    width = buffer.shape[-1]
    while width > 1:
        half = width // 2
        np.add(buffer[..., :half], buffer[..., half:width], out=buffer[..., :half])
        width = half
    return buffer[..., 0].copy()


def exact_dots(left: Float32Array, right: Float32Array) -> Float64Array:
    """Deterministic dot products of broadcast-compatible float32 vectors.

    Parameters
    ----------
    left, right : ndarray of float32, shapes broadcastable to (..., d)

    Returns
    -------
    ndarray of float64, shape (...)
    """
    left64 = np.asarray(left, dtype=np.float64)
    right64 = np.asarray(right, dtype=np.float64)
    shape = np.broadcast_shapes(left64.shape, right64.shape)
    width = shape[-1]
    padded = 1 << max(width - 1, 0).bit_length()
    buffer = np.zeros((*shape[:-1], padded), dtype=np.float64)
    np.multiply(left64, right64, out=buffer[..., :width])
    return _tree_sum_in_place(buffer)


def exact_norms(vectors: Float32Array) -> Float64Array:
    """Deterministic Euclidean norms of the rows of a float32 matrix."""
    return np.sqrt(exact_dots(vectors, vectors))


def l2_normalize(vectors: Float32Array) -> Float32Array:
    """Scale rows to unit length, row by row and independently of the batch.

    Zero rows are left at zero; callers validate against them beforehand.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    norms = exact_norms(vectors)
    norms[norms == 0] = 1.0
    return (vectors.astype(np.float64) / norms[:, None]).astype(np.float32)


def candidate_scores(
    queries: Float32Array, database: Float32Array, candidates: IndexArray
) -> Float64Array:
    """Exact similarities of each query with its own candidate database rows.

    Parameters
    ----------
    queries : ndarray of float32, shape (b, d)
    database : ndarray of float32, shape (n, d)
    candidates : ndarray of int64, shape (b, m)
        Row numbers into ``database``.

    Returns
    -------
    ndarray of float64, shape (b, m)
    """
    rows, width = candidates.shape
    scores = np.empty((rows, width), dtype=np.float64)
    if rows == 0 or width == 0:
        return scores
    dim = queries.shape[1]
    step = max(1, _SCRATCH_BYTES // (8 * width * max(dim, 1) * 2))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        gathered = database[candidates[start:stop]]
        scores[start:stop] = exact_dots(queries[start:stop, None, :], gathered)
    return scores


def all_scores(query: Float32Array, database: Float32Array) -> Float64Array:
    """Exact similarities of one query with every database row (the slow, sure path)."""
    total = database.shape[0]
    scores = np.empty(total, dtype=np.float64)
    step = max(1, _SCRATCH_BYTES // (16 * max(database.shape[1], 1)))
    for start in range(0, total, step):
        stop = min(total, start + step)
        scores[start:stop] = exact_dots(query[None, :], database[start:stop])
    return scores


# Elements of float64 products held at once by ``exact_matmul`` (8 MB): large enough
# that numpy's per-call overhead vanishes, small enough to stay near the caches.
_MATMUL_TILE_ELEMENTS = 2**20
# Output columns per tile; long contiguous inner loops make the element-wise work fast.
_MATMUL_TILE_COLUMNS = 256


def exact_matmul(x: Float32Array, weights: Float32Array) -> Float64Array:
    """Deterministic product of float32 rows with a float32 matrix.

    Element ``[i, j]`` equals ``exact_dots(x[i], weights[:, j])``: the same exact
    float64 products, added in the same pairwise tree. Each output row is therefore a
    pure function of its input row and ``weights``, whatever the batch.

    Parameters
    ----------
    x : ndarray of float32, shape (b, d)
    weights : ndarray of float32, shape (d, m)

    Returns
    -------
    ndarray of float64, shape (b, m)
        Zero results are always ``+0.0`` (``exact_dots`` may give ``-0.0`` when every
        product is ``-0.0``); every other value is bit-identical to ``exact_dots``.

    Notes
    -----
    The work is cut into tiles of rows x columns whose products, laid out with the
    summation axis first, fill at most ``_MATMUL_TILE_ELEMENTS`` float64 values: each
    tree level is then one contiguous element-wise addition. The first level is fused
    with the products (``einsum`` over a pair of terms): a sum of two exact products
    is rounded once whatever order or fused multiply-add an implementation uses.
    """
    x = np.asarray(x, dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32)
    if x.ndim != 2 or weights.ndim != 2 or x.shape[1] != weights.shape[0]:
        raise ValueError(f"cannot multiply shapes {x.shape} and {weights.shape}")
    rows, dim = x.shape
    cols = weights.shape[1]
    out = np.zeros((rows, cols), dtype=np.float64)
    if rows == 0 or cols == 0 or dim == 0:
        return out
    plan = _PairPlan(dim, weights.astype(np.float64))
    tile_cols = min(cols, _MATMUL_TILE_COLUMNS)
    tile_rows = max(1, min(rows, _MATMUL_TILE_ELEMENTS // (plan.half_width * tile_cols)))
    scratch = np.empty((plan.half_width, tile_rows, tile_cols), dtype=np.float64)
    for start in range(0, rows, tile_rows):
        stop = min(rows, start + tile_rows)
        x64 = x[start:stop].astype(np.float64)
        for left in range(0, cols, tile_cols):
            right = min(cols, left + tile_cols)
            view = scratch[:, : stop - start, : right - left]
            out[start:stop, left:right] = plan.tree(x64, left, right, view)
    # Canonical zeros: einsum drops the sign of zero products (see Returns).
    out += 0.0
    return out


class _PairPlan:
    """The first tree level of ``exact_matmul`` for one weight matrix.

    ``exact_dots`` pads the summation axis to a power of two ``2h`` with zeros, then
    adds term ``k`` to term ``k + h``. Terms ``k < d - h`` have a real partner; the
    others meet a padding zero and pass through unchanged.
    """

    def __init__(self, dim: int, weights64: Float64Array) -> None:
        padded = 1 << max(dim - 1, 0).bit_length()
        self.dim = dim
        self.half_width = max(1, padded // 2)
        self.paired = dim - self.half_width if dim > 1 else 0
        half, paired = self.half_width, self.paired
        # Weight rows of the two members of each pair, stacked on a leading axis.
        self.pair_weights = np.stack((weights64[:paired], weights64[half:dim]))
        self.single_weights = weights64[paired:half] if dim > 1 else weights64

    def tree(self, x64: Float64Array, left: int, right: int, view: Float64Array) -> Float64Array:
        """Sums of one tile, shape (rows, columns).

        ``x64`` holds the tile's rows (rows, d); ``view`` is scratch (half_width, rows,
        columns). Summation axis first makes every tree level one contiguous addition;
        the row-major operand layouts are the fastest ones for ``einsum`` here.
        """
        half, paired = self.half_width, self.paired
        if paired:
            pairs = np.stack((x64[:, :paired], x64[:, half : self.dim]), axis=1)
            np.einsum("rpk,pkj->krj", pairs, self.pair_weights[:, :, left:right], out=view[:paired])
        if paired < half:
            singles = x64[:, paired:half] if self.dim > 1 else x64
            np.einsum("rk,kj->krj", singles, self.single_weights[:, left:right], out=view[paired:])
        width = half
        while width > 1:
            width //= 2
            np.add(view[:width], view[width : 2 * width], out=view[:width])
        return view[0]
