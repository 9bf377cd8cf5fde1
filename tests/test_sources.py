import hashlib
import json

import h5py
import numpy as np
import pytest
import zarr
from conftest import write_store

from streamnorm.errors import InputError
from streamnorm.sources import open_source


def good(n=10, d=8):
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


def test_npy_with_and_without_ids(tmp_path):
    np.save(tmp_path / "x.npy", good())
    assert list(open_source(tmp_path / "x.npy").ids[:3]) == ["0", "1", "2"]
    (tmp_path / "ids.txt").write_text("\n".join(f"img{i}" for i in range(10)) + "\n")
    source = open_source(tmp_path / "x.npy", tmp_path / "ids.txt")
    assert source.ids[9] == "img9"
    np.testing.assert_array_equal(source.read(2, 5), good()[2:5])


def test_isc_hdf5(tmp_path):
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f["vectors"] = good()
        f["image_names"] = np.array([f"Q{i}".encode() for i in range(10)])
    source = open_source(tmp_path / "d.hdf5")
    assert source.ids[4] == "Q4" and source.dim == 8


def bad_value(tmp_path, row, value):
    x = good()
    x[row] = value
    np.save(tmp_path / "bad.npy", x)
    return open_source(tmp_path / "bad.npy")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (np.nan, "row 6 contains NaN or Inf"),
        (np.inf, "row 6 contains NaN"),
        (0.0, "row 6 is a zero vector"),
    ],
)
def test_bad_values_name_the_row(tmp_path, value, fragment):
    source = bad_value(tmp_path, 6, value)
    source.read(0, 5)  # rows before the bad one read fine
    with pytest.raises(InputError, match=fragment):
        source.read(5, 10)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (
            lambda p: np.save(p / "i.npy", np.ones((4, 3), dtype=np.int32)) or p / "i.npy",
            "floating point",
        ),
        (lambda p: np.save(p / "e.npy", np.ones((0, 3), dtype=np.float32)) or p / "e.npy", "empty"),
        (lambda p: np.save(p / "v.npy", np.ones(5, dtype=np.float32)) or p / "v.npy", "2-D"),
        (lambda p: p / "missing.npy", "no such file"),
        (lambda p: (p / "t.txt").write_text("x") and p / "t.txt", "not a descriptor store"),
    ],
)
def test_structural_problems(tmp_path, make, fragment):
    with pytest.raises(InputError, match=fragment) as raised:
        open_source(make(tmp_path))
    assert "\n" not in str(raised.value)


def test_duplicate_ids_name_the_id_and_rows(tmp_path):
    write_store(tmp_path / "s.zarr", good(), ["a", "b", "c", "d", "e", "f", "c", "h", "i", "j"])
    with pytest.raises(InputError, match=r"duplicate id 'c' at rows 2 and 6"):
        open_source(tmp_path / "s.zarr")


def test_ids_and_vectors_of_different_lengths(tmp_path):
    np.save(tmp_path / "x.npy", good())
    (tmp_path / "ids.txt").write_text("a\nb\n")
    with pytest.raises(InputError, match="2 ids for 10 vectors"):
        open_source(tmp_path / "x.npy", tmp_path / "ids.txt")


def test_zarr_group_without_descriptor_arrays(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("other", shape=(3,), dtype="float32")
    with pytest.raises(InputError, match="not a descriptor store"):
        open_source(tmp_path / "g.zarr")


def test_hdf5_without_isc_layout(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["features"] = good()
    with pytest.raises(InputError, match="not an ISC descriptor file"):
        open_source(tmp_path / "d.h5")


def test_identity_digest_follows_its_definition(tmp_path):
    # Ids joined by newlines within groups of 65,536 rows, whatever block size reads them.
    n = 70_000
    vectors = np.random.default_rng(1).standard_normal((n, 2)).astype(np.float32)
    ids = [f"id{i}" for i in range(n)]
    source = open_source(write_store(tmp_path / "s.zarr", vectors, ids, chunk_rows=4096))
    digest = hashlib.sha256(json.dumps([n, 2]).encode())
    for start in range(0, n, 65_536):
        digest.update("\n".join(ids[start : start + 65_536]).encode())
    digest.update(vectors[:64].tobytes())
    digest.update(vectors[-64:].tobytes())
    assert source.identity() == {"rows": n, "dim": 2, "sha256": digest.hexdigest()}
