import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm.kernel import (
    all_scores,
    candidate_scores,
    exact_dots,
    exact_matmul,
    l2_normalize,
    tree_sum,
)


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


@pytest.mark.parametrize("dim", [1, 2, 3, 8, 100, 129, 256])
@pytest.mark.parametrize("cols", [1, 7, 300])
def test_exact_matmul_equals_exact_dots_bitwise(dim, cols):
    rng = np.random.default_rng(dim * 1000 + cols)
    x = rng.standard_normal((21, dim)).astype(np.float32)
    w = rng.standard_normal((dim, cols)).astype(np.float32)
    expected = exact_dots(x[:, None, :], w.T[None, :, :])
    got = exact_matmul(x, w)
    assert got.dtype == np.float64 and got.shape == (21, cols)
    assert got.tobytes() == expected.tobytes()


def test_exact_matmul_is_close_to_float64_blas():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((64, 200)).astype(np.float32)
    w = rng.standard_normal((200, 90)).astype(np.float32)
    expected = x.astype(np.float64) @ w.astype(np.float64)
    # Exact products, one rounding per tree level: far below float32 precision.
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)
    assert (np.abs(exact_matmul(x, w) - expected) <= 1e-14 * scale).all()


@settings(max_examples=30, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 79), max_size=5, unique=True),
    order=st.permutations(range(80)),
)
def test_exact_matmul_rows_do_not_depend_on_the_batch(cuts, order):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((80, 96)).astype(np.float32)
    w = rng.standard_normal((96, 70)).astype(np.float32)
    whole = exact_matmul(x, w)
    bounds = [0, *sorted(cuts), 80]
    parts = [exact_matmul(x[a:b], w) for a, b in itertools.pairwise(bounds)]
    assert np.concatenate(parts).tobytes() == whole.tobytes()
    shuffled = np.asarray(order)
    assert exact_matmul(x[shuffled], w).tobytes() == whole[shuffled].tobytes()


def test_exact_matmul_tiles_do_not_change_results(monkeypatch):
    import streamnorm.kernel as kernel

    rng = np.random.default_rng(8)
    x = rng.standard_normal((50, 40)).astype(np.float32)
    w = rng.standard_normal((40, 30)).astype(np.float32)
    whole = exact_matmul(x, w)
    monkeypatch.setattr(kernel, "_MATMUL_TILE_ELEMENTS", 64)
    monkeypatch.setattr(kernel, "_MATMUL_TILE_COLUMNS", 7)
    assert exact_matmul(x, w).tobytes() == whole.tobytes()


def test_exact_matmul_zeros_and_shapes():
    x = np.array([[-0.0, -0.0], [-1.0, 0.0]], dtype=np.float32)
    w = np.array([[1.0, 0.0], [1.0, 3.0]], dtype=np.float32)
    got = exact_matmul(x, w)
    # exact_dots keeps the sign of an all-negative-zero sum; exact_matmul gives +0.0.
    assert np.signbit(exact_dots(x[0], w[:, 0]))
    assert got.tolist() == [[0.0, 0.0], [-1.0, 0.0]]
    assert not np.signbit(got[got == 0]).any()
    assert exact_matmul(np.zeros((0, 5), np.float32), np.ones((5, 3), np.float32)).shape == (0, 3)
    with pytest.raises(ValueError, match="cannot multiply"):
        exact_matmul(np.ones((2, 3), np.float32), np.ones((4, 2), np.float32))
