import csv

import h5py
import numpy as np
import pytest
from conftest import brute_background, unit_rows, write_store

from streamnorm.errors import ModelMismatchError
from streamnorm.hdf5_export import export_submission
from streamnorm.matching import match
from streamnorm.pipeline import normalize


def read_csv(path):
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query_id", "reference_id", "score"]
    return [(q, r, float(s)) for q, r, s in rows[1:]]


@pytest.fixture(scope="module")
def normalized(small_data, isc21_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("normalized")
    normalize(small_data.queries_path, isc21_model, "query", folder / "q.zarr", chunk_rows=50)
    normalize(small_data.refs_path, isc21_model, "reference", folder / "r.zarr", chunk_rows=128)
    return folder / "q.zarr", folder / "r.zarr"


def brute_scores(small_data):
    """s'(q, r) = <q, r> - 2 b(q) for every pair, from the definition."""
    b = brute_background(small_data.queries, small_data.train, 10)
    return unit_rows(small_data.queries) @ unit_rows(small_data.refs).T - 2.0 * b[:, None]


def test_scores_and_pairs_equal_brute_force(small_data, normalized, tmp_path):
    queries, refs = normalized
    match(queries, refs, tmp_path / "p.csv", k=5, max_results=None)
    rows = read_csv(tmp_path / "p.csv")
    full = brute_scores(small_data)
    q_index = {q: i for i, q in enumerate(small_data.query_ids)}
    r_index = {r: i for i, r in enumerate(small_data.ref_ids)}
    got = np.array([s for _, _, s in rows])
    want = np.array([full[q_index[q], r_index[r]] for q, r, _ in rows])
    np.testing.assert_allclose(got, want, atol=2e-6)
    assert len(rows) == 5 * len(small_data.queries)
    # Each query's five are its brute-force top five (no near-ties in this data).
    for q, i in list(q_index.items())[:40]:
        mine = {r for qq, r, _ in rows if qq == q}
        assert mine == set(small_data.ref_ids[np.argsort(-full[i])[:5]])
    assert got.tolist() == sorted(got.tolist(), reverse=True)


def test_global_top_n_is_the_best_n_pairs(small_data, normalized, tmp_path):
    queries, refs = normalized
    match(queries, refs, tmp_path / "all.csv", k=5, max_results=None)
    match(queries, refs, tmp_path / "top.csv", k=5, max_results=123)
    assert read_csv(tmp_path / "top.csv") == read_csv(tmp_path / "all.csv")[:123]


def test_l2_knn_on_track2_vectors_ranks_like_track1(small_data, normalized, tmp_path):
    queries, refs = normalized
    match(queries, refs, tmp_path / "p.csv", k=len(small_data.refs), max_results=None)
    rows = read_csv(tmp_path / "p.csv")
    export_submission(queries, refs, tmp_path / "sub.hdf5")
    with h5py.File(tmp_path / "sub.hdf5") as f:
        qv, rv = f["query"][:].astype(np.float64), f["reference"][:].astype(np.float64)
        q_index = {x.decode(): i for i, x in enumerate(f["query_ids"][:])}
        r_index = {x.decode(): i for i, x in enumerate(f["reference_ids"][:])}
    qi = np.array([q_index[q] for q, _, _ in rows])
    ri = np.array([r_index[r] for _, r, _ in rows])
    neg_l2 = -((qv[qi] - rv[ri]) ** 2).sum(1)
    score = np.array([s for _, _, s in rows])
    # One affine map for all pairs: -|q'-r'|^2 = 2 s' - 2 - 2 beta ...
    np.testing.assert_allclose(neg_l2, 2 * score - 2 - 4.0, atol=2e-5)
    # ... so plain L2 k-NN orders the pairs as the track-1 list does.
    assert np.all(np.diff(neg_l2) <= 5e-5)
    order_l2 = np.argsort(-neg_l2, kind="stable")
    top = 1000
    assert len(set(order_l2[:top]) ^ set(range(top))) <= 4  # at most near-tie swaps at the edge


def test_raw_stores_score_the_plain_inner_product(small_data, tmp_path):
    match(small_data.queries_path, small_data.refs_path, tmp_path / "raw.csv", k=3, max_results=50)
    rows = read_csv(tmp_path / "raw.csv")
    full = unit_rows(small_data.queries) @ unit_rows(small_data.refs).T
    best = np.sort(np.sort(full, axis=1)[:, -3:].ravel())[::-1][:50]
    np.testing.assert_allclose([s for _, _, s in rows], best, atol=1e-6)


def test_ties_are_broken_by_query_then_reference_id(tmp_path):
    base = np.eye(4, dtype=np.float32)
    refs = np.stack([base[0], base[0], base[1], base[0]])
    write_store(tmp_path / "r.zarr", refs, ["rb", "rc", "rz", "ra"], chunk_rows=2)
    write_store(tmp_path / "q.zarr", np.stack([base[0], base[0]]), ["q2", "q1"])
    match(tmp_path / "q.zarr", tmp_path / "r.zarr", tmp_path / "p.csv", k=2, max_results=None)
    pairs = [(q, r) for q, r, _ in read_csv(tmp_path / "p.csv")]
    assert pairs == [("q1", "ra"), ("q1", "rb"), ("q2", "ra"), ("q2", "rb")]


def test_mixed_or_mismatched_stores_are_refused(small_data, normalized, tmp_path):
    queries, _ = normalized
    with pytest.raises(ModelMismatchError, match="raw"):
        match(queries, small_data.refs_path, tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
