import faiss
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm.kernel import l2_normalize
from streamnorm.neighbours import ExactTopK, float32_dot_error_bound


def brute_top_k(queries, database, k, keys):
    """Float64 brute force with ties broken by key: the definition, independently."""
    sims = queries.astype(np.float64) @ database.astype(np.float64).T
    rows = np.array([np.lexsort((keys, -row))[:k] for row in sims])
    return np.take_along_axis(sims, rows, 1), rows


@pytest.fixture(scope="module")
def database_with_ties():
    rng = np.random.default_rng(0)
    database = l2_normalize(rng.standard_normal((3000, 32)).astype(np.float32))
    database[100:130] = database[7]  # thirty exact duplicates: ties across the cut-off
    queries = l2_normalize(rng.standard_normal((200, 32)).astype(np.float32))
    queries[:5] = database[7]
    queries[5:10] = database[7] + 1e-3
    return database, queries


def test_matches_brute_force_including_ties(database_with_ties):
    database, queries = database_with_ties
    keys = np.random.default_rng(1).permutation(len(database)).astype(np.int64)
    scores, rows = ExactTopK(database, tie_keys=keys).search(queries, 10)
    expected_scores, expected_rows = brute_top_k(queries, database, 10, keys)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-12)
    # Where scores are tied exactly, the smallest keys win, as in the brute force.
    np.testing.assert_array_equal(rows, expected_rows)


def test_ties_beyond_the_margin_are_resolved_by_widening(database_with_ties):
    database, queries = database_with_ties
    searcher = ExactTopK(database, margin=2)
    _, rows = searcher.search(queries[:5], 20)
    # 31 identical vectors (row 7 and rows 100..129) tie for first place; rows win by number.
    np.testing.assert_array_equal(rows[0], [7, *range(100, 119)])


def test_exhaustive_fallback_is_exact():
    rng = np.random.default_rng(2)
    database = l2_normalize(rng.standard_normal((40, 8)).astype(np.float32))
    database[:] = database[0]  # everything tied: no certificate is ever possible
    searcher = ExactTopK(database, margin=1)
    _, rows = searcher.search(database[:3], 4)
    np.testing.assert_array_equal(rows, [[0, 1, 2, 3]] * 3)
    assert searcher.fallback_rows == 3


@settings(max_examples=25, deadline=None)
@given(split=st.integers(1, 199), threads=st.sampled_from([1, 2]))
def test_result_bytes_do_not_depend_on_batch_or_threads(database_with_ties, split, threads):
    database, queries = database_with_ties
    searcher = ExactTopK(database)
    whole_scores, whole_rows = searcher.search(queries, 10)
    faiss.omp_set_num_threads(threads)
    try:
        head = searcher.search(queries[:split], 10)
        tail = searcher.search(queries[split:], 10)
    finally:
        faiss.omp_set_num_threads(1)
    assert np.concatenate([head[0], tail[0]]).tobytes() == whole_scores.tobytes()
    assert np.concatenate([head[1], tail[1]]).tobytes() == whole_rows.tobytes()


def test_error_bound_covers_float32_dot_products():
    rng = np.random.default_rng(3)
    a = l2_normalize(rng.standard_normal((500, 256)).astype(np.float32))
    b = l2_normalize(rng.standard_normal((500, 256)).astype(np.float32))
    float32 = (a @ b.T).astype(np.float64)
    exact = a.astype(np.float64) @ b.astype(np.float64).T
    assert np.abs(float32 - exact).max() < float32_dot_error_bound(256, 1.0)


def test_k_out_of_range_is_refused():
    database = l2_normalize(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError):
        ExactTopK(database).search(database, 5)
