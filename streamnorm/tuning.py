"""Choosing normalization parameters on a validation ground truth.

A grid over the statistic, its depth, the factors and the normalized side is scored by
track-1 micro-AP. Refitting and renormalizing per grid point would repeat the expensive
part, the search of the training set, for every point. Instead the training search is
done once: one model is fitted, and queries and references get their exact top-``depth``
training similarities for the deepest statistic of the grid. Every grid point then
derives ``b(x)`` from those similarities (:func:`streamnorm.statistics.background`) and
matches in memory.

Matching reproduces :func:`streamnorm.matching.match` exactly, not approximately. The
score of a pair is the exact inner product of the same inner-product encodings the
matcher uses, and the selection is the same ``(score desc, reference id asc)`` top-k
per query followed by the same global top N. The per-query search is shared between
grid points wherever the ranking allows it:

* ``s'(q, r) = <q, r> - beta_q b(q) - beta_r b(r)``. The query term is a constant per
  query, so the per-query ranking depends only on the reference term. Grid points with
  the same reference term (none, for query-side points) share one exact candidate
  search of ``k + margin`` references per query.
* Each point rescores its candidates with its own encoding and selects the top k. A
  rounding-error bound proves per query that no reference outside the candidates could
  have entered the top k; a query without that proof is searched again exactly.

With another scheduler than ``threads`` (see :mod:`streamnorm.schedulers`) the grid
points run as dask tasks, one per group of points sharing a candidate search (split
further when there are fewer groups than parallel tasks). Every point's pairs are exact,
so the table is the same wherever they were computed.
"""

from __future__ import annotations

import itertools
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import faiss
import numpy as np
from rich.table import Table

from streamnorm.atomic import atomic_output
from streamnorm.config import DEFAULT_PRESET, NormalizationParams, build_params, params_from_dict
from streamnorm.encoding import Role, encode
from streamnorm.errors import ConfigError, InputError
from streamnorm.groundtruth import GroundTruth, Predictions, read_ground_truth
from streamnorm.kernel import Float32Array, Float64Array, IndexArray, candidate_scores
from streamnorm.matching import id_ranks
from streamnorm.metrics import Evaluation, evaluate
from streamnorm.model import Normalizer
from streamnorm.neighbours import ExactTopK
from streamnorm.progress import track
from streamnorm.schedulers import Runner, open_runner, resolve, task_threads
from streamnorm.sources import DescriptorSource, open_source
from streamnorm.statistics import background

__all__ = [
    "DEFAULT_GRID",
    "GRID_KEYS",
    "Pairs",
    "SharedSearch",
    "TuneResult",
    "TuneRow",
    "check_grid",
    "grid_points",
    "read_grid",
    "result_table",
    "tune",
    "write_config",
]

GRID_KEYS = ("statistic", "n", "slice_start", "slice_stop", "side", "beta", "beta_reference")
"""Parameters a grid may vary; everything else comes from the base parameters."""

DEFAULT_GRID: dict[str, list[Any]] = {
    "statistic": ["nth", "mean", "top1", "slice"],
    "n": [5, 10, 20],
    "slice_start": [0],
    "slice_stop": [2],
    "beta": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5],
    "side": ["query", "both"],
    # Few reference factors: each needs its own search, while query factors share one.
    "beta_reference": [0.5, 1.0],
}
"""The published settings (ISC21, D2LV, SSCD, VSC22) and their neighbourhood."""

DEFAULT_K = 10
DEFAULT_MAX_RESULTS = 500_000
# Extra candidates per query beyond k; only near-ties at the k-th place need them.
CANDIDATE_MARGIN = 8
_QUERY_BLOCK_ROWS = 16384
_REFERENCE_BLOCK_ROWS = 65536
_INPUT_BLOCK_ROWS = 16384
# Relative rounding allowance of one float64 pairwise-tree score (at most 256 terms
# give about 1e-15); the margin makes the certificate safe, not tight.
_SCORE_TOLERANCE = 1e-12


# -- the grid ----------------------------------------------------------------------------
def read_grid(path: str | Path) -> dict[str, list[Any]]:
    """Read a grid TOML file: each key a parameter, each value a list of settings.

    Raises
    ------
    ConfigError
        If the file is missing or not TOML, or a key or value is invalid.
    """
    location = Path(path)
    try:
        with location.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{location}: grid file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{location}: not valid TOML: {error}") from None
    try:
        return check_grid(raw)
    except ConfigError as error:
        raise ConfigError(f"{location}: {error}") from None


