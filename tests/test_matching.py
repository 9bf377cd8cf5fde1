import csv
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import brute_background, unit_rows, write_store
from match_helpers import (
    brute_predictions,
    fsum_scores,
    lattice,
    read_rows,
    shuffled_ids,
    with_duplicates,
)

from streamnorm import match_tiles, matching
from streamnorm.config import build_params
from streamnorm.errors import ModelMismatchError, StreamnormError
from streamnorm.hdf5_export import export_submission
from streamnorm.kernel import l2_normalize
from streamnorm.match_output import write_predictions
from streamnorm.matching import Tiling, match
from streamnorm.model import fit_model
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


# -- exactness against brute force, with deliberate ties, over many tilings ---------------

TILINGS = [
    Tiling(),
    Tiling(threads=1, query_block_rows=5, reference_block_rows=7),
    Tiling(threads=3, query_block_rows=5, reference_block_rows=7),
    Tiling(threads=2, query_block_rows=16, reference_block_rows=64),
    Tiling(threads=4, query_block_rows=3, reference_block_rows=2),  # blocks smaller than k
]


@dataclass
class TiedData:
    queries: np.ndarray
    refs: np.ndarray
    query_ids: np.ndarray
    ref_ids: np.ndarray
    queries_path: Path
    refs_path: Path


@pytest.fixture(scope="module")
def tied(tmp_path_factory):
    """Lattice vectors (every score a multiple of 1/4) plus exact duplicate rows."""
    rng = np.random.default_rng(7)
    refs = with_duplicates(rng, lattice(rng, 150, 12), 30)
    queries = with_duplicates(rng, lattice(rng, 40, 12), 8)
    query_ids, ref_ids = shuffled_ids(rng, "q", len(queries)), shuffled_ids(rng, "r", len(refs))
    folder = tmp_path_factory.mktemp("tied")
    return TiedData(
        queries,
        refs,
        query_ids,
        ref_ids,
        write_store(folder / "q.zarr", queries, query_ids, chunk_rows=16),
        write_store(folder / "r.zarr", refs, ref_ids, chunk_rows=32),
    )


def test_ties_top_k_and_global_top_n_equal_brute_force_for_every_tiling(tied, tmp_path):
    exact = tied.queries.astype(np.float64) @ tied.refs.astype(np.float64).T
    everything = brute_predictions(exact, tied.query_ids, tied.ref_ids, 4, None)
    # The cut at 100 falls inside a run of equal scores: ids must decide.
    assert everything[99][2] == everything[100][2] == everything[90][2]
    expected = everything[:100]
    outputs = set()
    for number, tiling in enumerate(TILINGS):
        out = tmp_path / f"p{number}.csv"
        result = match(tied.queries_path, tied.refs_path, out, k=4, max_results=100, tiling=tiling)
        assert read_rows(out) == expected, tiling
        assert len(result) == 100
        outputs.add(out.read_bytes())
    assert len(outputs) == 1


def test_random_data_equals_correctly_rounded_brute_force(tmp_path):
    rng = np.random.default_rng(3)
    refs = with_duplicates(rng, rng.standard_normal((200, 24)).astype(np.float32), 20)
    queries = with_duplicates(rng, rng.standard_normal((30, 24)).astype(np.float32), 5)
    query_ids, ref_ids = shuffled_ids(rng, "Q", len(queries)), shuffled_ids(rng, "R", len(refs))
    write_store(tmp_path / "q.zarr", queries, query_ids, chunk_rows=8)
    write_store(tmp_path / "r.zarr", refs, ref_ids, chunk_rows=64)
    # Normalization is an input to scoring, not part of it: both sides use the same rows.
    scores = fsum_scores(l2_normalize(queries), l2_normalize(refs))
    expected = brute_predictions(scores, query_ids, ref_ids, 6, 120)
    outputs = set()
    for number, tiling in enumerate(TILINGS[:4]):
        out = tmp_path / f"p{number}.csv"
        match(tmp_path / "q.zarr", tmp_path / "r.zarr", out, k=6, max_results=120, tiling=tiling)
        rows = read_rows(out)
        assert [(q, r) for q, r, _ in rows] == [(q, r) for q, r, _ in expected]
        np.testing.assert_allclose([s for *_, s in rows], [s for *_, s in expected], atol=1e-12)
        outputs.add(out.read_bytes())
    assert len(outputs) == 1


@pytest.mark.parametrize(
    "overrides",
    [["side=both", "metric=ip", "beta_reference=1.5"], ["side=reference", "metric=l2"]],
)
def test_normalized_stores_of_every_side_and_encoding(small_data, tmp_path, overrides):
    params = build_params("isc21", None, overrides)
    model = fit_model(small_data.train_path, tmp_path / "m", params)
    del model
    normalize(small_data.queries_path, tmp_path / "m", "query", tmp_path / "q.zarr")
    normalize(small_data.refs_path, tmp_path / "m", "reference", tmp_path / "r.zarr")
    tiling = Tiling(threads=2, query_block_rows=40, reference_block_rows=100)
    match(
        tmp_path / "q.zarr",
        tmp_path / "r.zarr",
        tmp_path / "p.csv",
        k=3,
        max_results=None,
        tiling=tiling,
    )
    b_q = brute_background(small_data.queries, small_data.train, 10)
    b_r = brute_background(small_data.refs, small_data.train, 10)
    full = unit_rows(small_data.queries) @ unit_rows(small_data.refs).T
    if params.side in ("query", "both"):
        full -= params.query_beta * b_q[:, None]
    if params.side in ("reference", "both"):
        full -= params.reference_beta * b_r[None, :]
    q_index = {q: i for i, q in enumerate(small_data.query_ids)}
    r_index = {r: i for i, r in enumerate(small_data.ref_ids)}
    rows = read_rows(tmp_path / "p.csv")
    assert len(rows) == 3 * len(small_data.queries)
    got = np.array([s for *_, s in rows])
    np.testing.assert_allclose(got, [full[q_index[q], r_index[r]] for q, r, _ in rows], atol=5e-6)
    for query, i in q_index.items():
        mine = [r_index[r] for q, r, _ in rows if q == query]
        outside = np.delete(full[i], mine)
        # Exact top 3 up to the float32 rounding of the stored encodings.
        assert full[i, mine].min() >= outside.max() - 1e-5


