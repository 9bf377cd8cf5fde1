import json

import numpy as np
import pytest
from conftest import brute_background, unit_rows

from streamnorm.config import build_params
from streamnorm.errors import ConfigError, InputError, OutputExistsError
from streamnorm.model import Normalizer, fit_model, read_model_info
from streamnorm.sources import open_source


def test_background_equals_brute_force(small_data, isc21_model):
    model = Normalizer.load(isc21_model)
    block = model.transform(small_data.queries)
    expected = brute_background(small_data.queries, small_data.train, 10)
    np.testing.assert_allclose(block.background, expected, atol=2e-6)
    np.testing.assert_allclose(block.base, unit_rows(small_data.queries), atol=1e-6)


@pytest.mark.parametrize(
    "overrides",
    [["statistic=mean", "n=4"], ["statistic=top1"], ["statistic=slice", "slice_stop=2"]],
)
def test_other_statistics_equal_brute_force(small_data, tmp_path, overrides):
    params = build_params("isc21", None, overrides)
    model = fit_model(small_data.train_path, tmp_path / "m", params)
    sims = unit_rows(small_data.refs) @ unit_rows(small_data.train).T
    top = -np.sort(-sims, axis=1)
    expected = {
        "mean": top[:, :4].mean(axis=1),
        "top1": top[:, 0],
        "slice": top[:, :3].mean(axis=1),
    }[params.statistic]
    np.testing.assert_allclose(model.transform(small_data.refs).background, expected, atol=2e-6)


def test_save_load_round_trip_and_fingerprint(small_data, isc21_model, tmp_path):
    info = read_model_info(isc21_model)
    assert info["n_train"] == len(small_data.train) and info["dim"] == small_data.train.shape[1]
    other = fit_model(
        small_data.train_path, tmp_path / "beta1", build_params("isc21", None, ["beta=1.0"])
    )
    assert other.fingerprint_ != info["fingerprint"]
    again = fit_model(small_data.train_path, tmp_path / "again", build_params("isc21"))
    assert again.fingerprint_ == info["fingerprint"]
    loaded = Normalizer.load(isc21_model)
    assert (
        loaded.transform(small_data.refs[:5]).background.tobytes()
        == again.transform(small_data.refs[:5]).background.tobytes()
    )


def test_n_larger_than_training_set(small_data, tmp_path):
    with pytest.raises(ConfigError, match="needs 5000 training neighbours"):
        fit_model(small_data.train_path, tmp_path / "m", build_params("isc21", None, ["n=5000"]))
    assert not (tmp_path / "m").exists()


def test_existing_output_is_refused(small_data, isc21_model):
    with pytest.raises(OutputExistsError, match="--overwrite"):
        fit_model(small_data.train_path, isc21_model, build_params("isc21"))


def test_corrupt_models_are_reported(small_data, isc21_model, tmp_path):
    with pytest.raises(InputError, match="not a streamnorm model"):
        read_model_info(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text(json.dumps(read_model_info(isc21_model)))
    (broken / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(InputError, match="missing or corrupt"):
        Normalizer.load(broken)


def test_dimension_mismatch_in_transform(isc21_model):
    with pytest.raises(InputError, match="dimension 5"):
        Normalizer.load(isc21_model).transform(np.ones((2, 5), dtype=np.float32))


def test_fit_reads_blocks_not_the_whole_store(small_data):
    # A source whose vectors refuse whole-array conversion proves fit reads by slices.
    source = open_source(small_data.train_path)
    real = source.vectors

    class SlicesOnly:
        shape = real.shape
        dtype = real.dtype

        def __getitem__(self, key):
            assert isinstance(key, slice) and key.stop - key.start <= 65536
            return real[key]

        def __array__(self, *args, **kwargs):
            raise AssertionError("whole store loaded")

    source.vectors = SlicesOnly()
    model = Normalizer(build_params("isc21")).fit(source)
    assert model.n_train_ == len(small_data.train)
