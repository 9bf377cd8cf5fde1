"""Parameter search: the shared training search gives exactly what refitting would."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_store

from streamnorm.config import NormalizationParams, available_presets, build_params
from streamnorm.errors import ConfigError, OutputExistsError
from streamnorm.groundtruth import read_ground_truth, read_predictions
from streamnorm.matching import match
from streamnorm.metrics import evaluate
from streamnorm.model import Normalizer, fit_model
from streamnorm.pipeline import normalize
from streamnorm.sources import open_source
from streamnorm.synth import SynthSpec
from streamnorm.synth_store import write_synth
from streamnorm.tuning import (
    SharedSearch,
    _Candidates,
    grid_points,
    read_grid,
    tune,
    write_config,
)

MAX_RESULTS = 700  # fewer than the 2000 candidates, so the global cut matters
GRID = {
    "statistic": ["nth", "mean", "top1", "slice"],
    "n": [5, 10],
    "slice_start": [0],
    "slice_stop": [2],
    # Factors that are not powers of two, so float32 rounding of beta * b(x) shows.
    "beta": [1.2, 2.0],
    "side": ["query", "reference", "both"],
    "beta_reference": [0.3],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    spec = SynthSpec(n_queries=200, n_refs=1500, n_train=1500, dim=32, seed=3)
    return write_synth(tmp_path_factory.mktemp("tune"), spec)


@pytest.fixture(scope="module")
def result(data):
    return tune(
        data["queries"],
        data["refs"],
        data["train"],
        data["ground_truth"],
        grid=GRID,
        max_results=MAX_RESULTS,
    )


def normal_path(data, params, folder):
    """Fit with the parameters, normalize both sides, match and evaluate."""
    model = folder / "model"
    fit_model(data["train"], model, params)
    normalize(data["queries"], model, "query", folder / "q.zarr")
    normalize(data["refs"], model, "reference", folder / "r.zarr")
    match(folder / "q.zarr", folder / "r.zarr", folder / "p.csv", max_results=MAX_RESULTS)
    truth = read_ground_truth(data["ground_truth"])
    predictions = read_predictions(folder / "p.csv", truth)
    return predictions, evaluate(predictions, truth)


def assert_same_pairs(search, found, predictions):
    """The same pairs in the same order with bit-identical scores."""
    assert search.queries.ids[found.query_rows].tolist() == predictions.query_ids.tolist()
    assert search.references.ids[found.reference_rows].tolist() == (
        predictions.reference_ids.tolist()
    )
    assert found.scores.tolist() == predictions.scores.tolist()


POINTS = {
    "nth-query": {"statistic": "nth", "n": 10, "beta": 2.0, "side": "query"},
    "slice-query": {"statistic": "slice", "beta": 1.2, "side": "query"},
    "top1-reference": {"statistic": "top1", "beta": 1.2, "side": "reference"},
    "mean-both": {"statistic": "mean", "n": 5, "beta": 1.2, "side": "both", "beta_reference": 0.3},
}


@pytest.mark.parametrize("name", sorted(POINTS))
def test_tune_scores_a_point_as_the_normal_path_does(data, result, tmp_path, name):
    params = build_params("isc21", overrides=[f"{k}={v!r}" for k, v in POINTS[name].items()])
    row = next(row for row in result.rows if row.params == params)
    predictions, expected = normal_path(data, params, tmp_path)
    # Exactly equal, not merely close: the shortcut computes the same scores.
    assert row.micro_ap == expected.micro_ap
    assert row.recall_at_p90 == expected.recall_at_p90
    assert row.evaluation == expected
    assert len(predictions) == MAX_RESULTS


def test_shared_search_gives_the_matchers_pairs(data, tmp_path):
    params = build_params("isc21", overrides=["side='both'", "beta_reference=0.7"])
    predictions, _ = normal_path(data, params, tmp_path)
    model = Normalizer(params).fit(open_source(data["train"]))
    search = SharedSearch.prepare(
        open_source(data["queries"]), open_source(data["refs"]), model, params.depth
    )
    assert_same_pairs(search, search.predictions(params, MAX_RESULTS), predictions)


def test_rows_are_sorted_and_the_best_is_the_max(result):
    scores = [row.micro_ap for row in result.rows]
    assert scores == sorted(scores, reverse=True)
    assert result.best_row.micro_ap == max(scores)
    assert result.best == result.rows[0].params
    # 6 statistics x 2 factors x 3 sides, none merged away.
    assert len(result.rows) == 36
    # On this data normalization must beat every reference-only variant.
    assert result.best.side != "reference"


def test_exact_ties_fall_back_to_an_exact_search(tmp_path):
    """References duplicated 20 times tie at every query's k-th place."""
    rng = np.random.default_rng(5)
    train = rng.standard_normal((300, 16)).astype(np.float32)
    refs = np.repeat(rng.standard_normal((30, 16)).astype(np.float32), 20, axis=0)
    queries = refs[::20][:25] + 0.1 * rng.standard_normal((25, 16)).astype(np.float32)
    # Reference ids in reverse row order, so ties must follow ids, not rows.
    ref_ids = [f"R{599 - i:03d}" for i in range(len(refs))]
    paths = {
        "train": write_store(tmp_path / "t.zarr", train, [f"T{i}" for i in range(300)]),
        "refs": write_store(tmp_path / "r.zarr", refs, ref_ids),
        "queries": write_store(tmp_path / "q.zarr", queries, [f"Q{i:02d}" for i in range(25)]),
    }
    params = build_params("isc21", overrides=["side='both'", "beta_reference=0.5"])
    model = fit_model(paths["train"], tmp_path / "m", params)
    search = SharedSearch.prepare(
        open_source(paths["queries"]), open_source(paths["refs"]), model, params.depth
    )
    found = search.predictions(params, None)
    assert search.exact_fallbacks > 0
    normalize(paths["queries"], tmp_path / "m", "query", tmp_path / "qn.zarr")
    normalize(paths["refs"], tmp_path / "m", "reference", tmp_path / "rn.zarr")
    match(tmp_path / "qn.zarr", tmp_path / "rn.zarr", tmp_path / "p.csv", max_results=None)
    assert_same_pairs(search, found, read_predictions(tmp_path / "p.csv"))