def check_grid(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    """Validate grid keys and turn scalar values into one-element lists.

    Raises
    ------
    ConfigError
        For an unknown key or an empty list; the message names the key.
    """
    checked: dict[str, list[Any]] = {}
    for key, value in grid.items():
        if key not in GRID_KEYS:
            raise ConfigError(f"unknown grid key {key!r}; allowed: {', '.join(GRID_KEYS)}")
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values:
            raise ConfigError(f"grid key {key!r}: empty list")
        checked[key] = values
    return checked


def _canonical(values: dict[str, Any], base: NormalizationParams) -> dict[str, Any]:
    """Reset the settings a point does not use, so equivalent points compare equal."""
    values = dict(values)
    if values["statistic"] not in ("nth", "mean"):
        values["n"] = base.n
    if values["statistic"] != "slice":
        values["slice_start"], values["slice_stop"] = base.slice_start, base.slice_stop
    if values["side"] == "both":
        # An explicit factor keeps the point exact when written over any preset.
        if values["beta_reference"] is None:
            values["beta_reference"] = values["beta"]
    else:
        values["beta_reference"] = None
    return values


def _check_values(grid: dict[str, list[Any]], base: NormalizationParams) -> None:
    """Validate every value on its own, so an error names its key."""
    for key, values in grid.items():
        for value in values:
            try:
                params_from_dict({**base.model_dump(), key: value})
            except ConfigError as error:
                raise ConfigError(f"grid: {error}") from None


def grid_points(
    grid: Mapping[str, Any] | None, base: NormalizationParams
) -> list[NormalizationParams]:
    """The distinct parameter sets of a grid, in grid order.

    Parameters
    ----------
    grid : mapping, optional
        Parameter name to list of values (:data:`DEFAULT_GRID` when omitted). Keys not
        in the grid keep their value from ``base``.
    base : NormalizationParams
        Supplies every other parameter, including the learned transforms.

    Returns
    -------
    list of NormalizationParams
        Combinations that leave a setting unused (``n`` for ``top1``, say) are merged;
        slices with ``slice_stop < slice_start`` are skipped.

    Raises
    ------
    ConfigError
        For an invalid key or value, or a grid without any valid point.
    """
    checked = check_grid(DEFAULT_GRID if grid is None else grid)
    _check_values(checked, base)
    keys = list(checked)
    points: dict[NormalizationParams, None] = {}
    for combination in itertools.product(*(checked[key] for key in keys)):
        values = _canonical(
            {**base.model_dump(), **dict(zip(keys, combination, strict=True))}, base
        )
        if values["statistic"] == "slice" and values["slice_stop"] < values["slice_start"]:
            continue
        points.setdefault(params_from_dict(values), None)
    if not points:
        raise ConfigError("the grid has no valid point (every slice ends before it starts)")
    return list(points)


# -- per-vector data, computed once ------------------------------------------------------
@dataclass
class Pairs:
    """Predicted pairs as row numbers into the queries and references, best first."""

    query_rows: IndexArray
    reference_rows: IndexArray
    scores: Float64Array


@dataclass
class _Side:
    """One side's transformed vectors and exact top training similarities."""

    ids: np.ndarray
    ranks: IndexArray
    base: Float32Array
    top: Float64Array

    def background(self, params: NormalizationParams) -> Float64Array:
        """b(x) as the model stores it (float32), widened back as the matcher reads it."""
        return background(self.top, params).astype(np.float32).astype(np.float64)

    def encode(self, params: NormalizationParams, role: Role) -> Float32Array:
        """The inner-product encoding that defines the match score."""
        return encode(self.base, self.background(params), role, params, metric="ip")


def _prepare_side(
    source: DescriptorSource, model: Normalizer, depth: int, label: str, progress: bool
) -> _Side:
    bases, tops = [], []
    blocks = range(0, source.n_rows, _INPUT_BLOCK_ROWS)
    for start in track(blocks, f"tune: {label} vs training set", enabled=progress):
        block = source.read(start, min(source.n_rows, start + _INPUT_BLOCK_ROWS))
        base, top = model.neighbour_scores(block, depth)
        bases.append(base)
        tops.append(top)
    return _Side(source.ids, id_ranks(source.ids), np.concatenate(bases), np.concatenate(tops))


# -- exact per-query search ----------------------------------------------------------------
def _exact_top(
    queries: Float32Array,
    references: Float32Array,
    ref_ranks: IndexArray,
    depth: int,
    threads: int | None = None,
) -> tuple[Float64Array, IndexArray]:
    """Exact top-``depth`` references per query by (score desc, reference id asc)."""
    faiss.omp_set_num_threads(threads or os.cpu_count() or 1)
    out_scores, out_rows = [], []
    for q_start in range(0, len(queries), _QUERY_BLOCK_ROWS):
        block = queries[q_start : q_start + _QUERY_BLOCK_ROWS]
        best_scores = np.full((len(block), 0), -np.inf)
        best_rows = np.zeros((len(block), 0), dtype=np.int64)
        for r_start in range(0, len(references), _REFERENCE_BLOCK_ROWS):
            r_stop = min(len(references), r_start + _REFERENCE_BLOCK_ROWS)
            searcher = ExactTopK(references[r_start:r_stop], tie_keys=ref_ranks[r_start:r_stop])
            found_scores, found_rows = searcher.search(block, min(depth, r_stop - r_start))
            scores = np.concatenate([best_scores, found_scores], axis=1)
            rows = np.concatenate([best_rows, found_rows + r_start], axis=1)
            order = np.lexsort((ref_ranks[rows], -scores), axis=-1)[:, :depth]
            best_scores = np.take_along_axis(scores, order, 1)
            best_rows = np.take_along_axis(rows, order, 1)
        out_scores.append(best_scores)
        out_rows.append(best_rows)
    return np.concatenate(out_scores), np.concatenate(out_rows)


@dataclass
class _Candidates:
    """The exact top references of every query under one reference term."""

    rows: IndexArray
    """Candidate reference rows per query, shape (q, m)."""
    floor: Float64Array
    """Score of the last candidate: no other reference scores higher, shape (q,)."""
    complete: bool
    """True when the candidates are all the references."""


def _reference_key(params: NormalizationParams) -> tuple[Any, ...] | None:
    """What the per-query ranking depends on: the reference term, if any."""
    beta = params.reference_beta
    if beta == 0.0:
        return None
    stat: tuple[Any, ...] = (params.statistic,)
    if params.statistic in ("nth", "mean"):
        stat += (params.n,)
    elif params.statistic == "slice":
        stat += (params.slice_start, params.slice_stop)
    return (*stat, beta)


def _reference_only(params: NormalizationParams) -> NormalizationParams:
    """The same reference term without a query term: ``<q, r> - beta_r b(r)``."""
    return params.model_copy(
        update={"side": "reference", "beta": params.reference_beta, "beta_reference": None}
    )


@dataclass
class SharedSearch:
    """Grid-point matching over per-vector data computed once.

    Parameters
    ----------
    queries, references : _Side
        Transformed vectors and top training similarities (see :meth:`prepare`).
    k : int
        References kept per query.
    margin : int
        Candidates per query beyond ``k`` in the shared search.
    threads : int, optional
        faiss threads of the searches; every core by default.
    """

    queries: _Side
    references: _Side
    k: int = DEFAULT_K
    margin: int = CANDIDATE_MARGIN
    threads: int | None = None
    exact_fallbacks: int = 0
    """Queries whose top k needed a search of their own (near-ties at the k-th place)."""
    _cache: dict[tuple[Any, ...] | None, _Candidates] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls,
        queries: DescriptorSource,
        references: DescriptorSource,
        model: Normalizer,
        depth: int,
        *,
        k: int = DEFAULT_K,
        progress: bool = False,
    ) -> SharedSearch:
        """Search the training set once for every query and reference."""
        return cls(
            _prepare_side(queries, model, depth, "queries", progress),
            _prepare_side(references, model, depth, "references", progress),
            k=min(k, references.n_rows),
        )

    def _candidates(self, params: NormalizationParams) -> _Candidates:
        key = _reference_key(params)
        if key not in self._cache:
            # One reference term at a time: grid points arrive grouped by it.
            self._cache.clear()
            self._cache[key] = self._search_candidates(params, key is None)
        return self._cache[key]

    def _search_candidates(self, params: NormalizationParams, raw: bool) -> _Candidates:
        depth = min(self.k + self.margin, len(self.references.base))
        if raw:
            q_enc, r_enc = self.queries.base, self.references.base
        else:
            shared = _reference_only(params)
            q_enc = self.queries.encode(shared, "query")  # [q, 1]
            r_enc = self.references.encode(shared, "reference")  # [r, -beta_r b(r)]
        scores, rows = _exact_top(q_enc, r_enc, self.references.ranks, depth, self.threads)
        return _Candidates(rows, scores[:, -1], depth == len(self.references.base))

    def predictions(self, params: NormalizationParams, max_results: int | None) -> Pairs:
        """The pairs ``streamnorm match`` writes for stores normalized with ``params``."""
        candidates = self._candidates(params)
        q_enc = self.queries.encode(params, "query")
        r_enc = self.references.encode(params, "reference")
        scores = candidate_scores(q_enc, r_enc, candidates.rows)
        order = np.lexsort((self.references.ranks[candidates.rows], -scores), axis=-1)
        order = order[:, : self.k]
        top_scores = np.take_along_axis(scores, order, 1)
        top_rows = np.take_along_axis(candidates.rows, order, 1)
        if not candidates.complete:
            pending = np.flatnonzero(~self._certified(params, top_scores[:, -1], candidates))
            if pending.size:
                self.exact_fallbacks += int(pending.size)
                top_scores[pending], top_rows[pending] = _exact_top(
                    q_enc[pending], r_enc, self.references.ranks, self.k, self.threads
                )
        return self._rank_globally(top_rows, top_scores, max_results)

    def _rank_globally(
        self, top_rows: IndexArray, top_scores: Float64Array, max_results: int | None
    ) -> Pairs:
        """Pool the per-query lists; order by score desc, then query id, then reference id."""
        query_rows = np.repeat(np.arange(len(top_rows)), top_rows.shape[1])
        reference_rows, scores = top_rows.ravel(), top_scores.ravel()
        order = np.lexsort(
            (self.references.ranks[reference_rows], self.queries.ranks[query_rows], -scores)
        )
        order = order[:max_results] if max_results is not None else order
        return Pairs(query_rows[order], reference_rows[order], scores[order])

    def _certified(
        self, params: NormalizationParams, kth: Float64Array, candidates: _Candidates
    ) -> np.ndarray:
        """Whether no reference outside the candidates can reach a query's top k.

        A reference outside scores at most ``floor`` in the shared search; adding the
        query term, with rounding allowed for, bounds its score for this point.
        """
        query_term = -params.query_beta * self.queries.background(params)
        query_term = query_term.astype(np.float32).astype(np.float64)
        ref_term = params.reference_beta * np.abs(self.references.background(params)).max()
        tolerance = _SCORE_TOLERANCE * (2.0 + np.abs(query_term) + ref_term)
        result: np.ndarray = kth > candidates.floor + query_term + tolerance
        return result


