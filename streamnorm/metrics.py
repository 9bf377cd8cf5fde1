"""Copy-detection metrics as defined by the ISC21 / DISC21 evaluation.

All predictions of all queries are ranked together by decreasing score. Among equal
scores, false positives are ranked before true positives: the evaluation is pessimistic
about ties, so that giving many pairs the same score can never improve a result.
Recall is always relative to the number of ground-truth pairs, so a true pair that was
never predicted costs recall.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from streamnorm.groundtruth import GroundTruth, Predictions

__all__ = [
    "Evaluation",
    "PRCurve",
    "evaluate",
    "label_predictions",
    "micro_average_precision",
    "precision_recall_curve",
    "recall_at_precision",
    "recall_at_rank",
]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True, eq=False)
class PRCurve:
    """Precision and recall after each prediction, in ISC21 rank order.

    Attributes
    ----------
    precision, recall
        Value after keeping the first ``i + 1`` ranked predictions.
    thresholds
        Score of the ``i``-th ranked prediction (non-increasing).
    """

    precision: FloatArray
    recall: FloatArray
    thresholds: FloatArray


def _check_inputs(
    scores: npt.ArrayLike, is_positive: npt.ArrayLike, n_ground_truth: int
) -> tuple[FloatArray, BoolArray]:
    scores_arr = np.asarray(scores, dtype=np.float64)
    positive_arr = np.asarray(is_positive, dtype=bool)
    if scores_arr.ndim != 1 or scores_arr.shape != positive_arr.shape:
        raise ValueError("scores and is_positive must be 1-D arrays of equal length")
    if not np.all(np.isfinite(scores_arr)):
        raise ValueError("scores must be finite")
    if n_ground_truth <= 0:
        raise ValueError(f"n_ground_truth must be positive, got {n_ground_truth}")
    n_true = int(np.count_nonzero(positive_arr))
    if n_true > n_ground_truth:
        raise ValueError(
            f"{n_true} true positives but only {n_ground_truth} ground-truth pairs; "
            "are (query, reference) pairs predicted more than once?"
        )
    return scores_arr, positive_arr


def _rank_order(scores: FloatArray, is_positive: BoolArray) -> npt.NDArray[np.intp]:
    # lexsort's last key is the primary one: score descending, then False before True.
    return np.lexsort((is_positive, -scores))


def _ranked(
    scores: npt.ArrayLike, is_positive: npt.ArrayLike, n_ground_truth: int
) -> tuple[FloatArray, BoolArray, FloatArray]:
    """Return ranked scores, ranked labels and precision after each rank."""
    scores_arr, positive_arr = _check_inputs(scores, is_positive, n_ground_truth)
    order = _rank_order(scores_arr, positive_arr)
    ranked_positive = positive_arr[order]
    true_so_far = np.cumsum(ranked_positive, dtype=np.float64)
    precision = true_so_far / np.arange(1, len(order) + 1, dtype=np.float64)
    return scores_arr[order], ranked_positive, precision


def precision_recall_curve(
    scores: npt.ArrayLike, is_positive: npt.ArrayLike, n_ground_truth: int
) -> PRCurve:
    """Precision and recall at every rank of the pooled, ISC21-ordered predictions.

    Parameters
    ----------
    scores
        One score per prediction; higher means more likely a copy.
    is_positive
        Whether each prediction is a ground-truth pair.
    n_ground_truth
        Number of ground-truth pairs, predicted or not.

    Returns
    -------
    PRCurve
        One point per prediction, ranked by decreasing score with false positives first
        among ties.

    Raises
    ------
    ValueError
        If the arrays differ in shape, a score is not finite, ``n_ground_truth`` is not
        positive or smaller than the number of true positives.
    """
    ranked_scores, ranked_positive, precision = _ranked(scores, is_positive, n_ground_truth)
    recall = np.cumsum(ranked_positive, dtype=np.float64) / n_ground_truth
    return PRCurve(precision=precision, recall=recall, thresholds=ranked_scores)


def micro_average_precision(
    scores: npt.ArrayLike, is_positive: npt.ArrayLike, n_ground_truth: int
) -> float:
    """Micro-average precision (muAP) over all queries.

    ``muAP = (1 / n_ground_truth) * sum of precision@i over the ranks i of true
    positives``, in ISC21 rank order (false positives first among ties).

    Parameters
    ----------
    scores, is_positive, n_ground_truth
        As for :func:`precision_recall_curve`.

    Returns
    -------
    float
        In ``[0, 1]``; 0.0 when there are no predictions.

    Raises
    ------
    ValueError
        As for :func:`precision_recall_curve`; in particular muAP is undefined, not
        zero, when ``n_ground_truth`` is 0.
    """
    _, ranked_positive, precision = _ranked(scores, is_positive, n_ground_truth)
    return float(precision[ranked_positive].sum() / n_ground_truth)


def recall_at_precision(curve: PRCurve, precision: float = 0.9) -> tuple[float, float | None]:
    """Highest recall whose precision is at least ``precision``, and its score threshold.

    Parameters
    ----------
    curve
        From :func:`precision_recall_curve`.
    precision
        Target precision in ``[0, 1]``.

    Returns
    -------
    recall : float
        0.0 if no point of the curve reaches the target.
    threshold : float or None
        Score of the last prediction kept at that point, so keeping predictions with
        ``score >= threshold`` achieves it; ``None`` if the target is never reached.
        Among points with the same recall the one with the highest threshold is chosen.

    Raises
    ------
    ValueError
        If ``precision`` is outside ``[0, 1]``.
    """
    if not 0.0 <= precision <= 1.0:
        raise ValueError(f"precision must be in [0, 1], got {precision}")
    valid = np.flatnonzero(curve.precision >= precision)
    if valid.size == 0:
        return 0.0, None
    # argmax returns the first maximum, i.e. the highest score threshold for that recall.
    best = valid[np.argmax(curve.recall[valid])]
    return float(curve.recall[best]), float(curve.thresholds[best])


def _ranks_within_query(
    query_ids: npt.ArrayLike, scores: FloatArray, is_positive: BoolArray
) -> npt.NDArray[np.intp]:
    """0-based rank of each prediction among its own query's predictions, ISC21 order."""
    queries = np.asarray(query_ids, dtype=object)
    if queries.shape != scores.shape:
        raise ValueError("query_ids must have one entry per score")
    # A dict assigns integer codes far faster than np.unique can sort Python strings.
    codes: dict[Any, int] = {}
    query_codes = np.fromiter(
        (codes.setdefault(query, len(codes)) for query in queries),
        dtype=np.intp,
        count=len(queries),
    )
    order = np.lexsort((is_positive, -scores, query_codes))
    sorted_codes = query_codes[order]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    group_sizes = np.diff(np.r_[starts, len(order)])
    ranks = np.empty(len(order), dtype=np.intp)
    ranks[order] = np.arange(len(order)) - np.repeat(starts, group_sizes)
    return ranks


