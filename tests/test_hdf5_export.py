import h5py
import numpy as np
import pytest
import zarr

from streamnorm.errors import ModelMismatchError, OutputExistsError
from streamnorm.hdf5_export import export_descriptors, export_submission
from streamnorm.pipeline import normalize
from streamnorm.sources import open_source


def test_export_round_trips_through_the_isc_reader(small_data, tmp_path):
    export_descriptors(small_data.refs_path, tmp_path / "refs.hdf5")
    with h5py.File(tmp_path / "refs.hdf5") as f:
        assert f["vectors"].dtype == np.float32
        np.testing.assert_array_equal(f["vectors"][:], small_data.refs)
    again = open_source(tmp_path / "refs.hdf5")
    assert again.ids.tolist() == small_data.ref_ids.tolist()
    with pytest.raises(OutputExistsError):
        export_descriptors(small_data.refs_path, tmp_path / "refs.hdf5")


def test_submission_layout_and_side_check(small_data, isc21_model, tmp_path):
    normalize(small_data.queries_path, isc21_model, "query", tmp_path / "q.zarr")
    normalize(small_data.refs_path, isc21_model, "reference", tmp_path / "r.zarr")
    export_submission(tmp_path / "q.zarr", tmp_path / "r.zarr", tmp_path / "sub.h5")
    with h5py.File(tmp_path / "sub.h5") as f:
        assert set(f) == {"query", "reference", "query_ids", "reference_ids"}
        stored = zarr.open_group(str(tmp_path / "q.zarr"), mode="r")["vectors"][:]
        np.testing.assert_array_equal(f["query"][:], stored)
        assert f["reference"].shape == (len(small_data.refs), small_data.refs.shape[1] + 1)
    with pytest.raises(ModelMismatchError, match="normalized as a reference"):
        export_submission(tmp_path / "r.zarr", tmp_path / "q.zarr", tmp_path / "bad.h5")
    assert not (tmp_path / "bad.h5").exists()
