"""Byte-identical outputs for any chunking, chunk order, append split, scheduler and
thread count, against one reference run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr
from conftest import store_arrays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamnorm.errors import InputError, ModelMismatchError, OutputExistsError
from streamnorm.pipeline import ChunkJob, normalize, normalize_chunk
from streamnorm.store import ATTRS_KEY, chunk_ranges

FIXTURES = [HealthCheck.function_scoped_fixture]


arrays = store_arrays


def assert_same_bytes(path, reference):
    result = arrays(path)
    for name in ("vectors", "background"):
        assert result[name].tobytes() == reference[name].tobytes(), name
    assert result["ids"].tolist() == reference["ids"].tolist()


@pytest.fixture(scope="module")
def reference(small_data, isc21_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "refs.zarr"
    normalize(small_data.refs_path, isc21_model, "reference", out, chunk_rows=64)
    return arrays(out)


def write_batch(folder, name, vectors, ids):
    np.save(folder / f"{name}.npy", vectors)
    (folder / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return folder / f"{name}.npy", folder / f"{name}.txt"


@settings(max_examples=8, deadline=None, suppress_health_check=FIXTURES)
@given(
    cuts=st.lists(st.integers(1, 699), min_size=1, max_size=3, unique=True),
    chunk_rows=st.sampled_from([7, 64, 128, 1000]),
    workers=st.sampled_from([1, 2]),
)
def test_appended_batches_equal_one_run(
    small_data, isc21_model, reference, tmp_path_factory, cuts, chunk_rows, workers
):
    folder = tmp_path_factory.mktemp("append")
    bounds = [0, *sorted(cuts), len(small_data.refs)]
    out = folder / "refs.zarr"
    for number, (start, stop) in enumerate(itertools.pairwise(bounds)):
        vectors, ids = write_batch(
            folder,
            f"b{number}",
            small_data.refs[start:stop],
            small_data.ref_ids[start:stop].tolist(),
        )
        result = normalize(
            vectors,
            isc21_model,
            "reference",
            out,
            ids_path=ids,
            append=number > 0,
            chunk_rows=chunk_rows if number == 0 else None,
            workers=workers,
        )
        assert result.rows_added == stop - start
        # Only the new rows and at most the one chunk they share with old rows are computed.
        assert result.chunks_computed <= -(-(stop - start) // chunk_rows) + 1
    assert_same_bytes(out, reference)
    batches = zarr.open_group(str(out), mode="r").attrs[ATTRS_KEY]["batches"]
    assert [b["input"]["rows"] for b in batches] == np.diff(bounds).tolist()


@settings(max_examples=6, deadline=None, suppress_health_check=FIXTURES)
@given(order_seed=st.integers(0, 2**32 - 1), chunk_rows=st.sampled_from([5, 50, 333]))
def test_chunks_computed_in_any_order(
    small_data, isc21_model, reference, tmp_path_factory, order_seed, chunk_rows
):
    out = tmp_path_factory.mktemp("order") / "refs.zarr"
    normalize(small_data.refs_path, isc21_model, "reference", out, chunk_rows=chunk_rows)
    group = zarr.open_group(str(out), mode="r+")
    attrs = group.attrs[ATTRS_KEY]
    # Forget every chunk, as if nothing had run, then compute them in a random order.
    group["done"][:] = 0
    group["vectors"][:] = 0
    group.attrs[ATTRS_KEY] = {
        **attrs,
        "status": "incomplete",
        "pending": attrs["batches"][0],
        "batches": [],
    }
    job = ChunkJob(
        str(small_data.refs_path),
        None,
        attrs["batches"][0]["input"]["sha256"],
        str(isc21_model),
        attrs["model_fingerprint"],
        "reference",
        str(out),
        0,
        1,
    )
    chunks = list(chunk_ranges(len(small_data.refs), chunk_rows))
    for position in np.random.default_rng(order_seed).permutation(len(chunks)):
        normalize_chunk(job, chunks[position])
    result = normalize(small_data.refs_path, isc21_model, "reference", out)
    assert result.chunks_computed == 0
    assert_same_bytes(out, reference)


@pytest.mark.parametrize("scheduler", ["processes", "local-cluster:2"])
def test_process_and_distributed_schedulers(
    small_data, isc21_model, reference, tmp_path, scheduler
):
    out = tmp_path / "refs.zarr"
    normalize(
        small_data.refs_path,
        isc21_model,
        "reference",
        out,
        chunk_rows=100,
        scheduler=scheduler,
        workers=2,
    )
    assert_same_bytes(out, reference)


def test_append_refusals_leave_the_store_untouched(small_data, isc21_model, tmp_path):
    out = tmp_path / "refs.zarr"
    first, first_ids = write_batch(
        tmp_path, "a", small_data.refs[:300], small_data.ref_ids[:300].tolist()
    )
    normalize(first, isc21_model, "reference", out, ids_path=first_ids, chunk_rows=64)
    before = arrays(out)
    attrs_before = zarr.open_group(str(out), mode="r").attrs[ATTRS_KEY]
    clash, clash_ids = write_batch(
        tmp_path,
        "c",
        small_data.refs[300:310],
        [*small_data.ref_ids[300:309].tolist(), small_data.ref_ids[5]],
    )
    with pytest.raises(InputError, match=f"duplicate id '{small_data.ref_ids[5]}'"):
        normalize(clash, isc21_model, "reference", out, ids_path=clash_ids, append=True)
    with pytest.raises(ModelMismatchError, match="holds reference vectors, not query vectors"):
        normalize(small_data.queries_path, isc21_model, "query", out, append=True)
    np.save(tmp_path / "narrow.npy", small_data.refs[:5, :16])
    with pytest.raises(ModelMismatchError, match="dimension 16"):
        normalize(tmp_path / "narrow.npy", isc21_model, "reference", out, append=True)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        normalize(clash, isc21_model, "reference", out, ids_path=clash_ids)
    after = arrays(out)
    assert all(after[k].tobytes() == before[k].tobytes() for k in ("vectors", "background"))
    assert zarr.open_group(str(out), mode="r").attrs[ATTRS_KEY] == attrs_before


def test_append_with_a_different_model_is_refused(small_data, isc21_model, tmp_path):
    from streamnorm.config import build_params
    from streamnorm.model import fit_model

    other = tmp_path / "other-model"
    fit_model(small_data.train_path, other, build_params("isc21", None, ["beta=1.0"]))
    out = tmp_path / "refs.zarr"
    normalize(small_data.refs_path, isc21_model, "reference", out)
    np.save(tmp_path / "new.npy", small_data.queries)
    with pytest.raises(ModelMismatchError, match="different model"):
        normalize(tmp_path / "new.npy", other, "reference", out, append=True)
    # Provenance also guards matching: stores of two models are not compared.
    normalize(small_data.queries_path, other, "query", tmp_path / "q.zarr")
    from streamnorm.matching import match

    with pytest.raises(ModelMismatchError, match="different models"):
        match(tmp_path / "q.zarr", out, tmp_path / "p.csv")