# -- evaluation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TuneRow:
    """One grid point and its track-1 metrics."""

    params: NormalizationParams
    evaluation: Evaluation

    @property
    def micro_ap(self) -> float:
        """Micro-average precision."""
        return self.evaluation.micro_ap

    @property
    def recall_at_p90(self) -> float:
        """Recall at 90 % precision."""
        return self.evaluation.recall_at_p90

    @property
    def statistic_label(self) -> str:
        """The statistic with its depth, e.g. ``nth 10`` or ``slice 0..2``."""
        params = self.params
        if params.statistic in ("nth", "mean"):
            return f"{params.statistic} {params.n}"
        if params.statistic == "slice":
            return f"slice {params.slice_start}..{params.slice_stop}"
        return "top1"


@dataclass(frozen=True)
class TuneResult:
    """Every grid point, best first."""

    rows: list[TuneRow]
    exact_fallbacks: int = 0

    @property
    def best_row(self) -> TuneRow:
        """The grid point with the highest muAP."""
        return self.rows[0]

    @property
    def best(self) -> NormalizationParams:
        """Parameters of the best grid point."""
        return self.rows[0].params


def _evaluate(result: Pairs, search: SharedSearch, truth: GroundTruth) -> Evaluation:
    predictions = Predictions(
        query_ids=search.queries.ids[result.query_rows].astype(object),
        reference_ids=search.references.ids[result.reference_rows].astype(object),
        scores=result.scores,
    )
    return evaluate(predictions, truth)


