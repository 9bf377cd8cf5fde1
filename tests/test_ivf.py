import faiss
import numpy as np
import pytest
import zarr
from conftest import assert_split_invariant
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm.config import build_params
from streamnorm.ivf import IVFExactTopK, build_ivf, wide_probe_threshold
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
    # Half the queries (those farthest from every centroid) read 8 lists, the others 4.
    best = (queries.astype(np.float64) @ _centroids(index).T).max(axis=1)
    searcher = IVFExactTopK(database, index, nprobe=4, wide_nprobe=8, wide_below=np.median(best))
    return database, queries, searcher


def _centroids(index):
    return index.quantizer.reconstruct_n(0, index.nlist).astype(np.float64)


def probe_count(searcher, query):
    """The definition: the wide probe for a query whose best centroid is below the bar."""
    best = (_centroids(searcher.index) @ query.astype(np.float64)).max()
    return searcher.wide_nprobe if best < searcher.wide_below else searcher.nprobe


def brute_force_within_probed_lists(database, query, index, nprobe, k):
    """The definition: exact top-nprobe centroids, then exact top-k of their members."""
    centroids = _centroids(index)
    near = np.lexsort((np.arange(index.nlist), -(centroids @ query.astype(np.float64))))[:nprobe]
    assigned = index.quantizer.search(database, 1)[1][:, 0]  # list of each vector at add time
    members = np.flatnonzero(np.isin(assigned, near))
    sims = database[members].astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort((members, -sims))[:k]
    return sims[order], members[order]


def test_best_centroid_similarity_is_exact(ivf_case):
    _, queries, searcher = ivf_case
    want = (queries.astype(np.float64) @ _centroids(searcher.index).T).max(axis=1)
    np.testing.assert_allclose(searcher.best_centroid_similarity(queries), want, atol=1e-12)


def test_ivf_search_is_exact_within_the_probed_lists(ivf_case):
    database, queries, searcher = ivf_case
    scores, rows = searcher.search(queries, 10)
    probes = [probe_count(searcher, query) for query in queries]
    assert probes.count(8) == 150  # the fixture's bar is the median
    for i in range(0, 300, 7):
        want_scores, want_rows = brute_force_within_probed_lists(
            database, queries[i], searcher.index, probes[i], 10
        )
        np.testing.assert_allclose(scores[i], want_scores, atol=1e-12)
        np.testing.assert_array_equal(rows[i], want_rows)
    np.testing.assert_array_equal(rows[0][:10], [3, *range(50, 59)])


@settings(max_examples=20, deadline=None)
@given(split=st.integers(1, 299), threads=st.sampled_from([1, 2]))
def test_ivf_results_do_not_depend_on_batch_or_threads(ivf_case, split, threads):
    _, queries, searcher = ivf_case
    assert_split_invariant(searcher, queries, split, threads)


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
    # Without --chunk-rows an IVF model gets larger chunks than an exact one; the bytes
    # are the same whatever the chunking.
    default = tmp_path / "q-default.zarr"
    normalize(small_data.queries_path, tmp_path / "ivf", "query", default)
    assert zarr.open_group(default, mode="r")["vectors"].chunks[0] == 16_384
    for name in ("vectors", "background", "ids"):
        chunked = zarr.open_group(out, mode="r")[name][:]
        assert np.array_equal(zarr.open_group(default, mode="r")[name][:], chunked)


def test_auto_index_choice_explains_itself():
    auto = build_params("isc21", None, ["index=auto"])
    kind, reason = choose_index(auto, 10_000, 256)
    assert kind == "flat" and "10000" in reason
    kind, reason = choose_index(auto, 2_000_000, 64)
    assert kind == "ivf" and "2000000" in reason
    assert choose_index(build_params("isc21"), 2_000_000, 64)[0] == "flat"


def test_tied_centroids_are_chosen_by_list_number():
    """Two identical centroids straddle the nprobe boundary: the smaller number wins."""
    rng = np.random.default_rng(3)
    dim = 16
    centroids = l2_normalize(rng.standard_normal((12, dim)).astype(np.float32))
    centroids[7] = centroids[2]
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, dim, 12, faiss.METRIC_INNER_PRODUCT)
    database = l2_normalize(rng.standard_normal((1200, dim)).astype(np.float32))
    index.add(database)
    # Queries whose third-nearest centroid is the tied pair (2 and 7).
    queries = l2_normalize(centroids[2] + 0.05 * rng.standard_normal((400, dim)).astype(np.float32))
    sims = queries.astype(np.float64) @ centroids.astype(np.float64).T
    searcher = IVFExactTopK(database, index, nprobe=1)
    chosen = searcher._nearest_lists(queries)
    best = np.lexsort((np.tile(np.arange(12), (400, 1)), -sims), axis=-1)[:, 0]
    np.testing.assert_array_equal(chosen[:, 0], best)
    assert set(best) == {2}  # list 7 holds the same centroid but loses every tie
    scores, rows = searcher.search(queries, 5)
    for i in range(0, 400, 37):
        want_scores, want_rows = brute_force_within_probed_lists(database, queries[i], index, 1, 5)
        np.testing.assert_allclose(scores[i], want_scores, atol=1e-12)
        np.testing.assert_array_equal(rows[i], want_rows)


def test_wide_probe_threshold_is_the_share_quantile(ivf_case):
    database, _, searcher = ivf_case
    threshold = wide_probe_threshold(database, searcher.index, 0.3)
    best = (database.astype(np.float64) @ _centroids(searcher.index).T).max(axis=1)
    # Calibrated on the rows k-means did not see, which sit a little farther from
    # their centroids than the rows it saw.
    assert 0.2 < np.mean(best < threshold) < 0.4
    assert wide_probe_threshold(database, searcher.index, 0.0) is None