def test_uncertified_queries_are_searched_again(data, monkeypatch):
    """Candidates that cannot be proven complete are replaced by an exact search."""
    params = build_params("isc21", overrides=["side='both'", "beta_reference=0.3"])
    model = Normalizer(params).fit(open_source(data["train"]))
    sources = (open_source(data["queries"]), open_source(data["refs"]))
    search = SharedSearch.prepare(*sources, model, params.depth)
    expected = search.predictions(params, MAX_RESULTS)
    assert search.exact_fallbacks == 0

    def useless(self, params, raw):
        # The last references, with a floor no score can beat: nothing is certified.
        count = len(self.references.base)
        rows = np.tile(np.arange(count - 18, count), (len(self.queries.base), 1))
        return _Candidates(rows, np.full(len(rows), np.inf), complete=False)

    monkeypatch.setattr(SharedSearch, "_search_candidates", useless)
    search = SharedSearch.prepare(*sources, model, params.depth)
    found = search.predictions(params, MAX_RESULTS)
    assert search.exact_fallbacks == len(search.queries.base)
    assert found.reference_rows.tolist() == expected.reference_rows.tolist()
    assert found.scores.tolist() == expected.scores.tolist()


def test_the_training_search_runs_once(data, monkeypatch):
    calls = {"fit": 0, "neighbour_scores": 0}
    for name in calls:
        original = getattr(Normalizer, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Normalizer, name, counted)
    per_run = []
    for grid in ({"beta": [2.0]}, GRID):
        calls.update(fit=0, neighbour_scores=0)
        tune(data["queries"], data["refs"], data["train"], data["ground_truth"], grid=grid)
        per_run.append(dict(calls))
    # One fit, and one training search per input block (one block per side here),
    # whether the grid has 1 point or 36.
    assert per_run == [{"fit": 1, "neighbour_scores": 2}] * 2


def test_grid_points_merge_equivalent_settings():
    base = build_params("isc21")
    points = grid_points(
        {"statistic": ["top1"], "n": [5, 10, 20], "beta_reference": [0.5, 1.0]}, base
    )
    assert len(points) == 1 and points[0].statistic == "top1" and points[0].n == base.n
    assert points[0].beta_reference is None  # query side: the factor is unused
    both = grid_points({"side": ["both"], "beta": [1.5]}, base)
    assert both[0].beta_reference == 1.5  # explicit, so it survives any preset
    slices = grid_points({"statistic": ["slice"], "slice_start": [0, 3], "slice_stop": [2]}, base)
    assert [(p.slice_start, p.slice_stop) for p in slices] == [(0, 2)]


