"""fit, normalize (with --append and resume) and match through s3:// URLs, against a real
S3-compatible server (moto in server mode) on loopback, started and stopped here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import fsspec
import numpy as np
import pytest
from conftest import store_arrays

from streamnorm.config import build_params
from streamnorm.matching import match
from streamnorm.model import fit_model
from streamnorm.pipeline import normalize
from streamnorm.verify import verify

BUCKET = "streamnorm-test"


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
    }
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)  # the standard way credentials reach s3fs and subprocesses
    fsspec.filesystem("s3").mkdir(BUCKET)
    try:
        yield f"s3://{BUCKET}"
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def upload_store(local, url):
    fs = fsspec.filesystem("s3")
    fs.put(str(local) + "/", url.removeprefix("s3://"), recursive=True)
    return url


def array_bytes(location):
    stored = store_arrays(location)
    return stored["vectors"].tobytes() + stored["background"].tobytes()


@pytest.fixture(scope="module")
def remote(small_data, s3):
    return {
        "train": upload_store(small_data.train_path, f"{s3}/in/train.zarr"),
        "refs": upload_store(small_data.refs_path, f"{s3}/in/refs.zarr"),
        "queries": upload_store(small_data.queries_path, f"{s3}/in/queries.zarr"),
    }


def test_fit_normalize_match_through_s3(small_data, isc21_model, remote, s3, tmp_path):
    model = f"{s3}/model"
    fit_model(remote["train"], model, build_params("isc21"))
    normalize(remote["refs"], model, "reference", f"{s3}/out/refs.zarr", chunk_rows=128)
    normalize(remote["queries"], model, "query", f"{s3}/out/queries.zarr", chunk_rows=64)
    # The same bytes as a local run with a locally fitted model.
    normalize(small_data.refs_path, isc21_model, "reference", tmp_path / "refs.zarr")
    assert array_bytes(f"{s3}/out/refs.zarr") == array_bytes(tmp_path / "refs.zarr")
    normalize(small_data.queries_path, isc21_model, "query", tmp_path / "queries.zarr")
    match(f"{s3}/out/queries.zarr", f"{s3}/out/refs.zarr", f"{s3}/out/preds.csv", k=5)
    match(tmp_path / "queries.zarr", tmp_path / "refs.zarr", tmp_path / "preds.csv", k=5)
    with fsspec.open(f"{s3}/out/preds.csv", "rb") as remote_csv:
        assert remote_csv.read() == (tmp_path / "preds.csv").read_bytes()
    assert verify(f"{s3}/out/refs.zarr", remote["refs"], model, sample=20).ok


def test_append_through_s3(small_data, isc21_model, remote, s3, tmp_path):
    np.save(tmp_path / "a.npy", small_data.refs[:400])
    (tmp_path / "a.txt").write_text("\n".join(small_data.ref_ids[:400]))
    np.save(tmp_path / "b.npy", small_data.refs[400:])
    (tmp_path / "b.txt").write_text("\n".join(small_data.ref_ids[400:]))
    fs = fsspec.filesystem("s3")
    for name in ("a.npy", "a.txt", "b.npy", "b.txt"):
        fs.put(str(tmp_path / name), f"{BUCKET}/batches/{name}")
    out = f"{s3}/appended/refs.zarr"
    normalize(
        f"{s3}/batches/a.npy",
        isc21_model,
        "reference",
        out,
        ids_path=f"{s3}/batches/a.txt",
        chunk_rows=64,
    )
    normalize(
        f"{s3}/batches/b.npy",
        isc21_model,
        "reference",
        out,
        ids_path=f"{s3}/batches/b.txt",
        append=True,
    )
    normalize(
        small_data.refs_path, isc21_model, "reference", tmp_path / "whole.zarr", chunk_rows=64
    )
    assert array_bytes(out) == array_bytes(tmp_path / "whole.zarr")


def test_killed_run_on_s3_resumes(small_data, isc21_model, remote, s3, tmp_path):
    out = f"{s3}/killed/refs.zarr"
    args = [
        sys.executable,
        "-m",
        "streamnorm",
        "normalize",
        remote["refs"],
        "--model",
        str(isc21_model),
        "--role",
        "reference",
        "--out",
        out,
        "--chunk-rows",
        "4",
        "-q",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fs = fsspec.filesystem("s3")
    deadline = time.monotonic() + 120
    markers = f"{BUCKET}/killed/refs.zarr/done/c"
    while time.monotonic() < deadline and process.poll() is None:
        fs.invalidate_cache()
        if fs.exists(markers) and len(fs.ls(markers)) >= 10:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert "chunks kept" in finished.stdout
    normalize(small_data.refs_path, isc21_model, "reference", tmp_path / "whole.zarr")
    assert array_bytes(out) == array_bytes(tmp_path / "whole.zarr")
