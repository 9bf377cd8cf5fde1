"""The shipped presets hold the published settings they are named after."""

from __future__ import annotations

import pytest

from streamnorm.config import available_presets, build_params, presets_dir

DOCUMENTED = {
    "isc21": {"statistic": "nth", "n": 10, "beta": 2.0, "side": "query", "nes": False},
    "sscd": {
        "statistic": "slice",
        "slice_start": 0,
        "slice_stop": 2,
        "beta": 1.0,
        "side": "query",
        "nes": False,
    },
    "vsc22": {"statistic": "top1", "beta": 1.2, "side": "query", "nes": False},
    "d2lv": {"statistic": "mean", "n": 10, "beta": 2.0, "side": "query", "nes": False},
    "nes": {"nes": True, "nes_k": 10, "nes_beta": 0.35, "nes_iterations": 1, "beta": 0.0},
}
# The background depth each statistic needs: what the model searches for.
DEPTH = {"isc21": 10, "sscd": 3, "vsc22": 1, "d2lv": 10}


def test_every_documented_preset_is_available():
    assert set(DOCUMENTED) <= set(available_presets())


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_preset_has_the_documented_values(name):
    params = build_params(name)
    for key, value in DOCUMENTED[name].items():
        assert getattr(params, key) == value, key
    if name in DEPTH:
        assert params.depth == DEPTH[name]


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_preset_cites_its_source(name):
    text = (presets_dir() / f"{name}.toml").read_text()
    assert any(line.startswith("# Source:") for line in text.splitlines())


def test_nes_preset_subtracts_no_background():
    params = build_params("nes")
    assert params.query_beta == 0.0 and params.reference_beta == 0.0


def test_presets_take_overrides():
    params = build_params("vsc22", overrides=["beta=1.5"])
    assert (params.statistic, params.beta) == ("top1", 1.5)
