"""Synthetic DISC21-shaped descriptor sets on which score normalization matters.

The data imitate the property that makes query-side normalization useful on real
copy-detection benchmarks: raw similarity levels depend strongly on the region of
descriptor space.  Vectors are drawn from a mixture of clusters of very different
tightness.  In a *dense* cluster (think textures, screenshots, text on plain
backgrounds) every vector scores high against every other one, so distractor
queries there produce confident false matches; in a *diffuse* cluster even a
genuine but heavily edited copy scores modestly.  A single global threshold on raw
inner products therefore mixes the two, while subtracting a per-query density
estimate (the similarity to the n-th nearest training vector) separates them.

Three splits are produced: ``"train"`` (an independent "rest of the world"
sample), ``"refs"`` and ``"queries"``.  A fraction of the queries are transformed
copies of references; the others are distractors transformed in the same way from
fresh draws of the mixture, so the transformation itself does not betray which
queries are copies.

Every row is a pure function of ``(spec, split, row index)``.  Random numbers come
from a counter-based generator (the SplitMix64 output mix applied to a
per-stream key plus a multiple of the element index), and every floating-point
step is either element-wise IEEE arithmetic (exactly rounded, hence identical in
SIMD and scalar code paths) or a reduction with a fixed summation tree.  Transcendental functions,
whose vectorised implementations may round differently depending on an element's
position in the array, are deliberately avoided on the per-row path.  As a result
any range of any split can be generated on its own and agrees bit for bit with the
same rows taken from a larger range, so splits with millions of rows can be
streamed chunk by chunk; and a query that copies reference ``r`` can compute that
reference row directly instead of generating its whole neighbourhood.  (The small
per-spec tables, cluster centres and weights, come from NumPy's ``Generator``; the
output is therefore reproducible for a given NumPy version and platform.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from streamnorm.errors import ConfigError

__all__ = ["Split", "SynthSpec", "generate_split", "ground_truth", "split_size"]

Split = Literal["train", "refs", "queries"]

# Stable integer codes so that the random streams of one split never depend on the
# order in which splits or rows are requested.
_SPLIT_CODES: dict[str, int] = {"train": 1, "refs": 2, "queries": 3}
_ID_PREFIX: dict[str, str] = {"train": "T", "refs": "R", "queries": "Q"}
_ID_MIN_WIDTH: dict[str, int] = {"train": 6, "refs": 6, "queries": 5}

# Seed-sequence domains for randomness that is not tied to a split.
_MIXTURE_DOMAIN = 101
_ASSIGN_DOMAIN = 102

# Lanes: independent random streams within one split.
_LANE_CLUSTER = 1
_LANE_SHAPE = 2
_LANE_NOISE = 3
_LANE_NOISE_LEVEL = 4
_LANE_EDIT = 5
_LANE_EDIT_LEVEL = 6

# Rows are produced in batches aligned to this block size.  Correctness does not
# depend on it (rows are pure functions of their index); it only bounds the size
# of temporaries when a large range is requested at once.
_BLOCK_ROWS = 4096

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MASK16 = np.uint64(0xFFFF)


@dataclass(frozen=True)
class SynthSpec:
    """Parameters of a synthetic copy-detection data set.

    Parameters
    ----------
    n_queries : int
        Number of query vectors.
    n_refs : int
        Number of reference vectors.
    n_train : int
        Number of training vectors (disjoint sample of the same mixture).
    dim : int
        Descriptor dimension, at least 8.
    positives : float
        Fraction of queries that are copies of a reference.  The number of copies
        is ``round(positives * n_queries)`` (Python rounding, half to even); each
        copied reference is used by exactly one query.
    seed : int
        Master seed; every random choice derives from it.
    n_clusters : int
        Number of mixture components.
    dense_fraction : float
        Fraction of the components that are dense (tight).  At least one dense
        and one diffuse component exist when ``0 < dense_fraction < 1``.
    dense_tightness : tuple of float
        Range ``(low, high)`` of the tightness of dense components.  Tightness is
        the share of a vector's energy that lies along its cluster centre, i.e.
        the typical inner product of two members of the same component.
    diffuse_tightness : tuple of float
        Range ``(low, high)`` of the tightness of diffuse components.
    size_shape : float
        Gamma shape parameter of the component weights; smaller values make
        component sizes more unequal.
    copy_noise : tuple of float
        Range ``(low, high)`` of the per-query noise level, drawn uniformly.  The
        noise is isotropic with the given norm relative to the unit source, so a
        copy keeps an inner product of about ``1 / sqrt(1 + level**2)`` with its
        reference.  Distractor queries receive the same transformation.
    n_edits : int
        Number of global "edit" directions (overlays, crops, filters) shared by
        all queries; each query receives one of them.
    edit_strength : float
        Maximum norm of the edit component; each query's strength is uniform in
        ``[0, edit_strength]``.
    """

    n_queries: int = 5_000
    n_refs: int = 50_000
    n_train: int = 50_000
    dim: int = 128
    positives: float = 0.5
    seed: int = 0
    n_clusters: int = 100
    dense_fraction: float = 0.4
    dense_tightness: tuple[float, float] = (0.7, 0.92)
    diffuse_tightness: tuple[float, float] = (0.0, 0.3)
    size_shape: float = 2.0
    copy_noise: tuple[float, float] = (0.3, 1.8)
    n_edits: int = 8
    edit_strength: float = 0.3

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def n_copies(self) -> int:
        """Number of queries that copy a reference."""
        return round(self.positives * self.n_queries)


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _validate(spec: SynthSpec) -> None:
    """Raise ConfigError naming the first invalid field of ``spec``."""
    for name in ("n_queries", "n_refs", "n_train", "n_clusters"):
        value = getattr(spec, name)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"synthetic spec: {name} must be a positive integer, got {value!r}")
    if not _is_int(spec.dim) or spec.dim < 8:
        raise ConfigError(f"synthetic spec: dim must be an integer >= 8, got {spec.dim!r}")
    if not _is_int(spec.seed) or spec.seed < 0:
        raise ConfigError(f"synthetic spec: seed must be a non-negative integer, got {spec.seed!r}")
    if not _is_int(spec.n_edits) or spec.n_edits < 0:
        raise ConfigError(
            f"synthetic spec: n_edits must be a non-negative integer, got {spec.n_edits!r}"
        )
    for name in ("positives", "dense_fraction"):
        value = getattr(spec, name)
        if not _is_real(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"synthetic spec: {name} must be in [0, 1], got {value!r}")
    for name in ("dense_tightness", "diffuse_tightness"):
        low, high = _range_field(spec, name)
        if not 0.0 <= low <= high < 1.0:
            raise ConfigError(
                f"synthetic spec: {name} must satisfy 0 <= low <= high < 1, got {(low, high)!r}"
            )
    low, high = _range_field(spec, "copy_noise")
    if not 0.0 <= low <= high:
        raise ConfigError(
            f"synthetic spec: copy_noise must satisfy 0 <= low <= high, got {(low, high)!r}"
        )
    for name in ("size_shape", "edit_strength"):
        value = getattr(spec, name)
        if not _is_real(value) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"synthetic spec: {name} must be a finite number >= 0, got {value!r}")
    if spec.size_shape <= 0:
        raise ConfigError(f"synthetic spec: size_shape must be > 0, got {spec.size_shape!r}")
    if spec.n_copies > spec.n_refs:
        raise ConfigError(
            f"synthetic spec: positives * n_queries ({spec.n_copies}) exceeds n_refs "
            f"({spec.n_refs}); each copy needs its own reference"
        )


def _range_field(spec: SynthSpec, name: str) -> tuple[float, float]:
    value = getattr(spec, name)
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and all(_is_real(v) and math.isfinite(v) for v in value)
    )
    if not ok:
        raise ConfigError(f"synthetic spec: {name} must be a pair of finite numbers, got {value!r}")
    return float(value[0]), float(value[1])


def split_size(spec: SynthSpec, split: Split) -> int:
    """Number of rows of ``split`` under ``spec``.

    Parameters
    ----------
    spec : SynthSpec
        Data-set parameters.
    split : {"train", "refs", "queries"}
        Which split.

    Returns
    -------
    int
        Row count of the split.
    """
    _check_split(split)
    return {"train": spec.n_train, "refs": spec.n_refs, "queries": spec.n_queries}[split]


def _check_split(split: str) -> None:
    if split not in _SPLIT_CODES:
        raise ConfigError(f"split must be one of train, refs, queries; got {split!r}")


# --------------------------------------------------------------------------------------
# Counter-based random numbers


def _stream_key(seed: int, split: str, lane: int) -> np.uint64:
    """A well-mixed 64-bit key for one random stream."""
    state = np.random.SeedSequence([seed, _SPLIT_CODES[split], lane]).generate_state(1, np.uint64)
    return np.uint64(state[0])


def _hash_bits(key: np.uint64, rows: NDArray[np.int64], width: int) -> NDArray[np.uint64]:
    """``width`` pseudo-random 64-bit words per row, a pure function of (key, row, column).

    This is SplitMix64 evaluated at counter ``row * width + column``: the state
    increment and output mix of that generator applied directly to the counter,
    which lets any element be computed without generating its predecessors.
    """
    counters = np.add.outer(
        rows.astype(np.uint64) * np.uint64(width), np.arange(width, dtype=np.uint64)
    )
    # uint64 arithmetic wraps modulo 2**64, which is exactly what the mix relies on.
    z: NDArray[np.uint64] = np.multiply(counters, _GOLDEN, dtype=np.uint64)
    z += key
    z ^= z >> np.uint64(30)
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _uniform(key: np.uint64, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """One uniform number in [0, 1) per row (53-bit resolution)."""
    bits = _hash_bits(key, rows, 1)[:, 0]
    return (bits >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def _gaussian(key: np.uint64, rows: NDArray[np.int64], width: int) -> NDArray[np.float64]:
    """Approximately standard normal values, ``width`` per row.

    Each value is the centred sum of the four 16-bit fields of one 64-bit word
    (an Irwin-Hall variate), scaled to unit variance.  Only integer arithmetic and
    one exact conversion are involved, so the result is bit-reproducible on any
    code path; the bounded tails (|x| < 3.5) are irrelevant for directions in
    high dimension, where only the first two moments matter.
    """
    bits = _hash_bits(key, rows, width)
    total = bits & _MASK16
    for shift in (16, 32, 48):
        total += (bits >> np.uint64(shift)) & _MASK16
    # Each field is uniform on {0, ..., 65535}: mean 32767.5, variance (65536**2 - 1) / 12.
    centred = total.astype(np.float64) - 4 * 32767.5
    return centred * (1.0 / math.sqrt(4 * (65536.0**2 - 1) / 12))


def _normalize_rows(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Scale rows to unit L2 norm with a summation order that never depends on the batch.

    The squared norm is summed by repeatedly folding the columns in half, a fixed
    binary tree made of element-wise additions, so a row's result is the same
    whatever other rows share the array.
    """
    sq = x * x
    width = sq.shape[1]
    padded = 1 << (width - 1).bit_length()
    if padded != width:
        sq = np.concatenate([sq, np.zeros((sq.shape[0], padded - width))], axis=1)
    while sq.shape[1] > 1:
        half = sq.shape[1] // 2
        sq = sq[:, :half] + sq[:, half:]
    norms = np.sqrt(sq[:, 0])
    out: NDArray[np.float64] = x / norms[:, None]
    return out


