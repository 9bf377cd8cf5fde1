import tracemalloc

import numpy as np
import pytest
import zarr
from conftest import brute_background, store_arrays, unit_rows, write_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamnorm.errors import InputError, ModelMismatchError, OutputExistsError
from streamnorm.pipeline import normalize
from streamnorm.store import ATTRS_KEY

arrays = store_arrays


@pytest.fixture(scope="module")
def baseline(small_data, isc21_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "queries.zarr"
    normalize(small_data.queries_path, isc21_model, "query", out, chunk_rows=64)
    return arrays(out)


def test_output_equals_brute_force(small_data, baseline):
    b = brute_background(small_data.queries, small_data.train, 10)
    np.testing.assert_allclose(baseline["background"], b, atol=2e-6)
    # Exact-L2 query side of the isc21 preset: [q, sqrt(2 * beta * (1 + b))].
    expected = np.concatenate([unit_rows(small_data.queries), np.sqrt(4.0 * (1 + b))[:, None]], 1)
    np.testing.assert_allclose(baseline["vectors"], expected, atol=2e-6)
    assert baseline["ids"].tolist() == small_data.query_ids.tolist()


def test_provenance_attributes(small_data, isc21_model, tmp_path):
    out = tmp_path / "r.zarr"
    normalize(small_data.refs_path, isc21_model, "reference", out)
    attrs = zarr.open_group(str(out), mode="r").attrs[ATTRS_KEY]
    assert attrs["status"] == "complete" and attrs["role"] == "reference"
    assert attrs["params"]["n"] == 10 and len(attrs["model_fingerprint"]) == 64
    assert attrs["batches"][0]["input"]["rows"] == len(small_data.refs)
    assert "numpy" in attrs["versions"]
    # The reference side of query-side L2 encoding is a zero extra dimension.
    assert not arrays(out)["vectors"][:, -1].any()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chunk_rows=st.integers(1, 150),
    scheduler=st.sampled_from(["threads", "synchronous"]),
    workers=st.sampled_from([1, 2, 3]),
)
def test_bytes_do_not_depend_on_chunking_scheduler_or_workers(
    small_data, isc21_model, baseline, tmp_path_factory, chunk_rows, scheduler, workers
):
    out = tmp_path_factory.mktemp("inv") / "q.zarr"
    normalize(
        small_data.queries_path,
        isc21_model,
        "query",
        out,
        chunk_rows=chunk_rows,
        scheduler=scheduler,
        workers=workers,
    )
    result = arrays(out)
    for name in ("vectors", "background"):
        assert result[name].tobytes() == baseline[name].tobytes()


def test_process_scheduler_gives_the_same_bytes(small_data, isc21_model, baseline, tmp_path):
    normalize(
        small_data.queries_path,
        isc21_model,
        "query",
        tmp_path / "q.zarr",
        chunk_rows=40,
        scheduler="processes",
        workers=2,
    )
    assert arrays(tmp_path / "q.zarr")["vectors"].tobytes() == baseline["vectors"].tobytes()


def test_interrupted_output_is_resumed_to_the_same_bytes(
    small_data, isc21_model, baseline, tmp_path
):
    out = tmp_path / "q.zarr"
    normalize(small_data.queries_path, isc21_model, "query", out, chunk_rows=32)
    group = zarr.open_group(str(out), mode="r+")
    # Undo chunks 1 and 3 as a crash would leave them: garbage data, marker unset.
    group["done"][1] = 0
    group["done"][3] = 0
    group["vectors"][32:64] = 7.0
    attrs = group.attrs[ATTRS_KEY]
    group.attrs[ATTRS_KEY] = {**attrs, "status": "incomplete", "pending": attrs["batches"][0]}
    with pytest.raises(InputError, match="incomplete"):
        normalize(out, isc21_model, "query", tmp_path / "again.zarr")
    result = normalize(small_data.queries_path, isc21_model, "query", out)
    assert (result.chunks_computed, result.chunks_reused) == (2, 3)
    assert arrays(out)["vectors"].tobytes() == baseline["vectors"].tobytes()


def test_existing_outputs_are_refused_or_replaced(small_data, isc21_model, tmp_path):
    out = tmp_path / "q.zarr"
    normalize(small_data.queries_path, isc21_model, "query", out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        normalize(small_data.queries_path, isc21_model, "query", out)
    normalize(small_data.queries_path, isc21_model, "query", out, overwrite=True)
    group = zarr.open_group(str(out), mode="r+")
    group.attrs[ATTRS_KEY] = {**group.attrs[ATTRS_KEY], "status": "incomplete"}
    with pytest.raises(OutputExistsError, match="holds query vectors, not reference"):
        normalize(small_data.queries_path, isc21_model, "reference", out)


def test_bad_rows_leave_no_output(small_data, isc21_model, tmp_path):
    vectors = small_data.queries.copy()
    vectors[77, 3] = np.nan
    bad = write_store(tmp_path / "bad.zarr", vectors, small_data.query_ids)
    with pytest.raises(InputError, match="row 77 contains NaN"):
        normalize(bad, isc21_model, "query", tmp_path / "out.zarr", chunk_rows=16)
    assert not (tmp_path / "out.zarr").exists()


def test_dimension_must_match_the_model(isc21_model, tmp_path):
    np.save(tmp_path / "x.npy", np.ones((4, 7), dtype=np.float32))
    with pytest.raises(ModelMismatchError, match="dimension 7"):
        normalize(tmp_path / "x.npy", isc21_model, "query", tmp_path / "o.zarr")


def traced_peak_of_normalize(source, model, out) -> int:
    """Peak bytes allocated through Python and numpy while normalizing, in this process."""
    tracemalloc.start()
    try:
        normalize(source, model, "reference", out, chunk_rows=1024, scheduler="synchronous")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_number_of_ids(small_data, isc21_model, tmp_path):
    # Long ids: held in memory, 40k of them would take 15 MB as numpy unicode.
    rng = np.random.default_rng(3)
    peaks = {}
    for rows in (10_000, 40_000):
        vectors = rng.standard_normal((rows, small_data.train.shape[1])).astype(np.float32)
        ids = [f"{i:08d}-" + "x" * 88 for i in range(rows)]
        source = write_store(tmp_path / f"in-{rows}.zarr", vectors, ids, chunk_rows=1024)
        peaks[rows] = traced_peak_of_normalize(source, isc21_model, tmp_path / f"out-{rows}.zarr")
        assert arrays(tmp_path / f"out-{rows}.zarr")["ids"][-1] == ids[-1]
    # What may grow: one 8-byte hash per id for the uniqueness check (0.24 MB here).
    assert peaks[40_000] - peaks[10_000] < 2_000_000, peaks
