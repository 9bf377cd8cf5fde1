"""Learned transforms against independent float64 numpy references.

The references below never call streamnorm: whitening from ``np.cov`` and
``np.linalg.eigh``, NES from a full similarity matrix and ``argsort``, the dimension
budget from hand-planted variances and ``eigh`` of ``X^T X``.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm import transforms
from streamnorm.config import NormalizationParams
from streamnorm.errors import ConfigError, InputError
from streamnorm.transforms import (
    DimensionDrop,
    NegativeSubtraction,
    Projection,
    TransformChain,
    Whitening,
    apply_to_training,
    fit_chain,
)

ATOL = 2e-5


# -- independent references ------------------------------------------------------------


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def signed_eigh(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs by decreasing eigenvalue; each vector's largest-|component| positive."""
    values, vectors = np.linalg.eigh(matrix)
    values, vectors = values[::-1], vectors[:, ::-1]
    for column in range(vectors.shape[1]):
        if vectors[np.argmax(np.abs(vectors[:, column])), column] < 0:
            vectors[:, column] *= -1
    return values, vectors


def brute_nes(
    x: np.ndarray,
    negatives: np.ndarray,
    k: int,
    beta: float,
    iterations: int,
    own: np.ndarray | None = None,
) -> np.ndarray:
    x, negatives = unit(x), np.asarray(negatives, dtype=np.float64)
    for _ in range(iterations):
        sims = x @ negatives.T
        if own is not None:
            sims[np.arange(len(x)), own] = -np.inf
        nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        x = unit(x - beta * negatives[nearest].mean(axis=1))
    return x


def brute_augment(train: np.ndarray, k: int, alpha: float) -> np.ndarray:
    t = unit(train)
    sims = t @ t.T
    nearest = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.clip(np.take_along_axis(sims, nearest, 1), 0, None) ** alpha
    return unit((weights[:, :, None] * t[nearest]).sum(axis=1))


# -- data ------------------------------------------------------------------------------


def anisotropic(seed: int, n: int, dim: int, offset: float = 0.3) -> np.ndarray:
    """Unit float32 rows of a rotated Gaussian with very unequal axes."""
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    raw = (rng.standard_normal((n, dim)) * np.geomspace(0.1, 3.0, dim)) @ rotation + offset
    return unit(raw).astype(np.float32)


TRAIN = anisotropic(0, 400, 16)
QUERIES = anisotropic(1, 50, 16)
# Wide enough that BLAS products really do change with the batch (at 16 dims they
# happen not to), so the determinism test would catch a transform that used them.
WIDE_TRAIN = anisotropic(5, 400, 64)
WIDE_QUERIES = anisotropic(6, 50, 64)


def reader(train: np.ndarray, log: list[int] | None = None):
    def read(start: int, stop: int) -> np.ndarray:
        if log is not None:
            log.append(stop - start)
        return train[start:stop]

    return read


def fit(train: np.ndarray = TRAIN, **values) -> TransformChain:
    params = NormalizationParams(**values)
    return fit_chain(params, reader(train), len(train), train.shape[1])


FULL = {
    "whiten": True,
    "nes": True,
    "nes_k": 5,
    "nes_iterations": 2,
    "nes_alpha": 2.0,
    "max_dim": 40,
    "side": "both",
}


@functools.lru_cache(maxsize=1)
def full_chain() -> TransformChain:
    """Every step on: whitening, two NES iterations with augmentation, PCA budget."""
    return fit(WIDE_TRAIN, **FULL)


# -- identity --------------------------------------------------------------------------


def test_identity_chain_returns_its_input_object():
    chain = fit()
    assert chain.is_identity and chain.output_dim == chain.input_dim == 16
    assert chain.apply(QUERIES) is QUERIES
    # A budget that already fits adds no step either.
    assert fit(max_dim=17).is_identity


# -- whitening -------------------------------------------------------------------------


@pytest.mark.parametrize("power", [-0.5, -0.25, 0.0])
def test_whitening_matches_numpy_eigh(power):
    chain = fit(whiten=True, whiten_power=power)
    train = TRAIN.astype(np.float64)
    values, vectors = signed_eigh(np.cov(train, rowvar=False))
    expected = unit((QUERIES - train.mean(axis=0)) @ (vectors * values**power))
    got = chain.apply(QUERIES)
    assert [s.name for s in chain.steps] == ["whiten"]
    assert got.dtype == np.float32 and got.shape == QUERIES.shape
    np.testing.assert_allclose(got, expected, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, atol=1e-6)


def test_whitened_training_set_has_identity_covariance():
    chain = fit(whiten=True)
    step = chain.steps[0]
    assert isinstance(step, Whitening)
    train = TRAIN.astype(np.float64)
    # Before the final normalization the covariance is exactly the identity ...
    centred = (train - step.mean) @ step.projection
    np.testing.assert_allclose(np.cov(centred, rowvar=False), np.eye(16), atol=1e-4)
    # ... and after it the spread of variances collapses (up to the 1/d scale).
    before = np.linalg.eigvalsh(np.cov(train, rowvar=False))
    after = np.linalg.eigvalsh(np.cov(chain.apply(TRAIN).astype(np.float64), rowvar=False))
    assert before.max() / before.min() > 100
    assert after.max() / after.min() < 4
    np.testing.assert_allclose(after.mean(), 1 / 16, rtol=0.05)