# --------------------------------------------------------------------------------------
# Mixture and copy assignment (small, derived once per spec)


@dataclass(frozen=True)
class _Mixture:
    centres: NDArray[np.float64]  # [n_clusters, dim], unit rows
    along: NDArray[np.float64]  # sqrt(tightness) per cluster
    across: NDArray[np.float64]  # sqrt(1 - tightness) per cluster
    cum_weights: NDArray[np.float64]  # cumulative cluster probabilities, last == 1
    edits: NDArray[np.float64]  # [max(n_edits, 1), dim], unit rows


@lru_cache(maxsize=8)
def _mixture(spec: SynthSpec) -> _Mixture:
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _MIXTURE_DOMAIN]))
    k, d = spec.n_clusters, spec.dim
    centres = _normalize_rows(rng.standard_normal((k, d)))
    n_dense = round(spec.dense_fraction * k)
    # Keep both kinds present when the fraction asks for a mixture, so that small
    # cluster counts do not silently remove the effect the generator exists for.
    if 0.0 < spec.dense_fraction < 1.0 and k >= 2:
        n_dense = min(max(n_dense, 1), k - 1)
    tight = np.concatenate(
        [
            rng.uniform(*spec.dense_tightness, size=n_dense),
            rng.uniform(*spec.diffuse_tightness, size=k - n_dense),
        ]
    )
    weights = rng.gamma(spec.size_shape, size=k)
    cum = np.cumsum(weights / weights.sum())
    cum[-1] = 1.0
    edits = _normalize_rows(rng.standard_normal((max(spec.n_edits, 1), d)))
    return _Mixture(
        centres=centres,
        along=np.sqrt(tight),
        across=np.sqrt(1.0 - tight),
        cum_weights=cum,
        edits=edits,
    )


