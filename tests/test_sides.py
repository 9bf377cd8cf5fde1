"""Every side choice and metric, end to end: plain k-NN on the stored track-2 vectors
ranks pairs exactly as the track-1 scores do, and both follow the definition."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import zarr
from conftest import unit_rows

from streamnorm.config import build_params
from streamnorm.matching import match
from streamnorm.model import fit_model
from streamnorm.pipeline import normalize

CASES = [
    ("query", "l2", 2.0, None),
    ("query", "ip", 2.0, None),
    ("reference", "l2", 1.2, None),
    ("reference", "ip", 1.2, None),
    ("both", "l2", 1.0, 0.5),
    ("both", "ip", 1.0, 0.5),
]


def nth_similarity(x, train, n):
    sims = unit_rows(x) @ unit_rows(train).T
    return -np.sort(-sims, axis=1)[:, n - 1]


@pytest.mark.parametrize(("side", "metric", "beta", "beta_ref"), CASES)
def test_track2_knn_ranks_like_track1(small_data, tmp_path, side, metric, beta, beta_ref):
    overrides = [f"side={side}", f"metric={metric}", f"beta={beta}"]
    if beta_ref is not None:
        overrides.append(f"beta_reference={beta_ref}")
    params = build_params("isc21", None, overrides)
    fit_model(small_data.train_path, tmp_path / "m", params)
    normalize(small_data.queries_path, tmp_path / "m", "query", tmp_path / "q.zarr")
    normalize(small_data.refs_path, tmp_path / "m", "reference", tmp_path / "r.zarr")
    q = np.asarray(zarr.open_group(str(tmp_path / "q.zarr"), mode="r")["vectors"][:], np.float64)
    r = np.asarray(zarr.open_group(str(tmp_path / "r.zarr"), mode="r")["vectors"][:], np.float64)
    assert q.shape[1] == r.shape[1] == small_data.queries.shape[1] + (2 if side == "both" else 1)

    # The definition, from brute-force backgrounds.
    bq = nth_similarity(small_data.queries, small_data.train, 10)
    br = nth_similarity(small_data.refs, small_data.train, 10)
    definition = unit_rows(small_data.queries) @ unit_rows(small_data.refs).T
    definition -= params.query_beta * bq[:, None] + params.reference_beta * br[None, :]

    # Plain k-NN in the stated metric on the stored vectors: an affine map of s'.
    if metric == "ip":
        knn = q @ r.T
        np.testing.assert_allclose(knn, definition, atol=3e-6)
    else:
        knn = -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1)
        offset = 2 + 2 * (params.query_beta + params.reference_beta)
        np.testing.assert_allclose(knn, 2 * definition - offset, atol=6e-6)

    # Track-1 scores of the matcher equal the definition, pair by pair.
    match(tmp_path / "q.zarr", tmp_path / "r.zarr", tmp_path / "p.csv", k=3, max_results=None)
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    qi = {v: i for i, v in enumerate(small_data.query_ids)}
    ri = {v: i for i, v in enumerate(small_data.ref_ids)}
    got = np.array([float(row["score"]) for row in rows])
    want = np.array([definition[qi[row["query_id"]], ri[row["reference_id"]]] for row in rows])
    np.testing.assert_allclose(got, want, atol=3e-6)
    # ... and the k-NN on track-2 vectors orders those pairs identically (up to near-ties).
    knn_values = np.array([knn[qi[row["query_id"]], ri[row["reference_id"]]] for row in rows])
    assert np.all(np.diff(knn_values) <= 2e-5)
