"""Shared fixtures: small clustered descriptor sets written as real zarr stores."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest
import zarr
from threadpoolctl import threadpool_limits

from streamnorm.config import build_params
from streamnorm.model import fit_model
from streamnorm.store import ChunkedStore, chunk_ranges, write_chunk


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # A run that collected nothing must fail loudly rather than pass as "no tests".
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def clustered(rng: np.random.Generator, n: int, dim: int, centres: np.ndarray) -> np.ndarray:
    """Vectors around a few centres with very different spreads, like real descriptors."""
    which = rng.integers(0, len(centres), n)
    spread = np.linspace(0.15, 1.2, len(centres))[which][:, None]
    vectors = centres[which] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim)
    return vectors.astype(np.float32)


def write_store(
    path: Path, vectors: np.ndarray, ids: list[str] | np.ndarray, chunk_rows: int = 256
) -> Path:
    """Write a raw descriptor store the way ``streamnorm synth`` does."""
    store = ChunkedStore.create(
        path,
        len(vectors),
        vectors.shape[1],
        chunk_rows,
        {"kind": "descriptors"},
        with_background=False,
    )
    ids = np.asarray(ids)
    for index, start, stop in chunk_ranges(len(vectors), chunk_rows):
        write_chunk(str(path), index, start, vectors[start:stop], ids=ids[start:stop])
    store.mark_complete()
    return path


@dataclass
class SmallData:
    """A small data set on disk plus the arrays behind it."""

    folder: Path
    train: np.ndarray
    refs: np.ndarray
    queries: np.ndarray
    ref_ids: np.ndarray
    query_ids: np.ndarray
    train_path: Path
    refs_path: Path
    queries_path: Path


def make_small_data(folder: Path, seed: int = 0, dim: int = 32) -> SmallData:
    """Write train/refs/queries stores; queries 0..59 copy refs 0..59."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim)).astype(np.float32)
    train = clustered(rng, 1500, dim, centres)
    refs = clustered(rng, 700, dim, centres)
    distractors = clustered(rng, 90, dim, centres)
    copies = refs[:60] + 0.05 * rng.standard_normal((60, dim)).astype(np.float32)
    queries = np.concatenate([copies, distractors]).astype(np.float32)
    ref_ids = np.array([f"R{i:04d}" for i in range(len(refs))])
    # Query ids out of row order, so id-based tie breaking is really exercised.
    query_ids = np.array([f"Q{(i * 37) % 1000:04d}" for i in range(len(queries))])
    folder.mkdir(parents=True, exist_ok=True)
    return SmallData(
        folder,
        train,
        refs,
        queries,
        ref_ids,
        query_ids,
        write_store(folder / "train.zarr", train, [f"T{i:05d}" for i in range(len(train))]),
        write_store(folder / "refs.zarr", refs, ref_ids),
        write_store(folder / "queries.zarr", queries, query_ids),
    )


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> SmallData:
    return make_small_data(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="session")
def isc21_model(small_data: SmallData) -> Path:
    path = small_data.folder / "model-isc21"
    if not path.exists():
        fit_model(small_data.train_path, path, build_params("isc21"))
    return path


def store_arrays(path) -> dict[str, np.ndarray]:
    """The vectors, background and ids of a normalized store (local path or URL)."""
    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(group[name][:]) for name in ("vectors", "background", "ids")}


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Independent float64 L2 normalization for reference computations."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_background(x: np.ndarray, train: np.ndarray, n: int) -> np.ndarray:
    """b(x) = n-th largest similarity to the training set, in float64 by brute force."""
    sims = unit_rows(x) @ unit_rows(train).T
    return -np.sort(-sims, axis=1)[:, n - 1]


def assert_split_invariant(searcher, queries: np.ndarray, split: int, threads: int) -> None:
    """Searching two parts on ``threads`` faiss/BLAS threads gives the whole's bytes."""
    whole = searcher.search(queries, 10)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        with threadpool_limits(threads, user_api="blas"):
            parts = [searcher.search(queries[:split], 10), searcher.search(queries[split:], 10)]
    finally:
        faiss.omp_set_num_threads(before)
    assert np.concatenate([p[0] for p in parts]).tobytes() == whole[0].tobytes()
    assert np.concatenate([p[1] for p in parts]).tobytes() == whole[1].tobytes()
