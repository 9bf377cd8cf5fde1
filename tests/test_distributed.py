"""A real dask.distributed cluster: worker processes, model shipping, worker loss."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import store_arrays
from distributed import Client, LocalCluster

from streamnorm.model import models_loaded
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