# -- memory: the reference store is read in blocks, each row once --------------------------


class SlicesOnly:
    """Row-sliceable stand-in for a stored array that refuses to be loaded whole."""

    def __init__(self, real, limit, log):
        self.real, self.limit, self.log = real, limit, log
        self.shape, self.dtype = real.shape, real.dtype

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step is None, key
        start, stop, _ = key.indices(self.shape[0])
        assert stop - start <= self.limit, (start, stop)
        self.log.append((start, stop))
        return self.real[key]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole store was loaded")


@pytest.mark.parametrize("kind", ["raw", "normalized"])
def test_references_are_read_in_blocks_each_row_once(
    small_data, normalized, tmp_path, monkeypatch, kind
):
    queries, refs = (small_data.queries_path, small_data.refs_path) if kind == "raw" else normalized
    logs: dict[str, list] = {"vectors": [], "background": []}
    real_open = matching.open_source

    def guarded_open(path, ids_path=None):
        source = real_open(path, ids_path)
        if Path(path) == Path(refs):
            source.vectors = SlicesOnly(source.vectors, 96, logs["vectors"])
            if source.background is not None:
                source.background = SlicesOnly(source.background, 96, logs["background"])
        return source

    monkeypatch.setattr(matching, "open_source", guarded_open)
    tiling = Tiling(threads=3, query_block_rows=64, reference_block_rows=96)
    match(queries, refs, tmp_path / "p.csv", k=5, tiling=tiling)
    reads = sorted(logs["vectors"])
    assert len(reads) > 5
    assert [start for start, _ in reads] == [0, *[stop for _, stop in reads[:-1]]]
    assert reads[-1][1] == len(small_data.refs)
    if kind == "normalized":
        assert sorted(logs["background"]) == reads
    monkeypatch.undo()
    match(queries, refs, tmp_path / "p2.csv", k=5, tiling=Tiling(threads=1))
    assert (tmp_path / "p.csv").read_bytes() == (tmp_path / "p2.csv").read_bytes()


# -- outputs ---------------------------------------------------------------------------------


def test_parquet_holds_the_csv_rows(tied, tmp_path):
    tiling = Tiling(query_block_rows=9, reference_block_rows=50)
    csv_result = match(
        tied.queries_path, tied.refs_path, tmp_path / "p.csv", k=5, max_results=150, tiling=tiling
    )
    match(tied.queries_path, tied.refs_path, tmp_path / "p.parquet", k=5, max_results=150)
    assert read_rows(tmp_path / "p.parquet") == read_rows(tmp_path / "p.csv")
    # Written a block (one row group) at a time.
    write_predictions(tmp_path / "small.parquet", csv_result, block_rows=32)
    write_predictions(tmp_path / "small.csv", csv_result, block_rows=32)
    assert pq.ParquetFile(tmp_path / "small.parquet").metadata.num_row_groups == 5
    assert read_rows(tmp_path / "small.parquet") == read_rows(tmp_path / "p.csv")
    assert (tmp_path / "small.csv").read_bytes() == (tmp_path / "p.csv").read_bytes()


def test_capped_queries_certify_the_all_pairs_top_n(tied, tmp_path):
    exact = tied.queries.astype(np.float64) @ tied.refs.astype(np.float64).T
    all_pairs = brute_predictions(exact, tied.query_ids, tied.ref_ids, len(tied.refs), 60)
    small = match(tied.queries_path, tied.refs_path, tmp_path / "a.csv", k=2, max_results=60)
    big = match(tied.queries_path, tied.refs_path, tmp_path / "b.csv", k=40, max_results=60)
    assert small.capped_queries > 0 and read_rows(tmp_path / "a.csv") != all_pairs
    assert big.capped_queries == 0 and read_rows(tmp_path / "b.csv") == all_pairs


def test_bad_options_are_refused(tied, tmp_path):
    for kwargs in ({"k": 0}, {"max_results": 0}, {"tiling": Tiling(threads=0)}):
        with pytest.raises(StreamnormError):
            match(tied.queries_path, tied.refs_path, tmp_path / "p.csv", **kwargs)
    assert not (tmp_path / "p.csv").exists()


def test_tiles_finishing_in_any_order_give_the_same_bytes(tied, tmp_path, monkeypatch):
    tiling = Tiling(threads=4, query_block_rows=6, reference_block_rows=20)
    match(tied.queries_path, tied.refs_path, tmp_path / "calm.csv", k=3, tiling=tiling)
    real = match_tiles._searcher

    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        delays = iter(rng.uniform(0, 0.004, 10_000).tolist())

        def jittery(block, keys, delays=delays):
            searcher = real(block, keys)
            search = searcher.search

            def slow_search(queries, k):
                time.sleep(next(delays))  # the GIL-free wait reorders completions
                return search(queries, k)

            searcher.search = slow_search
            return searcher

        monkeypatch.setattr(match_tiles, "_searcher", jittery)
        out = tmp_path / f"jitter{seed}.csv"
        match(tied.queries_path, tied.refs_path, out, k=3, tiling=tiling)
        assert out.read_bytes() == (tmp_path / "calm.csv").read_bytes()
