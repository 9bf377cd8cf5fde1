"""The evaluation plot is a real PNG, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from streamnorm.errors import StreamnormError
from streamnorm.groundtruth import GroundTruth, Predictions
from streamnorm.plots import plot_evaluation

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_run(seed: int, n_queries: int, offset: float) -> tuple[Predictions, GroundTruth]:
    rng = np.random.default_rng(seed)
    queries, references, scores = [], [], []
    for q in range(n_queries):
        for r in range(5):
            queries.append(f"Q{q}")
            references.append(f"R{q}_{r}")
            # Reference 0 is the copy and tends to score higher.
            scores.append(offset + rng.normal(1.0 if r == 0 else 0.0, 0.5))
    truth = GroundTruth(
        queries=frozenset(queries),
        pairs=frozenset((f"Q{q}", f"R{q}_0") for q in range(n_queries)),
    )
    run = Predictions(np.array(queries, object), np.array(references, object), np.array(scores))
    return run, truth


@pytest.fixture
def runs() -> tuple[list[tuple[str, Predictions]], GroundTruth]:
    raw, truth = synthetic_run(0, 200, offset=50.0)
    normalized, _ = synthetic_run(1, 200, offset=0.0)
    return [("raw", raw), ("normalized", normalized)], truth


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    height, width = image.shape[:2]
    assert height >= 400 and width >= 400
    assert float(np.std(image)) > 0.01  # not a blank canvas


def test_plot_is_written_as_png(
    tmp_path: Path, runs: tuple[list[tuple[str, Predictions]], GroundTruth]
) -> None:
    out = tmp_path / "evaluation.png"
    plot_evaluation(runs[0], runs[1], out)
    assert_png(out)
    assert list(tmp_path.iterdir()) == [out]


def test_plot_replaces_existing_file(
    tmp_path: Path, runs: tuple[list[tuple[str, Predictions]], GroundTruth]
) -> None:
    out = tmp_path / "evaluation.png"
    out.write_bytes(b"old")
    plot_evaluation(runs[0][:1], runs[1], str(out))
    assert_png(out)
    assert list(tmp_path.iterdir()) == [out]


def test_plot_many_runs_and_empty_run(tmp_path: Path) -> None:
    big, truth = synthetic_run(2, 2000, offset=0.0)  # 10,000 points: curve is decimated
    empty = Predictions(np.array([], object), np.array([], object), np.array([]))
    runs = [(f"run {i}", big) for i in range(4)] + [("empty", empty)]
    out = tmp_path / "many.png"
    plot_evaluation(runs, truth, out)
    assert_png(out)


def test_failed_write_leaves_nothing_behind(
    tmp_path: Path,
    runs: tuple[list[tuple[str, Predictions]], GroundTruth],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_savefig(self: Figure, target: object, **kwargs: object) -> None:
        Path(str(target)).write_bytes(PNG_MAGIC)  # a partial file, then the crash
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    out = tmp_path / "evaluation.png"
    with pytest.raises(RuntimeError, match="renderer crashed"):
        plot_evaluation(runs[0], runs[1], out)
    assert list(tmp_path.iterdir()) == []


def test_missing_output_directory(
    tmp_path: Path, runs: tuple[list[tuple[str, Predictions]], GroundTruth]
) -> None:
    out = tmp_path / "absent" / "evaluation.png"
    with pytest.raises(StreamnormError, match="absent"):
        plot_evaluation(runs[0], runs[1], out)


def test_no_runs_is_an_error(tmp_path: Path) -> None:
    truth = GroundTruth(queries=frozenset({"Q"}), pairs=frozenset({("Q", "R")}))
    with pytest.raises(ValueError):
        plot_evaluation([], truth, tmp_path / "x.png")
