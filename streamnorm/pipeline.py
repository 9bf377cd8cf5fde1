"""Streaming normalization: every row chunk goes through the model as its own dask task.

Each task opens the input and the model by path (through per-process caches, so a worker
loads the model once per run, not once per task), reads its rows, normalizes them,
writes them into exactly one chunk of the output store, then sets that chunk's
done-marker. Nothing is gathered on the client, so memory is bounded by the chunk size
times the tasks in flight, plus the model.

A run always has one *pending batch*: the input rows being added, ``[start, stop)`` of
the store. A fresh run's batch starts at 0; an append's batch starts at the old row
count. Store rows before the batch are already final, so a chunk that straddles the
boundary takes them back from the store and computes only the new rows. Because every
row is a pure function of its input row, and chunks are laid out by row number, the
result is byte-identical to processing everything in one go.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import faiss
import numpy as np
import zarr
from threadpoolctl import threadpool_limits

from streamnorm.encoding import Role, extra_dims, normalized_sides
from streamnorm.errors import ModelMismatchError, OutputExistsError, StreamnormError
from streamnorm.id_column import IdColumn, check_unique
from streamnorm.locations import Location, as_text, is_url
from streamnorm.model import cached_model, read_model_info
from streamnorm.progress import dask_progress
from streamnorm.provenance import package_versions
from streamnorm.resources import DEFAULT_CHUNK_ROWS, default_chunk_rows, plan_resources
from streamnorm.schedulers import (
    LOCAL_SCHEDULERS,
    check_scheduler,
    compute,
    default_workers,
    parallel_tasks,
)
from streamnorm.sources import DescriptorSource, open_source
from streamnorm.store import (
    ChunkedStore,
    array,
    chunk_ranges,
    prepare_output,
    store_status,
    write_chunk,
)

TASK_PREFIX = "normalize-chunk"

_SOURCES: dict[tuple[str, str | None, str], DescriptorSource] = {}
_SOURCES_LOCK = threading.Lock()


@dataclass(frozen=True)
class NormalizeResult:
    """What a normalize run did."""

    path: str
    rows: int
    rows_added: int
    chunks_computed: int
    chunks_reused: int
    seconds: float


@dataclass(frozen=True)
class ChunkJob:
    """Everything a worker needs to produce one output chunk; small and picklable."""

    source_path: str
    ids_path: str | None
    source_sha: str
    model_path: str
    fingerprint: str
    role: Role
    out: str
    batch_start: int
    threads: int


def _cached_source(job: ChunkJob) -> DescriptorSource:
    key = (job.source_path, job.ids_path, job.source_sha)
    with _SOURCES_LOCK:
        if key not in _SOURCES:
            # The client checked the ids before any task was made.
            _SOURCES[key] = open_source(job.source_path, job.ids_path, check_ids=False)
        return _SOURCES[key]


def normalize_chunk(job: ChunkJob, chunk: tuple[int, int, int]) -> int:
    """Compute and write one output chunk, then set its done-marker.

    Rows of the chunk that precede the pending batch are already final in the store and
    are carried over; the others are computed from the input.
    """
    index, start, stop = chunk
    # faiss's OpenMP thread count is per calling thread, so it is set here, in the task.
    # (BLAS pools are process-wide: they are sized once around the whole computation.)
    faiss.omp_set_num_threads(job.threads)
    model = cached_model(job.model_path, job.fingerprint)
    first_new = max(start, job.batch_start)
    normalized = model.transform(
        _cached_source(job).read(first_new - job.batch_start, stop - job.batch_start)
    )
    vectors = model.encode(normalized, job.role)
    background = normalized.background
    if first_new > start:
        group = zarr.open_group(job.out, mode="r")
        vectors = np.concatenate([array(group, "vectors")[start:first_new], vectors])
        background = np.concatenate([array(group, "background")[start:first_new], background])
    return write_chunk(job.out, index, start, vectors, background)


def output_attrs(model_path: str, info: dict[str, Any], role: Role) -> dict[str, Any]:
    """What every batch of a normalized store must agree on, plus provenance."""
    from streamnorm.config import params_from_dict

    params = params_from_dict(info["params"])
    return {
        "kind": "normalized",
        "role": role,
        "model_fingerprint": info["fingerprint"],
        "model_path": model_path if is_url(model_path) else str(Path(model_path).resolve()),
        "params": info["params"],
        "encoding": {
            "metric": params.metric,
            "input_dim": info["dim"],
            "base_dim": info["transformed_dim"],
            "output_dim": info["output_dim"],
            "extra_dims": extra_dims(params),
            "sides": normalized_sides(params),
        },
        "versions": package_versions(),
    }


def normalize(
    input_path: Location,
    model_path: Location,
    role: Role,
    out: Location,
    *,
    chunk_rows: int | None = None,
    ids_path: Location | None = None,
    overwrite: bool = False,
    append: bool = False,
    scheduler: str = "threads",
    workers: int | None = None,
    threads: int | None = None,
    memory_limit: int | None = None,
    progress: bool = False,
) -> NormalizeResult:
    """Normalize every row of an input through a fitted model into a store.

    Parameters
    ----------
    input_path : str or Path
        Descriptor store, ISC HDF5 file or ``.npy`` file.
    model_path : str or Path
        A model folder written by ``streamnorm fit``.
    role : {"query", "reference"}
        Which side of the track-2 encoding the vectors get.
    out : str or Path
        The normalized store. An incomplete store left by the same command is resumed;
        anything else that exists is refused unless ``overwrite`` (or ``append``).
    chunk_rows : int, optional
        Rows per task and per output chunk (fixed when the store is created); by default
        8192, or 16384 for a model with an IVF index.
    append : bool
        Add the input's rows after the store's existing rows.
    scheduler : str
        ``threads``, ``processes``, ``synchronous``, ``local-cluster[:N]`` or the address
        of a dask.distributed scheduler (see :mod:`streamnorm.schedulers`).
    workers : int, optional
        Parallel tasks; defaults to the core count.
    threads : int, optional
        faiss/BLAS threads inside each task; by default the cores shared among the tasks.
    memory_limit : int, optional
        Bytes the run may use: caps the chunk size and the tasks in flight.

    Returns
    -------
    NormalizeResult
    """
    began = time.perf_counter()
    check_scheduler(scheduler)
    source = open_source(input_path, ids_path)
    info = read_model_info(model_path)
    if source.dim != info["dim"]:
        raise ModelMismatchError(
            f"{source.path}: vectors have dimension {source.dim} but the model "
            f"{model_path} was fitted on dimension {info['dim']}"
        )
    attrs = output_attrs(as_text(model_path), info, role)
    batch: dict[str, Any] = {"input": source.identity(), "path": source.path}
    # A store being resumed or appended to has its chunk size already.
    existing = store_status(out) or {}
    fixed = "chunk_rows" in existing and not (overwrite and not append)
    wanted_rows = int(existing["chunk_rows"]) if fixed else (chunk_rows or default_chunk_rows(info))
    plan = plan_resources(
        info,
        cores=default_workers(),
        workers=parallel_tasks(scheduler, workers),
        chunk_rows=wanted_rows,
        chunk_rows_fixed=fixed,
        threads=threads,
        memory_limit=memory_limit,
        separate_processes=scheduler != "threads" and scheduler != "synchronous",
    )
    if not fixed:
        chunk_rows = plan.chunk_rows
    store, created = _plan(
        out, existing or None, source, attrs, batch, chunk_rows, overwrite, append
    )
    batch_start = int(store.attrs["pending"]["start"])
    pending = store.pending_chunks()
    job = ChunkJob(
        source_path=source.path,
        ids_path=None if ids_path is None else as_text(ids_path),
        source_sha=batch["input"]["sha256"],
        model_path=as_text(model_path),
        fingerprint=info["fingerprint"],
        role=role,
        out=as_text(out),
        batch_start=batch_start,
        # faiss threads per task, so that tasks x threads never exceeds the cores.
        threads=plan.threads,
    )
    tasks = [
        dask.delayed(normalize_chunk, pure=False)(
            job, chunk, dask_key_name=f"{TASK_PREFIX}-{chunk[0]}"
        )
        for chunk in pending
    ]
    try:
        description = f"normalize {role} vectors"
        # Distributed schedulers report progress themselves.
        local_bar = progress and scheduler in LOCAL_SCHEDULERS
        with (
            dask_progress(description, len(tasks), TASK_PREFIX, enabled=local_bar),
            threadpool_limits(limits=plan.threads, user_api="blas"),
        ):
            compute(tasks, scheduler, plan.workers, description, progress)
        _finish(store)
    except StreamnormError:
        if created:
            # A fresh output that hit bad input is removed, not left behind. Anything else
            # (an interrupt, a lost scheduler) leaves an incomplete store to resume.
            prepare_output(out, overwrite=True)
        raise
    total_chunks = -(-store.n_rows // store.chunk_rows)
    return NormalizeResult(
        as_text(out),
        store.n_rows,
        store.n_rows - batch_start,
        len(pending),
        total_chunks - len(pending),
        time.perf_counter() - began,
    )


def _finish(store: ChunkedStore) -> None:
    attrs = store.attrs
    batches = [*attrs.get("batches", []), attrs["pending"]]
    store.mark_complete({"batches": batches, "pending": None})


def _plan(
    out: Location,
    status: dict[str, Any] | None,
    source: DescriptorSource,
    attrs: dict[str, Any],
    batch: dict[str, Any],
    chunk_rows: int | None,
    overwrite: bool,
    append: bool,
) -> tuple[ChunkedStore, bool]:
    """The store to write into, and whether this run created it.

    Every refusal happens before anything is modified.
    """
    if status is not None and overwrite and not append:
        prepare_output(out, overwrite=True)
        status = None
    if status is None:
        return _create(out, source, attrs, batch, chunk_rows), True
    if status.get("kind") != "normalized":
        raise OutputExistsError(f"{out}: exists and is not a normalized store (use --overwrite)")
    reason = _incompatibility(status, attrs, source)
    if status.get("status") == "complete":
        if not append:
            raise OutputExistsError(f"{out}: output already exists (use --overwrite to replace it)")
        if reason:
            raise ModelMismatchError(f"{out}: cannot append: {reason}")
        return _begin_append(out, source, batch), False
    pending = status.get("pending") or {}
    if pending.get("input") != batch["input"]:
        reason = reason or "it was started with a different input"
    if not append and pending.get("start", 0) != 0:
        reason = reason or "it is an interrupted --append; rerun that command with --append"
    if chunk_rows is not None and chunk_rows != status.get("chunk_rows"):
        reason = reason or f"it uses {status.get('chunk_rows')} rows per chunk, not {chunk_rows}"
    if reason:
        raise OutputExistsError(
            f"{out}: an incomplete output is there but cannot be resumed: {reason} "
            "(use --overwrite to start again)"
        )
    store = ChunkedStore.open(out)
    start = int(pending["start"])
    if start == 0 and not store.is_intact():
        # A crash while the store was being created: nothing in it is worth keeping.
        prepare_output(out, overwrite=True)
        return _create(out, source, attrs, batch, chunk_rows or status.get("chunk_rows")), True
    # An interrupted append may have stopped before growing the arrays: finish that step.
    _grow(store, source, start)
    return store, False


def _incompatibility(
    status: dict[str, Any], attrs: dict[str, Any], source: DescriptorSource
) -> str:
    if status.get("model_fingerprint") != attrs["model_fingerprint"]:
        return "it was made with a different model"
    if status.get("role") != attrs["role"]:
        return f"it holds {status.get('role')} vectors, not {attrs['role']} vectors"
    if status.get("encoding", {}).get("input_dim") != source.dim:
        return "its dimension differs from the input's"
    return ""


def _create(
    out: Location,
    source: DescriptorSource,
    attrs: dict[str, Any],
    batch: dict[str, Any],
    chunk_rows: int | None,
) -> ChunkedStore:
    pending = {**batch, "start": 0, "stop": source.n_rows}
    return ChunkedStore.create(
        out,
        source.n_rows,
        attrs["encoding"]["output_dim"],
        chunk_rows or DEFAULT_CHUNK_ROWS,
        {**attrs, "batches": [], "pending": pending},
        with_background=True,
        ids=source.id_column,
    )


def _begin_append(out: Location, source: DescriptorSource, batch: dict[str, Any]) -> ChunkedStore:
    store = ChunkedStore.open(out)
    old_rows = store.n_rows
    existing = IdColumn.from_strings(array(store.group, "ids"))
    check_unique([existing, source.id_column], f"{out} + {source.path}")
    # Declared first, so a crash at any later point is recognised and resumable.
    store.update_attrs(
        {
            "status": "incomplete",
            "pending": {**batch, "start": old_rows, "stop": old_rows + source.n_rows},
        }
    )
    _grow(store, source, old_rows)
    return store


def _grow(store: ChunkedStore, source: DescriptorSource, old_rows: int) -> None:
    """Size the arrays for the pending batch and write its ids; safe to repeat."""
    chunk_rows = store.chunk_rows
    new_rows = old_rows + source.n_rows
    if old_rows % chunk_rows:
        # The last old chunk gains rows: it must be rewritten, so it is no longer done.
        array(store.group, "done")[old_rows // chunk_rows] = 0
    store.resize(new_rows)
    ids = array(store.group, "ids")
    # Along the store's chunks, so one chunk of ids is in memory at a time.
    for _, start, stop in chunk_ranges(new_rows, chunk_rows):
        if stop > old_rows:
            begin = max(start, old_rows)
            ids[begin:stop] = source.id_column.read(begin - old_rows, stop - old_rows)
