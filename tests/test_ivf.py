import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm.config import build_params
from streamnorm.ivf import IVFExactTopK, build_ivf
from streamnorm.kernel import l2_normalize
from streamnorm.model import Normalizer, choose_index, fit_model
from streamnorm.pipeline import normalize
from streamnorm.verify import verify


@pytest.fixture(scope="module")
def ivf_case():
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((30, 24)).astype(np.float32)
    database = l2_normalize(
        centres[rng.integers(0, 30, 6000)]
        + 0.4 * rng.standard_normal((6000, 24)).astype(np.float32)
    )
    database[50:70] = database[3]  # exact ties inside one list
    queries = l2_normalize(
        centres[rng.integers(0, 30, 300)] + 0.4 * rng.standard_normal((300, 24)).astype(np.float32)
    )
    queries[0] = database[3]
    index = build_ivf(database, 40)
    return database, queries, IVFExactTopK(database, index, nprobe=4)


def brute_force_within_probed_lists(database, query, index, nprobe, k):
    """The definition: exact top-nprobe centroids, then exact top-k of their members."""
    centroids = index.quantizer.reconstruct_n(0, index.nlist).astype(np.float64)
    near = np.lexsort((np.arange(index.nlist), -(centroids @ query.astype(np.float64))))[:nprobe]
    assigned = index.quantizer.search(database, 1)[1][:, 0]  # list of each vector at add time
    members = np.flatnonzero(np.isin(assigned, near))
    sims = database[members].astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort((members, -sims))[:k]
    return sims[order], members[order]


def test_ivf_search_is_exact_within_the_probed_lists(ivf_case):
    database, queries, searcher = ivf_case
    scores, rows = searcher.search(queries, 10)
    for i in range(0, 300, 7):
        want_scores, want_rows = brute_force_within_probed_lists(
            database, queries[i], searcher._ivf, searcher.nprobe, 10
        )
        np.testing.assert_allclose(scores[i], want_scores, atol=1e-12)
        np.testing.assert_array_equal(rows[i], want_rows)
    np.testing.assert_array_equal(rows[0][:10], [3, *range(50, 59)])


@settings(max_examples=20, deadline=None)
@given(split=st.integers(1, 299))
def test_ivf_results_do_not_depend_on_the_batch(ivf_case, split):
    _, queries, searcher = ivf_case
    whole = searcher.search(queries, 10)
    parts = [searcher.search(queries[:split], 10), searcher.search(queries[split:], 10)]
    assert np.concatenate([p[0] for p in parts]).tobytes() == whole[0].tobytes()
    assert np.concatenate([p[1] for p in parts]).tobytes() == whole[1].tobytes()


def test_ivf_model_end_to_end(small_data, tmp_path):
    params = build_params("isc21", None, ["index=ivf", "ivf_nlist=20", "ivf_nprobe=5"])
    model = fit_model(small_data.train_path, tmp_path / "ivf", params)
    assert model.index_report_["kind"] == "ivf"
    assert 0.0 <= model.index_report_["nth_neighbour_recall"] <= 1.0
    out = tmp_path / "q.zarr"
    normalize(small_data.queries_path, tmp_path / "ivf", "query", out, chunk_rows=17)
    assert verify(out, small_data.queries_path, tmp_path / "ivf", sample=None).ok
    # Loading memory-maps the training matrix and gives the same rows.
    again = Normalizer.load(tmp_path / "ivf").transform(small_data.queries[:9])
    first = model.transform(small_data.queries[:9])
    assert again.background.tobytes() == first.background.tobytes()


def test_auto_index_choice_explains_itself():
    auto = build_params("isc21", None, ["index=auto"])
    kind, reason = choose_index(auto, 10_000, 256)
    assert kind == "flat" and "10000" in reason
    kind, reason = choose_index(auto, 2_000_000, 64)
    assert kind == "ivf" and "2000000" in reason
    assert choose_index(build_params("isc21"), 2_000_000, 64)[0] == "flat"
