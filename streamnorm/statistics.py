"""Background statistics b(x) from the sorted top training similarities of x."""

from __future__ import annotations

from streamnorm.config import NormalizationParams
from streamnorm.kernel import Float64Array, tree_sum


def background(top_scores: Float64Array, params: NormalizationParams) -> Float64Array:
    """Per-row background term from exact top similarities sorted descending.

    Parameters
    ----------
    top_scores : ndarray of float64, shape (b, depth)
        Exact similarities to the nearest training vectors, best first, with at least
        ``params.depth`` columns.
    params : NormalizationParams

    Returns
    -------
    ndarray of float64, shape (b,)
    """
    if params.statistic == "top1":
        return top_scores[:, 0].copy()
    if params.statistic == "nth":
        return top_scores[:, params.n - 1].copy()
    if params.statistic == "mean":
        window = top_scores[:, : params.n]
    else:
        window = top_scores[:, params.slice_start : params.slice_stop + 1]
    # A fixed summation tree keeps means identical whatever the batch.
    return tree_sum(window) / window.shape[1]
