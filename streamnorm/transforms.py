"""Learned per-vector transforms that run before the background search.

Three optional steps, fitted on the training set only and applied in this order, each
ending with an L2 normalization:

1. **PCA whitening** (``whiten``): centre with the training mean, rotate onto the
   eigenvectors of the training covariance and scale each axis by its eigenvalue to the
   power ``whiten_power``.
2. **Negative embedding subtraction** (``nes``): ``x <- normalize(x - nes_beta * mean of
   the nes_k nearest negatives)``, ``nes_iterations`` times. The negatives are the
   training vectors after step 1, optionally augmented database-side (``nes_alpha``).
3. **Dimension budget** (``max_dim``): when the vector plus the encoding's extra
   dimensions would exceed ``max_dim``, reduce the vector to ``max_dim - extra`` by a
   learned projection (``reduction = "pca"``) or by dropping the lowest-variance
   training dimensions (``reduction = "drop"``).

Fitting may use BLAS. Applying may not: its results would change in the last bits with
the batch. Every matrix product at apply time therefore goes through
:func:`streamnorm.kernel.exact_matmul`, neighbour searches through
:class:`streamnorm.neighbours.ExactTopK`, and means through the fixed tree of
:func:`streamnorm.kernel.tree_sum`, so each output row is a pure function of its input
row and the fitted arrays.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

import dask
import faiss
import numpy as np

from streamnorm.config import NormalizationParams
from streamnorm.encoding import extra_dims
from streamnorm.errors import ConfigError, InputError
from streamnorm.kernel import (
    _SCRATCH_BYTES,
    Float32Array,
    Float64Array,
    IndexArray,
    exact_matmul,
    l2_normalize,
    tree_sum,
)
from streamnorm.neighbours import ExactTopK
from streamnorm.progress import track
from streamnorm.schedulers import Runner, open_runner, resolve, task_threads

ReadTraining = Callable[[int, int], Float32Array]
"""``read_training(start, stop)``: L2-normalized float32 training rows ``start:stop``."""

FORMAT = "streamnorm-transforms/1"
# Training rows read (and transformed) at once while fitting.
BLOCK_ROWS = 65536
# Rows per exact_matmul call at apply time: bounds the float64 intermediates (8 MB at
# 256 columns) whatever the caller's block size.
_APPLY_ROWS = 4096
# Eigenvalues below this fraction of the largest are raised to it before whitening, so
# a (nearly) rank-deficient training set cannot blow noise directions up without bound.
_EIGEN_FLOOR = 1e-6
# Rows used to fit the dimension budget when earlier steps make transforming the whole
# training set expensive (NES searches every row); second moments of d <= a few
# thousand dimensions are well estimated from this many rows.
_BUDGET_FIT_ROWS = 2**18
_BUDGET_FIT_BLOCK = 2**14
# The parameters that define the fitted arrays; a saved chain must match them.
_CHAIN_PARAMS = (
    "whiten",
    "whiten_power",
    "nes",
    "nes_k",
    "nes_beta",
    "nes_iterations",
    "nes_alpha",
    "max_dim",
    "reduction",
)


class Step(Protocol):
    """One fitted transform of a :class:`TransformChain`."""

    name: ClassVar[str]

    @property
    def input_dim(self) -> int:
        """Dimension of the rows the step takes."""
        ...

    @property
    def output_dim(self) -> int:
        """Dimension of the rows the step returns."""
        ...

    def apply(self, x: Float32Array) -> Float32Array:
        """Transform unit rows into unit rows, each independently of the others."""
        ...

    def apply_training(self, x: Float32Array, rows: IndexArray) -> Float32Array:
        """Transform training rows ``rows`` as a vector outside the training set would be."""
        ...

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, as saved."""
        ...


# -- steps -----------------------------------------------------------------------------


def _project(x: Float32Array, matrix: Float32Array, offset: Float64Array | None) -> Float32Array:
    """``normalize(x @ matrix - offset)`` with the exact kernel, a few rows at a time."""
    out = np.empty((x.shape[0], matrix.shape[1]), dtype=np.float32)
    for start in range(0, x.shape[0], _APPLY_ROWS):
        stop = min(x.shape[0], start + _APPLY_ROWS)
        product = exact_matmul(x[start:stop], matrix)
        if offset is not None:
            product -= offset
        out[start:stop] = l2_normalize(product.astype(np.float32))
    return out