@lru_cache(maxsize=8)
def _copy_sources(spec: SynthSpec) -> NDArray[np.int64]:
    """Reference row copied by each query, or -1 for distractors (read-only)."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _ASSIGN_DOMAIN]))
    n = spec.n_copies
    copy_queries = rng.permutation(spec.n_queries)[:n]
    sources = rng.choice(spec.n_refs, size=n, replace=False)
    out = np.full(spec.n_queries, -1, dtype=np.int64)
    out[copy_queries] = sources
    out.flags.writeable = False
    return out


def _mixture_rows(spec: SynthSpec, split: str, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Unit vectors drawn from the mixture for the given rows of a split's base stream."""
    mix = _mixture(spec)
    u = _uniform(_stream_key(spec.seed, split, _LANE_CLUSTER), rows)
    cluster = np.minimum(np.searchsorted(mix.cum_weights, u, side="right"), spec.n_clusters - 1)
    # Unit-variance coordinates divided by sqrt(dim) give an (almost) unit vector,
    # so the tightness is the expected same-cluster inner product.
    shape = _gaussian(_stream_key(spec.seed, split, _LANE_SHAPE), rows, spec.dim)
    shape *= 1.0 / math.sqrt(spec.dim)
    x = mix.centres[cluster] * mix.along[cluster, None] + shape * mix.across[cluster, None]
    return _normalize_rows(x)


