"""The command line as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "streamnorm", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    done = run(
        "synth",
        folder / "data",
        "--queries",
        300,
        "--refs",
        2000,
        "--train",
        2000,
        "--dim",
        32,
        "-q",
    )
    assert done.returncode == 0, done.stderr
    return folder


def test_full_flow_through_the_command_line(synth_dir):
    data, model = synth_dir / "data", synth_dir / "model"
    assert run("fit", data / "train.zarr", "--out", model, "-q").returncode == 0
    for split, role in (("refs", "reference"), ("queries", "query")):
        done = run(
            "normalize",
            data / f"{split}.zarr",
            "--model",
            model,
            "--role",
            role,
            "--out",
            synth_dir / f"{split}_n.zarr",
            "--chunk-rows",
            500,
            "-q",
        )
        assert done.returncode == 0, done.stderr
    for label, (q, r) in {
        "raw": (data / "queries.zarr", data / "refs.zarr"),
        "norm": (synth_dir / "queries_n.zarr", synth_dir / "refs_n.zarr"),
    }.items():
        done = run("match", q, r, "--out", synth_dir / f"{label}.csv", "--k", 10, "-q")
        assert done.returncode == 0, done.stderr
    scores = {}
    for label in ("raw", "norm"):
        done = run(
            "evaluate", synth_dir / f"{label}.csv", "--gt", data / "ground_truth.csv", "--json"
        )
        assert done.returncode == 0, done.stderr
        scores[label] = json.loads(done.stdout)["micro_ap"]
    assert scores["norm"] > scores["raw"]
    done = run("export", synth_dir / "queries_n.zarr", "--out", synth_dir / "q.hdf5")
    assert done.returncode == 0 and (synth_dir / "q.hdf5").exists()
    done = run(
        "submission",
        synth_dir / "queries_n.zarr",
        synth_dir / "refs_n.zarr",
        "--out",
        synth_dir / "sub.hdf5",
    )
    assert done.returncode == 0 and (synth_dir / "sub.hdf5").exists()


def assert_one_line_error(done, *fragments):
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def bad_npy(folder, name, vectors):
    path = folder / f"{name}.npy"
    np.save(path, vectors)
    return path


@pytest.fixture(scope="module")
def fitted(synth_dir):
    model = synth_dir / "m"
    assert run("fit", synth_dir / "data" / "train.zarr", "--out", model, "-q").returncode == 0
    return model


def good(n=20, d=32):
    return np.random.default_rng(0).standard_normal((n, d)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "make", "fragments"),
    [
        ("nan", lambda v: np.where(np.arange(20)[:, None] == 13, np.nan, v), ["row 13", "NaN"]),
        ("inf", lambda v: np.where(np.arange(20)[:, None] == 4, np.inf, v), ["row 4"]),
        ("zero", lambda v: np.where(np.arange(20)[:, None] == 9, 0.0, v), ["row 9", "zero vector"]),
        ("dim", lambda v: v[:, :16], ["dimension 16"]),
        ("ints", lambda v: (v * 10).astype(np.int32), ["floating point"]),
        ("empty", lambda v: v[:0], ["empty"]),
    ],
)
def test_bad_vectors_give_one_line_errors(synth_dir, fitted, tmp_path, name, make, fragments):
    path = bad_npy(tmp_path, name, make(good()))
    out = tmp_path / "out.zarr"
    done = run("normalize", path, "--model", fitted, "--role", "query", "--out", out, "-q")
    assert_one_line_error(done, str(path), *fragments)
    assert not out.exists()


def test_input_problems_give_one_line_errors(synth_dir, fitted, tmp_path):
    ids = tmp_path / "ids.txt"
    ids.write_text("a\nb\na\n" + "\n".join(f"x{i}" for i in range(17)))
    vectors = bad_npy(tmp_path, "v", good())
    out = tmp_path / "o.zarr"
    common = ["--model", fitted, "--role", "query", "--out", out, "-q"]
    assert_one_line_error(
        run("normalize", vectors, "--ids", ids, *common), "duplicate id 'a'", "rows 0 and 2"
    )
    ids.write_text("a\nb\n")
    assert_one_line_error(run("normalize", vectors, "--ids", ids, *common), "2 ids for 20 vectors")
    assert_one_line_error(
        run("normalize", tmp_path / "nope.zarr", *common), "nope.zarr", "no such file"
    )
    (tmp_path / "dir.zarr").mkdir()
    assert_one_line_error(
        run("normalize", tmp_path / "dir.zarr", *common), "not a descriptor store"
    )
    assert_one_line_error(
        run("normalize", vectors, "--model", tmp_path, "--role", "query", "--out", out),
        "not a streamnorm model",
    )


def test_configuration_problems_give_one_line_errors(synth_dir, tmp_path):
    train = synth_dir / "data" / "train.zarr"
    assert_one_line_error(
        run("fit", train, "--out", tmp_path / "m", "--preset", "zzz"), "unknown preset"
    )
    assert_one_line_error(
        run("fit", train, "--out", tmp_path / "m", "--set", "nn=3"), "unknown config key 'nn'"
    )
    assert_one_line_error(
        run("fit", train, "--out", tmp_path / "m", "--set", "n=999999", "-q"),
        "needs 999999 training neighbours",
    )
    assert not (tmp_path / "m").exists()


def test_existing_outputs_are_refused_unless_overwrite(synth_dir, fitted):
    train = synth_dir / "data" / "train.zarr"
    assert_one_line_error(run("fit", train, "--out", fitted), "already exists", "--overwrite")
    assert run("fit", train, "--out", fitted, "--overwrite", "-q").returncode == 0


def test_debug_shows_the_traceback(synth_dir, tmp_path):
    done = run(
        "--debug",
        "normalize",
        tmp_path / "missing.npy",
        "--model",
        tmp_path,
        "--role",
        "query",
        "--out",
        tmp_path / "o",
    )
    assert done.returncode != 0 and "Traceback" in done.stderr


def test_help_explains_every_command():
    done = run("--help")
    assert done.returncode == 0
    for command in (
        "synth",
        "fit",
        "normalize",
        "match",
        "evaluate",
        "export",
        "submission",
        "demo",
    ):
        assert command in done.stdout
    assert "resum" in run("normalize", "--help").stdout
