"""Independent brute-force matching for the match tests, and data full of exact ties."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np


def lattice(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Unit vectors with four entries of +-0.5: every inner product is a multiple of 1/4.

    Normalization leaves them unchanged and every score is exact in any arithmetic, so
    brute force can be compared bit for bit, and scores tie all the time.
    """
    vectors = np.zeros((n, dim), dtype=np.float32)
    for row in vectors:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-0.5, 0.5], 4)
    return vectors


def with_duplicates(rng: np.random.Generator, vectors: np.ndarray, copies: int) -> np.ndarray:
    """Append ``copies`` exact duplicates of random rows (same vector, other ids)."""
    picks = rng.integers(0, len(vectors), copies)
    return np.concatenate([vectors, vectors[picks]])


def shuffled_ids(rng: np.random.Generator, prefix: str, n: int) -> np.ndarray:
    """Unique ids whose sorted order has nothing to do with the row order."""
    numbers = rng.permutation(10 * n)[:n]
    return np.array([f"{prefix}{number:06d}" for number in numbers])


def fsum_scores(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Correctly rounded inner products of float32 rows (one value per pair, no BLAS)."""
    q64, r64 = queries.astype(np.float64), refs.astype(np.float64)
    out = np.empty((len(q64), len(r64)))
    for i, q in enumerate(q64):
        products = q[None, :] * r64  # exact: float32 x float32 fits in float64
        out[i] = [math.fsum(row) for row in products]
    return out


def brute_predictions(
    scores: np.ndarray, query_ids, ref_ids, k: int, max_results: int | None
) -> list[tuple[str, str, float]]:
    """Per-query top k by (score desc, ref id), then the global top N by (score, q, r).

    Plain Python sorting over every pair: no numpy ordering, no tiles.
    """
    pooled = []
    for i, query in enumerate(query_ids):
        ranked = sorted((-float(scores[i, j]), str(ref)) for j, ref in enumerate(ref_ids))
        pooled.extend((negative, str(query), ref) for negative, ref in ranked[:k])
    pooled.sort()
    if max_results is not None:
        pooled = pooled[:max_results]
    return [(query, ref, -negative) for negative, query, ref in pooled]


def read_rows(path: Path) -> list[tuple[str, str, float]]:
    """Predictions from a CSV or Parquet file."""
    if Path(path).suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).to_pydict()
        return list(zip(table["query_id"], table["reference_id"], table["score"], strict=True))
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    assert rows[0] == ["query_id", "reference_id", "score"]
    return [(q, r, float(s)) for q, r, s in rows[1:]]
