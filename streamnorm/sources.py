"""Reading descriptor inputs: zarr descriptor stores, ISC HDF5 files and .npy files.

Every input is opened as a :class:`DescriptorSource`: row-sliceable vectors plus ids,
both read a block of rows at a time. Structural problems (missing file, wrong layout,
dtype, duplicate ids, length mismatch, empty input) are found when opening; value
problems (NaN, Inf, zero rows) are found when a block is read, with the offending row
named.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import h5py
import numpy as np
import zarr

from streamnorm.errors import InputError
from streamnorm.id_column import ID_BLOCK_ROWS, IdColumn, check_unique
from streamnorm.kernel import Float32Array
from streamnorm.locations import (
    Location,
    as_text,
    exists,
    is_dir,
    is_url,
    local_copy,
    open_file,
    read_text,
    suffix,
)
from streamnorm.store import array, streamnorm_attrs

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
_DIGEST_GROUP_ROWS = 65_536
# identity() joins whole read blocks, so the digest's groups must be made of them.
assert _DIGEST_GROUP_ROWS % ID_BLOCK_ROWS == 0


@dataclass
class DescriptorSource:
    """Descriptors that can be read a block of rows at a time.

    Attributes
    ----------
    path : str
        Where the data live, for messages and provenance.
    vectors : array-like, shape (n, d)
        A zarr array, h5py dataset or memory-mapped array; never loaded whole.
    id_column : IdColumn
        One unique id per row, read on demand.
    attrs : dict
        The store's streamnorm attributes, empty for plain inputs.
    """

    path: str
    vectors: Any
    id_column: IdColumn
    attrs: dict[str, Any] = field(default_factory=dict)
    background: Any = None

    @cached_property
    def ids(self) -> np.ndarray:
        """Every id in memory (``n_rows`` strings); passes over rows use ``id_column``."""
        return self.id_column.load()

    @property
    def n_rows(self) -> int:
        """Number of descriptors."""
        return int(self.vectors.shape[0])

    @property
    def dim(self) -> int:
        """Stored dimension."""
        return int(self.vectors.shape[1])

    @property
    def is_normalized(self) -> bool:
        """True for a store written by ``streamnorm normalize``."""
        return "model_fingerprint" in self.attrs

    def read(self, start: int, stop: int) -> Float32Array:
        """Rows ``[start, stop)`` as validated float32."""
        return validate_block(self.vectors[start:stop], start, self.path)

    def identity(self) -> dict[str, Any]:
        """A cheap fingerprint of the content: shape, ids and the first and last rows.

        The path is left out, so the same data reached another way (a relative path, a
        copy in object storage) is recognised as the same input.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps([self.n_rows, self.dim]).encode())
        # The ids joined by newlines within groups of 65,536 rows and not between groups,
        # as stores and match states have always recorded them; read a block at a time.
        for start, ids in self.id_column.blocks(ID_BLOCK_ROWS):
            if start % _DIGEST_GROUP_ROWS:
                digest.update(b"\n")
            digest.update("\n".join(ids.tolist()).encode())
        edge = min(self.n_rows, 64)
        digest.update(np.ascontiguousarray(self.vectors[:edge], dtype=np.float32).tobytes())
        digest.update(np.ascontiguousarray(self.vectors[-edge:], dtype=np.float32).tobytes())
        return {
            "rows": self.n_rows,
            "dim": self.dim,
            "sha256": digest.hexdigest(),
        }


def validate_block(block: Any, offset: int, path: str) -> Float32Array:
    """Convert a block to float32 and reject NaN, Inf and zero rows, naming the row."""
    array = np.asarray(block)
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{path}: vectors must be floating point, found dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = offset + int(np.argmin(finite))
        raise InputError(f"{path}: row {row} contains NaN or Inf")
    zero = ~array.any(axis=1)
    if zero.any():
        row = offset + int(np.argmax(zero))
        raise InputError(f"{path}: row {row} is a zero vector and cannot be normalized")
    return array


