"""Incremental references: a saved match state updated batch by batch equals a full run."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from match_helpers import brute_predictions, lattice, read_rows, shuffled_ids, with_duplicates

from streamnorm.config import build_params
from streamnorm.errors import InputError, ModelMismatchError, OutputExistsError
from streamnorm.match_state import MatchState, StateMismatchError
from streamnorm.matching import Tiling, match, update_match
from streamnorm.model import fit_model
from streamnorm.pipeline import normalize

K = 4
SMALL = Tiling(threads=2, query_block_rows=7, reference_block_rows=11)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tie-heavy lattice data: 150 references (20 duplicated vectors), 30 queries."""
    rng = np.random.default_rng(11)
    refs = with_duplicates(rng, lattice(rng, 130, 10), 20)
    queries = with_duplicates(rng, lattice(rng, 25, 10), 5)
    folder = tmp_path_factory.mktemp("state")
    query_ids = shuffled_ids(rng, "q", len(queries))
    ref_ids = shuffled_ids(rng, "r", len(refs))
    write_store(folder / "q.zarr", queries, query_ids, chunk_rows=8)
    exact = queries.astype(np.float64) @ refs.astype(np.float64).T
    return {
        "folder": folder,
        "queries": folder / "q.zarr",
        "refs": refs,
        "ref_ids": ref_ids,
        "query_ids": query_ids,
        "exact": exact,
    }


def batch_store(data, folder: Path, name: str, rows) -> Path:
    rows = np.asarray(rows)
    return write_store(folder / name, data["refs"][rows], data["ref_ids"][rows], chunk_rows=16)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    order_seed=st.integers(0, 2**16),
    cuts=st.lists(st.integers(1, 149), min_size=1, max_size=2, unique=True),
    parquet=st.booleans(),
)
def test_updates_batch_by_batch_equal_a_full_run(data, tmp_path_factory, order_seed, cuts, parquet):
    folder = tmp_path_factory.mktemp("example")
    order = np.random.default_rng(order_seed).permutation(len(data["refs"]))
    bounds = [0, *sorted(cuts), len(order)]
    batches = [order[a:b] for a, b in itertools.pairwise(bounds)]
    suffix = ".parquet" if parquet else ".csv"
    state = folder / "state.npz"
    first = batch_store(data, folder, "b0.zarr", batches[0])
    match(
        data["queries"],
        first,
        folder / f"p0{suffix}",
        k=K,
        max_results=70,
        state=state,
        tiling=SMALL,
    )
    for number, rows in enumerate(batches[1:], start=1):
        store = batch_store(data, folder, f"b{number}.zarr", rows)
        update_match(state, store, folder / f"p{number}{suffix}", max_results=70, tiling=SMALL)
    last = folder / f"p{len(batches) - 1}{suffix}"
    # The full run sees all references at once, in yet another row order.
    everything = batch_store(data, folder, "all.zarr", np.argsort(order))
    match(data["queries"], everything, folder / f"full{suffix}", k=K, max_results=70)
    assert last.read_bytes() == (folder / f"full{suffix}").read_bytes()
    expected = brute_predictions(data["exact"], data["query_ids"], data["ref_ids"], K, 70)
    assert read_rows(last) == expected
    assert MatchState.load(state).n_seen == len(data["refs"])


def test_a_store_grown_by_appending_merges_only_its_new_rows(data, tmp_path):
    state = tmp_path / "state.npz"
    refs = tmp_path / "refs.zarr"
    batch_store(data, tmp_path, "refs.zarr", range(90))
    match(data["queries"], refs, tmp_path / "p0.csv", k=K, state=state)
    # The same store, grown: its first 90 rows are unchanged.
    shutil.rmtree(refs)
    batch_store(data, tmp_path, "refs.zarr", range(150))
    update_match(state, refs, tmp_path / "p1.csv")
    match(data["queries"], refs, tmp_path / "full.csv", k=K)
    assert (tmp_path / "p1.csv").read_bytes() == (tmp_path / "full.csv").read_bytes()
    loaded = MatchState.load(state)
    assert loaded.n_seen == 150 and [b["start"] for b in loaded.batches] == [0, 90]
    # Offered again with nothing new: refused, and the state is left alone.
    before = state.read_bytes()
    with pytest.raises(StateMismatchError, match="nothing new"):
        update_match(state, refs, tmp_path / "p2.csv")
    assert state.read_bytes() == before and not (tmp_path / "p2.csv").exists()