def _query_rows(spec: SynthSpec, rows: NDArray[np.int64]) -> NDArray[np.float64]:
    """Transformed queries: a reference (copies) or a fresh mixture draw, plus noise and edit."""
    mix = _mixture(spec)
    sources = _copy_sources(spec)[rows]
    is_copy = sources >= 0
    base = np.empty((rows.size, spec.dim))
    if is_copy.any():
        base[is_copy] = _mixture_rows(spec, "refs", sources[is_copy])
    if not is_copy.all():
        base[~is_copy] = _mixture_rows(spec, "queries", rows[~is_copy])

    low, high = spec.copy_noise
    level = low + (high - low) * _uniform(
        _stream_key(spec.seed, "queries", _LANE_NOISE_LEVEL), rows
    )
    noise = _gaussian(_stream_key(spec.seed, "queries", _LANE_NOISE), rows, spec.dim)
    noise *= (level / math.sqrt(spec.dim))[:, None]
    x = base + noise
    if spec.n_edits > 0 and spec.edit_strength > 0:
        pick = _uniform(_stream_key(spec.seed, "queries", _LANE_EDIT), rows)
        which = np.minimum((pick * spec.n_edits).astype(np.int64), spec.n_edits - 1)
        strength = spec.edit_strength * _uniform(
            _stream_key(spec.seed, "queries", _LANE_EDIT_LEVEL), rows
        )
        x += mix.edits[which] * strength[:, None]
    return _normalize_rows(x)