def recall_at_rank(
    query_ids: npt.ArrayLike,
    scores: npt.ArrayLike,
    is_positive: npt.ArrayLike,
    n_ground_truth: int,
    k: int,
) -> float:
    """Fraction of ground-truth pairs found within their query's top ``k`` predictions.

    Each query's own predictions are ranked by decreasing score, false positives first
    among ties.

    Parameters
    ----------
    query_ids
        Query of each prediction.
    scores, is_positive, n_ground_truth
        As for :func:`precision_recall_curve`.
    k
        Number of top-ranked predictions per query that count, at least 1.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        As for :func:`precision_recall_curve`, or if ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    scores_arr, positive_arr = _check_inputs(scores, is_positive, n_ground_truth)
    ranks = _ranks_within_query(query_ids, scores_arr, positive_arr)
    return int(np.count_nonzero(positive_arr & (ranks < k))) / n_ground_truth


def label_predictions(predictions: Predictions, ground_truth: GroundTruth) -> BoolArray:
    """Whether each prediction is a ground-truth pair."""
    pairs = ground_truth.pairs
    candidates = zip(predictions.query_ids, predictions.reference_ids, strict=True)
    return np.fromiter((pair in pairs for pair in candidates), dtype=bool, count=len(predictions))


@dataclass(frozen=True)
class Evaluation:
    """ISC21 metrics of one set of predictions.

    Attributes
    ----------
    micro_ap
        Micro-average precision, see :func:`micro_average_precision`.
    recall_at_p90, threshold_at_p90
        See :func:`recall_at_precision`; the threshold is ``None`` if 90 % precision is
        never reached.
    recall_at_rank1, recall_at_rank10
        See :func:`recall_at_rank`.
    n_predictions, n_ground_truth, n_true_positives
        Counts of predictions, ground-truth pairs and predictions that are true pairs.
    """

    micro_ap: float
    recall_at_p90: float
    threshold_at_p90: float | None
    recall_at_rank1: float
    recall_at_rank10: float
    n_predictions: int
    n_ground_truth: int
    n_true_positives: int

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of built-in types, ready for :func:`json.dumps`."""
        return asdict(self)


def evaluate(predictions: Predictions, ground_truth: GroundTruth) -> Evaluation:
    """Compute the ISC21 metrics of ``predictions`` against ``ground_truth``.

    Predictions of queries without a ground-truth match are false positives.

    Raises
    ------
    ValueError
        If the ground truth holds no pairs, or a true pair is predicted more than once.
    """
    n_ground_truth = len(ground_truth)
    labels = label_predictions(predictions, ground_truth)
    true_pairs = zip(predictions.query_ids[labels], predictions.reference_ids[labels], strict=True)
    n_true = int(np.count_nonzero(labels))
    if len(set(true_pairs)) != n_true:
        raise ValueError("a ground-truth pair is predicted more than once")
    # Ranking once and deriving every metric from it keeps 1M predictions well under 1 s.
    ranked_scores, ranked_positive, precision = _ranked(predictions.scores, labels, n_ground_truth)
    recall = np.cumsum(ranked_positive, dtype=np.float64) / n_ground_truth
    recall_p90, threshold_p90 = recall_at_precision(
        PRCurve(precision=precision, recall=recall, thresholds=ranked_scores), 0.9
    )
    ranks = _ranks_within_query(predictions.query_ids, predictions.scores, labels)
    return Evaluation(
        micro_ap=float(precision[ranked_positive].sum() / n_ground_truth),
        recall_at_p90=recall_p90,
        threshold_at_p90=threshold_p90,
        recall_at_rank1=int(np.count_nonzero(labels & (ranks < 1))) / n_ground_truth,
        recall_at_rank10=int(np.count_nonzero(labels & (ranks < 10))) / n_ground_truth,
        n_predictions=len(predictions),
        n_ground_truth=n_ground_truth,
        n_true_positives=n_true,
    )
