import faiss
import numpy as np
import pytest
from conftest import assert_split_invariant
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm import model as model_module
from streamnorm.config import build_params
from streamnorm.hnsw import HNSWTopK, build_hnsw
from streamnorm.kernel import l2_normalize
from streamnorm.model import Normalizer, fit_model
from streamnorm.pipeline import normalize
from streamnorm.verify import verify


@pytest.fixture(scope="module")
def hnsw_case():
    rng = np.random.default_rng(11)
    centres = rng.standard_normal((25, 20)).astype(np.float32)
    database = l2_normalize(
        centres[rng.integers(0, 25, 3000)]
        + 0.5 * rng.standard_normal((3000, 20)).astype(np.float32)
    )
    database[40:52] = database[5]  # exact ties
    queries = l2_normalize(
        centres[rng.integers(0, 25, 200)] + 0.5 * rng.standard_normal((200, 20)).astype(np.float32)
    )
    queries[0] = database[5]
    return database, queries, build_hnsw(database, neighbours=16)


def brute_force(database, query, k):
    sims = database.astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort((np.arange(len(database)), -sims))[:k]
    return sims[order], order


def test_scores_are_exact_and_ordered(hnsw_case):
    database, queries, index = hnsw_case
    scores, rows = HNSWTopK(database, index, search_depth=32).search(queries, 10)
    recomputed = np.einsum(
        "bkd,bd->bk", database[rows].astype(np.float64), queries.astype(np.float64)
    )
    np.testing.assert_allclose(scores, recomputed, atol=1e-12)
    assert np.all(np.diff(scores, axis=1) <= 0)
    # Ties are ordered by row number: the query equal to row 5 sees 5, 40, 41, ...
    np.testing.assert_array_equal(rows[0], [5, *range(40, 49)])


def test_a_deep_walk_finds_the_exact_neighbours(hnsw_case):
    database, queries, index = hnsw_case
    scores, rows = HNSWTopK(database, index, search_depth=len(database)).search(queries, 10)
    for i in range(0, len(queries), 9):
        want_scores, want_rows = brute_force(database, queries[i], 10)
        np.testing.assert_allclose(scores[i], want_scores, atol=1e-12)
        np.testing.assert_array_equal(rows[i], want_rows)


def test_a_shallow_walk_misses_some_neighbours(hnsw_case):
    """The index is approximate: the test above is not passing by accident of size."""
    database, queries, _ = hnsw_case
    sparse = build_hnsw(database, neighbours=4)
    _, rows = HNSWTopK(database, sparse, search_depth=1, margin=0).search(queries, 10)
    exact = np.array([brute_force(database, q, 10)[1] for q in queries])
    assert not np.array_equal(np.sort(rows, axis=1), np.sort(exact, axis=1))


@settings(max_examples=20, deadline=None)
@given(split=st.integers(1, 199), threads=st.sampled_from([1, 2]))
def test_results_do_not_depend_on_batch_or_threads(hnsw_case, split, threads):
    database, queries, index = hnsw_case
    assert_split_invariant(HNSWTopK(database, index, search_depth=24), queries, split, threads)


def test_hnsw_model_end_to_end(small_data, tmp_path):
    params = build_params("isc21", None, ["index=hnsw", "hnsw_neighbours=8"])
    model = fit_model(small_data.train_path, tmp_path / "hnsw", params)
    assert model.index_report_["kind"] == "hnsw"
    assert 0.0 <= model.index_report_["nth_neighbour_recall"] <= 1.0
    out = tmp_path / "q.zarr"
    normalize(small_data.queries_path, tmp_path / "hnsw", "query", out, chunk_rows=17)
    assert verify(out, small_data.queries_path, tmp_path / "hnsw", sample=None).ok
    again = Normalizer.load(tmp_path / "hnsw")
    assert isinstance(again.index_, faiss.IndexHNSWFlat)
    first = model.transform(small_data.queries[:9])
    assert again.transform(small_data.queries[:9]).background.tobytes() == (
        first.background.tobytes()
    )


def test_the_fingerprint_covers_the_graph(small_data, tmp_path, monkeypatch):
    params = build_params("isc21", None, ["index=hnsw"])
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # a single-threaded build repeats exactly
    try:
        first = fit_model(small_data.train_path, tmp_path / "a", params)
        again = fit_model(small_data.train_path, tmp_path / "b", params)
        assert again.fingerprint_ == first.fingerprint_
        # Same data and parameters, another graph: the model's identity must change.
        monkeypatch.setattr(
            model_module, "build_hnsw", lambda vectors, neighbours: build_hnsw(vectors, 6)
        )
        other = fit_model(small_data.train_path, tmp_path / "c", params)
    finally:
        faiss.omp_set_num_threads(before)
    assert other.fingerprint_ != first.fingerprint_
