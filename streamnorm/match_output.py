"""Writing track-1 predictions, streamed to disk block by block.

Rows are formatted and written a block at a time (CSV) or as one Parquet row group per
block, so no list of all rows is ever built. The file appears under its name only once
complete (:func:`streamnorm.atomic.atomic_output`).

CSV: header ``query_id,reference_id,score``; scores are written with Python's shortest
round-trip ``repr``, so reading them back gives the exact float64. Parquet: columns
``query_id`` (string), ``reference_id`` (string), ``score`` (float64), same rows.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from streamnorm.atomic import atomic_output
from streamnorm.kernel import Float64Array
from streamnorm.locations import Location, suffix

WRITE_BLOCK_ROWS = 65536
HEADER = ("query_id", "reference_id", "score")


class PredictionRows(Protocol):
    """Predictions in output order, handed out a block at a time."""

    def __len__(self) -> int:
        """Number of predictions."""
        ...

    def block(self, part: slice) -> tuple[np.ndarray, np.ndarray, Float64Array]:
        """Query ids, reference ids and scores of the rows in ``part``."""
        ...


def is_parquet(path: Location) -> bool:
    """Whether predictions go to Parquet (by the file suffix)."""
    return suffix(path) == ".parquet"


def _blocks(n_rows: int, block_rows: int) -> Iterator[slice]:
    for start in range(0, n_rows, block_rows):
        yield slice(start, min(n_rows, start + block_rows))


def write_predictions(
    path: Location,
    rows: PredictionRows,
    *,
    overwrite: bool = True,
    block_rows: int = WRITE_BLOCK_ROWS,
) -> None:
    """Write predictions in the given order as CSV, or Parquet for a ``.parquet`` path.

    Parameters
    ----------
    path : str or Path
    rows : PredictionRows
        The predictions, in the order they are written.
    overwrite : bool
        Replace an existing file.
    block_rows : int
        Rows formatted and written at a time (one Parquet row group each).
    """
    with atomic_output(path, overwrite=overwrite) as staging:
        if is_parquet(path):
            _write_parquet(staging, rows, block_rows)
        else:
            _write_csv(staging, rows, block_rows)


def _write_csv(path: Path, rows: PredictionRows, block_rows: int) -> None:
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(HEADER)
        for part in _blocks(len(rows), block_rows):
            query_ids, reference_ids, scores = rows.block(part)
            writer.writerows(
                zip(
                    query_ids.tolist(),
                    reference_ids.tolist(),
                    map(repr, scores.tolist()),
                    strict=True,
                )
            )


def _write_parquet(path: Path, rows: PredictionRows, block_rows: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [("query_id", pa.string()), ("reference_id", pa.string()), ("score", pa.float64())]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for part in _blocks(len(rows), block_rows):
            query_ids, reference_ids, scores = rows.block(part)
            table = pa.table(
                {
                    "query_id": pa.array(query_ids.astype(str), pa.string()),
                    "reference_id": pa.array(reference_ids.astype(str), pa.string()),
                    "score": pa.array(scores, pa.float64()),
                },
                schema=schema,
            )
            writer.write_table(table, row_group_size=block_rows)
