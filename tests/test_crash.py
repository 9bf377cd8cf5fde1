"""SIGKILL a running ``streamnorm normalize`` at several points, rerun it, compare bytes.

The kill lands while chunks are being computed and written (many small chunks, two
workers), so some chunk writes are cut short; zarr writes each chunk file under a
temporary name, and the done-marker is written after the data, so the rerun must
recompute exactly what is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from streamnorm.errors import InputError
from streamnorm.pipeline import normalize
from streamnorm.sources import open_source

CHUNK_ROWS = 8


@pytest.fixture(scope="module")
def batches(small_data, tmp_path_factory):
    """2400 reference-like rows in two .npy batches with id files."""
    folder = tmp_path_factory.mktemp("crash-data")
    rng = np.random.default_rng(11)
    base = np.concatenate([small_data.refs] * 4)[:2400]
    vectors = (base + 0.01 * rng.standard_normal(base.shape)).astype(np.float32)
    ids = [f"C{i:05d}" for i in range(len(vectors))]
    paths = {}
    for name, rows in (
        ("all", slice(0, 2400)),
        ("first", slice(0, 1200)),
        ("second", slice(1200, 2400)),
    ):
        np.save(folder / f"{name}.npy", vectors[rows])
        (folder / f"{name}.txt").write_text("\n".join(ids[rows]) + "\n")
        paths[name] = (folder / f"{name}.npy", folder / f"{name}.txt")
    return paths


@pytest.fixture(scope="module")
def expected(batches, isc21_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("crash-expected") / "all.zarr"
    vectors, ids = batches["all"]
    normalize(vectors, isc21_model, "reference", out, ids_path=ids, chunk_rows=CHUNK_ROWS)
    return read(out)


def read(path: Path) -> dict[str, bytes]:
    group = zarr.open_group(str(path), mode="r")
    return {
        "vectors": np.asarray(group["vectors"][:]).tobytes(),
        "background": np.asarray(group["background"][:]).tobytes(),
        "ids": "\n".join(np.asarray(group["ids"][:]).tolist()).encode(),
    }


def command(batch, model, out, *extra):
    vectors, ids = batch
    return [
        sys.executable,
        "-m",
        "streamnorm",
        "normalize",
        str(vectors),
        "--ids",
        str(ids),
        "--model",
        str(model),
        "--role",
        "reference",
        "--out",
        str(out),
        "--chunk-rows",
        str(CHUNK_ROWS),
        "--workers",
        "2",
        "-q",
        *extra,
    ]


def done_markers(out: Path) -> int:
    folder = out / "done" / "c"
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if not p.name.endswith(".partial"))


def run_and_kill(args, out: Path, after_markers: int) -> None:
    """Start the command and SIGKILL it once ``after_markers`` chunks are marked done."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        while process.poll() is None and time.monotonic() < deadline:
            if (after_markers == 0 and out.exists()) or done_markers(out) >= after_markers > 0:
                break
            time.sleep(0.002)
        assert process.poll() is None, "the run finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("after_markers", [0, 1, 40, 120])
def test_killed_run_resumes_to_identical_bytes(
    batches, isc21_model, expected, tmp_path, after_markers
):
    out = tmp_path / "out.zarr"
    args = command(batches["all"], isc21_model, out)
    run_and_kill(args, out, after_markers)
    if out.exists():
        with pytest.raises(InputError, match=r"incomplete|no zarr group"):
            open_source(out)
    finished = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert read(out) == expected


@pytest.mark.parametrize("after_markers", [1, 60])
def test_killed_append_resumes_to_identical_bytes(
    batches, isc21_model, expected, tmp_path, after_markers
):
    out = tmp_path / "out.zarr"
    first = subprocess.run(
        command(batches["first"], isc21_model, out), capture_output=True, text=True
    )
    assert first.returncode == 0, first.stderr
    markers_before = done_markers(out)
    append = command(batches["second"], isc21_model, out, "--append")
    run_and_kill(append, out, markers_before + after_markers)
    # A different command may not take over the interrupted append.
    refused = subprocess.run(
        command(batches["first"], isc21_model, out), capture_output=True, text=True
    )
    assert refused.returncode == 2 and "cannot be resumed" in refused.stderr
    finished = subprocess.run(append, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert read(out) == expected
