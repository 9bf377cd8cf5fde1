"""The real pipeline against a brute-force reading of the published definitions.

Everything on the reference side of these tests is plain float64 numpy written from
the definitions, not from streamnorm: L2 normalization, full similarity matrices, the
background statistic of each preset, ``s' = <q, r> - beta b(q)``, the per-query top k,
the global top N and micro-AP with ties ranked false positives first. The pipeline
works in float32 with an exact kernel, so scores may differ by about 1e-7; pairs may
therefore only trade places with pairs whose scores are within 1e-6.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from streamnorm.config import build_params
from streamnorm.groundtruth import read_ground_truth, read_predictions
from streamnorm.matching import match
from streamnorm.metrics import evaluate
from streamnorm.model import fit_model
from streamnorm.pipeline import normalize
from streamnorm.synth import SynthSpec, generate_split, ground_truth
from streamnorm.synth_store import write_synth

SPEC = SynthSpec(n_queries=150, n_refs=1200, n_train=1500, dim=32, seed=11)
K = 10
MAX_RESULTS = 500  # below the 1500 per-query candidates: the global cut is exercised
TOLERANCE = 1e-6


def nth(n: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda ranked: ranked[:, n - 1]


def mean_of_ranks(first: int, last: int) -> Callable[[np.ndarray], np.ndarray]:
    return lambda ranked: ranked[:, first : last + 1].mean(axis=1)


# preset -> (b(q) from the similarities sorted best first, beta), from the papers.
OFFICIAL = {
    "isc21": (nth(10), 2.0),  # 10th nearest training similarity, factor 2
    "sscd": (mean_of_ranks(0, 2), 1.0),  # mean of ranks 0..2, factor 1
    "vsc22": (nth(1), 1.2),  # nearest training similarity, factor 1.2
    "d2lv": (mean_of_ranks(0, 9), 2.0),  # mean of the top 10, factor 2
}


def unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True))


class BruteForce:
    """Track-1 predictions and muAP computed directly from the definitions."""

    def __init__(self, statistic: Callable[[np.ndarray], np.ndarray], beta: float) -> None:
        queries, self.query_ids = generate_split(SPEC, "queries", 0, SPEC.n_queries)
        refs, self.ref_ids = generate_split(SPEC, "refs", 0, SPEC.n_refs)
        train, _ = generate_split(SPEC, "train", 0, SPEC.n_train)
        q, r, t = unit(queries), unit(refs), unit(train)
        ranked = -np.sort(-(q @ t.T), axis=1)
        self.scores = q @ r.T - beta * statistic(ranked)[:, None]
        self.truth = {(qid, rid) for qid, rid in ground_truth(SPEC) if rid is not None}

    def kth_score(self, query: int) -> float:
        """The k-th best score of a query."""
        return float(-np.sort(-self.scores[query])[K - 1])

    def predictions(self) -> list[tuple[str, str, float]]:
        """Top k per query (ties: reference id), then the global top N (ties: ids)."""
        candidates = []
        for i, qid in enumerate(self.query_ids):
            best = sorted(range(SPEC.n_refs), key=lambda j: (-self.scores[i, j], self.ref_ids[j]))
            candidates += [(qid, self.ref_ids[j], float(self.scores[i, j])) for j in best[:K]]
        candidates.sort(key=lambda p: (-p[2], p[0], p[1]))
        return candidates[:MAX_RESULTS]

    def micro_ap(self, predictions: list[tuple[str, str, float]]) -> float:
        """Pooled ranking by score, false positives first among ties."""
        labelled = [(score, (qid, rid) in self.truth) for qid, rid, score in predictions]
        labelled.sort(key=lambda item: (-item[0], item[1]))
        true_so_far, total = 0, 0.0
        for rank, (_, positive) in enumerate(labelled, start=1):
            if positive:
                true_so_far += 1
                total += true_so_far / rank
        return total / len(self.truth)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synth(tmp_path_factory.mktemp("faithful"), SPEC)


def pipeline_predictions(data, preset, folder):
    """fit -> normalize references and queries -> match, as a user runs it."""
    model = folder / "model"
    fit_model(data["train"], model, build_params(preset))
    normalize(data["refs"], model, "reference", folder / "refs.zarr", chunk_rows=500)
    normalize(data["queries"], model, "query", folder / "queries.zarr", chunk_rows=64)
    out = folder / "predictions.csv"
    match(folder / "queries.zarr", folder / "refs.zarr", out, k=K, max_results=MAX_RESULTS)
    return read_predictions(out)


@pytest.mark.parametrize("preset", sorted(OFFICIAL))
def test_pipeline_predictions_follow_the_official_definition(data, tmp_path, preset):
    brute = BruteForce(*OFFICIAL[preset])
    expected = brute.predictions()
    found = pipeline_predictions(data, preset, tmp_path)
    assert len(found) == len(expected) == MAX_RESULTS
    q_index = {qid: i for i, qid in enumerate(brute.query_ids)}
    r_index = {rid: j for j, rid in enumerate(brute.ref_ids)}
    pairs = list(zip(found.query_ids.tolist(), found.reference_ids.tolist(), strict=True))
    assert len(set(pairs)) == len(pairs)
    for position, ((qid, rid), score) in enumerate(zip(pairs, found.scores, strict=True)):
        true_score = brute.scores[q_index[qid], r_index[rid]]
        # The pipeline's score is the definition's score of that pair ...
        assert abs(score - true_score) <= TOLERANCE, (qid, rid)
        # ... the pair is among its query's top k ...
        assert true_score >= brute.kth_score(q_index[qid]) - TOLERANCE, (qid, rid)
        # ... and any difference from the brute-force list is a swap of near-equal scores.
        if (qid, rid) != expected[position][:2]:
            assert abs(true_score - expected[position][2]) <= TOLERANCE, position
    truth = read_ground_truth(data["ground_truth"])
    reported = evaluate(found, truth).micro_ap
    assert reported == pytest.approx(brute.micro_ap(expected), abs=TOLERANCE)
    # The loop and the library agree on the very same list, too.
    same_list = [(q, r, float(s)) for (q, r), s in zip(pairs, found.scores, strict=True)]
    assert reported == pytest.approx(brute.micro_ap(same_list), abs=1e-12)


def test_normalization_matters_on_this_data():
    """Guards the test data: without normalization the ranking is clearly worse."""
    normalized, raw = BruteForce(*OFFICIAL["isc21"]), BruteForce(nth(1), 0.0)
    assert normalized.micro_ap(normalized.predictions()) > raw.micro_ap(raw.predictions()) + 0.05