class Whitening:
    """PCA whitening: ``normalize((x - mean) @ projection)``.

    Parameters
    ----------
    mean : ndarray of float32, shape (d,)
        Training mean.
    projection : ndarray of float32, shape (d, d)
        Eigenvectors of the training covariance (columns, by decreasing eigenvalue),
        each scaled by its eigenvalue to the whitening power.
    """

    name: ClassVar[str] = "whiten"

    def __init__(self, mean: Float32Array, projection: Float32Array) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.projection = np.ascontiguousarray(projection, dtype=np.float32)
        # (x - mean) P = x P - mean P: the constant term once, with the same exact
        # kernel, so that x itself never needs rounding after centring.
        self._offset = exact_matmul(self.mean[None, :], self.projection)[0]

    @property
    def input_dim(self) -> int:
        """Dimension of the rows the step takes."""
        return int(self.projection.shape[0])

    @property
    def output_dim(self) -> int:
        """Dimension of the rows the step returns."""
        return int(self.projection.shape[1])

    def apply(self, x: Float32Array) -> Float32Array:
        """Whiten and L2-normalize rows."""
        return _project(x, self.projection, self._offset)

    def apply_training(self, x: Float32Array, rows: IndexArray) -> Float32Array:
        """Training rows are whitened like any other."""
        return self.apply(x)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, as saved."""
        return {"mean": self.mean, "projection": self.projection}


def _flat_index(vectors: Float32Array) -> tuple[faiss.IndexFlatIP, Float32Array]:
    """An exact inner-product index and a view of its vectors (one copy in memory)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    view = faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d)
    return index, view.reshape(index.ntotal, index.d)


