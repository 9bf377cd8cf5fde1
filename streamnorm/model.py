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
import psutil

from streamnorm.config import NormalizationParams, params_from_dict
from streamnorm.encoding import Role, encode
from streamnorm.errors import ConfigError, InputError, OutputExistsError
from streamnorm.hnsw import HNSWTopK, build_hnsw
from streamnorm.ivf import IVFExactTopK, build_ivf, default_nlist, wide_probe_threshold
from streamnorm.kernel import Float32Array, Float64Array, l2_normalize
from streamnorm.locations import (
    Location,
    as_text,
    exists,
    is_dir,
    is_url,
    join,
    local_copy,
    read_text,
    upload,
)
from streamnorm.neighbours import ExactTopK
from streamnorm.provenance import package_versions
from streamnorm.schedulers import Runner
from streamnorm.sources import DescriptorSource
from streamnorm.statistics import background
from streamnorm.transforms import TransformChain, apply_to_training, fit_chain

MODEL_FILE = "model.json"
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
TRANSFORMS_FILE = "transforms.npz"
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
        self.index_: faiss.Index | None = None
        self.transforms_: TransformChain | None = None
        self.index_kind_: str = "flat"
        self.index_report_: dict[str, Any] = {}
        self.fingerprint_: str | None = None
        self.n_train_: int = 0
        self.dim_: int = 0
        self.training_source_: dict[str, Any] = {}
        self._vectors: Float32Array | None = None
        self._searcher: ExactTopK | None = None
        self._searcher_lock = threading.Lock()

    # -- fitting -----------------------------------------------------------------------
    def fit(
        self, source: DescriptorSource, progress: bool = False, scheduler: str | Runner = "threads"
    ) -> Normalizer:
        """Normalize the training descriptors and index them, one block at a time.

        ``scheduler`` runs the training-set searches of NES as tasks (same result).
        """
        if self.params.depth > source.n_rows:
            raise ConfigError(
                f"the statistic needs {self.params.depth} training neighbours but "
                f"{source.path} has only {source.n_rows} vectors"
            )
        digest = _RowHash()

        def read(start: int, stop: int) -> Float32Array:
            block = l2_normalize(source.read(start, stop))
            digest.see(start, block)
            return block

        chain = fit_chain(
            self.params, read, source.n_rows, source.dim, progress=progress, scheduler=scheduler
        )
        kind, reason = choose_index(self.params, source.n_rows, chain.output_dim)
        flat = faiss.IndexFlatIP(chain.output_dim)
        blocks = apply_to_training(
            chain, read, source.n_rows, progress=progress, scheduler=scheduler
        )
        for _, block in blocks:
            flat.add(block)
        digest.finish(read, source.n_rows)
        digest.update(self._params_json().encode())
        self.n_train_ = source.n_rows
        self.dim_ = source.dim
        self.training_source_ = {"path": source.path, "rows": source.n_rows, "dim": source.dim}
        self.transforms_ = chain
        self.index_kind_ = kind
        self.index_report_ = {"kind": kind, "reason": reason}
        self._vectors = None
        if kind == "flat":
            self.index_ = flat
        elif kind == "hnsw":
            self.index_ = build_hnsw(_flat_vectors(flat), self.params.hnsw_neighbours)
            del flat
        else:
            # The flat index's storage is the training matrix; copy it out, then free it.
            self._vectors = np.array(_flat_vectors(flat))
            del flat
            nlist = self.params.ivf_nlist or default_nlist(self.n_train_)
            self.index_ = build_ivf(self._vectors, min(nlist, self.n_train_))
            threshold = wide_probe_threshold(self._vectors, self.index_, self.params.ivf_wide_share)
            self.index_report_["wide_probe_below"] = threshold
            # The threshold decides which lists are read, as the lists themselves do.
            digest.update(json.dumps(threshold).encode())
        if kind != "flat":
            # An approximate index's answers depend on how it was built (k-means and graph
            # construction with several threads need not repeat exactly), so the model's
            # identity includes the index itself.
            for part in _index_structure(self.index_):
                digest.update(part)
        self.fingerprint_ = digest.hexdigest()
        self._searcher = None
        if kind != "flat":
            self.index_report_["nth_neighbour_recall"] = self._measure_recall()
        return self

    def _measure_recall(self, sample: int = 500) -> float:
        """Share of sampled training vectors whose n-th neighbour the index finds exactly."""
        rng = np.random.default_rng(0)
        rows = np.sort(rng.choice(self.n_train_, size=min(sample, self.n_train_), replace=False))
        queries = self.training_vectors[rows]
        depth = self.params.depth
        approx, _ = self._search().search(queries, depth)
        exact, _ = ExactTopK(self.training_vectors, margin=self.params.candidate_margin).search(
            queries, depth
        )
        return float(np.mean(approx[:, -1] == exact[:, -1]))

    def _params_json(self) -> str:
        return json.dumps(self.params.model_dump(), sort_keys=True)

    # -- transforming ------------------------------------------------------------------
    @property
    def training_vectors(self) -> Float32Array:
        """The L2-normalized training vectors (viewed in place for the exact index)."""
        index = self._fitted_index()
        if self._vectors is not None:
            return self._vectors
        if isinstance(index, faiss.IndexHNSWFlat):
            return _flat_vectors(faiss.downcast_index(index.storage))
        return _flat_vectors(index)

    def _chain(self) -> TransformChain:
        if self.transforms_ is None:
            raise RuntimeError("the normalizer is not fitted")
        return self.transforms_

    @property
    def transformed_dim(self) -> int:
        """Dimension of the vectors after the learned transforms (before encoding)."""
        return self._chain().output_dim

    def _fitted_index(self) -> faiss.Index:
        if self.index_ is None:
            raise RuntimeError("the normalizer is not fitted")
        return self.index_

    def _search(self) -> ExactTopK:
        with self._searcher_lock:
            if self._searcher is None:
                margin = self.params.candidate_margin
                index = self._fitted_index()
                if isinstance(index, faiss.IndexIVFFlat):
                    self._searcher = IVFExactTopK(
                        self.training_vectors,
                        index,
                        self.params.ivf_nprobe,
                        margin=margin,
                        wide_nprobe=self.params.ivf_nprobe_wide,
                        wide_below=self.index_report_.get("wide_probe_below"),
                    )
                elif isinstance(index, faiss.IndexHNSWFlat):
                    self._searcher = HNSWTopK(
                        self.training_vectors, index, self.params.hnsw_search_depth, margin=margin
                    )
                else:
                    self._searcher = ExactTopK(self.training_vectors, index, margin=margin)
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
        base = self._chain().apply(l2_normalize(block))
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

        return self.transformed_dim + extra_dims(self.params)

    # -- persistence -------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        """What ``model.json`` holds."""
        return {
            "format": "streamnorm-model/1",
            "fingerprint": self.fingerprint_,
            "params": self.params.model_dump(),
            "n_train": self.n_train_,
            "dim": self.dim_,
            "transformed_dim": self.transformed_dim,
            "output_dim": self.output_dim,
            "training_source": self.training_source_,
            "index": self.index_report_,
            "versions": package_versions(),
        }

    def save(self, path: Location) -> None:
        """Write the model folder so that it appears complete or not at all.

        Locally, a temporary folder is renamed into place. At a URL the files are uploaded
        with ``model.json`` last: a folder without it is not a model.
        """
        local_parent = None if is_url(path) else Path(path).parent
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=local_parent))
        try:
            faiss.write_index(self._fitted_index(), str(staging / INDEX_FILE))
            self._chain().save(staging / TRANSFORMS_FILE)
            if self._vectors is not None:
                np.save(staging / VECTORS_FILE, self._vectors)
            (staging / MODEL_FILE).write_text(json.dumps(self.metadata(), indent=2))
            if is_url(path):
                for name in (INDEX_FILE, VECTORS_FILE, TRANSFORMS_FILE, MODEL_FILE):
                    if (staging / name).exists():
                        upload(staging / name, join(path, name))
            else:
                staging.chmod(0o755)  # mkdtemp makes it private
                staging.rename(path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @classmethod
    def load(cls, path: Location) -> Normalizer:
        """Read a model folder written by :meth:`save` (a URL is downloaded once)."""
        info = read_model_info(path)
        normalizer = cls(params_from_dict(info["params"]))
        # Keyed by the whole metadata: a model rewritten at the same URL is fetched anew.
        folder = local_copy(path, key=json.dumps(info, sort_keys=True))
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError:
            raise InputError(f"{path}: the model's index file is missing or corrupt") from None
        if index.ntotal != info["n_train"] or index.d != info["transformed_dim"]:
            raise InputError(f"{path}: the model's index does not match model.json")
        normalizer.transforms_ = TransformChain.load(folder / TRANSFORMS_FILE, normalizer.params)
        if isinstance(index, faiss.IndexIVFFlat):
            try:
                # Memory-mapped: worker processes on one machine share the pages.
                normalizer._vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
            except (OSError, ValueError):
                raise InputError(f"{path}: the model's training vectors are missing") from None
        elif not isinstance(index, (faiss.IndexFlatIP, faiss.IndexHNSWFlat)):
            raise InputError(f"{path}: the model's index is of an unsupported kind")
        normalizer.index_ = index
        normalizer.index_kind_ = info.get("index", {}).get("kind", "flat")
        normalizer.index_report_ = info.get("index", {})
        normalizer.fingerprint_ = info["fingerprint"]
        normalizer.n_train_ = info["n_train"]
        normalizer.dim_ = info["dim"]
        normalizer.training_source_ = info.get("training_source", {})
        return normalizer


class _RowHash:
    """SHA-256 of the normalized training rows in order, fed by whichever pass reads them."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._next_row = 0

    def see(self, start: int, block: Float32Array) -> None:
        """Hash a block if it continues exactly where the hash stands."""
        if start == self._next_row:
            self._digest.update(block.tobytes())
            self._next_row += block.shape[0]

    def finish(self, read: Any, n_rows: int) -> None:
        """Hash any rows no pass has read in order yet."""
        while self._next_row < n_rows:
            read(self._next_row, min(n_rows, self._next_row + _FIT_BLOCK_ROWS))

    def update(self, data: bytes) -> None:
        """Add more bytes (the parameters)."""
        self._digest.update(data)

    def hexdigest(self) -> str:
        """The fingerprint."""
        return self._digest.hexdigest()


def _index_structure(index: Any) -> list[bytes]:
    """What an approximate index adds to the training vectors: its lists or its graph."""
    if isinstance(index, faiss.IndexIVFFlat):
        invlists = index.invlists
        assert invlists is not None
        parts = [index.quantizer.reconstruct_n(0, index.nlist).tobytes()]
        for number in range(index.nlist):
            size = invlists.list_size(number)
            parts.append(size.to_bytes(8, "little"))
            parts.append(faiss.rev_swig_ptr(invlists.get_ids(number), size).tobytes())
        return parts
    graph = index.hnsw
    return [
        faiss.vector_to_array(graph.neighbors).tobytes(),
        faiss.vector_to_array(graph.levels).tobytes(),
        int(graph.entry_point).to_bytes(8, "little", signed=True),
    ]


def _flat_vectors(index: Any) -> Float32Array:
    """The vectors stored in an exact index, as a view (no copy)."""
    pointer = index.get_xb()
    return faiss.rev_swig_ptr(pointer, index.ntotal * index.d).reshape(index.ntotal, index.d)


# Above this many training vectors the exact search dominates the run time.
_AUTO_IVF_ROWS = 250_000


def choose_index(params: NormalizationParams, n_train: int, dim: int) -> tuple[str, str]:
    """The index kind to build and why (for ``index = "auto"``, by size and memory)."""
    if params.index != "auto":
        return params.index, f"asked for {params.index}"
    if n_train <= _AUTO_IVF_ROWS:
        return "flat", f"{n_train} training vectors: the exact index is fast enough"
    needed = 2 * n_train * dim * 4  # IVF keeps the matrix for rescoring and its own lists
    available = psutil.virtual_memory().available
    if needed > available // 2:
        return (
            "flat",
            f"an IVF index would need {needed / 2**30:.1f} GiB, too much of the free memory",
        )
    return "ivf", f"{n_train} training vectors: IVF is much faster than exact search"


def read_model_info(path: Location) -> dict[str, Any]:
    """The metadata of a saved model, without loading its index."""
    meta = join(path, MODEL_FILE)
    if not is_dir(path) or not exists(meta):
        raise InputError(f"{path}: not a streamnorm model (no {MODEL_FILE})")
    try:
        info: dict[str, Any] = json.loads(read_text(meta))
    except json.JSONDecodeError:
        raise InputError(f"{meta}: corrupt model metadata") from None
    if info.get("format") != "streamnorm-model/1":
        raise InputError(f"{meta}: unknown model format {info.get('format')!r}")
    return info


_CACHE: dict[tuple[str, str], Normalizer] = {}
_CACHE_LOCK = threading.Lock()
_LOADS = [0]


def models_loaded() -> int:
    """How many times this process has loaded a model from disk (for diagnostics)."""
    return _LOADS[0]


def cached_model(path: str, fingerprint: str) -> Normalizer:
    """Load a model once per process; every task in that process shares it."""
    key = (as_text(path) if is_url(path) else str(Path(path).resolve()), fingerprint)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = Normalizer.load(path)
            _LOADS[0] += 1
            if model.fingerprint_ != fingerprint:
                raise InputError(f"{path}: the model changed while the job was running")
            _CACHE[key] = model
        return model


def fit_model(
    train_path: Location,
    out: Location,
    params: NormalizationParams,
    *,
    ids_path: Location | None = None,
    overwrite: bool = False,
    progress: bool = False,
    scheduler: str | Runner = "threads",
) -> Normalizer:
    """Fit a model on a training input and save it to the folder ``out``.

    ``scheduler`` (see :mod:`streamnorm.schedulers`) runs the training-set searches of
    NES as tasks; the model is the same bit for bit.

    Raises
    ------
    OutputExistsError
        When ``out`` exists and ``overwrite`` is false.
    """
    from streamnorm.sources import open_source
    from streamnorm.store import prepare_output

    if exists(out) and not overwrite:
        raise OutputExistsError(f"{out}: output already exists (use --overwrite to replace it)")
    source = open_source(train_path, ids_path)
    normalizer = Normalizer(params).fit(source, progress=progress, scheduler=scheduler)
    prepare_output(out, overwrite=True)
    normalizer.save(out)
    return normalizer
