"""The approximate-index line of ``streamnorm bench``: IVF and HNSW against exact.

One synthetic data set with ground truth goes through the whole job once per training
index: fit, normalize the references and the queries through the pipeline, match and
evaluate. For each approximate index the line reports how much faster normalizing is
than with the exact index, what it costs in muAP, and the n-th neighbour recall of the
index against exact search.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamnorm.config import build_params
from streamnorm.encoding import Role
from streamnorm.groundtruth import GroundTruth, read_ground_truth, read_predictions
from streamnorm.matching import match
from streamnorm.metrics import evaluate
from streamnorm.model import fit_model
from streamnorm.pipeline import normalize
from streamnorm.synth import SynthSpec
from streamnorm.synth_store import write_synth

SIDES: tuple[tuple[str, Role], ...] = (("refs", "reference"), ("queries", "query"))


@dataclass(frozen=True)
class ApproximateSizes:
    """The data of the approximate-index line.

    Attributes
    ----------
    n_train : int
        Training vectors; the comparison is about large training sets.
    dim : int
        Descriptor dimension.
    n_queries, n_refs : int
        Vectors normalized (and matched) with each index.
    indexes : tuple of str
        The approximate indexes compared with ``flat``.
    preset : str
        Normalization parameters; only ``index`` differs between the runs.
    seed : int
        Seed of the synthetic data.
    """

    n_train: int
    dim: int = 128
    n_queries: int = 4_000
    n_refs: int = 40_000
    indexes: tuple[str, ...] = ("ivf", "hnsw")
    preset: str = "isc21"
    seed: int = 0

    @classmethod
    def quick(cls) -> ApproximateSizes:
        """A small training set: the line runs, but approximate indexes gain little here."""
        return cls(n_train=100_000, dim=64, n_queries=1_000, n_refs=10_000)

    @classmethod
    def full(cls) -> ApproximateSizes:
        """The DISC21 training-set size: 1M vectors."""
        return cls(n_train=1_000_000)


def _run_index(
    kind: str, data: dict[str, Path], truth: GroundTruth, sizes: ApproximateSizes, folder: Path
) -> dict[str, Any]:
    """Fit, normalize both sides, match and evaluate with one training index."""
    model_path = folder / f"model-{kind}"
    began = time.perf_counter()
    model = fit_model(
        data["train"], model_path, build_params(sizes.preset, None, [f"index={kind}"])
    )
    fitted = time.perf_counter() - began
    stores, seconds, rows = {}, 0.0, 0
    for split, role in SIDES:
        stores[split] = folder / f"{split}-{kind}.zarr"
        result = normalize(data[split], model_path, role, stores[split])
        seconds += result.seconds
        rows += result.rows_added
    predictions = folder / f"predictions-{kind}.csv"
    match(stores["queries"], stores["refs"], predictions, k=10, max_results=10 * sizes.n_queries)
    evaluation = evaluate(read_predictions(predictions, truth), truth)
    return {
        "fit_seconds": fitted,
        "normalize_seconds": seconds,
        "rows": rows,
        "vectors_per_s": rows / max(seconds, 1e-9),
        "micro_ap": evaluation.micro_ap,
        "recall_at_p90": evaluation.recall_at_p90,
        "index": dict(model.index_report_),
        "params": {
            key: value
            for key, value in model.params.model_dump().items()
            if key.startswith(("ivf_", "hnsw_")) or key == "index"
        },
    }


def approximate_line(sizes: ApproximateSizes, folder: Path) -> dict[str, Any]:
    """Each approximate index against exact on the same data, one after the other.

    Returns
    -------
    dict
        One run per index (``flat`` first) and, per approximate index, under
        ``compared[kind]``: ``speedup`` (normalize time exact / approximate),
        ``micro_ap_ratio`` (approximate / exact) and ``nth_neighbour_recall``.
    """
    spec = SynthSpec(
        n_queries=sizes.n_queries,
        n_refs=sizes.n_refs,
        n_train=sizes.n_train,
        dim=sizes.dim,
        seed=sizes.seed,
    )
    data = write_synth(folder / "approximate-data", spec)
    truth = read_ground_truth(data["ground_truth"])
    runs = {kind: _run_index(kind, data, truth, sizes, folder) for kind in ("flat", *sizes.indexes)}
    flat = runs["flat"]
    compared = {
        kind: {
            "speedup": flat["normalize_seconds"] / max(runs[kind]["normalize_seconds"], 1e-9),
            "micro_ap_ratio": runs[kind]["micro_ap"] / max(flat["micro_ap"], 1e-12),
            "nth_neighbour_recall": runs[kind]["index"].get("nth_neighbour_recall"),
        }
        for kind in sizes.indexes
    }
    return {"runs": runs, "compared": compared, "sizes": asdict(sizes)}
