"""The saved state of a match, so that references arriving later can be merged in.

The state holds, for every query, its exact top-k references so far (float64 scores and
reference ids) together with what makes a later merge valid: the model fingerprint, k,
the queries' path and identity, and every reference id seen so far. Because each query's
top-k over ``old + new`` references is the top-k of (its top-k over ``old``) united with
(its top-k over ``new``), merging a new batch into the state gives exactly what a full
run over all references together gives.

On disk the state is one ``.npz`` file (no pickles), replaced atomically: it is either
the old state or the new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from streamnorm.atomic import atomic_output
from streamnorm.errors import InputError, ModelMismatchError, StreamnormError
from streamnorm.kernel import Float64Array
from streamnorm.locations import Location, as_text, exists, open_file

STATE_KIND = "streamnorm-match-state"
STATE_VERSION = 1


class StateMismatchError(StreamnormError):
    """A match state and the data offered to it do not belong together."""


def prefix_digest(ids: np.ndarray, vectors: Any, stop: int) -> str:
    """SHA-256 of the first ``stop`` ids in order and of the edge rows of that prefix.

    It recognises a store that has only grown by appending since rows ``[0, stop)`` were
    merged: those ids, and the rows at both ends of the prefix, are unchanged.
    """
    digest = hashlib.sha256()
    for start in range(0, stop, 65536):
        chunk = ids[start : min(stop, start + 65536)]
        # Each id ends in a newline, so hashing in blocks equals hashing the whole.
        digest.update(("\n".join(chunk.tolist()) + "\n").encode())
    edge = min(stop, 64)
    for rows in (slice(0, edge), slice(stop - edge, stop)):
        digest.update(np.ascontiguousarray(vectors[rows], dtype=np.float32).tobytes())
    return digest.hexdigest()


def identity_key(identity: dict[str, Any]) -> dict[str, Any]:
    """The parts of an input identity that describe its content (not where it lives)."""
    return {key: identity[key] for key in ("rows", "dim", "sha256") if key in identity}


def merge_top_k(
    scores: list[Float64Array], ids: list[np.ndarray], k: int
) -> tuple[Float64Array, np.ndarray]:
    """Per query, the ``k`` best of several candidate lists, ties broken by reference id.

    Parameters
    ----------
    scores : list of ndarray of float64, shapes (n, w_i)
    ids : list of ndarray of str, shapes (n, w_i)
        Reference ids of the candidates; unique within each row.
    k : int

    Returns
    -------
    scores : ndarray of float64, shape (n, min(k, sum w_i))
    ids : ndarray of str, same shape
    """
    all_scores = np.concatenate(scores, axis=1)
    all_ids = np.concatenate(ids, axis=1)
    # np.unique sorts, so the inverse is each id's rank in string order: an integer key
    # that orders like the ids themselves.
    ranks = np.unique(all_ids, return_inverse=True)[1].reshape(all_ids.shape)
    order = np.lexsort((ranks, -all_scores), axis=-1)[:, :k]
    return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)


@dataclass
class MatchState:
    """Per-query top-k heaps plus what a later merge must agree with.

    Attributes
    ----------
    k : int
        Candidates kept per query.
    model_fingerprint : str or None
        Fingerprint of the model of normalized stores; None for raw stores.
    base_dim : int
        Descriptor dimension before any encoding.
    queries_path : str
        Absolute path of the query store; updates re-read the queries from here.
    queries_identity : dict
        ``rows``, ``dim`` and ``sha256`` of the query store (see
        :meth:`streamnorm.sources.DescriptorSource.identity`).
    queries_digest : str
        SHA-256 of every query row as scored; checked after each update's pass.
    scores : ndarray of float64, shape (n_queries, width)
        Best scores so far, best first; ``width = min(k, references seen)``.
    reference_ids : ndarray of str, shape (n_queries, width)
        The references of those scores.
    seen_ids : ndarray of str, shape (n_seen,)
        Every reference id merged so far, sorted.
    batches : list of dict
        Each merged reference input in arrival order: its path and identity, the rows
        ``[start, stop)`` merged from it and the :func:`prefix_digest` of rows up to
        ``stop``.
    """

    k: int
    model_fingerprint: str | None
    base_dim: int
    queries_path: str
    queries_identity: dict[str, Any]
    queries_digest: str
    scores: Float64Array
    reference_ids: np.ndarray
    seen_ids: np.ndarray
    batches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_seen(self) -> int:
        """Number of references merged so far."""
        return int(self.seen_ids.shape[0])

    def check_k(self, k: int | None, path: Location) -> None:
        """Refuse a k that differs from the state's."""
        if k is not None and k != self.k:
            raise StateMismatchError(
                f"{path}: the state keeps k={self.k} candidates per query, not k={k}; "
                "a different k needs a full run"
            )

    def check_model(self, fingerprint: str | None, base_dim: int, source: str) -> None:
        """Refuse references made with another model (or raw against normalized)."""
        if fingerprint != self.model_fingerprint:
            mine, theirs = (
                "raw" if value is None else f"model {str(value)[:12]}"
                for value in (self.model_fingerprint, fingerprint)
            )
            raise ModelMismatchError(
                f"{source}: made with {theirs}, but the match state was made with {mine}"
            )
        if base_dim != self.base_dim:
            raise ModelMismatchError(
                f"{source}: dimension {base_dim}, but the match state has dimension {self.base_dim}"
            )

    def check_queries(self, identity: dict[str, Any]) -> None:
        """Refuse a query store whose content changed since the state was made."""
        if identity_key(identity) != identity_key(self.queries_identity):
            raise StateMismatchError(
                f"{self.queries_path}: the queries changed since the match state was made "
                f"({identity_key(identity)['rows']} rows now, "
                f"{self.queries_identity['rows']} then, or different ids or vectors)"
            )

    def check_new_ids(self, ids: np.ndarray, source: str) -> None:
        """Refuse references whose ids were already merged."""
        position = np.searchsorted(self.seen_ids, ids)
        position = np.minimum(position, max(self.n_seen - 1, 0))
        clash = (self.seen_ids[position] == ids) if self.n_seen else np.zeros(len(ids), bool)
        if clash.any():
            row = int(np.argmax(clash))
            raise StateMismatchError(
                f"{source}: reference id {str(ids[row])!r} (row {row}) was already merged "
                f"into the match state; each reference may arrive only once"
            )

    def first_new_row(self, path: str, ids: np.ndarray, vectors: Any) -> int:
        """Where the unseen rows of a reference store start.

        A store merged before that has since grown by appending (``normalize --append``)
        keeps its merged rows as an unchanged prefix: only the rows after it are new.
        Any other store is new from row 0 (and its ids must all be unseen).
        """
        for batch in reversed(self.batches):
            if batch.get("path") != path:
                continue
            stop = int(batch["stop"])
            if stop <= len(ids) and prefix_digest(ids, vectors, stop) == batch["prefix_sha256"]:
                return stop
            break
        return 0

    def merged(
        self,
        scores: Float64Array,
        reference_ids: np.ndarray,
        new_ids: np.ndarray,
        batch: dict[str, Any],
    ) -> MatchState:
        """A new state with one more batch of references merged in."""
        top_scores, top_ids = merge_top_k(
            [self.scores, scores], [self.reference_ids, reference_ids], self.k
        )
        seen = np.sort(np.concatenate([self.seen_ids, new_ids]))
        return replace(
            self,
            scores=top_scores,
            reference_ids=top_ids,
            seen_ids=seen,
            batches=[*self.batches, batch],
        )

    def save(self, path: Location, overwrite: bool = False) -> None:
        """Write the state; it appears (or replaces the old one) only once complete."""
        meta = {
            "kind": STATE_KIND,
            "version": STATE_VERSION,
            "k": self.k,
            "model_fingerprint": self.model_fingerprint,
            "base_dim": self.base_dim,
            "queries_path": self.queries_path,
            "queries_identity": self.queries_identity,
            "queries_digest": self.queries_digest,
            "batches": self.batches,
        }
        with atomic_output(path, overwrite=overwrite) as staging, open(staging, "wb") as stream:
            # A file object, not a name: numpy would append ".npz" to a name.
            np.savez_compressed(
                stream,
                meta=np.array(json.dumps(meta)),
                scores=self.scores,
                reference_ids=self.reference_ids.astype(str),
                seen_ids=self.seen_ids.astype(str),
            )

    @classmethod
    def load(cls, path: Location) -> MatchState:
        """Read a state written by :meth:`save`.

        Raises
        ------
        InputError
            When the file is missing or is not a match state.
        """
        location = as_text(path)
        if not exists(location):
            raise InputError(f"{location}: no such match state file")
        try:
            with open_file(location, "rb") as stream, np.load(stream, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"][()]))
                arrays = {
                    name: np.asarray(data[name]) for name in ("scores", "reference_ids", "seen_ids")
                }
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
            raise InputError(f"{location}: not a streamnorm match state") from None
        if not isinstance(meta, dict) or meta.get("kind") != STATE_KIND:
            raise InputError(f"{location}: not a streamnorm match state")
        if meta.get("version") != STATE_VERSION:
            raise InputError(
                f"{location}: match state version {meta.get('version')}, this streamnorm "
                f"reads version {STATE_VERSION}"
            )
        scores, ids = arrays["scores"], arrays["reference_ids"]
        if scores.shape != ids.shape or scores.ndim != 2 or scores.dtype != np.float64:
            raise InputError(f"{location}: damaged match state (heap arrays do not agree)")
        return cls(
            k=int(meta["k"]),
            model_fingerprint=meta["model_fingerprint"],
            base_dim=int(meta["base_dim"]),
            queries_path=str(meta["queries_path"]),
            queries_identity=dict(meta["queries_identity"]),
            queries_digest=str(meta["queries_digest"]),
            scores=scores,
            reference_ids=ids,
            seen_ids=arrays["seen_ids"],
            batches=list(meta["batches"]),
        )