@pytest.fixture()
def started(data, tmp_path):
    state = tmp_path / "state.npz"
    first = batch_store(data, tmp_path, "b0.zarr", range(100))
    match(data["queries"], first, tmp_path / "p0.csv", k=K, state=state)
    return state, state.read_bytes()


def refused(state, before, out, error, fragment, call):
    with pytest.raises(error, match=fragment):
        call()
    assert state.read_bytes() == before
    assert not out.exists()


def test_duplicate_ids_across_batches_are_refused(data, tmp_path, started):
    state, before = started
    overlap = batch_store(data, tmp_path, "overlap.zarr", range(95, 120))
    out = tmp_path / "p.csv"
    refused(
        state,
        before,
        out,
        StateMismatchError,
        "already merged",
        lambda: update_match(state, overlap, out),
    )
    # The same batch twice, under another name, is the same mistake.
    again = batch_store(data, tmp_path, "again.zarr", range(100))
    refused(
        state,
        before,
        out,
        StateMismatchError,
        "already merged",
        lambda: update_match(state, again, out),
    )


def test_a_different_k_is_refused(data, tmp_path, started):
    state, before = started
    new = batch_store(data, tmp_path, "b1.zarr", range(100, 150))
    out = tmp_path / "p.csv"
    refused(
        state,
        before,
        out,
        StateMismatchError,
        "k=4",
        lambda: update_match(state, new, out, k=K + 1),
    )
    update_match(state, new, out, k=K)  # the state's own k is fine


def test_a_different_model_is_refused(small_data, isc21_model, tmp_path):
    state = tmp_path / "state.npz"
    normalize(small_data.queries_path, isc21_model, "query", tmp_path / "q.zarr")
    normalize(small_data.refs_path, isc21_model, "reference", tmp_path / "r.zarr")
    match(tmp_path / "q.zarr", tmp_path / "r.zarr", tmp_path / "p0.csv", k=3, state=state)
    before = state.read_bytes()
    out = tmp_path / "p.csv"
    # Raw references against a normalized state.
    new_ids = np.array([f"N{i}" for i in range(20)])
    raw = write_store(tmp_path / "raw.zarr", small_data.refs[:20], new_ids)
    refused(state, before, out, ModelMismatchError, "raw", lambda: update_match(state, raw, out))
    # References normalized with another model.
    other = fit_model(
        small_data.train_path, tmp_path / "other", build_params("isc21", None, ["beta=1.0"])
    )
    del other
    normalize(raw, tmp_path / "other", "reference", tmp_path / "r2.zarr")
    refused(
        state,
        before,
        out,
        ModelMismatchError,
        "model",
        lambda: update_match(state, tmp_path / "r2.zarr", out),
    )


def test_changed_queries_are_refused(data, tmp_path):
    queries = tmp_path / "q.zarr"
    shutil.copytree(data["queries"], queries)
    state = tmp_path / "state.npz"
    match(
        queries,
        batch_store(data, tmp_path, "b0.zarr", range(100)),
        tmp_path / "p0.csv",
        k=K,
        state=state,
    )
    before = state.read_bytes()
    shutil.rmtree(queries)
    rng = np.random.default_rng(0)
    write_store(queries, lattice(rng, 30, 10), data["query_ids"])
    new = batch_store(data, tmp_path, "b1.zarr", range(100, 150))
    refused(
        state,
        before,
        tmp_path / "p.csv",
        StateMismatchError,
        "queries changed",
        lambda: update_match(state, new, tmp_path / "p.csv"),
    )


def test_outputs_and_states_are_not_overwritten_without_asking(data, tmp_path, started):
    state, before = started
    first = batch_store(data, tmp_path, "again.zarr", range(10))
    with pytest.raises(OutputExistsError):
        match(data["queries"], first, tmp_path / "other.csv", k=K, state=state)
    assert state.read_bytes() == before
    new = batch_store(data, tmp_path, "b1.zarr", range(100, 150))
    with pytest.raises(OutputExistsError):
        update_match(state, new, tmp_path / "p0.csv")
    assert state.read_bytes() == before
    # Writing the updated state elsewhere leaves the original as it was.
    update_match(state, new, tmp_path / "p1.csv", state_out=tmp_path / "s2.npz")
    assert state.read_bytes() == before
    assert MatchState.load(tmp_path / "s2.npz").n_seen == 150


def test_files_that_are_not_states_are_refused(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    np.savez(tmp_path / "y.npz", a=np.arange(3))
    for name in ("x.npz", "y.npz", "missing.npz"):
        with pytest.raises(InputError, match="match state"):
            MatchState.load(tmp_path / name)
