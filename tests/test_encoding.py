import numpy as np
import pytest

from streamnorm.config import NormalizationParams
from streamnorm.encoding import encode, extra_dims
from streamnorm.kernel import l2_normalize

SIDES = [("query", 2.0, None), ("reference", 1.2, None), ("both", 2.0, 0.5)]


def sample(seed):
    rng = np.random.default_rng(seed)
    q = l2_normalize(rng.standard_normal((30, 16)).astype(np.float32))
    r = l2_normalize(rng.standard_normal((50, 16)).astype(np.float32))
    return q, r, rng.uniform(-0.2, 0.8, 30), rng.uniform(-0.2, 0.8, 50)


def expected_scores(q, r, bq, br, beta_q, beta_r):
    """s'(q, r) = <q, r> - beta_q b(q) - beta_r b(r), straight from the definition."""
    return (
        q.astype(np.float64) @ r.astype(np.float64).T - beta_q * bq[:, None] - beta_r * br[None, :]
    )


@pytest.mark.parametrize(("side", "beta", "beta_ref"), SIDES)
def test_inner_product_encoding_gives_the_normalized_score(side, beta, beta_ref):
    params = NormalizationParams(side=side, beta=beta, beta_reference=beta_ref, metric="ip")
    q, r, bq, br = sample(0)
    qe, re = encode(q, bq, "query", params), encode(r, br, "reference", params)
    assert qe.shape[1] == 16 + extra_dims(params)
    want = expected_scores(q, r, bq, br, params.query_beta, params.reference_beta)
    np.testing.assert_allclose(qe.astype(np.float64) @ re.astype(np.float64).T, want, atol=1e-5)


@pytest.mark.parametrize(("side", "beta", "beta_ref"), SIDES)
def test_l2_encoding_is_an_affine_map_of_the_normalized_score(side, beta, beta_ref):
    params = NormalizationParams(side=side, beta=beta, beta_reference=beta_ref, metric="l2")
    q, r, bq, br = sample(1)
    qe = encode(q, bq, "query", params).astype(np.float64)
    re = encode(r, br, "reference", params).astype(np.float64)
    squared = ((qe[:, None, :] - re[None, :, :]) ** 2).sum(-1)
    bsum = params.query_beta + params.reference_beta
    want = expected_scores(q, r, bq, br, params.query_beta, params.reference_beta)
    np.testing.assert_allclose(-squared, 2 * want - 2 - 2 * bsum, atol=1e-5)


def test_extra_dims_per_side():
    assert extra_dims(NormalizationParams(side="query")) == 1
    assert extra_dims(NormalizationParams(side="reference")) == 1
    assert extra_dims(NormalizationParams(side="both")) == 2