def test_whitening_guards_a_rank_deficient_training_set():
    # All training vectors in a 10-dim subspace of 16 dims: six eigenvalues are ~0.
    rng = np.random.default_rng(2)
    train = np.zeros((300, 16), dtype=np.float32)
    train[:, :10] = unit(rng.standard_normal((300, 10)))
    got = fit(train, whiten=True).apply(QUERIES)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, atol=1e-6)


# -- NES -------------------------------------------------------------------------------


@pytest.mark.parametrize("iterations", [1, 2])
@pytest.mark.parametrize("alpha", [None, 0.0, 3.0])
def test_nes_matches_brute_force(iterations, alpha):
    chain = fit(nes=True, nes_k=7, nes_beta=0.35, nes_iterations=iterations, nes_alpha=alpha)
    negatives = TRAIN if alpha is None else brute_augment(TRAIN, 7, alpha)
    expected = brute_nes(QUERIES, negatives, 7, 0.35, iterations)
    assert [s.name for s in chain.steps] == ["nes"]
    np.testing.assert_allclose(chain.apply(QUERIES), expected, atol=ATOL)


def test_nes_actually_moves_vectors():
    # Guards the reference itself: with beta = 0 NES is the identity, with 0.35 not.
    still = fit(nes=True, nes_beta=0.0).apply(QUERIES)
    moved = fit(nes=True, nes_beta=0.35).apply(QUERIES)
    np.testing.assert_allclose(still, QUERIES, atol=1e-6)
    assert np.abs(moved - QUERIES).max() > 0.01


def test_nes_negatives_are_the_whitened_training_set():
    chain = fit(whiten=True, nes=True, nes_k=6, nes_beta=0.5)
    train = TRAIN.astype(np.float64)
    values, vectors = signed_eigh(np.cov(train, rowvar=False))
    projection = vectors / np.sqrt(values)
    whiten = lambda x: unit((x - train.mean(axis=0)) @ projection)  # noqa: E731
    expected = brute_nes(whiten(QUERIES), whiten(train), 6, 0.5, 1)
    np.testing.assert_allclose(chain.apply(QUERIES), expected, atol=ATOL)


def test_training_rows_leave_their_own_negative_out():
    chain = fit(nes=True, nes_k=5, nes_iterations=2)
    blocks = dict(apply_to_training(chain, reader(TRAIN), len(TRAIN), block_rows=150))
    assert sorted(blocks) == [0, 150, 300]
    got = np.concatenate([blocks[0], blocks[150], blocks[300]])
    own = np.arange(len(TRAIN))
    np.testing.assert_allclose(got, brute_nes(TRAIN, TRAIN, 5, 0.35, 2, own), atol=ATOL)
    # As a query, a training vector meets itself first; as training it must not.
    as_query = chain.apply(TRAIN[:20])
    assert np.abs(as_query - got[:20]).max() > 1e-3


# -- dimension budget ------------------------------------------------------------------


@pytest.mark.parametrize(("side", "extra"), [("query", 1), ("reference", 1), ("both", 2)])
@pytest.mark.parametrize("reduction", ["pca", "drop"])
def test_budget_leaves_room_for_the_extra_dimensions(side, extra, reduction):
    chain = fit(max_dim=12, side=side, reduction=reduction)
    out = chain.apply(QUERIES)
    assert chain.output_dim == out.shape[1] == 12 - extra
    assert [s.name for s in chain.steps] == [reduction]
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)


def planted(seed: int, n: int) -> np.ndarray:
    """Rows whose dimensions 3, 1 and 5 have by far the lowest variance."""
    stds = np.array([1.0, 0.02, 2.0, 0.01, 1.5, 0.04, 3.0, 0.5])
    rng = np.random.default_rng(seed)
    return unit(rng.standard_normal((n, 8)) * stds).astype(np.float32)


def test_drop_removes_exactly_the_lowest_variance_dimensions():
    train, queries = planted(3, 500), planted(4, 40)
    chain = fit(train, max_dim=6, side="query", reduction="drop")  # 8 -> 5 dims
    step = chain.steps[0]
    assert isinstance(step, DimensionDrop)
    assert step.keep.tolist() == [0, 2, 4, 6, 7]
    np.testing.assert_allclose(chain.apply(queries), unit(queries[:, [0, 2, 4, 6, 7]]), atol=1e-6)


def test_pca_budget_matches_numpy_eigh_with_fixed_signs():
    chain = fit(max_dim=10, side="both", reduction="pca")  # 16 -> 8 dims
    train = TRAIN.astype(np.float64)
    _, vectors = signed_eigh(train.T @ train / len(train))
    expected = unit(QUERIES @ vectors[:, :8])
    np.testing.assert_allclose(chain.apply(QUERIES), expected, atol=ATOL)
    step = chain.steps[0]
    assert isinstance(step, Projection)
    matrix = step.matrix.astype(np.float64)
    leading = matrix[np.argmax(np.abs(matrix), axis=0), np.arange(8)]
    assert (leading > 0).all()
    np.testing.assert_allclose(matrix.T @ matrix, np.eye(8), atol=1e-6)


