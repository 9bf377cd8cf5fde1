"""What the ``match`` and ``evaluate`` commands do, kept out of the thin CLI layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from streamnorm.errors import StreamnormError
from streamnorm.locations import Location


def run_match(
    console: Console,
    queries: Location | None,
    refs: Location | None,
    out: Location,
    *,
    k: int | None,
    max_results: int,
    state: Location | None,
    update: Location | None,
    new_refs: Location | None,
    threads: int | None,
    query_block_rows: int | None,
    reference_block_rows: int | None,
    overwrite: bool,
    progress: bool,
    scheduler: str = "threads",
    workers: int | None = None,
) -> None:
    """Run a full match or an update, then report what was written.

    ``scheduler`` and ``workers`` say where the search runs (see
    :func:`streamnorm.matching.match`); the files written do not depend on them.
    """
    from streamnorm.matching import DEFAULT_K, Tiling, match, update_match

    tiling = Tiling(threads, query_block_rows, reference_block_rows, workers=workers)
    limit = max_results or None
    if update is not None:
        if queries is not None or refs is not None:
            raise StreamnormError(
                "with --update, give the new references with --refs and no positional "
                "stores (the queries are re-read from the path in the state)"
            )
        if new_refs is None:
            raise StreamnormError("--update needs the new references: --refs NEW_REFS")
        result = update_match(
            update,
            new_refs,
            out,
            k=k,
            max_results=limit,
            overwrite=overwrite,
            state_out=state,
            tiling=tiling,
            scheduler=scheduler,
            progress=progress,
        )
        where = state or update
        console.print(f"{where}: {result.n_references} references merged so far")
    else:
        if new_refs is not None:
            raise StreamnormError("--refs goes with --update; give REFS as an argument")
        if queries is None or refs is None:
            raise StreamnormError("match needs QUERIES and REFS (or --update STATE --refs NEW)")
        result = match(
            queries,
            refs,
            out,
            k=DEFAULT_K if k is None else k,
            max_results=limit,
            overwrite=overwrite,
            state=state,
            tiling=tiling,
            scheduler=scheduler,
            progress=progress,
        )
        if state is not None:
            console.print(f"{state}: match state saved for later reference batches")
    console.print(f"{out}: {len(result)} predictions")
    if result.capped_queries and len(result) < result.candidates:
        # Only worth saying when the global cap cut the list: then some queries kept all
        # their k candidates and might have had more pairs above the cut.
        console.print(
            f"note: {result.capped_queries} queries kept all {result.width} candidates; "
            f"a larger --k could add pairs of theirs above the cut at {len(result)}"
        )


def _labels(preds: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(preds):
            raise StreamnormError(
                f"{len(labels)} --label values for {len(preds)} prediction files; give one each"
            )
        return list(labels)
    stems = [path.stem for path in preds]
    # File stems name runs well unless two files share one; then the paths must do.
    return stems if len(set(stems)) == len(stems) else [str(path) for path in preds]


@dataclass(frozen=True)
class EvaluatedRun:
    """One predictions file, its label and its metrics."""

    label: str
    path: Path
    metrics: dict[str, Any]


def evaluate_files(
    preds: Sequence[Path],
    gt: Path,
    *,
    labels: Sequence[str] | None = None,
    plot: Path | None = None,
) -> list[EvaluatedRun]:
    """Evaluate one or more prediction files against one ground truth; optionally plot.

    Every problem with a file becomes a one-line :class:`StreamnormError` naming it.
    """
    from streamnorm.groundtruth import read_ground_truth, read_predictions
    from streamnorm.metrics import evaluate
    from streamnorm.plots import plot_evaluation

    if not preds:
        raise StreamnormError("give at least one predictions file")
    names = _labels(preds, labels)
    truth = read_ground_truth(gt)
    if len(truth) == 0:
        raise StreamnormError(f"{gt}: the ground truth holds no pairs, so nothing can be scored")
    runs, evaluated = [], []
    for path, name in zip(preds, names, strict=True):
        predictions = read_predictions(path, truth)
        try:
            metrics = evaluate(predictions, truth).to_dict()
        except ValueError as error:
            raise StreamnormError(f"{path}: {error}") from None
        runs.append((name, predictions))
        evaluated.append(EvaluatedRun(name, path, metrics))
    if plot is not None:
        plot_evaluation(runs, truth, plot)
    return evaluated
