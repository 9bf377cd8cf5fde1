"""ISC HDF5 layouts: descriptor files and the track-2 submission file.

Both are written block by block into a temporary file that is renamed into place only
when complete.
"""

from __future__ import annotations

import h5py
import numpy as np

from streamnorm.atomic import atomic_output
from streamnorm.errors import ModelMismatchError
from streamnorm.locations import Location
from streamnorm.sources import DescriptorSource, open_source

_BLOCK_ROWS = 65536


def _copy_vectors(handle: h5py.File, name: str, source: DescriptorSource) -> None:
    dataset = handle.create_dataset(name, shape=(source.n_rows, source.dim), dtype="float32")
    for start in range(0, source.n_rows, _BLOCK_ROWS):
        stop = min(source.n_rows, start + _BLOCK_ROWS)
        dataset[start:stop] = np.asarray(source.vectors[start:stop], dtype=np.float32)


def _ids_dataset(handle: h5py.File, name: str, ids: np.ndarray) -> None:
    values = np.array(ids.tolist(), dtype=object)
    handle.create_dataset(name, data=values, dtype=h5py.string_dtype(encoding="utf-8"))


def export_descriptors(store: Location, out: Location, overwrite: bool = False) -> int:
    """Write a store as an ISC descriptor file (``vectors``, ``image_names``).

    Returns
    -------
    int
        Rows written.
    """
    source = open_source(store)
    with atomic_output(out, overwrite) as staging, h5py.File(staging, "w") as handle:
        _copy_vectors(handle, "vectors", source)
        _ids_dataset(handle, "image_names", source.ids)
    return source.n_rows


def export_submission(
    queries: Location, references: Location, out: Location, overwrite: bool = False
) -> tuple[int, int]:
    """Write the track-2 submission file (query, reference, query_ids, reference_ids).

    Returns
    -------
    tuple of int
        Query and reference rows written.
    """
    q_source, r_source = open_source(queries), open_source(references)
    if q_source.attrs.get("model_fingerprint") != r_source.attrs.get("model_fingerprint"):
        raise ModelMismatchError(f"{queries} and {references} were made with different models")
    for source, role in ((q_source, "query"), (r_source, "reference")):
        if source.is_normalized and source.attrs.get("role") != role:
            raise ModelMismatchError(
                f"{source.path}: normalized as a {source.attrs.get('role')}, "
                f"but given as the {role} side"
            )
    if q_source.dim != r_source.dim:
        raise ModelMismatchError(
            f"{queries} has dimension {q_source.dim}, {references} {r_source.dim}"
        )
    with atomic_output(out, overwrite) as staging, h5py.File(staging, "w") as handle:
        _copy_vectors(handle, "query", q_source)
        _copy_vectors(handle, "reference", r_source)
        _ids_dataset(handle, "query_ids", q_source.ids)
        _ids_dataset(handle, "reference_ids", r_source.ids)
    return q_source.n_rows, r_source.n_rows
