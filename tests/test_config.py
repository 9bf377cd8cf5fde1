import pytest

from streamnorm import cli, match_cli, model, pipeline, tuning
from streamnorm.config import RUN_KEYS, RunSettings, available_presets, build_params, run_settings
from streamnorm.errors import ConfigError, StreamnormError


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


# -- run settings: scheduler, workers, threads ------------------------------------------


def test_run_settings_precedence_option_then_file_then_default(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('scheduler = "processes"\nworkers = 3\n')
    assert run_settings() == RunSettings("threads", None, None)
    assert run_settings(config) == RunSettings("processes", 3, None)
    assert run_settings(config, scheduler="synchronous", threads=2) == RunSettings(
        "synchronous", 3, 2
    )


def test_run_keys_are_not_parameters(tmp_path):
    config = tmp_path / "fit.toml"
    config.write_text('n = 5\nscheduler = "local-cluster:2"\nworkers = 2\nthreads = 1\n')
    params = build_params("isc21", config)
    assert params == build_params("isc21", None, ["n=5"])
    assert not set(RUN_KEYS) & set(params.model_dump())


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('scheduler = "warp"', "unknown scheduler 'warp'"),
        ('scheduler = "local-cluster:x"', "positive integer"),
        ("scheduler = 3", "'scheduler'"),
        ("workers = 0", "'workers' must be at least 1"),
        ('threads = "2"', "'threads' must be a whole number"),
    ],
)
def test_bad_run_values_are_one_line_errors_naming_the_file(tmp_path, text, fragment):
    config = tmp_path / "run.toml"
    config.write_text(text + "\n")
    for read in (lambda: run_settings(config), lambda: build_params("isc21", config)):
        with pytest.raises(ConfigError) as raised:
            read()
        message = str(raised.value)
        assert fragment in message and "run.toml" in message and "\n" not in message


def test_run_only_config_refuses_parameters(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('scheduler = "threads"\nbeta = 1.0\n')
    with pytest.raises(ConfigError, match="unknown config key 'beta'"):
        run_settings(config, run_keys_only=True)
    with pytest.raises(ConfigError, match="unknown scheduler"):
        run_settings(scheduler="nowhere")


def test_commands_pass_the_winning_scheduler(monkeypatch, tmp_path):
    """Each command hands on the option, else the config file's value, else threads."""
    seen: list[tuple[str, object]] = []

    def record(name):
        def fake(*args, scheduler, **kwargs):
            seen.append((name, getattr(scheduler, "scheduler", scheduler)))
            raise StreamnormError("stop here")

        return fake

    monkeypatch.setattr(pipeline, "normalize", record("normalize"))
    monkeypatch.setattr(match_cli, "run_match", record("match"))
    monkeypatch.setattr(model, "fit_model", record("fit"))
    monkeypatch.setattr(tuning, "tune", record("tune"))
    config = tmp_path / "run.toml"
    config.write_text('scheduler = "processes"\n')
    commands = {
        "normalize": ["normalize", "x", "--model", "m", "--role", "query", "--out", "o"],
        "match": ["match", "q", "r", "--out", "p.csv"],
        "fit": ["fit", "t", "--out", "m"],
        "tune": ["tune", "q", "r", "--train", "t", "--gt", "g", "--out", str(tmp_path / "b")],
    }
    for name, args in commands.items():
        for extra, expected in (
            ([], "threads"),
            (["--config", str(config)], "processes"),
            (["--config", str(config), "--scheduler", "synchronous"], "synchronous"),
        ):
            seen.clear()
            with pytest.raises(SystemExit):
                cli.main([*args, *extra])
            assert seen == [(name, expected)], (name, extra)