def open_source(
    path: Location, ids_path: Location | None = None, *, check_ids: bool = True
) -> DescriptorSource:
    """Open any supported descriptor input.

    Parameters
    ----------
    path : str or Path
        A zarr descriptor store (group with ``vectors`` and ``ids``), an ISC HDF5 file
        (``vectors``, ``image_names``) or a ``.npy`` matrix; local or any fsspec URL.
    ids_path : str or Path, optional
        For ``.npy`` inputs: a text file with one id per line. Row numbers otherwise.
    check_ids : bool
        Check that ids are unique and non-empty (one streamed pass over them). Workers
        reopening an input the client has already checked skip it.

    Raises
    ------
    InputError
        With a one-line message naming the file.
    """
    text = as_text(path)
    if not exists(path):
        raise InputError(f"{text}: no such file or store")
    kind = suffix(path)
    if kind == ".npy":
        source = _open_npy(path, ids_path)
    elif kind in HDF5_SUFFIXES:
        source = _open_hdf5(path)
    elif is_dir(path):
        source = _open_zarr(path)
    else:
        raise InputError(f"{text}: not a descriptor store, ISC HDF5 file or .npy file")
    _check_layout(source)
    if check_ids:
        check_unique([source.id_column], source.path)
    return source


def _open_npy(location: Location, ids_path: Location | None) -> DescriptorSource:
    try:
        # Memory-mapped, so only the rows read are loaded (remote files are fetched first).
        vectors = np.load(local_copy(location), mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise InputError(f"{location}: unreadable .npy file ({error})") from None
    if ids_path is None:
        ids = IdColumn.row_numbers(vectors.shape[0] if vectors.ndim else 0)
    else:
        if not exists(ids_path):
            raise InputError(f"{ids_path}: no such ids file")
        # A text file has no row index to seek by, so its ids are held in memory.
        ids = IdColumn.from_array(np.array(read_text(ids_path).splitlines()))
    return DescriptorSource(as_text(location), vectors, ids)


def _open_hdf5(location: Location) -> DescriptorSource:
    try:
        handle = h5py.File(open_file(location) if is_url(location) else location, "r")
    except OSError as error:
        raise InputError(f"{location}: unreadable HDF5 file ({error})") from None
    if "vectors" not in handle or "image_names" not in handle:
        raise InputError(
            f"{location}: not an ISC descriptor file (needs 'vectors' and 'image_names')"
        )
    ids = IdColumn.from_strings(handle["image_names"])
    return DescriptorSource(as_text(location), handle["vectors"], ids)


def _open_zarr(location: Location) -> DescriptorSource:
    try:
        group = zarr.open_group(as_text(location), mode="r")
    except Exception:
        raise InputError(f"{location}: not a descriptor store (no zarr group here)") from None
    # Status first: a run killed early leaves an incomplete store without its arrays.
    attrs = streamnorm_attrs(group)
    if attrs and attrs.get("status") != "complete":
        raise InputError(
            f"{location}: store is incomplete (an interrupted run); rerun the command that made it"
        )
    members = set(group.array_keys())
    if not {"vectors", "ids"} <= members:
        raise InputError(f"{location}: not a descriptor store (needs 'vectors' and 'ids' arrays)")
    background = array(group, "background") if "background" in members else None
    ids = IdColumn.from_strings(array(group, "ids"))
    return DescriptorSource(as_text(location), array(group, "vectors"), ids, attrs, background)


def _check_layout(source: DescriptorSource) -> None:
    shape = source.vectors.shape
    if len(shape) != 2:
        raise InputError(f"{source.path}: vectors must be a 2-D matrix, found shape {shape}")
    if not np.issubdtype(source.vectors.dtype, np.floating):
        raise InputError(
            f"{source.path}: vectors must be floating point, found dtype {source.vectors.dtype}"
        )
    if shape[0] == 0 or shape[1] == 0:
        raise InputError(f"{source.path}: input is empty (shape {shape})")
    if len(source.id_column) != shape[0]:
        raise InputError(
            f"{source.path}: {len(source.id_column)} ids for {shape[0]} vectors; they must match"
        )
