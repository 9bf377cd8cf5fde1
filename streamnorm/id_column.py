"""Descriptor ids read a block of rows at a time, and checked without holding them all.

A million ids held as numpy unicode take tens of bytes a row, and sorting them to find
duplicates takes as much again, so a pass over an input whose memory must not grow with
its length reads ids in blocks. Uniqueness is checked with one 64-bit hash per row
(8 bytes a row); rows whose hashes collide are then compared as strings, so a hash
collision can never be reported as a duplicate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamnorm.errors import InputError

# Rows converted at once: zarr and h5py hand out strings as Python objects (about
# 70 bytes a row), so converting a whole column in one go would grow with the input.
ID_BLOCK_ROWS = 8192

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


@dataclass(frozen=True)
class IdColumn:
    """One id per row, read on demand.

    Attributes
    ----------
    n_rows : int
        Number of ids.
    reader : callable
        ``reader(start, stop)`` returns the ids of rows ``[start, stop)`` as a numpy
        unicode array.
    """

    n_rows: int
    reader: Callable[[int, int], np.ndarray]

    def __len__(self) -> int:
        return self.n_rows

    def read(self, start: int, stop: int) -> np.ndarray:
        """Ids of rows ``[start, stop)`` as a fixed-width numpy unicode array."""
        stop = min(stop, self.n_rows)
        if stop <= start:
            return np.array([], dtype="<U1")
        return self.reader(start, stop)

    def blocks(self, rows: int = ID_BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, ids)`` for consecutive blocks of at most ``rows`` ids."""
        for start in range(0, self.n_rows, rows):
            yield start, self.read(start, start + rows)

    def load(self) -> np.ndarray:
        """Every id at once, for callers that need random access to all of them."""
        blocks = [block for _, block in self.blocks()]
        return np.concatenate(blocks) if blocks else np.array([], dtype="<U1")

    @classmethod
    def from_array(cls, ids: np.ndarray) -> IdColumn:
        """A column over ids already in memory."""
        held = np.asarray(ids).astype(str)
        return cls(len(held), lambda start, stop: held[start:stop])

    @classmethod
    def from_strings(cls, column: Any) -> IdColumn:
        """A column over a sliceable array of strings (zarr array or h5py dataset)."""
        return cls(int(column.shape[0]), lambda start, stop: as_unicode(column[start:stop]))

    @classmethod
    def row_numbers(cls, n_rows: int) -> IdColumn:
        """Ids ``"0"``, ``"1"``, ... for inputs that carry none."""
        return cls(n_rows, lambda start, stop: np.arange(start, stop).astype(str))


def as_unicode(block: Any) -> np.ndarray:
    """A block of strings (Python objects, bytes or numpy strings) as fixed-width unicode."""
    values = np.asarray(block)
    if values.dtype.kind == "T":  # numpy's variable-width StringDType needs a width
        width = int(np.strings.str_len(values).max()) if values.size else 1
        return values.astype(f"<U{max(width, 1)}")
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    if values.dtype.kind == "O":
        return np.array(
            [v.decode() if isinstance(v, bytes) else str(v) for v in values.tolist()], dtype=str
        )
    return values.astype(str)


def hash_ids(ids: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-1a hash of each id, independent of the array's string width.

    Equal strings always get equal hashes; unequal strings very rarely do (about one
    pair in 10^7 among a million ids), which :func:`check_unique` resolves exactly.
    """
    ids = np.ascontiguousarray(ids, dtype=str)
    hashes = np.full(ids.shape[0], _FNV_OFFSET, dtype=np.uint64)
    width = ids.dtype.itemsize // 4
    if ids.size == 0 or width == 0:
        return hashes
    codes = ids.view(np.uint32).reshape(ids.shape[0], width)
    with np.errstate(over="ignore"):
        for position in range(width):
            code = codes[:, position]
            # Padding (code 0) leaves the hash alone, so the array's width does not matter.
            mixed = (hashes ^ code.astype(np.uint64)) * _FNV_PRIME
            np.copyto(hashes, mixed, where=code != 0)
    return hashes


def check_unique(columns: Sequence[IdColumn], path: str) -> None:
    """Reject duplicate or empty ids across columns numbered one after another.

    Parameters
    ----------
    columns : sequence of IdColumn
        Rows of the second column are numbered after those of the first, and so on.
    path : str
        Names the input in messages.

    Raises
    ------
    InputError
        Naming the smallest duplicated id and its first two rows, or the first empty id.
    """
    total = sum(len(column) for column in columns)
    hashes = np.empty(total, dtype=np.uint64)
    first_empty: int | None = None
    for offset, ids in _numbered_blocks(columns):
        hashes[offset : offset + len(ids)] = hash_ids(ids)
        empty = ids == ""
        if first_empty is None and empty.any():
            first_empty = offset + int(np.argmax(empty))
    hashes.sort()
    repeated = np.unique(hashes[1:][hashes[1:] == hashes[:-1]])
    del hashes
    if repeated.size:
        _report_duplicates(columns, repeated, path)
    if first_empty is not None:
        raise InputError(f"{path}: empty id at row {first_empty}")


def _numbered_blocks(columns: Sequence[IdColumn]) -> Iterator[tuple[int, np.ndarray]]:
    offset = 0
    for column in columns:
        for start, ids in column.blocks():
            yield offset + start, ids
        offset += len(column)


def _report_duplicates(columns: Sequence[IdColumn], repeated: np.ndarray, path: str) -> None:
    """Compare the rows whose hashes repeat as strings; raise for a true duplicate."""
    rows_of: dict[str, list[int]] = {}
    for offset, ids in _numbered_blocks(columns):
        for row in np.flatnonzero(np.isin(hash_ids(ids), repeated)).tolist():
            rows_of.setdefault(str(ids[row]), []).append(offset + row)
    duplicated = sorted(identifier for identifier, rows in rows_of.items() if len(rows) > 1)
    if duplicated:
        first, second = rows_of[duplicated[0]][:2]
        raise InputError(f"{path}: duplicate id {duplicated[0]!r} at rows {first} and {second}")