@pytest.mark.parametrize(
    ("grid", "fragment"),
    [
        ({"bogus": [1]}, "'bogus'"),
        ({"betta": [1.0]}, "'betta'"),
        ({"statistic": ["median"]}, "'statistic'"),
        ({"n": [0]}, "'n'"),
        ({"beta": []}, "'beta'"),
        ({"metric": ["ip"]}, "'metric'"),
    ],
)
def test_bad_grids_are_one_line_config_errors(data, grid, fragment):
    with pytest.raises(ConfigError) as caught:
        tune(data["queries"], data["refs"], data["train"], data["ground_truth"], grid=grid)
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_read_grid_names_the_file_and_key(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('statistic = ["nth"]\nbogus = [1, 2]\n')
    with pytest.raises(ConfigError, match=r"grid\.toml: unknown grid key 'bogus'"):
        read_grid(path)
    path.write_text('statistic = "nth"\nbeta = [1.0, 2.0]\n')
    assert read_grid(path) == {"statistic": ["nth"], "beta": [1.0, 2.0]}


def test_too_deep_a_grid_is_refused(data):
    with pytest.raises(ConfigError, match="needs 2000 training neighbours"):
        tune(data["queries"], data["refs"], data["train"], data["ground_truth"], grid={"n": [2000]})


@pytest.mark.parametrize(
    "params",
    [
        build_params("sscd"),
        build_params("isc21", overrides=["side='both'", "beta_reference=0.75", "beta=1.25"]),
        build_params("nes"),
    ],
)
def test_written_config_round_trips(tmp_path, params):
    path = tmp_path / "best.toml"
    write_config(params, path, comment="chosen by a test\nsecond line")
    assert build_params(None, path) == params
    for preset in available_presets():
        assert build_params(preset, path) == params
    with pytest.raises(OutputExistsError):
        write_config(params, path)


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "streamnorm", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_tune_command_writes_a_config_that_fit_accepts(data, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text('statistic = ["nth", "mean"]\nn = [5, 10]\nside = ["query", "both"]\n')
    out = tmp_path / "best.toml"
    common = [data["queries"], data["refs"], "--train", data["train"], "--gt"]
    common += [data["ground_truth"], "--grid", grid, "--max-results", MAX_RESULTS, "-q"]
    done = run_cli("tune", *common, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "muAP" in done.stdout and "R@P90" in done.stdout
    expected = tune(
        data["queries"],
        data["refs"],
        data["train"],
        data["ground_truth"],
        grid=read_grid(grid),
        max_results=MAX_RESULTS,
    )
    assert build_params(None, out) == expected.best
    assert f"muAP {expected.best_row.micro_ap:.4f}" in out.read_text()
    model = tmp_path / "model"
    done = run_cli("fit", data["train"], "--out", model, "--config", out, "-q")
    assert done.returncode == 0, done.stderr
    saved = json.loads((model / "model.json").read_text())["params"]
    assert NormalizationParams(**saved) == expected.best
    # An existing output is refused on one line, before any work.
    done = run_cli("tune", *common, "--out", out)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0
    assert "already exists" in done.stderr


def test_tune_command_reports_a_bad_grid_key_on_one_line(data, tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text("beta = [1.0]\nwidth = [3]\n")
    done = run_cli(
        "tune",
        data["queries"],
        data["refs"],
        "--train",
        data["train"],
        "--gt",
        data["ground_truth"],
        "--grid",
        grid,
        "--out",
        tmp_path / "best.toml",
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "'width'" in lines[0]
    assert not (tmp_path / "best.toml").exists()


def test_rows_record_the_grid_they_came_from(result):
    labels = {row.statistic_label for row in result.rows}
    assert labels == {"nth 5", "nth 10", "mean 5", "mean 10", "top1", "slice 0..2"}
    assert {row.params.beta_reference for row in result.rows if row.params.side == "both"} == {0.3}


def test_paths_are_accepted_as_strings(data):
    small = tune(
        str(data["queries"]),
        str(data["refs"]),
        str(data["train"]),
        str(data["ground_truth"]),
        grid={"beta": [0.0, 2.0]},
        max_results=None,
    )
    assert [row.params.beta for row in small.rows] == [2.0, 0.0]
    assert small.rows[0].evaluation.n_predictions == 2000


def test_tune_on_processes_equals_the_default(data, result, tmp_path):
    """Grid points as tasks in a process pool: the same table and the same best config."""
    found = tune(
        data["queries"],
        data["refs"],
        data["train"],
        data["ground_truth"],
        grid=GRID,
        max_results=MAX_RESULTS,
        scheduler="processes",
    )
    assert [(row.params, row.evaluation) for row in found.rows] == [
        (row.params, row.evaluation) for row in result.rows
    ]
    assert found.exact_fallbacks == result.exact_fallbacks
    write_config(found.best, tmp_path / "tasks.toml")
    write_config(result.best, tmp_path / "default.toml")
    assert (tmp_path / "tasks.toml").read_bytes() == (tmp_path / "default.toml").read_bytes()
