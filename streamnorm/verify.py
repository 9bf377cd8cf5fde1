"""Auditing a normalized store: recompute sampled rows one vector at a time.

Each sampled input row is normalized alone (a batch of one, on a single thread) and
compared byte for byte with the row the store holds for the same id. Agreement shows
that every row of the store is a function of that row alone, which is what the
independence rule of the copy-detection challenges asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import dask
import numpy as np

from streamnorm.encoding import Role
from streamnorm.errors import InputError, ModelMismatchError
from streamnorm.kernel import IndexArray
from streamnorm.locations import Location
from streamnorm.model import cached_model, read_model_info
from streamnorm.progress import track
from streamnorm.schedulers import Runner, open_runner, task_threads
from streamnorm.sources import open_source


@dataclass
class VerifyReport:
    """Outcome of an audit."""

    checked: int
    mismatched_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every checked row matched."""
        return not self.mismatched_ids


def verify(
    store_path: Location,
    input_path: Location,
    model_path: Location,
    *,
    sample: int | None = 100,
    seed: int = 0,
    ids_path: Location | None = None,
    scheduler: str | Runner = "threads",
    progress: bool = False,
) -> VerifyReport:
    """Recompute a random sample of the input's rows and compare with the store.

    Parameters
    ----------
    store_path : str or Path
        A complete normalized store.
    input_path : str or Path
        The input it was made from, or any batch appended to it.
    model_path : str or Path
        The model it was made with (checked by fingerprint).
    sample : int or None
        Rows to check; None checks every row.
    seed : int
        Seed of the sample.
    scheduler : str or Runner
        Where the recomputation runs (:mod:`streamnorm.schedulers`); the sampled rows
        are split among tasks, each still recomputed alone.

    Returns
    -------
    VerifyReport
    """
    store = open_source(store_path)
    if not store.is_normalized:
        raise InputError(f"{store_path}: not a normalized store")
    info = read_model_info(model_path)
    if store.attrs["model_fingerprint"] != info["fingerprint"]:
        raise ModelMismatchError(f"{store_path} was not made with the model {model_path}")
    source = open_source(input_path, ids_path)
    row_of = {identifier: row for row, identifier in enumerate(store.ids.tolist())}
    missing = [i for i in source.ids.tolist() if i not in row_of]
    if missing:
        raise InputError(f"{input_path}: id {missing[0]!r} is not in {store_path}")
    rng = np.random.default_rng(seed)
    count = source.n_rows if sample is None else min(sample, source.n_rows)
    rows = np.sort(rng.choice(source.n_rows, size=count, replace=False))
    targets = np.array([row_of[str(source.ids[row])] for row in rows.tolist()], dtype=np.int64)
    job = _Audit(
        str(store_path),
        str(input_path),
        None if ids_path is None else str(ids_path),
        str(model_path),
        info["fingerprint"],
        store.attrs["role"],
    )
    with open_runner(scheduler) as runner:
        if runner.in_process:
            found = job.check(rows, targets, progress)
        else:
            # Enough pieces to keep every task busy; each row is still computed alone.
            pieces = max(1, min(count, 4 * runner.parallel))
            tasks = [
                dask.delayed(job.check)(part, target)
                for part, target in zip(
                    np.array_split(rows, pieces), np.array_split(targets, pieces), strict=True
                )
                if part.size
            ]
            found = [i for part in runner.compute(tasks, "verify", progress) for i in part]
    return VerifyReport(checked=count, mismatched_ids=found)


@dataclass(frozen=True)
class _Audit:
    """What a verify task needs, by path: it opens the inputs and the model itself."""

    store: str
    source: str
    ids: str | None
    model: str
    fingerprint: str
    role: str

    def check(self, rows: IndexArray, targets: IndexArray, progress: bool = False) -> list[str]:
        """Ids of the given input rows whose recomputation differs from the store's."""
        store = open_source(self.store)
        source = open_source(self.source, self.ids)
        model = cached_model(self.model, self.fingerprint)
        role = cast(Role, self.role)
        mismatched = []
        # One vector at a time on one thread: the batch and thread count of the
        # original run must not matter.
        with task_threads(1):
            pairs = list(zip(rows.tolist(), targets.tolist(), strict=True))
            for row, target in track(pairs, "verify: one vector at a time", enabled=progress):
                normalized = model.transform(source.read(row, row + 1))
                vectors = model.encode(normalized, role)
                stored_vector = np.asarray(store.vectors[target : target + 1], dtype=np.float32)
                stored_background = np.asarray(
                    store.background[target : target + 1], dtype=np.float32
                )
                if (
                    vectors.tobytes() != stored_vector.tobytes()
                    or normalized.background.tobytes() != stored_background.tobytes()
                ):
                    mismatched.append(str(source.ids[row]))
        return mismatched
