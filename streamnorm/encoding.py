"""Track-2 encodings: extra dimensions that make plain k-NN rank by the normalized score.

With ``s'(q, r) = <q, r> - bq * b(q) - br * b(r)`` (bq or br is zero for one-sided
normalization), each normalized side gets one extra dimension:

* inner product: the side's own vector carries ``-beta * b`` and the other side 1, so
  ``<q', r'> = s'(q, r)`` exactly;
* L2: the side's own vector carries ``sqrt(2 beta (1 + b))`` and the other side 0, so
  ``-|q' - r'|^2 = 2 s'(q, r) - 2 - 2 bq - 2 br`` for unit q and r: one affine map for
  every pair, hence the same global ranking.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from streamnorm.config import NormalizationParams
from streamnorm.kernel import Float32Array, Float64Array

Role = Literal["query", "reference"]


def normalized_sides(params: NormalizationParams) -> list[Role]:
    """The sides that carry a background term, in the order of their extra dimensions."""
    sides: list[Role] = []
    if params.side in ("query", "both"):
        sides.append("query")
    if params.side in ("reference", "both"):
        sides.append("reference")
    return sides


def extra_dims(params: NormalizationParams) -> int:
    """How many dimensions the encoding appends."""
    return len(normalized_sides(params))


def _beta_of(side: Role, params: NormalizationParams) -> float:
    return params.query_beta if side == "query" else params.reference_beta


def encode(
    vectors: Float32Array,
    background: Float64Array,
    role: Role,
    params: NormalizationParams,
    metric: Literal["l2", "ip"] | None = None,
) -> Float32Array:
    """Append the extra dimensions of ``role``'s side of the encoding.

    Parameters
    ----------
    vectors : ndarray of float32, shape (b, d)
        Unit-norm vectors after every learned transform.
    background : ndarray, shape (b,)
        b(x) of each row.
    role : {"query", "reference"}
    params : NormalizationParams
    metric : {"l2", "ip"}, optional
        Overrides ``params.metric``; matching uses the inner-product form internally.

    Returns
    -------
    ndarray of float32, shape (b, d + extra_dims(params))
    """
    metric = metric or params.metric
    sides = normalized_sides(params)
    rows = vectors.shape[0]
    extra = np.empty((rows, len(sides)), dtype=np.float64)
    b = np.asarray(background, dtype=np.float64)
    for column, side in enumerate(sides):
        beta = _beta_of(side, params)
        if side != role:
            extra[:, column] = 1.0 if metric == "ip" else 0.0
        elif metric == "ip":
            extra[:, column] = -beta * b
        else:
            # b >= -1 for unit vectors, so the root is real.
            extra[:, column] = np.sqrt(2.0 * beta * np.maximum(1.0 + b, 0.0))
    return np.concatenate([vectors, extra.astype(np.float32)], axis=1)