# --------------------------------------------------------------------------------------
# Public API


def _id_format(split: str, size: int) -> str:
    """Format string for a split's ids: fixed prefix, index padded to fit the largest one."""
    width = max(_ID_MIN_WIDTH[split], len(str(size - 1)))
    return _ID_PREFIX[split] + "{:0" + str(width) + "d}"


def _ids(split: str, size: int, start: int, stop: int) -> list[str]:
    fmt = _id_format(split, size)
    return [fmt.format(i) for i in range(start, stop)]


def generate_split(
    spec: SynthSpec, split: Split, start: int, stop: int
) -> tuple[NDArray[np.float32], list[str]]:
    """Rows [start, stop) of a split: float32 [stop-start, dim] L2-normalised vectors and their ids.

    Parameters
    ----------
    spec : SynthSpec
        Data-set parameters.
    split : {"train", "refs", "queries"}
        Which split to generate.
    start, stop : int
        Half-open row range, ``0 <= start <= stop <= split_size(spec, split)``.

    Returns
    -------
    vectors : numpy.ndarray
        C-contiguous float32 array of shape ``(stop - start, spec.dim)`` with unit rows.
    ids : list of str
        Row identifiers: ``T``/``R``/``Q`` followed by the zero-padded row index
        (at least 6 digits for train and refs, 5 for queries).

    Raises
    ------
    ConfigError
        If the split name or the range is invalid.

    Notes
    -----
    The output is a deterministic function of ``spec``, ``split`` and the row
    indices only: any partition of a range into consecutive pieces yields, once
    concatenated, exactly the same bytes as the whole range.
    """
    _check_split(split)
    size = split_size(spec, split)
    if not (_is_int(start) and _is_int(stop)) or not 0 <= start <= stop <= size:
        raise ConfigError(f"{split} rows [{start}, {stop}) out of range; the split has {size} rows")
    start, stop = int(start), int(stop)
    out = np.empty((stop - start, spec.dim), dtype=np.float32)
    # Batches follow the fixed block grid so that temporaries stay bounded.
    pos = start
    while pos < stop:
        end = min(stop, (pos // _BLOCK_ROWS + 1) * _BLOCK_ROWS)
        rows = np.arange(pos, end, dtype=np.int64)
        out[pos - start : end - start] = (
            _query_rows(spec, rows) if split == "queries" else _mixture_rows(spec, split, rows)
        )
        pos = end
    return out, _ids(split, size, start, stop)


def ground_truth(spec: SynthSpec) -> list[tuple[str, str | None]]:
    """One entry per query: (query_id, reference_id) for copies, (query_id, None) for distractors.

    Parameters
    ----------
    spec : SynthSpec
        Data-set parameters.

    Returns
    -------
    list of tuple
        In query order; ids match those returned by :func:`generate_split`.
    """
    qids = _ids("queries", spec.n_queries, 0, spec.n_queries)
    ref_fmt = _id_format("refs", spec.n_refs)
    sources = _copy_sources(spec).tolist()
    return [
        (qid, ref_fmt.format(src) if src >= 0 else None)
        for qid, src in zip(qids, sources, strict=True)
    ]
