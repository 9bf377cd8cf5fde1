import subprocess
import sys

import numpy as np
import pytest
import zarr

from streamnorm.errors import ModelMismatchError
from streamnorm.pipeline import normalize
from streamnorm.verify import verify


@pytest.fixture
def store(small_data, isc21_model, tmp_path):
    out = tmp_path / "refs.zarr"
    normalize(small_data.refs_path, isc21_model, "reference", out, chunk_rows=100)
    return out


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "streamnorm", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_untouched_store_verifies(small_data, isc21_model, store):
    report = verify(store, small_data.refs_path, isc21_model, sample=None)
    assert report.ok and report.checked == len(small_data.refs)
    done = cli(
        "verify",
        store,
        "--input",
        small_data.refs_path,
        "--model",
        isc21_model,
        "--sample",
        50,
        "-q",
    )
    assert done.returncode == 0 and "50 rows" in done.stdout and "byte-identical" in done.stdout


def test_a_single_flipped_bit_is_caught(small_data, isc21_model, store):
    group = zarr.open_group(str(store), mode="r+")
    row = np.asarray(group["vectors"][123]).copy()
    row.view(np.uint32)[4] ^= 1  # one unit in the last place
    group["vectors"][123] = row
    report = verify(store, small_data.refs_path, isc21_model, sample=None)
    assert report.mismatched_ids == [small_data.ref_ids[123]]
    done = cli(
        "verify",
        store,
        "--input",
        small_data.refs_path,
        "--model",
        isc21_model,
        "--sample",
        0,
        "-q",
    )
    assert done.returncode == 1 and small_data.ref_ids[123] in done.stdout


def test_verify_needs_the_same_model(small_data, store, tmp_path):
    from streamnorm.config import build_params
    from streamnorm.model import fit_model

    fit_model(small_data.train_path, tmp_path / "other", build_params("isc21", None, ["n=5"]))
    with pytest.raises(ModelMismatchError, match="not made with the model"):
        verify(store, small_data.refs_path, tmp_path / "other")


def test_verify_on_worker_processes_finds_the_same_rows(small_data, isc21_model, store):
    group = zarr.open_group(str(store), mode="r+")
    for row in (7, 250):
        background = np.asarray(group["background"][row : row + 1]).copy()
        background.view(np.uint32)[0] ^= 1
        group["background"][row : row + 1] = background
    report = verify(store, small_data.refs_path, isc21_model, sample=None, scheduler="processes")
    assert report.checked == len(small_data.refs)
    assert report.mismatched_ids == [small_data.ref_ids[7], small_data.ref_ids[250]]
