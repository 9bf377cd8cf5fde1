"""The end-to-end demo: synthetic data -> fit -> normalize -> match -> evaluate -> plot."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from streamnorm.config import build_params
from streamnorm.encoding import Role
from streamnorm.groundtruth import read_ground_truth, read_predictions
from streamnorm.matching import match
from streamnorm.metrics import Evaluation, evaluate
from streamnorm.model import fit_model
from streamnorm.pipeline import normalize
from streamnorm.plots import plot_evaluation
from streamnorm.synth import SynthSpec
from streamnorm.synth_store import write_synth


def run_demo(
    out: str | Path,
    *,
    spec: SynthSpec | None = None,
    overwrite: bool = False,
    scheduler: str = "threads",
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Evaluation]:
    """Run the main job on a local synthetic data set and report the gain.

    Parameters
    ----------
    out : str or Path
        Working folder; receives the stores, the model, predictions and ``evaluation.png``.
    spec : SynthSpec, optional
        The data set; the synth defaults otherwise.
    scheduler : str
        Where the normalization tasks run (see :mod:`streamnorm.schedulers`).

    Returns
    -------
    dict
        The evaluation of the ``raw`` and ``normalized`` predictions.
    """
    console = console or Console()
    folder = Path(out)
    began = time.perf_counter()
    data = write_synth(folder, spec or SynthSpec(), overwrite=overwrite, progress=progress)
    model = folder / "model"
    fit_model(data["train"], model, build_params(), overwrite=overwrite, progress=progress)
    normalized = {}
    sides: tuple[tuple[str, Role], ...] = (("refs", "reference"), ("queries", "query"))
    for split, role in sides:
        normalized[split] = folder / f"{split}_normalized.zarr"
        normalize(
            data[split],
            model,
            role,
            normalized[split],
            overwrite=overwrite,
            scheduler=scheduler,
            progress=progress,
        )
    truth = read_ground_truth(data["ground_truth"])
    predictions = {
        "raw": (data["queries"], data["refs"]),
        "normalized": (normalized["queries"], normalized["refs"]),
    }
    results: dict[str, Evaluation] = {}
    runs = []
    for label, (queries, refs) in predictions.items():
        path = folder / f"predictions_{label}.csv"
        match(queries, refs, path, overwrite=overwrite, progress=progress)
        loaded = read_predictions(path, truth)
        results[label] = evaluate(loaded, truth)
        runs.append((label, loaded))
    plot_evaluation(runs, truth, folder / "evaluation.png")
    table = Table(title=f"streamnorm demo ({time.perf_counter() - began:.0f} s, preset isc21)")
    for column in ("predictions", "muAP", "recall@P90", "recall@rank1"):
        table.add_column(column, justify="right")
    for label, result in results.items():
        table.add_row(
            label,
            f"{result.micro_ap:.4f}",
            f"{result.recall_at_p90:.4f}",
            f"{result.recall_at_rank1:.4f}",
        )
    console.print(table)
    console.print(f"plots: {folder / 'evaluation.png'}")
    return results
