"""Reading ground-truth and prediction files, and how bad files are reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from streamnorm.errors import InputError
from streamnorm.groundtruth import GroundTruth, read_ground_truth, read_predictions

GT_HEADER = "query_id,reference_id\n"
PRED_HEADER = "query_id,reference_id,score\n"


def write(tmp_path: Path, text: str, name: str = "file.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def expect_error(call: Callable[[], object], path: Path, where: str | None) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert str(path) in message
    if where is not None:
        assert f"{where}:" in message
    assert "\n" not in message
    return message


# --- ground truth -------------------------------------------------------------------------


def test_ground_truth_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, GT_HEADER + "Q1,R1\nQ2,\nQ3,R3\nQ1,R5\n")
    truth = read_ground_truth(path)
    assert truth.queries == {"Q1", "Q2", "Q3"}
    assert truth.pairs == {("Q1", "R1"), ("Q3", "R3"), ("Q1", "R5")}
    assert len(truth) == 3


def test_ground_truth_tolerates_bom_crlf_and_trailing_blank_line(tmp_path: Path) -> None:
    path = write(tmp_path, "\ufeff" + GT_HEADER.replace("\n", "\r\n") + "Q1,R1\r\nQ2,\r\n\r\n")
    truth = read_ground_truth(path)
    assert truth == GroundTruth(queries=frozenset({"Q1", "Q2"}), pairs=frozenset({("Q1", "R1")}))


def test_ground_truth_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    message = expect_error(lambda: read_ground_truth(path), path, None)
    assert "not found" in message


@pytest.mark.parametrize(
    "text",
    ["", "query,reference\nQ1,R1\n", "Q1,R1\nQ2,R2\n", "query_id,reference_id,score\n"],
    ids=["empty", "wrong-names", "no-header", "too-many-columns"],
)
def test_ground_truth_bad_header(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    expect_error(lambda: read_ground_truth(path), path, "line 1")


def test_ground_truth_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path, GT_HEADER + "Q1,R1\nQ2,R2,0.5\n")
    message = expect_error(lambda: read_ground_truth(path), path, "line 3")
    assert "2 fields" in message


def test_ground_truth_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes(GT_HEADER.encode() + b"Q1,R1\nQ2,R2\nQ\xe9,R3\n")
    message = expect_error(lambda: read_ground_truth(path), path, "line 4")
    assert "UTF-8" in message


def test_ground_truth_duplicate_pair(tmp_path: Path) -> None:
    path = write(tmp_path, GT_HEADER + "Q1,R1\nQ2,R2\n\nQ1,R1\n")
    # The blank line still counts: the duplicate is on line 5.
    message = expect_error(lambda: read_ground_truth(path), path, "line 5")
    assert "duplicate" in message


def test_ground_truth_empty_query(tmp_path: Path) -> None:
    path = write(tmp_path, GT_HEADER + ",R1\n")
    message = expect_error(lambda: read_ground_truth(path), path, "line 2")
    assert "query" in message


# --- predictions --------------------------------------------------------------------------


def test_predictions_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, PRED_HEADER + "Q1,R1,0.5\nQ1,R2,-3\nQ2, R1 ,1e-3\n")
    predictions = read_predictions(path)
    assert len(predictions) == 3
    assert predictions.query_ids.tolist() == ["Q1", "Q1", "Q2"]
    assert predictions.reference_ids.tolist() == ["R1", "R2", "R1"]
    assert predictions.scores.dtype == np.float64
    np.testing.assert_array_equal(predictions.scores, [0.5, -3.0, 0.001])


def test_predictions_header_only(tmp_path: Path) -> None:
    predictions = read_predictions(write(tmp_path, PRED_HEADER))
    assert len(predictions) == 0
    assert predictions.scores.dtype == np.float64


def test_predictions_known_queries_accepted(tmp_path: Path) -> None:
    truth = GroundTruth(queries=frozenset({"Q1", "Q2"}), pairs=frozenset({("Q1", "R1")}))
    path = write(tmp_path, PRED_HEADER + "Q1,R1,0.5\nQ2,R9,0.1\n")
    assert len(read_predictions(path, truth)) == 2


def test_predictions_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    expect_error(lambda: read_predictions(path), path, None)


@pytest.mark.parametrize(
    ("body", "where", "fragment"),
    [
        ("Q1,R1\n", "line 1", "header"),
        (PRED_HEADER + "Q1,R1,0.5\nQ2,R2\n", "line 3", "3 fields"),
        (PRED_HEADER + "Q1,R1,0.5,7\n", "line 2", "3 fields"),
        (PRED_HEADER + "Q1,R1,abc\n", "line 2", "not a number"),
        (PRED_HEADER + "Q1,R1,\n", "line 2", "not a number"),
        (PRED_HEADER + "Q1,R1,0.1\nQ1,R2,1_000\n", "line 3", "not a number"),
        (PRED_HEADER + "Q1,R1,0.1\nQ1,R2,nan\n", "line 3", "not finite"),
        (PRED_HEADER + "Q1,R1,0.1\nQ1,R2,-inf\n", "line 3", "not finite"),
        (PRED_HEADER + "Q1,R1,0.1\nQ1,R2,0.2\n\nQ1,R1,0.3\n", "line 5", "duplicate"),
        (PRED_HEADER + ",R1,0.1\n", "line 2", "query"),
        (PRED_HEADER + "Q1, ,0.1\n", "line 2", "reference"),
    ],
    ids=[
        "no-header",
        "too-few-fields",
        "too-many-fields",
        "non-numeric",
        "empty-score",
        "underscore-digits",
        "nan",
        "inf",
        "duplicate-after-blank-line",
        "empty-query",
        "empty-reference",
    ],
)
def test_predictions_bad_csv(tmp_path: Path, body: str, where: str, fragment: str) -> None:
    path = write(tmp_path, body)
    message = expect_error(lambda: read_predictions(path), path, where)
    assert fragment in message


def test_predictions_unknown_query(tmp_path: Path) -> None:
    truth = GroundTruth(queries=frozenset({"Q1"}), pairs=frozenset({("Q1", "R1")}))
    path = write(tmp_path, PRED_HEADER + "Q1,R1,0.5\nQ7,R1,0.4\n")
    message = expect_error(lambda: read_predictions(path, truth), path, "line 3")
    assert "unknown query id" in message
    assert "Q7" in message
    # Without a ground truth the same file is fine.
    assert len(read_predictions(path)) == 2


def test_predictions_error_deep_in_a_large_file(tmp_path: Path) -> None:
    lines = [f"Q{i % 97},R{i},{i / 1000}" for i in range(5000)]
    lines[4321] = "Q7,R7,0.5"  # repeats the pair written for i == 7
    path = write(tmp_path, PRED_HEADER + "\n".join(lines) + "\n")
    # Data row 4321 (0-based) is line 4321 + 2.
    message = expect_error(lambda: read_predictions(path), path, "line 4323")
    assert "duplicate pair Q7,R7" in message


# --- parquet ------------------------------------------------------------------------------


def write_parquet(tmp_path: Path, columns: dict[str, list[object]]) -> Path:
    path = tmp_path / "predictions.parquet"
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_matches_csv(tmp_path: Path) -> None:
    rows = [("Q1", "R1", 0.5), ("Q1", "R2", 0.25), ("Q2", "R1", -1.0)]
    csv_path = write(tmp_path, PRED_HEADER + "".join(f"{q},{r},{s}\n" for q, r, s in rows))
    parquet_path = write_parquet(
        tmp_path,
        {
            "query_id": [q for q, _, _ in rows],
            "reference_id": [r for _, r, _ in rows],
            "score": [s for _, _, s in rows],
        },
    )
    from_csv = read_predictions(csv_path)
    from_parquet = read_predictions(parquet_path)
    for name in ("query_ids", "reference_ids", "scores"):
        assert getattr(from_parquet, name).tolist() == getattr(from_csv, name).tolist()
    assert from_parquet.scores.dtype == np.float64


def test_parquet_integer_scores(tmp_path: Path) -> None:
    path = write_parquet(tmp_path, {"query_id": ["Q1"], "reference_id": ["R1"], "score": [3]})
    assert read_predictions(path).scores.tolist() == [3.0]


@pytest.mark.parametrize(
    ("columns", "where", "fragment"),
    [
        ({"query_id": ["Q1", "Q1"], "reference_id": ["R1", "R2"], "score": [0.1, np.nan]},
         "row 2", "not finite"),
        ({"query_id": ["Q1", "Q1"], "reference_id": ["R1", "R1"], "score": [0.1, 0.2]},
         "row 2", "duplicate"),
        ({"query_id": ["Q1", None], "reference_id": ["R1", "R2"], "score": [0.1, 0.2]},
         "row 2", "query"),
        ({"query_id": ["Q1", "Q2"], "reference_id": ["R1", "R2"], "score": [0.1, None]},
         "row 2", "not a number"),
    ],
    ids=["nan", "duplicate", "null-query", "null-score"],
)  # fmt: skip
def test_parquet_bad_rows(
    tmp_path: Path, columns: dict[str, list[object]], where: str, fragment: str
) -> None:
    path = write_parquet(tmp_path, columns)
    message = expect_error(lambda: read_predictions(path), path, where)
    assert fragment in message


def test_parquet_unknown_query(tmp_path: Path) -> None:
    truth = GroundTruth(queries=frozenset({"Q1"}), pairs=frozenset())
    path = write_parquet(
        tmp_path, {"query_id": ["Q1", "Q9"], "reference_id": ["R1", "R1"], "score": [0.1, 0.2]}
    )
    message = expect_error(lambda: read_predictions(path, truth), path, "row 2")
    assert "unknown query id" in message


def test_parquet_bad_schema(tmp_path: Path) -> None:
    path = write_parquet(tmp_path, {"query_id": ["Q1"], "score": [0.1]})
    assert "reference_id" in expect_error(lambda: read_predictions(path), path, None)
    path = write_parquet(tmp_path, {"query_id": ["Q1"], "reference_id": ["R1"], "score": ["x"]})
    assert "score" in expect_error(lambda: read_predictions(path), path, None)


def test_parquet_not_parquet(tmp_path: Path) -> None:
    path = write(tmp_path, PRED_HEADER + "Q1,R1,0.5\n", name="fake.parquet")
    expect_error(lambda: read_predictions(path), path, None)