def _neighbour_sums(
    vectors: Float32Array, found: IndexArray, weights: Float64Array | None = None
) -> Float64Array:
    """Sums of the (weighted) rows ``vectors[found[i]]``, in a fixed tree over ranks.

    Parameters
    ----------
    vectors : ndarray of float32, shape (n, d)
    found : ndarray of int64, shape (b, k)
    weights : ndarray of float64, shape (b, k), optional

    Returns
    -------
    ndarray of float64, shape (b, d)
    """
    rows, depth = found.shape
    dim = vectors.shape[1]
    sums = np.empty((rows, dim), dtype=np.float64)
    padded = 1 << max(depth - 1, 0).bit_length()
    step = max(1, _SCRATCH_BYTES // (8 * padded * max(dim, 1) * 2))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        gathered = vectors[found[start:stop]].astype(np.float64)
        if weights is not None:
            gathered *= weights[start:stop, :, None]
        # tree_sum adds over the last axis, so ranks go last.
        sums[start:stop] = tree_sum(gathered.transpose(0, 2, 1))
    return sums


def _without_own_row(found: IndexArray, own: IndexArray) -> IndexArray:
    """Drop each row's own training row from ``k + 1`` neighbours (else the last one)."""
    drop = found == own[:, None]
    missing = ~drop.any(axis=1)
    drop[missing, -1] = True
    return found[~drop].reshape(found.shape[0], found.shape[1] - 1)


class NegativeSubtraction:
    """Negative embedding subtraction against a fixed set of negatives.

    Parameters
    ----------
    negatives : ndarray of float32, shape (n, d)
        Unit-norm negatives, row ``i`` derived from training vector ``i``.
    k : int
        Neighbours averaged per iteration.
    beta : float
        Weight of the neighbour mean.
    iterations : int
        Number of subtractions.
    margin : int
        Extra faiss candidates of the exact search (speed only; no effect on results).
    """

    name: ClassVar[str] = "nes"

    def __init__(
        self, negatives: Float32Array, k: int, beta: float, iterations: int, margin: int = 8
    ) -> None:
        self.index, self.negatives = _flat_index(negatives)
        self.k = k
        self.beta = beta
        self.iterations = iterations
        self.margin = margin
        self.searcher = ExactTopK(self.negatives, self.index, margin=margin)

    def __reduce__(self) -> tuple[Any, ...]:
        # Sent to worker processes as its arrays; the index is rebuilt there (one copy).
        return (
            NegativeSubtraction,
            (self.negatives, self.k, self.beta, self.iterations, self.margin),
        )

    @property
    def input_dim(self) -> int:
        """Dimension of the rows the step takes."""
        return int(self.negatives.shape[1])

    @property
    def output_dim(self) -> int:
        """Dimension of the rows the step returns."""
        return self.input_dim

    def apply(self, x: Float32Array) -> Float32Array:
        """Subtract the neighbour mean and L2-normalize, ``iterations`` times."""
        for _ in range(self.iterations):
            x = self._subtract(x, self._neighbours(x, None))
        return x

    def apply_training(self, x: Float32Array, rows: IndexArray) -> Float32Array:
        """As :meth:`apply`, leaving each training vector's own negative out.

        A training vector stands for an unseen one; its own negative would otherwise be
        its nearest neighbour and make it subtract part of itself.
        """
        for _ in range(self.iterations):
            x = self._subtract(x, self._neighbours(x, rows))
        return x

    def _neighbours(self, x: Float32Array, own: IndexArray | None) -> IndexArray:
        if own is None:
            return self.searcher.search(x, self.k)[1]
        _, found = self.searcher.search(x, self.k + 1)
        return _without_own_row(found, own)

    def _subtract(self, x: Float32Array, found: IndexArray) -> Float32Array:
        mean = _neighbour_sums(self.negatives, found) / self.k
        shifted = np.asarray(x, dtype=np.float64) - self.beta * mean
        return l2_normalize(shifted.astype(np.float32))

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, as saved."""
        return {"negatives": self.negatives}


class Projection:
    """Dimension budget by a learned projection: ``normalize(x @ matrix)``.

    Parameters
    ----------
    matrix : ndarray of float32, shape (d, t)
        Orthonormal columns: the top ``t`` eigenvectors of the training second moments.
    """

    name: ClassVar[str] = "pca"

    def __init__(self, matrix: Float32Array) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32)

    @property
    def input_dim(self) -> int:
        """Dimension of the rows the step takes."""
        return int(self.matrix.shape[0])

    @property
    def output_dim(self) -> int:
        """Dimension of the rows the step returns."""
        return int(self.matrix.shape[1])

    def apply(self, x: Float32Array) -> Float32Array:
        """Project and L2-normalize rows."""
        return _project(x, self.matrix, None)

    def apply_training(self, x: Float32Array, rows: IndexArray) -> Float32Array:
        """Training rows are projected like any other."""
        return self.apply(x)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, as saved."""
        return {"matrix": self.matrix}


class DimensionDrop:
    """Dimension budget by dropping dimensions: ``normalize(x[:, keep])``.

    Parameters
    ----------
    keep : ndarray of int64, shape (t,)
        The dimensions kept, ascending.
    input_dim : int
    """

    name: ClassVar[str] = "drop"

    def __init__(self, keep: IndexArray, input_dim: int) -> None:
        self.keep = np.asarray(keep, dtype=np.int64)
        self._input_dim = input_dim

    @property
    def input_dim(self) -> int:
        """Dimension of the rows the step takes."""
        return self._input_dim

    @property
    def output_dim(self) -> int:
        """Dimension of the rows the step returns."""
        return int(self.keep.shape[0])

    def apply(self, x: Float32Array) -> Float32Array:
        """Keep the selected dimensions and L2-normalize rows."""
        return l2_normalize(x[:, self.keep])

    def apply_training(self, x: Float32Array, rows: IndexArray) -> Float32Array:
        """Training rows are reduced like any other."""
        return self.apply(x)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fitted arrays, as saved."""
        return {"keep": self.keep}


# -- the chain -------------------------------------------------------------------------


class TransformChain:
    """The fitted transforms, applied in order.

    Parameters
    ----------
    steps : list of Step
        Fitted steps; each one's input dimension is the previous one's output.
    input_dim : int
        Dimension of the raw descriptors.
    params : NormalizationParams, optional
        The parameters the steps were fitted with; recorded by :meth:`save` so that
        :meth:`load` can refuse a chain fitted with other ones.
    """

    def __init__(
        self, steps: list[Step], input_dim: int, params: NormalizationParams | None = None
    ) -> None:
        self.steps = list(steps)
        self.input_dim = input_dim
        self.params = params
        expected = input_dim
        for step in self.steps:
            if step.input_dim != expected:
                raise ValueError(f"step {step.name} takes {step.input_dim} dims, not {expected}")
            expected = step.output_dim

    @property
    def output_dim(self) -> int:
        """Dimension of the transformed rows."""
        return self.steps[-1].output_dim if self.steps else self.input_dim

    @property
    def is_identity(self) -> bool:
        """True when no step is enabled: :meth:`apply` returns its input untouched."""
        return not self.steps

    def then(self, step: Step) -> TransformChain:
        """A new chain with ``step`` appended."""
        return TransformChain([*self.steps, step], self.input_dim, self.params)

    def apply(self, x: Float32Array) -> Float32Array:
        """Transform rows; each output row depends only on its input row.

        Parameters
        ----------
        x : ndarray of float32, shape (b, input_dim)
            L2-normalized rows.

        Returns
        -------
        ndarray of float32, shape (b, output_dim)
            L2-normalized rows; ``x`` itself for an identity chain.
        """
        if self.is_identity:
            return x
        x = self._checked(x)
        for step in self.steps:
            x = step.apply(x)
        return x

    def apply_training(self, x: Float32Array, first_row: int) -> Float32Array:
        """Transform training rows ``first_row ...`` as unseen vectors would be.

        Only NES differs from :meth:`apply`: it leaves each row's own negative out.
        """
        if self.is_identity:
            return x
        x = self._checked(x)
        rows = np.arange(first_row, first_row + x.shape[0], dtype=np.int64)
        for step in self.steps:
            x = step.apply_training(x, rows)
        return x

    def _checked(self, x: Float32Array) -> Float32Array:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise InputError(
                f"vectors have shape {x.shape} but the transforms take {self.input_dim} dims"
            )
        return x

    # -- persistence -------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the chain to one ``.npz`` file (no suffix is added), atomically."""
        target = Path(path)
        meta = {
            "format": FORMAT,
            "input_dim": self.input_dim,
            "params": _chain_params(self.params) if self.params is not None else None,
            "steps": [
                {"name": s.name, "input_dim": s.input_dim, "output_dim": s.output_dim}
                for s in self.steps
            ],
        }
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
        for position, step in enumerate(self.steps):
            for key, value in step.arrays().items():
                arrays[f"{position}.{step.name}.{key}"] = value
        handle, staging = tempfile.mkstemp(prefix=".transforms-", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(stream, **arrays)
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path, params: NormalizationParams) -> TransformChain:
        """Read a chain written by :meth:`save`.

        Raises
        ------
        InputError
            When the file is missing, corrupt, or was fitted with other parameters.
        """
        meta, arrays = _read_npz(Path(path))
        recorded = meta.get("params")
        if recorded is not None and recorded != _chain_params(params):
            raise InputError(f"{path}: the transforms were fitted with other parameters")
        steps = []
        try:
            for position, spec in enumerate(meta["steps"]):
                prefix = f"{position}.{spec['name']}."
                own = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
                steps.append(_build_step(spec, own, params))
            chain = cls(steps, int(meta["input_dim"]), params)
        except (KeyError, ValueError, IndexError):
            raise InputError(f"{path}: corrupt transforms file") from None
        if [s.output_dim for s in steps] != [spec["output_dim"] for spec in meta["steps"]]:
            raise InputError(f"{path}: corrupt transforms file")
        return chain


def _chain_params(params: NormalizationParams) -> dict[str, Any]:
    values = {name: getattr(params, name) for name in _CHAIN_PARAMS}
    values["extra_dims"] = extra_dims(params)
    return values


def _read_npz(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta: dict[str, Any] = json.loads(str(arrays.pop("meta")))
    except FileNotFoundError:
        raise InputError(f"{path}: transforms file not found") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        raise InputError(f"{path}: corrupt transforms file") from None
    if meta.get("format") != FORMAT:
        raise InputError(f"{path}: unknown transforms format {meta.get('format')!r}")
    return meta, arrays


def _build_step(
    spec: dict[str, Any], arrays: dict[str, np.ndarray], params: NormalizationParams
) -> Step:
    name = spec["name"]
    if name == Whitening.name:
        return Whitening(arrays["mean"], arrays["projection"])
    if name == NegativeSubtraction.name:
        return NegativeSubtraction(
            arrays["negatives"],
            params.nes_k,
            params.nes_beta,
            params.nes_iterations,
            params.candidate_margin,
        )
    if name == Projection.name:
        return Projection(arrays["matrix"])
    if name == DimensionDrop.name:
        return DimensionDrop(arrays["keep"], int(spec["input_dim"]))
    raise ValueError(f"unknown step {name!r}")


# -- applying to the training set ------------------------------------------------------


def _ranges(n_rows: int, block_rows: int) -> list[tuple[int, int]]:
    return [(start, min(n_rows, start + block_rows)) for start in range(0, n_rows, block_rows)]


def _transformed(
    chain: TransformChain,
    read_training: ReadTraining,
    ranges: Iterable[tuple[int, int]],
    runner: Runner | None = None,
) -> Iterator[tuple[int, Float32Array]]:
    """Transformed training blocks, in order; as tasks on ``runner`` when NES makes it pay."""
    if runner is not None and not runner.in_process and _searches(chain):
        yield from _transformed_in_tasks(chain, read_training, ranges, runner)
        return
    for start, stop in ranges:
        block = np.ascontiguousarray(read_training(start, stop), dtype=np.float32)
        yield start, chain.apply_training(block, start)


def _searches(chain: TransformChain) -> bool:
    """Whether applying the chain searches the training set (the expensive part)."""
    return any(isinstance(step, NegativeSubtraction) for step in chain.steps)


def _apply_training_task(
    chain: Any, block: Float32Array, first_row: int, threads: int
) -> Float32Array:
    with task_threads(threads):
        result: Float32Array = resolve(chain).apply_training(block, first_row)
        return result


def _waves(ranges: Iterable[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    iterator = iter(ranges)
    while wave := list(itertools.islice(iterator, size)):
        yield wave


def _transformed_in_tasks(
    chain: TransformChain,
    read_training: ReadTraining,
    ranges: Iterable[tuple[int, int]],
    runner: Runner,
) -> Iterator[tuple[int, Float32Array]]:
    """As :func:`_transformed`, one task per block, a few waves of blocks at a time.

    The blocks are read here (the reader is the caller's) and transformed by the tasks;
    each row's result is a pure function of the row, so it is the same wherever it runs.
    Waves of twice the parallel tasks bound the blocks held at once.
    """
    shared = runner.share(chain)
    task = dask.delayed(_apply_training_task, pure=False)
    for wave in _waves(ranges, 2 * runner.parallel):
        tasks = [
            task(
                shared,
                runner.send(np.ascontiguousarray(read_training(start, stop), dtype=np.float32)),
                start,
                runner.task_threads,
            )
            for start, stop in wave
        ]
        blocks = runner.compute(tasks, "fit: transforming training blocks")
        yield from zip((start for start, _ in wave), blocks, strict=True)


def apply_to_training(
    chain: TransformChain,
    read_training: ReadTraining,
    n_train: int,
    block_rows: int | None = None,
    progress: bool = False,
    scheduler: str | Runner = "threads",
) -> Iterator[tuple[int, Float32Array]]:
    """The transformed training set, block by block.

    Training rows go through :meth:`TransformChain.apply_training`: like any vector,
    except that NES leaves each row's own negative out.

    Parameters
    ----------
    chain : TransformChain
    read_training : callable
        ``read_training(start, stop)`` returns L2-normalized float32 rows.
    n_train : int
        Number of training rows.
    block_rows : int, optional
        Rows read and transformed at once; :data:`BLOCK_ROWS` by default.
    progress : bool
        Show a progress bar.
    scheduler : str or Runner
        Where the blocks are transformed when the chain searches the training set (NES):
        ``threads`` (default) here, anything else as one task per block (see
        :mod:`streamnorm.schedulers`). The blocks are the same bit for bit.

    Yields
    ------
    start : int
        Row number of the block's first row.
    block : ndarray of float32, shape (rows, chain.output_dim)
    """
    ranges = track(
        _ranges(n_train, block_rows or BLOCK_ROWS), "fit: transforming training set", progress
    )
    with open_runner(scheduler) as runner:
        yield from _transformed(chain, read_training, ranges, runner)


# -- fitting ---------------------------------------------------------------------------


class _Moments:
    """First and second moments of rows, accumulated in float64 over blocks.

    Rows are shifted by the first block's mean before accumulating, which keeps the
    centred covariance accurate when the mean is large compared with the spread.
    """

    def __init__(self, dim: int) -> None:
        self.count = 0
        self.shift = np.zeros(dim)
        self.sum = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def add(self, block: Float32Array) -> None:
        values = np.asarray(block, dtype=np.float64)
        if self.count == 0:
            self.shift = values.mean(axis=0)
        centred = values - self.shift
        self.count += values.shape[0]
        self.sum += centred.sum(axis=0)
        self.outer += centred.T @ centred

    @property
    def mean(self) -> Float64Array:
        return self.shift + self.sum / self.count

    def covariance(self) -> Float64Array:
        """Unbiased covariance (divides by ``count - 1``, as ``np.cov``)."""
        offset = self.sum / self.count
        scatter = self.outer - self.count * np.outer(offset, offset)
        return scatter / max(self.count - 1, 1)

    def second_moment(self) -> Float64Array:
        """Uncentred ``E[x x^T]``: the population covariance plus the mean's outer product."""
        population = self.covariance() * (max(self.count - 1, 1) / self.count)
        return population + np.outer(self.mean, self.mean)


def principal_axes(matrix: Float64Array) -> tuple[Float64Array, Float64Array]:
    """Eigenvalues (descending) and eigenvectors (columns) of a symmetric matrix.

    The sign of each eigenvector is fixed: its largest-magnitude component (the first
    one among equals) is positive, so a refit gives the same axes, not their mirror.
    """
    values, vectors = np.linalg.eigh(matrix)
    order = np.argsort(-values, kind="stable")
    values, vectors = values[order], vectors[:, order]
    leading = vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])]
    vectors = vectors * np.where(leading < 0, -1.0, 1.0)
    return values, vectors


def budget_dim(params: NormalizationParams, dim: int) -> int | None:
    """The reduced vector dimension the budget asks for, or None when it fits.

    Raises
    ------
    ConfigError
        When ``max_dim`` leaves no room for the vector next to the extra dimensions.
    """
    if params.max_dim is None:
        return None
    extra = extra_dims(params)
    if params.max_dim < extra + 1:
        raise ConfigError(
            f"max_dim={params.max_dim} is too small: the encoding appends {extra} "
            f"dimension(s), so max_dim must be at least {extra + 1}"
        )
    target = params.max_dim - extra
    return target if dim > target else None


def _check_training_size(params: NormalizationParams, n_train: int) -> None:
    if params.whiten and n_train < 2:
        raise ConfigError(f"whitening needs at least 2 training vectors, got {n_train}")
    if params.nes and params.nes_k + 1 > n_train:
        raise ConfigError(
            f"nes_k={params.nes_k} needs at least {params.nes_k + 1} training vectors, "
            f"got {n_train}"
        )


def _fit_whitening(
    params: NormalizationParams,
    read_training: ReadTraining,
    n_train: int,
    dim: int,
    progress: bool,
) -> Whitening:
    moments = _Moments(dim)
    ranges = _ranges(n_train, BLOCK_ROWS)
    for start, stop in track(ranges, "fit: whitening", enabled=progress):
        moments.add(read_training(start, stop))
    values, vectors = principal_axes(moments.covariance())
    if not values[0] > 0:
        raise InputError("the training vectors do not vary: whitening is undefined")
    scale = np.maximum(values, values[0] * _EIGEN_FLOOR) ** params.whiten_power
    return Whitening(moments.mean.astype(np.float32), (vectors * scale).astype(np.float32))


def _augment_negatives(
    negatives: Float32Array, k: int, alpha: float, margin: int, progress: bool, runner: Runner
) -> Float32Array:
    """Replace each negative by the normalized sum of its k nearest negatives (itself
    included), weighted by similarity to the power ``alpha``, negatives clipped to 0.
    """
    # The index holds the negatives; searching them is searching it against itself.
    nes = NegativeSubtraction(negatives, k, 0.0, 1, margin)
    augmented = np.empty_like(nes.negatives)
    ranges = _ranges(nes.negatives.shape[0], BLOCK_ROWS)
    if runner.in_process:
        for start, stop in track(ranges, "fit: augmenting negatives", enabled=progress):
            augmented[start:stop] = _augmented_rows(nes, start, stop, alpha)
        return augmented
    shared = runner.share(nes)
    task = dask.delayed(_augment_task, pure=False)
    blocks = runner.compute(
        [task(shared, start, stop, alpha, runner.task_threads) for start, stop in ranges],
        "fit: augmenting negatives",
        progress,
    )
    for (start, stop), block in zip(ranges, blocks, strict=True):
        augmented[start:stop] = block
    return augmented


def _augmented_rows(nes: NegativeSubtraction, start: int, stop: int, alpha: float) -> Float32Array:
    scores, found = nes.searcher.search(nes.negatives[start:stop], nes.k)
    weights = np.maximum(scores, 0.0) ** alpha
    return l2_normalize(_neighbour_sums(nes.negatives, found, weights).astype(np.float32))


def _augment_task(nes: Any, start: int, stop: int, alpha: float, threads: int) -> Float32Array:
    with task_threads(threads):
        return _augmented_rows(resolve(nes), start, stop, alpha)


def _fit_nes(
    params: NormalizationParams,
    chain: TransformChain,
    read_training: ReadTraining,
    n_train: int,
    progress: bool,
    runner: Runner,
) -> NegativeSubtraction:
    negatives = np.empty((n_train, chain.output_dim), dtype=np.float32)
    for start, block in apply_to_training(chain, read_training, n_train, progress=progress):
        negatives[start : start + block.shape[0]] = block
    if params.nes_alpha is not None:
        negatives = _augment_negatives(
            negatives, params.nes_k, params.nes_alpha, params.candidate_margin, progress, runner
        )
    return NegativeSubtraction(
        negatives, params.nes_k, params.nes_beta, params.nes_iterations, params.candidate_margin
    )


def _budget_ranges(n_train: int, limit: int) -> list[tuple[int, int]]:
    """All rows up to ``limit``; beyond, evenly spread blocks totalling about ``limit``."""
    if n_train <= limit:
        return _ranges(n_train, BLOCK_ROWS)
    count = max(1, limit // _BUDGET_FIT_BLOCK)
    starts = np.linspace(0, n_train - _BUDGET_FIT_BLOCK, count).astype(np.int64)
    return [(int(s), int(s) + _BUDGET_FIT_BLOCK) for s in np.unique(starts)]


def _fit_budget(
    params: NormalizationParams,
    chain: TransformChain,
    read_training: ReadTraining,
    n_train: int,
    target: int,
    progress: bool,
    runner: Runner,
) -> Step:
    dim = chain.output_dim
    moments = _Moments(dim)
    # Transforming through NES searches every row, so only a sample is worth it then.
    limit = n_train if chain.is_identity else _BUDGET_FIT_ROWS
    ranges = track(_budget_ranges(n_train, limit), "fit: dimension budget", enabled=progress)
    # Blocks come back in order, so the float64 moments add up the same way.
    for _, block in _transformed(chain, read_training, ranges, runner):
        moments.add(block)
    if params.reduction == "drop":
        variance = np.diag(moments.covariance())
        dropped = np.argsort(variance, kind="stable")[: dim - target]
        return DimensionDrop(np.setdiff1d(np.arange(dim), dropped), dim)
    # An uncentred projection onto the top axes of E[x x^T]: the rank-t subspace that
    # keeps the most of the training vectors, so inner products change least.
    # Centring would shift every similarity; that is the whitening step's job.
    _, vectors = principal_axes(moments.second_moment())
    return Projection(vectors[:, :target].astype(np.float32))


def fit_chain(
    params: NormalizationParams,
    read_training: ReadTraining,
    n_train: int,
    dim: int,
    progress: bool = False,
    scheduler: str | Runner = "threads",
) -> TransformChain:
    """Fit the enabled transforms on the training set, reading it block by block.

    Parameters
    ----------
    params : NormalizationParams
    read_training : callable
        ``read_training(start, stop)`` returns L2-normalized float32 rows. It is called
        with at most :data:`BLOCK_ROWS` rows at a time.
    n_train : int
        Number of training rows.
    dim : int
        Dimension of the training rows.
    progress : bool
        Show progress bars.
    scheduler : str or Runner
        Where the training-set searches of NES run: ``threads`` (default) here, anything
        else as tasks (see :mod:`streamnorm.schedulers`). The chain is the same bit for bit.

    Returns
    -------
    TransformChain
        Empty (the identity) when no transform is enabled.

    Raises
    ------
    ConfigError
        When ``max_dim`` is too small, or the training set too small for the steps.
    InputError
        When whitening is asked for on a training set without variance.
    """
    target = budget_dim(params, dim)
    _check_training_size(params, n_train)
    chain = TransformChain([], dim, params)
    with open_runner(scheduler) as runner:
        if params.whiten:
            chain = chain.then(_fit_whitening(params, read_training, n_train, dim, progress))
        if params.nes:
            chain = chain.then(_fit_nes(params, chain, read_training, n_train, progress, runner))
        if target is not None:
            budget = _fit_budget(params, chain, read_training, n_train, target, progress, runner)
            chain = chain.then(budget)
    return chain