def _open_raw(source: str | Path | DescriptorSource) -> DescriptorSource:
    opened = source if isinstance(source, DescriptorSource) else open_source(source)
    if opened.is_normalized:
        raise InputError(f"{opened.path}: tune expects raw descriptors, not a normalized store")
    return opened


def _groups(points: Iterable[NormalizationParams]) -> list[list[NormalizationParams]]:
    """Points sharing a candidate search, grouped, keeping grid order otherwise."""
    groups: dict[tuple[Any, ...] | None, list[NormalizationParams]] = {}
    for point in points:
        groups.setdefault(_reference_key(point), []).append(point)
    return list(groups.values())


def _order_by_reference_term(points: Iterable[NormalizationParams]) -> list[NormalizationParams]:
    """Group points sharing a candidate search, keeping grid order otherwise."""
    return [point for group in _groups(points) for point in group]


def _evaluate_here(
    search: SharedSearch,
    points: list[NormalizationParams],
    truth: GroundTruth,
    max_results: int | None,
    progress: bool,
) -> tuple[list[TuneRow], int]:
    rows = []
    for point in track(points, "tune: grid points", enabled=progress):
        rows.append(
            TuneRow(point, _evaluate(search.predictions(point, max_results), search, truth))
        )
    return rows, search.exact_fallbacks


