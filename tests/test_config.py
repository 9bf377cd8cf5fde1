import pytest

from streamnorm.config import available_presets, build_params
from streamnorm.errors import ConfigError


def test_isc21_preset_is_the_default_and_matches_the_challenge_script():
    params = build_params()
    assert (params.statistic, params.n, params.beta, params.side, params.metric) == (
        "nth",
        10,
        2.0,
        "query",
        "l2",
    )
    assert "isc21" in available_presets()


def test_overrides_and_config_files_apply_in_order(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('statistic = "mean"\nn = 5\n')
    params = build_params("isc21", config, ["n=7", "metric=ip"])
    assert (params.statistic, params.n, params.metric) == ("mean", 7, "ip")


@pytest.mark.parametrize(
    ("preset", "overrides", "fragment"),
    [
        ("nope", [], "unknown preset 'nope'"),
        ("isc21", ["bogus=1"], "unknown config key 'bogus'"),
        ("isc21", ["beta=-1"], "'beta'"),
        ("isc21", ["n=0"], "'n'"),
        ("isc21", ["statistic=median"], "'statistic'"),
        ("isc21", ["noequals"], "key=value"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_key(preset, overrides, fragment):
    with pytest.raises(ConfigError) as raised:
        build_params(preset, None, overrides)
    assert fragment in str(raised.value)
    assert "\n" not in str(raised.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_params("isc21", tmp_path / "missing.toml")
