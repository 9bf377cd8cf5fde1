import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm.kernel import all_scores, candidate_scores, exact_dots, l2_normalize, tree_sum


def test_tree_sum_is_close_to_exact_sum():
    rng = np.random.default_rng(1)
    values = rng.standard_normal((50, 37))
    sums = tree_sum(values)
    for row, total in zip(values, sums, strict=True):
        assert math.isclose(total, math.fsum(row), rel_tol=1e-14, abs_tol=1e-14)


def test_tree_sum_of_hand_case_follows_the_pairwise_tree():
    # The tree adds element i to element i + half, then halves again:
    # [a, b, c, d] -> (a + c) + (b + d). With 1e16 the additions of 1.0 are lost to
    # rounding in a fixed, documented way, unlike the exact sum 2.0.
    a, b, c, d = 1e16, 1.0, 1.0, -1e16
    values = np.array([[a, b, c, d]])
    assert tree_sum(values)[0] == (a + c) + (b + d)
    assert tree_sum(values)[0] != math.fsum([a, b, c, d])
    # Odd widths are padded with zeros to the next power of two.
    assert tree_sum(np.array([[a, b, c]]))[0] == (a + c) + (b + 0.0)


def test_exact_dots_match_float64_products():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((20, 33)).astype(np.float32)
    b = rng.standard_normal((20, 33)).astype(np.float32)
    expected = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
    np.testing.assert_allclose(exact_dots(a, b), expected, rtol=1e-13, atol=1e-13)


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 40), pick=st.data())
def test_candidate_scores_do_not_depend_on_the_batch(rows, pick):
    rng = np.random.default_rng(3)
    queries = rng.standard_normal((40, 48)).astype(np.float32)
    database = rng.standard_normal((300, 48)).astype(np.float32)
    candidates = rng.integers(0, 300, (40, 9))
    whole = candidate_scores(queries, database, candidates)
    start = pick.draw(st.integers(0, 40 - rows))
    part = candidate_scores(
        queries[start : start + rows], database, candidates[start : start + rows]
    )
    assert part.tobytes() == whole[start : start + rows].tobytes()


def test_all_scores_agree_with_candidate_scores_bitwise():
    rng = np.random.default_rng(4)
    database = rng.standard_normal((1000, 24)).astype(np.float32)
    query = rng.standard_normal(24).astype(np.float32)
    full = all_scores(query, database)
    some = candidate_scores(query[None], database, np.arange(1000)[None, ::7])
    assert some[0].tobytes() == full[::7].tobytes()


def test_l2_normalize_gives_unit_rows_independently_of_batch():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((64, 100)) * 10).astype(np.float32)
    y = l2_normalize(x)
    np.testing.assert_allclose(np.linalg.norm(y.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert l2_normalize(x[13:14]).tobytes() == y[13:14].tobytes()
