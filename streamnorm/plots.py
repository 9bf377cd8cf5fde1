"""Evaluation plots: precision-recall curves and score distributions of several runs.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never through
``pyplot``, so that plotting keeps no global state and needs no display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from streamnorm.atomic import atomic_output
from streamnorm.errors import StreamnormError
from streamnorm.groundtruth import GroundTruth, Predictions
from streamnorm.metrics import (
    label_predictions,
    micro_average_precision,
    precision_recall_curve,
    recall_at_precision,
)

__all__ = ["plot_evaluation"]

_MAX_CURVE_POINTS = 4000
_HISTOGRAM_COLUMNS = 3


def _decimate(n: int) -> np.ndarray:
    """Indices of at most ``_MAX_CURVE_POINTS`` points, always keeping the last one."""
    if n <= _MAX_CURVE_POINTS:
        return np.arange(n)
    # A million points would only slow drawing down; the eye cannot tell them apart.
    return np.unique(np.linspace(0, n - 1, _MAX_CURVE_POINTS).round().astype(np.intp))


def _plot_curve(ax: Axes, label: str, scores: np.ndarray, labels: np.ndarray, n_gt: int) -> None:
    curve = precision_recall_curve(scores, labels, n_gt)
    micro_ap = micro_average_precision(scores, labels, n_gt)
    keep = _decimate(len(curve.recall))
    (line,) = ax.plot(
        np.r_[0.0, curve.recall[keep]],
        np.r_[1.0, curve.precision[keep]],
        drawstyle="steps-post",
        label=f"{label} (muAP {micro_ap:.3f})",
    )
    recall_p90, threshold = recall_at_precision(curve, 0.9)
    if threshold is not None:
        ax.plot([recall_p90], [0.9], marker="o", color=line.get_color(), linestyle="none")


def _plot_histogram(ax: Axes, label: str, scores: np.ndarray, labels: np.ndarray) -> None:
    ax.set_title(label)
    ax.set_xlabel("score")
    ax.set_ylabel("density")
    if scores.size == 0:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center", transform=ax.transAxes)
        return
    # Shared bins make the two distributions comparable; densities keep the rare true
    # pairs visible next to the far more numerous false ones.
    bins = np.histogram_bin_edges(scores, bins=60).tolist()
    groups = ((~labels, "false pairs", "tab:red"), (labels, "true pairs", "tab:blue"))
    for mask, name, color in groups:
        if np.any(mask):
            ax.hist(
                scores[mask],
                bins=bins,
                density=True,
                alpha=0.5,
                color=color,
                label=f"{name} ({np.count_nonzero(mask)})",
            )
    ax.legend(fontsize="small")


def _build_figure(runs: Sequence[tuple[str, Predictions]], ground_truth: GroundTruth) -> Figure:
    n_gt = len(ground_truth)
    columns = min(len(runs), _HISTOGRAM_COLUMNS)
    rows = 1 + math.ceil(len(runs) / columns)
    figure = Figure(figsize=(5.0 * columns + 1.0, 4.0 * rows), layout="constrained")
    grid = figure.add_gridspec(rows, columns)
    curves = figure.add_subplot(grid[0, :])
    curves.set_title(f"Precision-recall ({n_gt} ground-truth pairs)")
    curves.set_xlabel("recall")
    curves.set_ylabel("precision")
    curves.set_xlim(0.0, 1.0)
    curves.set_ylim(0.0, 1.02)
    curves.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    curves.grid(True, alpha=0.3)
    for index, (label, predictions) in enumerate(runs):
        labels = label_predictions(predictions, ground_truth)
        _plot_curve(curves, label, predictions.scores, labels, n_gt)
        histogram = figure.add_subplot(grid[1 + index // columns, index % columns])
        _plot_histogram(histogram, label, predictions.scores, labels)
    curves.legend(loc="lower left", title="dots: recall at 90 % precision")
    return figure


def plot_evaluation(
    runs: Sequence[tuple[str, Predictions]],
    ground_truth: GroundTruth,
    out_path: str | os.PathLike[str],
) -> None:
    """Write a PNG comparing runs: overlaid precision-recall curves, then per-run histograms.

    The top panel overlays the precision-recall curve of every run, with its micro-average
    precision in the legend. Below it, one panel per run shows the score distributions of
    true and false pairs; each run has its own axis because raw and normalized scores
    live on different scales.

    Parameters
    ----------
    runs
        ``(label, predictions)`` for each run, in legend order.
    ground_truth
        Ground truth shared by all runs; must hold at least one pair.
    out_path
        PNG file to write. It is replaced atomically, so readers never see a partial file.

    Raises
    ------
    ValueError
        If ``runs`` is empty or the ground truth holds no pairs.
    StreamnormError
        If the output directory does not exist or cannot be written.
    """
    if not runs:
        raise ValueError("at least one run is needed")
    if len(ground_truth) == 0:
        raise ValueError("the ground truth holds no pairs")
    out = Path(out_path)
    figure = _build_figure(runs, ground_truth)
    FigureCanvasAgg(figure)
    try:
        with atomic_output(out, overwrite=True) as staging:
            figure.savefig(staging, format="png", dpi=100)
    except OSError as exc:
        raise StreamnormError(f"cannot write plot {out}: {exc.strerror or exc}") from None
