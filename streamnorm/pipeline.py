"""Streaming normalization: every row chunk goes through the model as its own dask task.

Each task opens the input and the model by path (through per-process caches, so a worker
loads the model once per run, not once per task), reads its rows, normalizes them,
writes them into exactly one chunk of the output store, then sets that chunk's
done-marker. Nothing is ever gathered on the client, so memory is bounded by the chunk
size times the tasks in flight, plus the model.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import faiss
from threadpoolctl import threadpool_limits

from streamnorm.encoding import Role, extra_dims, normalized_sides
from streamnorm.errors import InputError, ModelMismatchError, OutputExistsError
from streamnorm.model import cached_model, read_model_info
from streamnorm.progress import dask_progress
from streamnorm.provenance import package_versions
from streamnorm.schedulers import compute, default_workers
from streamnorm.sources import DescriptorSource, open_source
from streamnorm.store import ChunkedStore, prepare_output, store_status, write_chunk

DEFAULT_CHUNK_ROWS = 8192
TASK_PREFIX = "normalize-chunk"

_SOURCES: dict[tuple[str, str | None], DescriptorSource] = {}
_SOURCES_LOCK = threading.Lock()


@dataclass(frozen=True)
class NormalizeResult:
    """What a normalize run did."""

    path: str
    rows: int
    chunks_computed: int
    chunks_reused: int
    seconds: float


def _cached_source(path: str, ids_path: str | None) -> DescriptorSource:
    key = (path, ids_path)
    with _SOURCES_LOCK:
        if key not in _SOURCES:
            _SOURCES[key] = open_source(path, ids_path)
        return _SOURCES[key]


def _normalize_chunk(
    source_path: str,
    ids_path: str | None,
    model_path: str,
    fingerprint: str,
    role: Role,
    out: str,
    chunk: tuple[int, int, int],
    threads: int,
) -> int:
    index, start, stop = chunk
    # Thread pools are per calling thread, so size them here, inside the task.
    faiss.omp_set_num_threads(threads)
    with threadpool_limits(limits=threads):
        source = _cached_source(source_path, ids_path)
        model = cached_model(model_path, fingerprint)
        normalized = model.transform(source.read(start, stop))
        vectors = model.encode(normalized, role)
        return write_chunk(out, index, start, vectors, normalized.background)


def output_attrs(
    source: DescriptorSource, model_path: str, info: dict[str, Any], role: Role
) -> dict[str, Any]:
    """Provenance recorded in a normalized store."""
    from streamnorm.config import params_from_dict

    params = params_from_dict(info["params"])
    return {
        "kind": "normalized",
        "role": role,
        "model_fingerprint": info["fingerprint"],
        "model_path": str(Path(model_path).resolve()),
        "params": info["params"],
        "encoding": {
            "metric": params.metric,
            "base_dim": info["dim"],
            "extra_dims": extra_dims(params),
            "sides": normalized_sides(params),
        },
        "input": source.identity(),
        "versions": package_versions(),
    }


def _same_job(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Why an incomplete store cannot be resumed by this command, or None if it can."""
    for key, label in (("model_fingerprint", "model"), ("role", "role"), ("input", "input")):
        if existing.get(key) != wanted.get(key):
            return f"it was started with a different {label}"
    return None


def normalize(
    input_path: str | Path,
    model_path: str | Path,
    role: Role,
    out: str | Path,
    *,
    chunk_rows: int | None = None,
    ids_path: str | Path | None = None,
    overwrite: bool = False,
    scheduler: str = "threads",
    workers: int | None = None,
    progress: bool = False,
) -> NormalizeResult:
    """Normalize every row of an input through a fitted model into a new store.

    Parameters
    ----------
    input_path : str or Path
        Descriptor store, ISC HDF5 file or ``.npy`` file.
    model_path : str or Path
        A model folder written by ``streamnorm fit``.
    role : {"query", "reference"}
        Which side of the track-2 encoding the vectors get.
    out : str or Path
        The normalized store to write. An incomplete store left by the same command
        is resumed; anything else that exists is refused unless ``overwrite``.
    chunk_rows : int, optional
        Rows per task and per output chunk.
    scheduler : str
        A dask scheduler name: ``threads``, ``processes`` or ``synchronous``.
    workers : int, optional
        Parallel tasks; defaults to the core count.

    Returns
    -------
    NormalizeResult
    """
    began = time.perf_counter()
    source = open_source(input_path, ids_path)
    info = read_model_info(model_path)
    if source.dim != info["dim"]:
        raise ModelMismatchError(
            f"{source.path}: vectors have dimension {source.dim} but the model "
            f"{model_path} was fitted on dimension {info['dim']}"
        )
    attrs = output_attrs(source, str(model_path), info, role)
    store = _open_or_create(out, source, attrs, chunk_rows, overwrite)
    created = store is None
    if store is None:
        store = ChunkedStore.create(
            out,
            source.n_rows,
            info["dim"] + attrs["encoding"]["extra_dims"],
            chunk_rows or DEFAULT_CHUNK_ROWS,
            attrs,
            with_background=True,
            ids=source.ids,
        )
    pending = store.pending_chunks()
    workers = workers or default_workers()
    # faiss threads per task, so that tasks x threads never exceeds the cores.
    threads = max(1, default_workers() // workers)
    tasks = [
        dask.delayed(_normalize_chunk, pure=False)(
            source.path,
            None if ids_path is None else str(ids_path),
            str(model_path),
            info["fingerprint"],
            role,
            str(out),
            chunk,
            threads,
            dask_key_name=f"{TASK_PREFIX}-{chunk[0]}",
        )
        for chunk in pending
    ]
    try:
        with dask_progress(f"normalize {role} vectors", len(tasks), TASK_PREFIX, enabled=progress):
            compute(tasks, scheduler, workers)
        store.mark_complete()
    except BaseException:
        if created:
            # A fresh output that failed on bad input is removed rather than left behind.
            prepare_output(out, overwrite=True)
        raise
    total_chunks = -(-store.n_rows // store.chunk_rows)
    return NormalizeResult(
        str(out),
        store.n_rows,
        len(pending),
        total_chunks - len(pending),
        time.perf_counter() - began,
    )


def _open_or_create(
    out: str | Path,
    source: DescriptorSource,
    attrs: dict[str, Any],
    chunk_rows: int | None,
    overwrite: bool,
) -> ChunkedStore | None:
    """The store to resume, or None after clearing the way for a new one."""
    status = store_status(out)
    if status is None:
        return None
    if overwrite:
        prepare_output(out, overwrite=True)
        return None
    if status.get("status") != "incomplete":
        raise OutputExistsError(f"{out}: output already exists (use --overwrite to replace it)")
    reason = _same_job(status, attrs)
    if reason is None and chunk_rows is not None and chunk_rows != status.get("chunk_rows"):
        reason = f"it uses {status.get('chunk_rows')} rows per chunk, not {chunk_rows}"
    if reason is not None:
        raise OutputExistsError(
            f"{out}: an incomplete output is there but cannot be resumed: {reason} "
            "(use --overwrite to start again)"
        )
    store = ChunkedStore.open(out)
    if store.n_rows != source.n_rows:
        raise InputError(
            f"{out}: incomplete output sized for {store.n_rows} rows, input has {source.n_rows}"
        )
    return store
