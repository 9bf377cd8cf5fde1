"""Writing zarr descriptor stores chunk by chunk, with done-markers.

A store is a zarr group with ``vectors`` (float32 [n, d]), ``ids`` (str [n]) and, for
normalized stores, ``background`` (float32 [n]). Output chunks are exactly the row
blocks the pipeline computes, so no two tasks ever write into one zarr chunk (unaligned
concurrent writes silently lose rows). A ``done`` array with one element per chunk is
set only after that chunk's data are written; the group attribute ``status`` becomes
``complete`` only after every marker is set and the row count checked. Readers refuse
stores that are not complete.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from streamnorm.errors import InputError, OutputExistsError
from streamnorm.id_column import IdColumn
from streamnorm.locations import Location, as_text, exists, is_url, remove

ATTRS_KEY = "streamnorm"


def array(group: zarr.Group, name: str) -> zarr.Array:
    """A named array of a group (a typed accessor: groups also hold groups)."""
    member = group[name]
    if not isinstance(member, zarr.Array):
        raise InputError(f"{group.store_path}: {name!r} is not an array")
    return member


def streamnorm_attrs(group: zarr.Group) -> dict[str, Any]:
    """The streamnorm attributes of a group (empty when it has none)."""
    value = group.attrs.get(ATTRS_KEY, {})
    return dict(value) if isinstance(value, dict) else {}


def chunk_ranges(n_rows: int, chunk_rows: int) -> Iterator[tuple[int, int, int]]:
    """``(chunk_index, start, stop)`` for every row chunk."""
    for index, start in enumerate(range(0, n_rows, chunk_rows)):
        yield index, start, min(n_rows, start + chunk_rows)


def store_status(path: Location) -> dict[str, Any] | None:
    """The streamnorm attributes of an existing store, or None when there is none.

    A folder holding nothing but temporary files is what a crash leaves when it strikes
    before a store's first metadata write; it is cleared and counts as no store.
    """
    if not is_url(path):
        folder = Path(path)
        if folder.is_dir() and all(p.name.endswith(".partial") for p in folder.iterdir()):
            shutil.rmtree(folder)
    if not exists(path):
        return None
    try:
        group = zarr.open_group(as_text(path), mode="r")
    except Exception:
        return {}
    return streamnorm_attrs(group)


def prepare_output(path: Location, overwrite: bool) -> None:
    """Refuse or clear an existing output before a fresh run."""
    if not exists(path):
        return
    if not overwrite:
        raise OutputExistsError(f"{path}: output already exists (use --overwrite to replace it)")
    remove(path)


@dataclass
class ChunkedStore:
    """A zarr descriptor store being written chunk by chunk."""

    path: str
    group: zarr.Group

    @classmethod
    def create(
        cls,
        path: Location,
        n_rows: int,
        dim: int,
        chunk_rows: int,
        attrs: dict[str, Any],
        *,
        with_background: bool,
        ids: IdColumn | None = None,
    ) -> ChunkedStore:
        """Create an empty, incomplete store; ids are written now or with each chunk.

        Ids given here are written before the ``done`` array exists, so a store that a
        crash left with every array in place (:meth:`is_intact`) has all of its ids.
        """
        # The group is born marked incomplete, so a crash at any point is recognisable.
        marked: dict[str, Any] = {
            ATTRS_KEY: {**attrs, "status": "incomplete", "chunk_rows": chunk_rows}
        }
        group = zarr.open_group(as_text(path), mode="w-", attributes=marked)
        group.create_array(
            "vectors", shape=(n_rows, dim), chunks=(chunk_rows, dim), dtype="float32"
        )
        if with_background:
            group.create_array("background", shape=(n_rows,), chunks=(chunk_rows,), dtype="float32")
        id_array = group.create_array("ids", shape=(n_rows,), chunks=(chunk_rows,), dtype=str)
        if ids is not None:
            # One output chunk of ids in memory at a time.
            for _, start, stop in chunk_ranges(n_rows, chunk_rows):
                id_array[start:stop] = ids.read(start, stop)
        n_chunks = -(-n_rows // chunk_rows)
        group.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0)
        return cls(as_text(path), group)

    @classmethod
    def open(cls, path: Location) -> ChunkedStore:
        """Open a store for writing more chunks."""
        try:
            group = zarr.open_group(as_text(path), mode="r+")
        except Exception:
            raise InputError(f"{path}: not a streamnorm store") from None
        return cls(as_text(path), group)

    def is_intact(self) -> bool:
        """True when every array a crash during creation could have left out is there."""
        needed = {"vectors", "ids", "done"}
        return needed <= set(self.group.array_keys())

    @property
    def attrs(self) -> dict[str, Any]:
        """The streamnorm attributes."""
        return streamnorm_attrs(self.group)

    @property
    def chunk_rows(self) -> int:
        """Rows per chunk."""
        return int(self.attrs["chunk_rows"])

    @property
    def n_rows(self) -> int:
        """Rows the store is sized for."""
        return int(array(self.group, "vectors").shape[0])

    def pending_chunks(self) -> list[tuple[int, int, int]]:
        """Chunks whose done-marker is not set yet."""
        done = np.asarray(array(self.group, "done")[:])
        return [c for c in chunk_ranges(self.n_rows, self.chunk_rows) if not done[c[0]]]

    def update_attrs(self, changes: dict[str, Any]) -> None:
        """Change some streamnorm attributes in one metadata write."""
        self.group.attrs.update({ATTRS_KEY: {**self.attrs, **changes}})

    def resize(self, n_rows: int) -> None:
        """Grow every row array to ``n_rows`` (a metadata change) and add done-markers."""
        for name in ("vectors", "background", "ids"):
            if name in self.group:
                member = array(self.group, name)
                member.resize((n_rows, *member.shape[1:]))
        done = array(self.group, "done")
        n_chunks = -(-n_rows // self.chunk_rows)
        if done.shape[0] != n_chunks:
            old = done.shape[0]
            done.resize((n_chunks,))
            # Markers of new chunks must read as not done, whatever a crash left there.
            done[old:n_chunks] = 0

    def mark_complete(self, extra: dict[str, Any] | None = None) -> None:
        """Declare the store complete after checking every done-marker."""
        missing = self.pending_chunks()
        if missing:
            raise RuntimeError(f"{self.path}: {len(missing)} chunks were not written")
        self.group.attrs.update({ATTRS_KEY: {**self.attrs, **(extra or {}), "status": "complete"}})
        # Temporary files of writes that a crash cut short are no use any more.
        if not is_url(self.path):
            for leftover in Path(self.path).rglob("*.partial"):
                leftover.unlink(missing_ok=True)


def write_chunk(
    path: str,
    chunk_index: int,
    start: int,
    vectors: np.ndarray,
    background: np.ndarray | None = None,
    ids: np.ndarray | list[str] | None = None,
) -> int:
    """Write one chunk's rows, then its done-marker. Safe to run in any worker process."""
    group = zarr.open_group(path, mode="r+")
    stop = start + vectors.shape[0]
    array(group, "vectors")[start:stop] = vectors
    if background is not None:
        array(group, "background")[start:stop] = background
    if ids is not None:
        array(group, "ids")[start:stop] = np.asarray(ids)
    # The marker goes last: a crash before it leaves the chunk pending, never half-done.
    array(group, "done")[chunk_index] = 1
    return int(vectors.shape[0])
