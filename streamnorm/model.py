"""The training-set model: fitted once, saved to a folder, shared by every worker.

:class:`Normalizer` follows the scikit-learn shape: ``Normalizer(params).fit(source)``
learns from the training descriptors, then :meth:`Normalizer.transform` maps any block of
query or reference rows, independently of every other row. Learned attributes end in
``_``. On disk a model is a folder with ``model.json`` (parameters, fingerprint,
provenance) and ``index.faiss`` (the exact inner-product index over the L2-normalized
training vectors).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from streamnorm.config import NormalizationParams, params_from_dict
from streamnorm.encoding import Role, encode
from streamnorm.errors import ConfigError, InputError
from streamnorm.kernel import Float32Array, Float64Array, l2_normalize
from streamnorm.neighbours import ExactTopK
from streamnorm.progress import track
from streamnorm.provenance import package_versions
from streamnorm.sources import DescriptorSource
from streamnorm.statistics import background

MODEL_FILE = "model.json"
INDEX_FILE = "index.faiss"
_FIT_BLOCK_ROWS = 65536


@dataclass
class NormalizedBlock:
    """One block of normalized rows."""

    base: Float32Array
    """Unit-norm vectors after the learned transforms, shape (b, d)."""
    background: Float32Array
    """b(x) per row, shape (b,)."""


class Normalizer:
    """Score normalization against a fixed training set.

    Parameters
    ----------
    params : NormalizationParams
    """

    def __init__(self, params: NormalizationParams) -> None:
        self.params = params
        self.index_: faiss.IndexFlatIP | None = None
        self.fingerprint_: str | None = None
        self.n_train_: int = 0
        self.dim_: int = 0
        self.training_source_: dict[str, Any] = {}
        self._searcher: ExactTopK | None = None

    # -- fitting -----------------------------------------------------------------------
    def fit(self, source: DescriptorSource, progress: bool = False) -> Normalizer:
        """Normalize the training descriptors and index them, one block at a time."""
        if self.params.depth > source.n_rows:
            raise ConfigError(
                f"the statistic needs {self.params.depth} training neighbours but "
                f"{source.path} has only {source.n_rows} vectors"
            )
        index = faiss.IndexFlatIP(source.dim)
        digest = hashlib.sha256()
        blocks = range(0, source.n_rows, _FIT_BLOCK_ROWS)
        for start in track(blocks, "fit: indexing training set", enabled=progress):
            block = l2_normalize(source.read(start, min(source.n_rows, start + _FIT_BLOCK_ROWS)))
            digest.update(block.tobytes())
            index.add(block)
        digest.update(self._params_json().encode())
        self.index_ = index
        self.fingerprint_ = digest.hexdigest()
        self.n_train_ = source.n_rows
        self.dim_ = source.dim
        self.training_source_ = {"path": source.path, "rows": source.n_rows, "dim": source.dim}
        self._searcher = None
        return self

    def _params_json(self) -> str:
        return json.dumps(self.params.model_dump(), sort_keys=True)

    # -- transforming ------------------------------------------------------------------
    @property
    def training_vectors(self) -> Float32Array:
        """The L2-normalized training vectors, viewed in place inside the faiss index."""
        index = self._fitted_index()
        pointer = index.get_xb()
        return faiss.rev_swig_ptr(pointer, index.ntotal * index.d).reshape(index.ntotal, index.d)

    def _fitted_index(self) -> faiss.IndexFlatIP:
        if self.index_ is None:
            raise RuntimeError("the normalizer is not fitted")
        return self.index_

    def _search(self) -> ExactTopK:
        if self._searcher is None:
            self._searcher = ExactTopK(
                self.training_vectors, self._fitted_index(), margin=self.params.candidate_margin
            )
        return self._searcher

    def neighbour_scores(
        self, block: Float32Array, depth: int
    ) -> tuple[Float32Array, Float64Array]:
        """Transformed rows and their exact top-``depth`` training similarities, best first.

        Each row's result depends on that row only.
        """
        if block.shape[1] != self.dim_:
            raise InputError(
                f"vectors have dimension {block.shape[1]} but the model was fitted on {self.dim_}"
            )
        if not 1 <= depth <= self.n_train_:
            raise ConfigError(
                f"depth {depth} must be between 1 and the training size {self.n_train_}"
            )
        base = l2_normalize(block)
        scores, _ = self._search().search(base, depth)
        return base, scores

    def transform(self, block: Float32Array) -> NormalizedBlock:
        """Normalize rows and compute b(x); each row's result depends on that row only."""
        base, scores = self.neighbour_scores(block, self.params.depth)
        return NormalizedBlock(base, background(scores, self.params).astype(np.float32))

    def encode(self, normalized: NormalizedBlock, role: Role) -> Float32Array:
        """Track-2 vectors for the given side (see :mod:`streamnorm.encoding`)."""
        return encode(normalized.base, normalized.background.astype(np.float64), role, self.params)

    @property
    def output_dim(self) -> int:
        """Dimension of the encoded vectors."""
        from streamnorm.encoding import extra_dims

        return self.dim_ + extra_dims(self.params)

    # -- persistence -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """What ``model.json`` holds."""
        return {
            "format": "streamnorm-model/1",
            "fingerprint": self.fingerprint_,
            "params": self.params.model_dump(),
            "n_train": self.n_train_,
            "dim": self.dim_,
            "output_dim": self.output_dim,
            "training_source": self.training_source_,
            "versions": package_versions(),
        }

    def save(self, path: str | Path) -> None:
        """Write the model folder atomically (a temporary folder renamed into place)."""
        target = Path(path)
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=target.parent))
        try:
            faiss.write_index(self._fitted_index(), str(staging / INDEX_FILE))
            (staging / MODEL_FILE).write_text(json.dumps(self.metadata(), indent=2))
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        """Read a model folder written by :meth:`save`."""
        info = read_model_info(path)
        normalizer = cls(params_from_dict(info["params"]))
        try:
            index = faiss.read_index(str(Path(path) / INDEX_FILE))
        except RuntimeError:
            raise InputError(f"{path}: the model's index file is missing or corrupt") from None
        if index.ntotal != info["n_train"] or index.d != info["dim"]:
            raise InputError(f"{path}: the model's index does not match model.json")
        if not isinstance(index, faiss.IndexFlatIP):
            raise InputError(f"{path}: the model's index is not an exact inner-product index")
        normalizer.index_ = index
        normalizer.fingerprint_ = info["fingerprint"]
        normalizer.n_train_ = info["n_train"]
        normalizer.dim_ = info["dim"]
        normalizer.training_source_ = info.get("training_source", {})
        return normalizer


