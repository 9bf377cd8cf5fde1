"""Normalization parameters, presets and configuration files.

Parameters are a validated pydantic model so that a typo in a preset, a config file or a
``--set key=value`` is a one-line error naming the key. Presets are TOML files in the
project's ``configs/`` folder (shipped inside the package as ``streamnorm/presets``).

A config file may also hold *run settings* (:data:`RUN_KEYS`: where and how widely the
tasks run). They are not parameters: they never enter :class:`NormalizationParams`, the
model fingerprint or ``model.json``, and they do not change any result.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from streamnorm.errors import ConfigError
from streamnorm.schedulers import check_scheduler

Statistic = Literal["nth", "mean", "slice", "top1"]
Side = Literal["query", "reference", "both"]
Metric = Literal["l2", "ip"]
Reduction = Literal["pca", "drop"]
IndexKind = Literal["flat", "ivf", "hnsw", "auto"]

DEFAULT_PRESET = "isc21"
RUN_KEYS = ("scheduler", "workers", "threads")
"""Config keys that say how a command runs, not what it computes."""


class NormalizationParams(BaseModel):
    """Everything that defines a normalization, besides the training data.

    Attributes
    ----------
    statistic : {"nth", "mean", "slice", "top1"}
        How the background b(x) is taken from the top training similarities of x.
    n : int
        Depth of the statistic: the n-th neighbour for ``nth``, the top n for ``mean``.
    slice_start, slice_stop : int
        For ``slice``: the mean of 0-based ranks ``slice_start..slice_stop`` inclusive.
    side : {"query", "reference", "both"}
        Which vectors carry the background term in the score.
    beta : float
        Factor of the background term of the normalized side (the query side for "both").
    beta_reference : float, optional
        Factor of the reference term when ``side == "both"``; defaults to ``beta``.
    metric : {"l2", "ip"}
        The k-NN metric the track-2 encoded vectors are meant for.
    candidate_margin : int
        Extra faiss candidates fetched beyond the needed depth before exact rescoring.
    whiten : bool
        Apply PCA whitening learned on the training set (then L2-normalize).
    whiten_power : float
        Exponent applied to the PCA eigenvalues when whitening (-0.5: full whitening).
    nes : bool
        Apply negative embedding subtraction: ``x <- normalize(x - nes_beta * mean of the
        nes_k nearest training vectors)``, ``nes_iterations`` times.
    nes_k, nes_beta, nes_iterations : int, float, int
        NES parameters.
    nes_alpha : float, optional
        When set, the training negatives are first augmented database-side: each is
        replaced by the normalized mean of its ``nes_k`` nearest training vectors
        weighted by similarity to the power ``nes_alpha``.
    max_dim : int, optional
        Dimension budget of the encoded output (256 in ISC21 track 2).
    reduction : {"pca", "drop"}
        How to make room for the extra dimensions: a PCA learned on the training set, or
        dropping the lowest-variance training dimensions.
    index : {"flat", "ivf", "hnsw", "auto"}
        The training index: exact (``flat``), inverted lists (``ivf``: exact within the
        ``ivf_nprobe`` exactly nearest lists), a graph (``hnsw``: the candidates of an
        HNSW walk, rescored exactly), or chosen by training size (``auto``).
    ivf_nlist : int, optional
        Number of IVF lists; about 8 sqrt(n_train) when omitted.
    ivf_nprobe : int
        Lists read per vector.
    ivf_nprobe_wide : int
        Lists read by a vector far from every centroid (a diffuse region, where the
        neighbours spread over many lists).
    ivf_wide_share : float
        Share of training vectors that count as far: the best-centroid similarity under
        which a vector reads ``ivf_nprobe_wide`` lists is this quantile, set at fit time.
    hnsw_neighbours : int
        Graph degree (faiss's M) of the ``hnsw`` index, set at fit time.
    hnsw_search_depth : int
        Candidates an HNSW walk keeps (faiss's efSearch); at least depth + margin.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    statistic: Statistic = "nth"
    n: int = Field(default=10, ge=1)
    slice_start: int = Field(default=0, ge=0)
    slice_stop: int = Field(default=2, ge=0)
    side: Side = "query"
    beta: float = Field(default=2.0, ge=0.0, le=100.0)
    beta_reference: float | None = Field(default=None, ge=0.0, le=100.0)
    metric: Metric = "l2"
    candidate_margin: int = Field(default=8, ge=0, le=4096)
    whiten: bool = False
    whiten_power: float = Field(default=-0.5, ge=-1.0, le=0.0)
    nes: bool = False
    nes_k: int = Field(default=10, ge=1)
    nes_beta: float = Field(default=0.35, ge=0.0, le=10.0)
    nes_iterations: int = Field(default=1, ge=1, le=10)
    nes_alpha: float | None = Field(default=None, ge=0.0, le=100.0)
    max_dim: int | None = Field(default=None, ge=2)
    reduction: Reduction = "pca"
    index: IndexKind = "flat"
    ivf_nlist: int | None = Field(default=None, ge=1)
    ivf_nprobe: int = Field(default=24, ge=1)
    ivf_nprobe_wide: int = Field(default=96, ge=1)
    ivf_wide_share: float = Field(default=0.4, ge=0.0, le=1.0)
    hnsw_neighbours: int = Field(default=32, ge=4, le=256)
    hnsw_search_depth: int = Field(default=128, ge=1)

    @model_validator(mode="after")
    def _check_slice(self) -> NormalizationParams:
        if self.statistic == "slice" and self.slice_stop < self.slice_start:
            raise ValueError("slice_stop must not be smaller than slice_start")
        return self

    @property
    def depth(self) -> int:
        """How many training neighbours the statistic needs."""
        if self.statistic == "top1":
            return 1
        if self.statistic == "slice":
            return self.slice_stop + 1
        return self.n

    @property
    def query_beta(self) -> float:
        """Factor of b(q) in the track-1 score (0 when queries are not normalized)."""
        return self.beta if self.side in ("query", "both") else 0.0

    @property
    def reference_beta(self) -> float:
        """Factor of b(r) in the track-1 score (0 when references are not normalized)."""
        if self.side == "reference":
            return self.beta
        if self.side == "both":
            return self.beta if self.beta_reference is None else self.beta_reference
        return 0.0


def presets_dir() -> Path:
    """Folder holding the preset TOML files, installed or in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    raise ConfigError("the preset folder is missing from this installation")


def available_presets() -> list[str]:
    """Names of the presets that ship with streamnorm."""
    return sorted(path.stem for path in presets_dir().glob("*.toml"))


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None


def _parse_assignment(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as nth or l2
    return key.strip(), value


def build_params(
    preset: str | None = DEFAULT_PRESET,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> NormalizationParams:
    """Combine a preset, a config file and ``key=value`` overrides, in that order.

    Raises
    ------
    ConfigError
        For an unknown preset, an unknown key or an out-of-range value.
    """
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in available_presets():
            raise ConfigError(
                f"unknown preset {preset!r}; available: {', '.join(available_presets())}"
            )
        values.update(_load_toml(presets_dir() / f"{preset}.toml"))
    if config_file is not None:
        values.update(_without_run_keys(Path(config_file)))
    for assignment in overrides or []:
        key, value = _parse_assignment(assignment)
        values[key] = value
    return params_from_dict(values)


def params_from_dict(values: dict[str, Any]) -> NormalizationParams:
    """Validate a parameter mapping, turning pydantic's report into one line."""
    try:
        return NormalizationParams(**values)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"]) or "config"
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"unknown config key {key!r}") from None
        raise ConfigError(f"config key {key!r}: {first['msg']}") from None


def _without_run_keys(path: Path) -> dict[str, Any]:
    """The parameters of a config file; its run settings are checked, then left out."""
    values = _load_toml(path)
    _check_run_values({key: values[key] for key in RUN_KEYS if key in values}, path)
    return {key: value for key, value in values.items() if key not in RUN_KEYS}


@dataclass(frozen=True)
class RunSettings:
    """How a command runs: the scheduler and the parallelism (never the results).

    Attributes
    ----------
    scheduler : str
        ``threads``, ``processes``, ``synchronous``, ``local-cluster[:N]`` or a
        dask.distributed address (see :mod:`streamnorm.schedulers`).
    workers : int, optional
        Parallel tasks of the local schedulers; one per core by default.
    threads : int, optional
        faiss/BLAS threads per task (``match --threads``: tiles searched at once).
    """

    scheduler: str = "threads"
    workers: int | None = None
    threads: int | None = None


def _check_run_values(values: dict[str, Any], path: Path) -> None:
    for key in ("workers", "threads"):
        value = values.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{path}: config key {key!r} must be a whole number, not {value!r}")
        if value is not None and value < 1:
            raise ConfigError(f"{path}: config key {key!r} must be at least 1, not {value}")
    if "scheduler" in values:
        try:
            check_scheduler(values["scheduler"])
        except ConfigError as error:
            raise ConfigError(f"{path}: config key 'scheduler': {error}") from None


def run_settings(
    config_file: str | Path | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    run_keys_only: bool = False,
) -> RunSettings:
    """The run settings of a command: its options, else the config file, else defaults.

    Parameters
    ----------
    config_file : str or Path, optional
        A TOML file; only its :data:`RUN_KEYS` are read here.
    scheduler, workers, threads : optional
        The command-line options; a given option wins over the file.
    run_keys_only : bool
        Refuse any other key (for commands that take no parameters).

    Raises
    ------
    ConfigError
        For a missing or invalid file, a bad value, or (``run_keys_only``) another key.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        values = _load_toml(path)
        extra = [key for key in values if key not in RUN_KEYS]
        if run_keys_only and extra:
            raise ConfigError(
                f"{path}: unknown config key {extra[0]!r}; this command reads only "
                f"{', '.join(RUN_KEYS)}"
            )
        values = {key: values[key] for key in RUN_KEYS if key in values}
        _check_run_values(values, path)
    given = {"scheduler": scheduler, "workers": workers, "threads": threads}
    values.update({key: value for key, value in given.items() if value is not None})
    settings = RunSettings(**values)
    check_scheduler(settings.scheduler)
    return settings
