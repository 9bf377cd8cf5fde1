"""ISC21 metrics against hand-worked cases and a deliberately naive reference."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamnorm.groundtruth import GroundTruth, Predictions
from streamnorm.metrics import (
    evaluate,
    micro_average_precision,
    precision_recall_curve,
    recall_at_precision,
    recall_at_rank,
)


def make_predictions(rows: list[tuple[str, str, float]]) -> Predictions:
    queries, references, scores = zip(*rows, strict=True) if rows else ((), (), ())
    return Predictions(
        query_ids=np.array(queries, dtype=object),
        reference_ids=np.array(references, dtype=object),
        scores=np.array(scores, dtype=np.float64),
    )


def make_ground_truth(pairs: set[tuple[str, str]], unmatched: Iterable[str] = ()) -> GroundTruth:
    queries = {q for q, _ in pairs} | set(unmatched)
    return GroundTruth(queries=frozenset(queries), pairs=frozenset(pairs))


# --- hand-worked cases ------------------------------------------------------------------


def test_micro_ap_simple_case() -> None:
    # Ranked: 0.9 T (P=1/1), 0.8 F, 0.7 T (P=2/3); 3 ground-truth pairs.
    # muAP = (1/3) * (1 + 2/3) = 5/9. Input order is shuffled on purpose.
    scores = [0.7, 0.9, 0.8]
    positive = [True, True, False]
    assert micro_average_precision(scores, positive, 3) == pytest.approx(5 / 9)


def test_curve_simple_case() -> None:
    curve = precision_recall_curve([0.7, 0.9, 0.8], [True, True, False], 3)
    np.testing.assert_allclose(curve.thresholds, [0.9, 0.8, 0.7])
    np.testing.assert_allclose(curve.precision, [1.0, 1 / 2, 2 / 3])
    np.testing.assert_allclose(curve.recall, [1 / 3, 1 / 3, 2 / 3])


@pytest.mark.parametrize("positive", [[True, False], [False, True]])
def test_tie_puts_false_positive_first(positive: list[bool]) -> None:
    # Both share 0.5: pessimistic order is F then T, so the TP sits at rank 2 with
    # precision 1/2 -> muAP = 1/2 (an optimistic order would give 1).
    assert micro_average_precision([0.5, 0.5], positive, 1) == pytest.approx(0.5)


def test_tie_group_with_several_false_positives() -> None:
    # 0.9 T, then the 0.5 group ordered F, F, T: precisions at TPs 1/1 and 2/4.
    # muAP = (1/2) * (1 + 1/2) = 3/4.
    scores = [0.5, 0.9, 0.5, 0.5]
    positive = [True, True, False, False]
    assert micro_average_precision(scores, positive, 2) == pytest.approx(0.75)
    curve = precision_recall_curve(scores, positive, 2)
    np.testing.assert_allclose(curve.precision, [1.0, 1 / 2, 1 / 3, 2 / 4])


def test_unpredicted_ground_truth_pairs_cost_recall() -> None:
    # Two perfect predictions but four ground-truth pairs: muAP = (1 + 1) / 4.
    assert micro_average_precision([0.9, 0.8], [True, True], 4) == pytest.approx(0.5)
    curve = precision_recall_curve([0.9, 0.8], [True, True], 4)
    assert curve.recall[-1] == pytest.approx(0.5)


def test_no_predictions() -> None:
    assert micro_average_precision([], [], 3) == 0.0
    curve = precision_recall_curve([], [], 3)
    assert recall_at_precision(curve) == (0.0, None)


def test_zero_ground_truth_is_an_error() -> None:
    with pytest.raises(ValueError, match="n_ground_truth"):
        micro_average_precision([0.5], [False], 0)


def test_more_true_positives_than_ground_truth_is_an_error() -> None:
    with pytest.raises(ValueError, match="true positives"):
        micro_average_precision([0.5, 0.4], [True, True], 1)


def test_non_finite_score_is_an_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        precision_recall_curve([np.nan], [True], 1)


def test_recall_at_p90_hand_case() -> None:
    # Scores 13..1, labels T x9, F, T, F, T; 20 ground-truth pairs.
    # rank 10 (F): P = 9/10 = 0.9, R = 9/20
    # rank 11 (T): P = 10/11 ~ 0.909, R = 10/20 -> best, threshold = score at rank 11 = 3
    # rank 12 (F): P = 10/12 < 0.9; rank 13 (T): P = 11/13 < 0.9
    positive = [True] * 9 + [False, True, False, True]
    scores = list(range(13, 0, -1))
    curve = precision_recall_curve(scores, positive, 20)
    assert recall_at_precision(curve, 0.9) == (pytest.approx(0.5), 3.0)
    # muAP = (9 * 1 + 10/11 + 11/13) / 20
    expected = (9 + 10 / 11 + 11 / 13) / 20
    assert micro_average_precision(scores, positive, 20) == pytest.approx(expected)


def test_recall_at_precision_accepts_exact_target() -> None:
    # Scores 11..1, labels T x8, F, T, F; 10 ground-truth pairs.
    # rank 9 (F): P = 8/9 < 0.9; rank 10 (T): P = 9/10, exactly 0.9, R = 0.9, score 2.
    positive = [True] * 8 + [False, True, False]
    curve = precision_recall_curve(list(range(11, 0, -1)), positive, 10)
    assert recall_at_precision(curve, 0.9) == (pytest.approx(0.9), 2.0)


def test_recall_at_precision_never_reached() -> None:
    # Precisions 0/1 and 1/2: never 0.9.
    curve = precision_recall_curve([0.9, 0.8], [False, True], 1)
    assert recall_at_precision(curve, 0.9) == (0.0, None)


def test_recall_at_precision_respects_ties() -> None:
    # Tied T and F: F first, precisions 0 and 1/2. Optimistic order would give R=1 at 0.9.
    curve = precision_recall_curve([0.9, 0.9], [True, False], 1)
    assert recall_at_precision(curve, 0.9) == (0.0, None)


def test_recall_at_precision_prefers_highest_threshold() -> None:
    # Rank 1 (T, 0.9): P=1, R=1; rank 2 (F, 0.8): P=1/2, R=1. Both reach P>=0.5 with
    # R=1; the stricter threshold 0.9 is reported.
    curve = precision_recall_curve([0.9, 0.8], [True, False], 1)
    assert recall_at_precision(curve, 0.5) == (1.0, 0.9)


def test_recall_at_precision_rejects_bad_target() -> None:
    curve = precision_recall_curve([0.9], [True], 1)
    with pytest.raises(ValueError):
        recall_at_precision(curve, 1.5)


# Four matched queries, Q5 unmatched (4 ground-truth pairs):
#   Q1: R1 0.9 (T), R9 0.5          -> true match at rank 1
#   Q2: R8 0.95, R2 0.6 (T)         -> rank 2
#   Q3: R7 0.7, R3 0.7 (T) tied     -> false positive first, rank 2
#   Q4: R40..R49 0.85..0.76, R4 0.1 -> rank 11
#   Q5: R5 0.99                     -> false positive of an unmatched query
RANK_ROWS = [
    ("Q1", "R1", 0.9),
    ("Q1", "R9", 0.5),
    ("Q2", "R8", 0.95),
    ("Q2", "R2", 0.6),
    ("Q3", "R3", 0.7),
    ("Q3", "R7", 0.7),
    *[("Q4", f"R4{i}", 0.85 - 0.01 * i) for i in range(10)],
    ("Q4", "R4", 0.1),
    ("Q5", "R5", 0.99),
]
RANK_TRUTH = make_ground_truth({("Q1", "R1"), ("Q2", "R2"), ("Q3", "R3"), ("Q4", "R4")}, {"Q5"})


def test_recall_at_rank_hand_case() -> None:
    predictions = make_predictions(RANK_ROWS)
    labels = [(q, r) in RANK_TRUTH.pairs for q, r, _ in RANK_ROWS]
    args = (predictions.query_ids, predictions.scores, labels, 4)
    assert recall_at_rank(*args, k=1) == pytest.approx(1 / 4)  # Q1 only
    assert recall_at_rank(*args, k=2) == pytest.approx(3 / 4)  # + Q2, Q3
    assert recall_at_rank(*args, k=10) == pytest.approx(3 / 4)  # Q4's match is 11th
    assert recall_at_rank(*args, k=11) == pytest.approx(1.0)


def test_evaluate_hand_case() -> None:
    # Global ranking (ties: F first):
    #  1 Q5R5 .99 F | 2 Q2R8 .95 F | 3 Q1R1 .90 T P=1/3 | 4-13 Q4 false positives
    # 14 Q3R7 .70 F | 15 Q3R3 .70 T P=2/15 | 16 Q2R2 .60 T P=3/16 | 17 Q1R9 .50 F
    # 18 Q4R4 .10 T P=4/18
    result = evaluate(make_predictions(RANK_ROWS), RANK_TRUTH)
    assert result.micro_ap == pytest.approx((1 / 3 + 2 / 15 + 3 / 16 + 4 / 18) / 4)
    assert result.recall_at_p90 == 0.0
    assert result.threshold_at_p90 is None
    assert result.recall_at_rank1 == pytest.approx(0.25)
    assert result.recall_at_rank10 == pytest.approx(0.75)
    assert (result.n_predictions, result.n_ground_truth, result.n_true_positives) == (18, 4, 4)


def test_evaluate_unmatched_query_is_false_positive() -> None:
    # Q3 has no match; its prediction (0.8) lands between the two true pairs:
    # 0.9 T (P=1), 0.8 F, 0.7 T (P=2/3) -> muAP = (1 + 2/3) / 2 = 5/6.
    # Only rank 1 reaches P >= 0.9: recall 1/2 at threshold 0.9.
    truth = make_ground_truth({("Q1", "R1"), ("Q2", "R2")}, {"Q3"})
    rows = [("Q1", "R1", 0.9), ("Q3", "R7", 0.8), ("Q2", "R2", 0.7)]
    result = evaluate(make_predictions(rows), truth)
    assert result.micro_ap == pytest.approx(5 / 6)
    assert result.recall_at_p90 == pytest.approx(0.5)
    assert result.threshold_at_p90 == 0.9
    assert result.recall_at_rank1 == 1.0
    assert result.n_true_positives == 2
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["micro_ap"] == pytest.approx(5 / 6)
    assert payload["n_predictions"] == 3


def test_evaluate_rejects_repeated_true_pair() -> None:
    truth = make_ground_truth({("Q1", "R1"), ("Q2", "R2")})
    rows = [("Q1", "R1", 0.9), ("Q1", "R1", 0.8)]
    with pytest.raises(ValueError, match="more than once"):
        evaluate(make_predictions(rows), truth)


# --- naive reference ----------------------------------------------------------------------


def ranked(scores: list[float], positive: list[bool]) -> list[tuple[float, bool]]:
    # False sorts before True, which is the pessimistic tie rule.
    return sorted(zip(scores, positive, strict=True), key=lambda item: (-item[0], item[1]))


def naive_micro_ap(scores: list[float], positive: list[bool], n_gt: int) -> float:
    total, hits = 0.0, 0
    for rank, (_, is_true) in enumerate(ranked(scores, positive), start=1):
        if is_true:
            hits += 1
            total += hits / rank
    return total / n_gt


def naive_recall_at_precision(
    scores: list[float], positive: list[bool], n_gt: int, target: float
) -> tuple[float, float | None]:
    best: tuple[float, float | None] = (0.0, None)
    hits = 0
    for rank, (score, is_true) in enumerate(ranked(scores, positive), start=1):
        hits += is_true
        if hits / rank >= target and hits / n_gt > best[0]:
            best = (hits / n_gt, score)
    return best


def naive_recall_at_rank(
    queries: list[str], scores: list[float], positive: list[bool], n_gt: int, k: int
) -> float:
    per_query: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    for query, score, is_true in zip(queries, scores, positive, strict=True):
        per_query[query].append((score, is_true))
    found = 0
    for items in per_query.values():
        top = sorted(items, key=lambda item: (-item[0], item[1]))[:k]
        found += sum(is_true for _, is_true in top)
    return found / n_gt


# Few distinct scores so that ties are the rule rather than the exception.
tied_scores = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


@st.composite
def labelled_predictions(draw: st.DrawFn) -> tuple[list[str], list[float], list[bool], int]:
    n = draw(st.integers(0, 30))
    queries = draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n))
    scores = draw(st.lists(tied_scores, min_size=n, max_size=n))
    positive = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    n_gt = sum(positive) + draw(st.integers(0 if any(positive) else 1, 4))
    return queries, scores, positive, n_gt


@settings(max_examples=300, deadline=None)
@given(labelled_predictions(), st.sampled_from([0.3, 0.5, 0.9, 1.0]))
def test_against_naive_reference(
    data: tuple[list[str], list[float], list[bool], int], target: float
) -> None:
    queries, scores, positive, n_gt = data
    assert micro_average_precision(scores, positive, n_gt) == pytest.approx(
        naive_micro_ap(scores, positive, n_gt), rel=1e-12, abs=1e-12
    )
    curve = precision_recall_curve(scores, positive, n_gt)
    assert recall_at_precision(curve, target) == naive_recall_at_precision(
        scores, positive, n_gt, target
    )
    for k in (1, 2, 10):
        assert recall_at_rank(queries, scores, positive, n_gt, k) == pytest.approx(
            naive_recall_at_rank(queries, scores, positive, n_gt, k)
        )


@st.composite
def runs_with_truth(draw: st.DrawFn) -> tuple[Predictions, GroundTruth]:
    queries = ["q0", "q1", "q2"]
    references = [f"r{i}" for i in range(12)]
    pair = st.tuples(st.sampled_from(queries), st.sampled_from(references))
    scored = draw(st.dictionaries(pair, tied_scores, max_size=36))
    truth_pairs = draw(st.sets(pair, min_size=1, max_size=10))
    rows = [(q, r, s) for (q, r), s in scored.items()]
    return make_predictions(rows), make_ground_truth(truth_pairs, set(queries))


@settings(max_examples=200, deadline=None)
@given(runs_with_truth())
def test_evaluate_against_naive_reference(data: tuple[Predictions, GroundTruth]) -> None:
    predictions, truth = data
    queries = list(predictions.query_ids)
    scores = [float(s) for s in predictions.scores]
    positive = [
        (q, r) in truth.pairs
        for q, r in zip(predictions.query_ids, predictions.reference_ids, strict=True)
    ]
    n_gt = len(truth.pairs)
    result = evaluate(predictions, truth)
    assert result.micro_ap == pytest.approx(naive_micro_ap(scores, positive, n_gt), abs=1e-12)
    recall, threshold = naive_recall_at_precision(scores, positive, n_gt, 0.9)
    assert (result.recall_at_p90, result.threshold_at_p90) == (recall, threshold)
    assert result.recall_at_rank1 == pytest.approx(
        naive_recall_at_rank(queries, scores, positive, n_gt, 1)
    )
    assert result.recall_at_rank10 == pytest.approx(
        naive_recall_at_rank(queries, scores, positive, n_gt, 10)
    )
    assert result.n_true_positives == sum(positive)
    assert result.n_predictions == len(scores)
