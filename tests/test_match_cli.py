"""``streamnorm match`` (with --state / --update) and ``evaluate`` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import write_store
from match_helpers import read_rows

from streamnorm.matching import match, update_match


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "streamnorm", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line_error(done, *fragments):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("match-cli")
    rng = np.random.default_rng(5)
    refs = rng.standard_normal((400, 16)).astype(np.float32)
    queries = np.concatenate([refs[:30] + 0.1 * rng.standard_normal((30, 16)), refs[30:60]])
    ref_ids = np.array([f"R{i:03d}" for i in range(400)])
    query_ids = np.array([f"Q{i:03d}" for i in range(60)])
    write_store(folder / "q.zarr", queries.astype(np.float32), query_ids)
    write_store(folder / "all.zarr", refs, ref_ids)
    write_store(folder / "a.zarr", refs[:250], ref_ids[:250])
    write_store(folder / "b.zarr", refs[250:], ref_ids[250:])
    (folder / "gt.csv").write_text(
        "query_id,reference_id\n"
        + "".join(f"Q{i:03d},R{i:03d}\n" for i in range(30))
        + "".join(f"Q{i:03d},\n" for i in range(30, 60))
    )
    return folder


def test_match_with_state_then_update_equals_a_full_run(stores, tmp_path):
    full = tmp_path / "full.csv"
    match(stores / "q.zarr", stores / "all.zarr", full, k=3)
    state = tmp_path / "state.npz"
    done = run(
        "match", stores / "q.zarr", stores / "a.zarr", "--out", tmp_path / "p0.csv",
        "--k", 3, "--state", state, "--threads", 2, "--reference-block-rows", 64, "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before = state.read_bytes()
    # Refusals: one line, nothing written.
    one_line_error(
        run("match", "--update", state, "--refs", stores / "b.zarr", "--out", tmp_path / "x.csv",
            "--k", 5),
        "k=3",
    )  # fmt: skip
    one_line_error(
        run("match", "--update", state, "--refs", stores / "a.zarr", "--out", tmp_path / "x.csv"),
        "already merged",
    )
    one_line_error(
        run("match", stores / "q.zarr", "--update", state, "--refs", stores / "b.zarr",
            "--out", tmp_path / "x.csv"),
        "--update",
    )  # fmt: skip
    assert state.read_bytes() == before and not (tmp_path / "x.csv").exists()
    parquet = tmp_path / "p1.parquet"
    done = run("match", "--update", state, "--refs", stores / "b.zarr", "--out", parquet, "-q")
    assert done.returncode == 0, done.stderr
    assert "400 references" in " ".join(done.stdout.split())
    assert read_rows(parquet) == read_rows(full)


def test_evaluate_several_files_with_labels_and_a_plot(stores, tmp_path):
    for name, k in (("k1", 1), ("k5", 5)):
        match(stores / "q.zarr", stores / "all.zarr", tmp_path / f"{name}.csv", k=k)
    files = [tmp_path / "k1.csv", tmp_path / "k5.csv"]
    plot = tmp_path / "pr.png"
    done = run(
        "evaluate", *files, "--gt", stores / "gt.csv", "--plot", plot,
        "--label", "top1", "--label", "top5", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [row["label"] for row in rows] == ["top1", "top5"]
    assert rows[0]["n_predictions"] == 60 and rows[1]["n_predictions"] == 300
    assert rows[1]["recall_at_rank10"] >= rows[0]["recall_at_rank10"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run("evaluate", *files, "--gt", stores / "gt.csv")
    assert table.returncode == 0 and "k1" in table.stdout and "k5" in table.stdout
    one_line_error(
        run("evaluate", *files, "--gt", stores / "gt.csv", "--label", "only-one"), "--label"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("query_id,reference_id,score\nQ000,R000,high\n")
    one_line_error(run("evaluate", files[0], bad, "--gt", stores / "gt.csv"), "bad.csv", "line 2")


def test_match_and_update_on_processes_equal_the_default(stores, tmp_path):
    """Query-block tasks in a process pool write the default run's files, byte for byte."""
    default, tasks = tmp_path / "default", tmp_path / "tasks"
    for folder in (default, tasks):
        folder.mkdir()
    match(stores / "q.zarr", stores / "a.zarr", default / "p.csv", k=3, state=default / "s.npz")
    # The update re-reads the queries from the state and checks their digest.
    update_match(default / "s.npz", stores / "b.zarr", default / "u.parquet")
    done = run(
        "match", stores / "q.zarr", stores / "a.zarr", "--out", tasks / "p.csv", "--k", 3,
        "--state", tasks / "s.npz", "--scheduler", "processes", "--query-block-rows", 16, "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = tmp_path / "run.toml"
    config.write_text('scheduler = "processes"\nworkers = 2\n')
    done = run(
        "match", "--update", tasks / "s.npz", "--refs", stores / "b.zarr",
        "--out", tasks / "u.parquet", "--config", config, "-q",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("p.csv", "u.parquet", "s.npz"):
        assert (tasks / name).read_bytes() == (default / name).read_bytes(), name


def test_bad_scheduler_values_are_one_line_errors(stores, tmp_path):
    out = tmp_path / "p.csv"
    one_line_error(
        run("match", stores / "q.zarr", stores / "a.zarr", "--out", out, "--scheduler", "warp"),
        "unknown scheduler 'warp'",
    )
    config = tmp_path / "run.toml"
    config.write_text('scheduler = "local-cluster:0"\n')
    one_line_error(
        run("match", stores / "q.zarr", stores / "a.zarr", "--out", out, "--config", config),
        "run.toml", "'scheduler'", "positive integer",
    )  # fmt: skip
    config.write_text('scheduler = "processes"\nbeta = 1.0\n')
    one_line_error(
        run("match", stores / "q.zarr", stores / "a.zarr", "--out", out, "--config", config),
        "unknown config key 'beta'",
    )
    assert not out.exists()