def _evaluate_task(
    shared: Any,
    truth: Any,
    points: list[NormalizationParams],
    max_results: int | None,
    threads: int,
) -> tuple[list[Evaluation], int]:
    """One task: evaluate grid points that share a candidate search."""
    prepared: SharedSearch = resolve(shared)
    # A search of its own: the shared one may be this very object (synchronous runs).
    search = SharedSearch(
        prepared.queries, prepared.references, k=prepared.k, margin=prepared.margin, threads=threads
    )
    truth = resolve(truth)
    with task_threads(threads):
        evaluations = [
            _evaluate(search.predictions(point, max_results), search, truth) for point in points
        ]
    return evaluations, search.exact_fallbacks


def _pieces(
    groups: list[list[NormalizationParams]], parallel: int
) -> list[list[NormalizationParams]]:
    """Task-sized lists of points: whole groups, cut when groups are fewer than tasks.

    Each piece repeats its group's candidate search, so groups are cut only as far as
    needed to keep every parallel task busy.
    """
    cuts = max(1, -(-parallel // len(groups)))
    pieces: list[list[NormalizationParams]] = []
    for group in groups:
        count = min(cuts, len(group))
        edges = [len(group) * i // count for i in range(count + 1)]
        pieces.extend(group[a:b] for a, b in itertools.pairwise(edges))
    return pieces


def _evaluate_in_tasks(
    search: SharedSearch,
    points: list[NormalizationParams],
    truth: GroundTruth,
    max_results: int | None,
    runner: Runner,
    progress: bool,
) -> tuple[list[TuneRow], int]:
    shared, shared_truth = runner.share(search), runner.share(truth)
    pieces = _pieces(_groups(points), runner.parallel)
    task = dask.delayed(_evaluate_task, pure=False)
    found = runner.compute(
        [task(shared, shared_truth, piece, max_results, runner.task_threads) for piece in pieces],
        "tune: grid points",
        progress,
    )
    rows = [
        TuneRow(point, evaluation)
        for piece, (evaluations, _) in zip(pieces, found, strict=True)
        for point, evaluation in zip(piece, evaluations, strict=True)
    ]
    return rows, sum(fallbacks for _, fallbacks in found)


def tune(
    queries: str | Path | DescriptorSource,
    refs: str | Path | DescriptorSource,
    train: str | Path | DescriptorSource,
    gt: str | Path | GroundTruth,
    *,
    grid: Mapping[str, Any] | None = None,
    base_params: NormalizationParams | None = None,
    k: int = DEFAULT_K,
    max_results: int | None = DEFAULT_MAX_RESULTS,
    scheduler: str | Runner = "threads",
    progress: bool = False,
) -> TuneResult:
    """Score every grid point by track-1 muAP on a validation ground truth.

    Parameters
    ----------
    queries, refs, train : str, Path or DescriptorSource
        Raw descriptors (store, ISC HDF5 or ``.npy``).
    gt : str, Path or GroundTruth
        Ground truth of the queries against the references.
    grid : mapping, optional
        Parameter name to list of values; :data:`DEFAULT_GRID` when omitted.
    base_params : NormalizationParams, optional
        Every parameter the grid does not set (the ``isc21`` preset by default).
    k : int
        References kept per query, as ``streamnorm match --k``.
    max_results : int or None
        Global top N over all queries, as ``streamnorm match --max-results``; None
        keeps every candidate.
    scheduler : str or Runner
        ``threads`` (default) evaluates the grid points here; anything else (see
        :mod:`streamnorm.schedulers`) as dask tasks, and fits NES there too. The result
        is the same.

    Returns
    -------
    TuneResult
        Rows sorted by muAP, then recall at 90 % precision, best first.

    Raises
    ------
    ConfigError
        For an invalid grid, or a statistic deeper than the training set.
    """
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if max_results is not None and max_results < 1:
        raise ConfigError(f"max_results must be at least 1 (or None for all), got {max_results}")
    base = base_params if base_params is not None else build_params(DEFAULT_PRESET)
    points = _order_by_reference_term(grid_points(grid, base))
    truth = gt if isinstance(gt, GroundTruth) else read_ground_truth(gt)
    train_source = _open_raw(train)
    depth = max(point.depth for point in points)
    if depth > train_source.n_rows:
        raise ConfigError(
            f"the grid needs {depth} training neighbours but {train_source.path} has only "
            f"{train_source.n_rows} vectors"
        )
    with open_runner(scheduler) as runner:
        model = Normalizer(base).fit(train_source, progress=progress, scheduler=runner)
        search = SharedSearch.prepare(
            _open_raw(queries), _open_raw(refs), model, depth, k=k, progress=progress
        )
        if runner.in_process:
            rows, fallbacks = _evaluate_here(search, points, truth, max_results, progress)
        else:
            rows, fallbacks = _evaluate_in_tasks(
                search, points, truth, max_results, runner, progress
            )
    # A stable sort of the rows in grid order: equal scores keep the same order anywhere.
    rows.sort(key=lambda row: (-row.micro_ap, -row.recall_at_p90))
    return TuneResult(rows, exact_fallbacks=fallbacks)


# -- writing the chosen parameters -----------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {value!r} as a TOML value")


def write_config(
    params: NormalizationParams,
    path: str | Path,
    *,
    comment: str | None = None,
    overwrite: bool = False,
) -> None:
    """Write parameters as a TOML config for ``streamnorm fit --config``.

    Every set parameter is written, so the file gives the same parameters on its own
    (``build_params(None, path)``) and over any preset. Unset optional parameters are
    left out, since TOML has no null.

    Raises
    ------
    OutputExistsError
        When ``path`` exists and ``overwrite`` is false.
    """
    lines = [f"# {line}" for line in (comment or "").splitlines()]
    for key, value in params.model_dump().items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    with atomic_output(path, overwrite=overwrite) as staging:
        staging.write_text("\n".join(lines) + "\n")


def result_table(result: TuneResult, limit: int | None = None, title: str = "tune") -> Table:
    """A rich table of the grid points, best first (the first ``limit`` rows)."""
    table = Table(title=title)
    for column in ("#", "statistic", "side", "beta", "beta_ref", "muAP", "R@P90", "R@rank1"):
        table.add_column(column, justify="left" if column in ("statistic", "side") else "right")
    for rank, row in enumerate(result.rows[:limit], start=1):
        params = row.params
        table.add_row(
            str(rank),
            row.statistic_label,
            params.side,
            f"{params.beta:g}",
            "-" if params.beta_reference is None else f"{params.beta_reference:g}",
            f"{row.micro_ap:.4f}",
            f"{row.recall_at_p90:.4f}",
            f"{row.evaluation.recall_at_rank1:.4f}",
        )
    return table
