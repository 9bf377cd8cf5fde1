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