def test_pca_signs_do_not_depend_on_the_training_order():
    params = {"max_dim": 10, "side": "both", "reduction": "pca"}
    forward = fit(**params).steps[0]
    backward = fit(TRAIN[::-1].copy(), **params).steps[0]
    assert isinstance(forward, Projection) and isinstance(backward, Projection)
    np.testing.assert_allclose(forward.matrix, backward.matrix, atol=1e-5)


def test_max_dim_too_small_is_a_config_error():
    params = NormalizationParams(max_dim=2, side="both")
    with pytest.raises(ConfigError, match="max_dim=2") as error:
        fit_chain(params, reader(TRAIN), len(TRAIN), 16)
    assert "\n" not in str(error.value)
    # One extra dimension leaves room for a single one.
    assert fit(max_dim=2, side="query").output_dim == 1


def test_nes_needs_enough_training_vectors():
    with pytest.raises(ConfigError, match="nes_k=10"):
        fit(TRAIN[:10], nes=True, nes_k=10)


# -- determinism, fitting in blocks, persistence ----------------------------------------


def test_full_chain_runs_every_step_in_order():
    chain = full_chain()
    assert [s.name for s in chain.steps] == ["whiten", "nes", "pca"]
    assert isinstance(chain.steps[1], NegativeSubtraction)
    out = chain.apply(WIDE_QUERIES)
    assert out.shape == (50, 38)
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=1), 1.0, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 49), max_size=4, unique=True),
    order=st.permutations(range(50)),
)
def test_rows_do_not_depend_on_the_batch(cuts, order):
    chain = full_chain()
    whole = chain.apply(WIDE_QUERIES)
    bounds = [0, *sorted(cuts), 50]
    parts = [chain.apply(WIDE_QUERIES[a:b]) for a, b in itertools.pairwise(bounds)]
    assert np.concatenate(parts).tobytes() == whole.tobytes()
    shuffled = np.asarray(order)
    assert chain.apply(WIDE_QUERIES[shuffled]).tobytes() == whole[shuffled].tobytes()


def test_fitting_reads_in_blocks(monkeypatch):
    values = {"whiten": True, "nes": True, "nes_k": 4, "max_dim": 9, "reduction": "pca"}
    reference = fit(**values)
    monkeypatch.setattr(transforms, "BLOCK_ROWS", 64)
    log: list[int] = []
    chain = fit_chain(NormalizationParams(**values), reader(TRAIN, log), len(TRAIN), 16)
    assert max(log) <= 64 and sum(log) >= 2 * len(TRAIN)
    np.testing.assert_allclose(chain.apply(QUERIES), reference.apply(QUERIES), atol=ATOL)


def test_save_load_round_trip_is_byte_identical(tmp_path):
    chain = full_chain()
    path = tmp_path / "transforms.npz"
    chain.save(path)
    assert path.is_file() and list(tmp_path.iterdir()) == [path]
    params = NormalizationParams(**FULL)
    loaded = TransformChain.load(path, params)
    assert [s.name for s in loaded.steps] == ["whiten", "nes", "pca"]
    assert loaded.apply(WIDE_QUERIES).tobytes() == chain.apply(WIDE_QUERIES).tobytes()
    with pytest.raises(InputError, match="other parameters"):
        TransformChain.load(path, params.model_copy(update={"nes_beta": 0.5}))


def test_drop_and_identity_chains_round_trip(tmp_path):
    for name, chain in [("drop", fit(max_dim=9, reduction="drop")), ("none", fit())]:
        path = tmp_path / f"{name}.npz"
        chain.save(path)
        loaded = TransformChain.load(path, chain.params or NormalizationParams())
        assert loaded.output_dim == chain.output_dim
        assert loaded.apply(QUERIES).tobytes() == chain.apply(QUERIES).tobytes()


def test_missing_or_corrupt_files_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        TransformChain.load(tmp_path / "absent.npz", NormalizationParams())
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip file")
    with pytest.raises(InputError, match="corrupt"):
        TransformChain.load(broken, NormalizationParams())


def test_wrong_dimension_is_an_input_error():
    with pytest.raises(InputError, match="16 dims"):
        fit(whiten=True).apply(QUERIES[:, :8])


def test_budget_sample_spreads_over_the_training_set(monkeypatch):
    monkeypatch.setattr(transforms, "_BUDGET_FIT_BLOCK", 100)
    ranges = transforms._budget_ranges(10_000, 800)
    assert len(ranges) == 8 and all(stop - start == 100 for start, stop in ranges)
    assert ranges[0][0] == 0 and ranges[-1][1] == 10_000
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    # Small training sets are used whole.
    assert transforms._budget_ranges(500, 800) == [(0, 500)]
