"""A real dask.distributed cluster: worker processes, model shipping, worker loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import store_arrays
from distributed import Client, LocalCluster

from streamnorm import transforms
from streamnorm.config import build_params
from streamnorm.matching import Tiling, match
from streamnorm.model import fit_model, models_loaded
from streamnorm.pipeline import normalize


def arrays(path):
    stored = store_arrays(path)
    return {name: stored[name].tobytes() for name in ("vectors", "background")}


@pytest.fixture(scope="module")
def cluster():
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as local,
        Client(local) as client,
    ):
        yield local, client


@pytest.fixture(scope="module")
def expected(small_data, isc21_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist-expected") / "refs.zarr"
    normalize(small_data.refs_path, isc21_model, "reference", out, chunk_rows=10)
    return arrays(out)


def test_model_reaches_each_worker_once(small_data, isc21_model, cluster, expected, tmp_path):
    local, client = cluster
    before = client.run(models_loaded)
    out = tmp_path / "refs.zarr"
    normalize(
        small_data.refs_path,
        isc21_model,
        "reference",
        out,
        chunk_rows=10,
        scheduler=local.scheduler_address,
    )
    after = client.run(models_loaded)
    assert arrays(out) == expected
    loads = [after[w] - before[w] for w in after]
    # 70 tasks ran, yet each worker process loaded the model at most once.
    assert sum(loads) >= 1 and max(loads) <= 1


def test_losing_a_worker_mid_run_changes_nothing(
    small_data, isc21_model, cluster, expected, tmp_path
):
    local, client = cluster
    out = tmp_path / "refs.zarr"
    pids = client.run(os.getpid)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            normalize(
                small_data.refs_path,
                isc21_model,
                "reference",
                out,
                chunk_rows=2,
                scheduler=local.scheduler_address,
            )
        except BaseException as error:  # surfaced by the assertion below
            failure.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    markers = out / "done" / "c"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (
        markers.is_dir() and len(list(markers.iterdir())) > 20
    ):
        time.sleep(0.01)
    victim = sorted(pids.values())[0]
    assert worker.is_alive(), "the job ended before a worker could be killed"
    os.kill(victim, signal.SIGKILL)
    worker.join(timeout=300)
    assert not failure, failure
    assert len(list(markers.iterdir())) == 350  # every chunk done
    assert arrays(out) == expected
    # The nanny brought a worker back: the cluster still has two.
    client.wait_for_workers(2, timeout=60)


def test_match_on_a_cluster_equals_threads(small_data, isc21_model, cluster, tmp_path):
    """Query-block tasks on worker processes write the threads run's files, byte for byte."""
    local, _ = cluster
    q, r = tmp_path / "q.zarr", tmp_path / "r.zarr"
    normalize(small_data.queries_path, isc21_model, "query", q)
    normalize(small_data.refs_path, isc21_model, "reference", r)
    match(q, r, tmp_path / "threads.csv", k=7, max_results=400, state=tmp_path / "threads.npz")
    match(
        q, r, tmp_path / "cluster.csv", k=7, max_results=400, state=tmp_path / "cluster.npz",
        scheduler=local.scheduler_address, tiling=Tiling(query_block_rows=40),
    )  # fmt: skip
    for name in ("csv", "npz"):
        assert (tmp_path / f"cluster.{name}").read_bytes() == (
            tmp_path / f"threads.{name}"
        ).read_bytes()


def test_fit_nes_on_a_cluster_equals_the_default(small_data, cluster, tmp_path, monkeypatch):
    local, _ = cluster
    monkeypatch.setattr(transforms, "BLOCK_ROWS", 400)  # several tasks per pass
    params = build_params("nes", overrides=["nes_alpha=2.0", "max_dim=24"])
    expected = fit_model(small_data.train_path, tmp_path / "default", params)
    found = fit_model(
        small_data.train_path, tmp_path / "cluster", params, scheduler=local.scheduler_address
    )
    assert found.fingerprint_ == expected.fingerprint_
    for name in ("transforms.npz", "index.faiss", "model.json"):
        assert (tmp_path / "cluster" / name).read_bytes() == (
            tmp_path / "default" / name
        ).read_bytes(), name


def test_match_command_starts_its_own_local_cluster(small_data, tmp_path):
    """`scheduler = "local-cluster:2"` in a config file: a LocalCluster of 2 processes."""
    expected = tmp_path / "threads.csv"
    match(small_data.queries_path, small_data.refs_path, expected, k=5)
    config = tmp_path / "run.toml"
    config.write_text('scheduler = "local-cluster:2"\n')
    out = tmp_path / "cluster.csv"
    done = subprocess.run(
        [sys.executable, "-m", "streamnorm", "match", str(small_data.queries_path),
         str(small_data.refs_path), "--out", str(out), "--k", "5", "--config", str(config), "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dask dashboard" in done.stderr
    assert out.read_bytes() == expected.read_bytes()
