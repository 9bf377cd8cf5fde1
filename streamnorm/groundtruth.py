"""Reading ISC21-style ground-truth and prediction files.

Ground truth is a CSV file with the header ``query_id,reference_id``; a line with an
empty reference (``Q00001,``) lists a query that has no match. Predictions are a CSV file
with the header ``query_id,reference_id,score`` or a Parquet file with those three columns.

Every malformed file raises :class:`~streamnorm.errors.InputError` whose one-line message
names the file and the offending line (1-based, the header is line 1) or, for Parquet,
the offending row (1-based).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from streamnorm.errors import InputError

__all__ = ["GroundTruth", "Predictions", "read_ground_truth", "read_predictions"]

GROUND_TRUTH_HEADER = ("query_id", "reference_id")
PREDICTIONS_HEADER = ("query_id", "reference_id", "score")


@dataclass(frozen=True)
class GroundTruth:
    """Ground-truth copy pairs.

    Attributes
    ----------
    queries
        Every query listed in the file, whether it has a match or not.
    pairs
        The ``(query_id, reference_id)`` pairs that are true copies.
    """

    queries: frozenset[str]
    pairs: frozenset[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.pairs)


@dataclass(eq=False)
class Predictions:
    """Scored ``(query, reference)`` candidate pairs, one array element per prediction.

    Attributes
    ----------
    query_ids, reference_ids
        Object arrays of ``str``.
    scores
        ``float64`` array; a higher score means a more likely copy.
    """

    query_ids: npt.NDArray[np.object_]
    reference_ids: npt.NDArray[np.object_]
    scores: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        self.query_ids = np.asarray(self.query_ids, dtype=object)
        self.reference_ids = np.asarray(self.reference_ids, dtype=object)
        self.scores = np.asarray(self.scores, dtype=np.float64)
        shapes = {a.shape for a in (self.query_ids, self.reference_ids, self.scores)}
        if len(shapes) != 1 or self.scores.ndim != 1:
            raise ValueError(f"prediction arrays must be 1-D and of equal length, got {shapes}")

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _fail(path: Path, where: str, problem: str) -> InputError:
    # Values from the file are repr()-ed so that the message stays on one line.
    return InputError(f"{path}, {where}: {problem}")


def _csv_rows(path: Path, kind: str, header: tuple[str, ...]) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every non-blank data row after a checked header."""
    if not path.is_file():
        raise InputError(f"{path}: {kind} file not found")
    reader = None
    try:
        # utf-8-sig: spreadsheet exports often start with a byte-order mark.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            first = next(reader, None)
            if first is None:
                raise _fail(path, "line 1", f"empty file, expected header {','.join(header)!r}")
            if tuple(field.strip() for field in first) != header:
                raise _fail(
                    path,
                    "line 1",
                    f"expected header {','.join(header)!r}, got {','.join(first)[:80]!r}",
                )
            for row in reader:
                if row:
                    yield reader.line_num, row
    except UnicodeDecodeError as exc:
        # The text layer decodes in chunks, so its position says little; find the line.
        where = f"line {_first_undecodable_line(path)}"
        raise _fail(path, where, f"not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        where = f"line {reader.line_num}" if reader is not None else "line 1"
        raise _fail(path, where, f"malformed CSV ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read {kind} file ({exc.strerror or exc})") from None


def _first_undecodable_line(path: Path) -> int:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def read_ground_truth(path: str | Path) -> GroundTruth:
    """Read an ISC ground-truth CSV file.

    Parameters
    ----------
    path
        CSV file with header ``query_id,reference_id``. A row with an empty reference
        lists a query without a match.

    Returns
    -------
    GroundTruth

    Raises
    ------
    InputError
        If the file is missing, lacks the header, or a row has the wrong number of
        fields, an empty query id or repeats a pair.
    """
    path = Path(path)
    queries: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    for line, row in _csv_rows(path, "ground-truth", GROUND_TRUTH_HEADER):
        if len(row) != 2:
            raise _fail(path, f"line {line}", f"expected 2 fields, got {len(row)}")
        query, reference = row[0].strip(), row[1].strip()
        if not query:
            raise _fail(path, f"line {line}", "empty query id")
        queries.add(query)
        if not reference:
            continue
        pair = (query, reference)
        if pair in pairs:
            raise _fail(path, f"line {line}", f"duplicate pair {query},{reference}")
        pairs.add(pair)
    return GroundTruth(queries=frozenset(queries), pairs=frozenset(pairs))


def _collect(
    records: Iterable[tuple[int, object, object, object]],
    fail: Callable[[int, str], InputError],
    known_queries: frozenset[str] | None,
) -> Predictions:
    """Validate ``(position, query, reference, score)`` records into :class:`Predictions`."""
    query_ids: list[str] = []
    reference_ids: list[str] = []
    scores: list[float] = []
    seen: set[tuple[str, str]] = set()
    isfinite = math.isfinite
    for position, raw_query, raw_reference, raw_score in records:
        query = raw_query.strip() if isinstance(raw_query, str) else ""
        if not query:
            raise fail(position, "empty query id")
        reference = raw_reference.strip() if isinstance(raw_reference, str) else ""
        if not reference:
            raise fail(position, "empty reference id")
        try:
            # float() would read "1_000" as 1000, which no other CSV reader does.
            if isinstance(raw_score, str) and "_" in raw_score:
                raise ValueError(raw_score)
            score = float(raw_score)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise fail(position, f"score {raw_score!r} is not a number") from None
        if not isfinite(score):
            raise fail(position, f"score {raw_score!r} is not finite")
        if known_queries is not None and query not in known_queries:
            raise fail(position, f"unknown query id {query!r} (not in the ground truth)")
        pair = (query, reference)
        if pair in seen:
            raise fail(position, f"duplicate pair {query},{reference}")
        seen.add(pair)
        query_ids.append(query)
        reference_ids.append(reference)
        scores.append(score)
    return Predictions(
        query_ids=np.array(query_ids, dtype=object),
        reference_ids=np.array(reference_ids, dtype=object),
        scores=np.array(scores, dtype=np.float64),
    )


def _csv_records(path: Path) -> Iterator[tuple[int, object, object, object]]:
    for line, row in _csv_rows(path, "predictions", PREDICTIONS_HEADER):
        if len(row) != 3:
            raise _fail(path, f"line {line}", f"expected 3 fields, got {len(row)}")
        yield line, row[0], row[1], row[2]


def _table_records(table: pa.Table) -> Iterator[tuple[int, object, object, object]]:
    columns = [table.column(name).to_pylist() for name in PREDICTIONS_HEADER]
    for row, (query, reference, score) in enumerate(zip(*columns, strict=True), start=1):
        yield row, query, reference, score


def _fast_predictions(table: pa.Table, known_queries: frozenset[str] | None) -> Predictions | None:
    """Vectorised validation of a well-typed table; ``None`` if any row looks wrong.

    Only the happy path is handled here: on any doubt the caller re-reads the data row by
    row, which is slower but can say which line is at fault.
    """
    if table.column_names != list(PREDICTIONS_HEADER):
        return None
    scores_col = table.column("score")
    if scores_col.null_count:
        return None
    # Integer scores beyond 2**53 round, as they would anywhere else scores become floats.
    scores = np.asarray(scores_col.cast(pa.float64(), safe=False).to_numpy(), dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        return None
    ids = []
    for name in ("query_id", "reference_id"):
        column = pc.utf8_trim_whitespace(table.column(name).cast(pa.large_string()))
        if column.null_count or pc.any(pc.equal(pc.utf8_length(column), 0)).as_py():
            return None
        ids.append(column)
    queries, references = ids
    if known_queries is not None and len(table):
        value_set = pa.array(list(known_queries), type=pa.large_string())
        if not pc.all(pc.is_in(queries, value_set=value_set)).as_py():
            return None
    if len(table) > 1:
        # Pairs are encoded as one integer each so that duplicates show up after a sort.
        query_codes = pc.dictionary_encode(queries).combine_chunks()
        reference_codes = pc.dictionary_encode(references).combine_chunks()
        keys = np.asarray(query_codes.indices, dtype=np.int64) * len(
            reference_codes.dictionary
        ) + np.asarray(reference_codes.indices, dtype=np.int64)
        keys.sort()
        if np.any(keys[1:] == keys[:-1]):
            return None
    return Predictions(
        query_ids=queries.to_numpy(zero_copy_only=False),
        reference_ids=references.to_numpy(zero_copy_only=False),
        scores=scores,
    )


def _read_csv_table(path: Path) -> pa.Table | None:
    text = pa.string()
    options = pacsv.ConvertOptions(
        column_types={"query_id": text, "reference_id": text, "score": pa.float64()}
    )
    try:
        return pacsv.read_csv(path, convert_options=options)
    except (pa.ArrowException, OSError):
        return None


def _read_parquet_table(path: Path) -> pa.Table:
    if not path.is_file():
        raise InputError(f"{path}: predictions file not found")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        # Arrow messages can span lines; only the first one is useful to a user.
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot read Parquet predictions ({message})") from None
    missing = [name for name in PREDICTIONS_HEADER if name not in table.column_names]
    if missing:
        raise InputError(f"{path}: missing Parquet column(s) {', '.join(missing)}")
    table = table.select(list(PREDICTIONS_HEADER))
    for name in ("query_id", "reference_id"):
        kind = table.schema.field(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{path}: Parquet column {name!r} must hold strings, not {kind}")
    kind = table.schema.field("score").type
    if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        raise InputError(f"{path}: Parquet column 'score' must be numeric, not {kind}")
    return table


def read_predictions(path: str | Path, ground_truth: GroundTruth | None = None) -> Predictions:
    """Read scored predictions from CSV or Parquet.

    Parameters
    ----------
    path
        CSV file with header ``query_id,reference_id,score``, or a file ending in
        ``.parquet`` with those three columns (ids as strings, score numeric).
    ground_truth
        If given, every predicted query must be listed in it.

    Returns
    -------
    Predictions
        Ids are stripped of surrounding whitespace.

    Raises
    ------
    InputError
        If the file is missing or lacks the header, or a line (Parquet: row) has the
        wrong number of fields, an empty id, a non-numeric or non-finite score, repeats
        a ``(query, reference)`` pair or names a query unknown to ``ground_truth``.
    """
    path = Path(path)
    known = ground_truth.queries if ground_truth is not None else None
    if path.suffix.lower() == ".parquet":
        table = _read_parquet_table(path)
        fast = _fast_predictions(table, known)
        if fast is not None:
            return fast
        return _collect(
            _table_records(table), lambda row, msg: _fail(path, f"row {row}", msg), known
        )
    csv_table = _read_csv_table(path) if path.is_file() else None
    fast = _fast_predictions(csv_table, known) if csv_table is not None else None
    if fast is not None:
        return fast
    return _collect(_csv_records(path), lambda line, msg: _fail(path, f"line {line}", msg), known)