def read_model_info(path: str | Path) -> dict[str, Any]:
    """The metadata of a saved model, without loading its index."""
    location = Path(path)
    meta = location / MODEL_FILE
    if not location.is_dir() or not meta.is_file():
        raise InputError(f"{location}: not a streamnorm model (no {MODEL_FILE})")
    try:
        info: dict[str, Any] = json.loads(meta.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{meta}: corrupt model metadata") from None
    if info.get("format") != "streamnorm-model/1":
        raise InputError(f"{meta}: unknown model format {info.get('format')!r}")
    return info


_CACHE: dict[tuple[str, str], Normalizer] = {}
_CACHE_LOCK = threading.Lock()


def cached_model(path: str, fingerprint: str) -> Normalizer:
    """Load a model once per process; every task in that process shares it."""
    key = (str(Path(path).resolve()), fingerprint)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = Normalizer.load(path)
            if model.fingerprint_ != fingerprint:
                raise InputError(f"{path}: the model changed while the job was running")
            _CACHE[key] = model
        return model


def fit_model(
    train_path: str | Path,
    out: str | Path,
    params: NormalizationParams,
    *,
    ids_path: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Normalizer:
    """Fit a model on a training input and save it to the folder ``out``.

    Raises
    ------
    OutputExistsError
        When ``out`` exists and ``overwrite`` is false.
    """
    from streamnorm.sources import open_source
    from streamnorm.store import prepare_output

    target = Path(out)
    if target.exists() and not overwrite:
        from streamnorm.errors import OutputExistsError

        raise OutputExistsError(f"{target}: output already exists (use --overwrite to replace it)")
    normalizer = Normalizer(params).fit(open_source(train_path, ids_path), progress=progress)
    prepare_output(target, overwrite=True)
    normalizer.save(target)
    return normalizer
