"""Benchmark sizes and the data the benchmark generates for itself.

The vectors are synthetic DISC21-like descriptors (:mod:`streamnorm.synth`): a mixture
of dense and diffuse clusters, so near-ties among the top training neighbours occur as
they do on real data and the certificate of the exact search is exercised, not skipped.
Everything is written to ordinary zarr descriptor stores, because the pipeline's reading
and writing are part of what is measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streamnorm.bench_approx import ApproximateSizes
from streamnorm.config import build_params
from streamnorm.model import fit_model
from streamnorm.progress import track
from streamnorm.resources import DEFAULT_CHUNK_ROWS
from streamnorm.store import ChunkedStore, chunk_ranges, write_chunk
from streamnorm.synth import Split, SynthSpec, generate_split


@dataclass(frozen=True)
class BenchSizes:
    """How much work each benchmark line does.

    Attributes
    ----------
    n_vectors : int
        N, the rows normalized by the throughput, append and scaling lines.
    n_train : int
        Training vectors the model searches.
    dim : int
        Descriptor dimension.
    chunk_rows : int
        Rows per pipeline task; also the block size of the determinism line, so that
        faiss sees the same search calls there as in the pipeline.
    preset : str
        Normalization parameters (``configs/<preset>.toml``).
    rss_factor : int
        The memory line runs N and ``rss_factor * N`` rows.
    rss_reps : int
        Measurements of each size, in ABBA order; the largest peak counts, since the
        peak of one run varies by tens of MB with the timing of the allocations.
    append_fraction : float
        Rows appended, as a fraction of N.
    sgemm_size : int
        Side of the square float32 matrices of the GEMM line.
    sgemm_reps : int
        Timed GEMM repetitions (the best counts).
    determinism_blocks : int
        Pipeline-sized blocks searched both ways by the determinism line.
    determinism_reps : int
        Interleaved repetitions of the determinism line (the best of each counts).
    scaling_rows : int, optional
        Rows of the one-thread-per-worker scaling pair (N by default); its one-core run
        is the slowest of the benchmark, hence the option to make it smaller.
    scaling_reps : int
        Repetitions of each one-worker/two-worker pair, in ABBA order (the best counts).
    match_queries, match_refs, match_k : int
        Sizes handed to ``streamnorm.match_bench.bench_match``.
    approximate : ApproximateSizes, optional
        The data of the approximate-index line; the line is left out when None.
    seed : int
        Seed of the synthetic data.
    """

    n_vectors: int
    n_train: int
    dim: int = 256
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    preset: str = "isc21"
    rss_factor: int = 4
    rss_reps: int = 1
    append_fraction: float = 0.1
    sgemm_size: int = 4096
    sgemm_reps: int = 3
    determinism_blocks: int = 8
    determinism_reps: int = 2
    scaling_rows: int | None = None
    scaling_reps: int = 1
    match_queries: int = 10_000
    match_refs: int = 100_000
    match_k: int = 10
    approximate: ApproximateSizes | None = field(default_factory=ApproximateSizes.quick)
    seed: int = 0

    @property
    def n_append(self) -> int:
        """Rows of the appended batch (at least one)."""
        return max(1, round(self.append_fraction * self.n_vectors))

    @property
    def flops_per_vector(self) -> float:
        """Multiply-adds, counted as 2 flops, of one vector against the training set."""
        return 2.0 * self.n_train * self.dim

    @classmethod
    def quick(cls) -> BenchSizes:
        """About two minutes on two cores: every line, at small scale."""
        return cls(
            n_vectors=32_768,
            n_train=32_768,
            sgemm_size=2048,
            sgemm_reps=3,
            determinism_blocks=2,
            determinism_reps=3,
            scaling_reps=2,
            rss_reps=2,
            match_queries=2_000,
            match_refs=32_768,
        )

    @classmethod
    def full(cls) -> BenchSizes:
        """A scaled DISC21 shape: 200k vectors x 256 against 100k training vectors."""
        return cls(
            n_vectors=200_000,
            n_train=100_000,
            sgemm_size=4096,
            sgemm_reps=5,
            determinism_blocks=6,
            determinism_reps=2,
            scaling_rows=98_304,
            rss_reps=2,
            match_queries=10_000,
            match_refs=200_000,
            approximate=ApproximateSizes.full(),
        )


@dataclass(frozen=True)
class BenchData:
    """Paths of the generated inputs and the fitted model."""

    train: Path
    vectors: Path
    """N rows."""
    extra: Path
    """The rows appended after ``vectors`` (ids continue where it stops)."""
    large: Path
    """``rss_factor * N`` rows."""
    scaling: Path
    """The first ``scaling_rows`` rows (``vectors`` itself when that is N)."""
    model: Path


def _write_rows(
    path: Path, spec: SynthSpec, split: Split, start: int, stop: int, chunk_rows: int, show: bool
) -> Path:
    """Rows ``[start, stop)`` of a synthetic split as a descriptor store."""
    n_rows = stop - start
    store = ChunkedStore.create(
        path, n_rows, spec.dim, chunk_rows, {"kind": "descriptors"}, with_background=False
    )
    chunks = list(chunk_ranges(n_rows, chunk_rows))
    for index, lo, hi in track(chunks, f"bench data: {path.name}", enabled=show):
        vectors, ids = generate_split(spec, split, start + lo, start + hi)
        write_chunk(str(path), index, lo, vectors, ids=ids)
    store.mark_complete()
    return path


def prepare_data(sizes: BenchSizes, folder: Path, progress: bool = True) -> BenchData:
    """Write the benchmark's stores into ``folder`` and fit the model.

    Returns
    -------
    BenchData
    """
    large_rows = sizes.rss_factor * sizes.n_vectors
    spec = SynthSpec(
        n_queries=1,
        n_refs=max(large_rows, sizes.n_vectors + sizes.n_append),
        n_train=sizes.n_train,
        dim=sizes.dim,
        positives=0.0,
        seed=sizes.seed,
    )
    rows = sizes.chunk_rows
    n = sizes.n_vectors
    vectors = _write_rows(folder / "vectors.zarr", spec, "refs", 0, n, rows, progress)
    scaling_rows = sizes.scaling_rows or n
    scaling = (
        vectors
        if scaling_rows == n
        else _write_rows(folder / "scaling.zarr", spec, "refs", 0, scaling_rows, rows, progress)
    )
    data = BenchData(
        train=_write_rows(folder / "train.zarr", spec, "train", 0, sizes.n_train, rows, progress),
        vectors=vectors,
        extra=_write_rows(
            folder / "extra.zarr", spec, "refs", n, n + sizes.n_append, rows, progress
        ),
        large=_write_rows(folder / "large.zarr", spec, "refs", 0, large_rows, rows, progress),
        scaling=scaling,
        model=folder / "model",
    )
    fit_model(data.train, data.model, build_params(sizes.preset), progress=progress)
    return data
