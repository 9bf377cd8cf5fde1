"""The benchmark at a tiny size: every figure is there, sane and JSON-native.

No timing thresholds: on a shared machine only the presence and the sanity of the
figures can be asserted, never their values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from streamnorm.bench import BenchSizes, bench_table, run_bench, write_json
from streamnorm.bench_approx import ApproximateSizes
from streamnorm.bench_report import Target
from streamnorm.bench_rss import peak_memory
from streamnorm.cli import app

TINY = BenchSizes(
    n_vectors=1024,
    n_train=2048,
    dim=32,
    chunk_rows=256,
    sgemm_size=128,
    sgemm_reps=1,
    determinism_blocks=2,
    determinism_reps=1,
    match_queries=64,
    match_refs=512,
    approximate=ApproximateSizes(n_train=3000, dim=32, n_queries=60, n_refs=600),
)
FIGURES = (
    "sgemm",
    "faiss_plain",
    "normalize",
    "determinism",
    "rss",
    "append",
    "scaling",
    "match",
    "approximate",
)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_bench(TINY, workdir=tmp_path_factory.mktemp("bench"), progress=False)


def _numbers(value: Any) -> list[float]:
    """Every number in a nested structure."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [float(value)]
    return []


def test_every_figure_is_there(result: dict[str, Any]) -> None:
    assert set(FIGURES) <= set(result["figures"])
    assert result["sizes"]["n_vectors"] == TINY.n_vectors
    scaling = result["figures"]["scaling"]
    assert {"threads", "local_cluster", "one_thread", "ratio", "startup"} <= set(scaling)
    for pair in ("local_cluster", "one_thread"):
        assert {"1", "2", "ratio", "ratio_with_startup"} <= set(scaling[pair])
    match = result["figures"]["match"]
    assert "skipped" in match or "result" in match


def test_json_round_trips(result: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "bench.json"
    write_json(result, path)
    assert json.loads(path.read_text()) == result


def test_ratios_are_positive_and_finite(result: dict[str, Any]) -> None:
    ratios = [line["ratio"] for line in result["lines"] if line["ratio"] is not None]
    assert len(ratios) >= 10
    assert all(math.isfinite(r) and r > 0 for r in ratios)
    assert all(math.isfinite(n) for n in _numbers(result["figures"]))
    targeted = [line for line in result["lines"] if line["target"] is not None]
    # normalize vs GEMM and vs faiss, determinism, rss, append, scaling, and the speed
    # and muAP of IVF and of HNSW
    assert len(targeted) == 10
    assert all(isinstance(line["met"], bool) for line in targeted)


def test_rows_are_counted_right(result: dict[str, Any]) -> None:
    figures = result["figures"]
    assert figures["normalize"]["rows"] == TINY.n_vectors
    assert figures["append"]["append"]["rows"] == TINY.n_append
    assert figures["rss"]["large"]["rows"] == TINY.rss_factor * TINY.n_vectors
    assert figures["scaling"]["one_thread"]["2"]["compute"]["rows"] == TINY.n_vectors
    assert figures["determinism"]["raw"]["rows"] == 2 * TINY.chunk_rows


def test_approximate_line_compares_each_index_with_exact(result: dict[str, Any]) -> None:
    line = result["figures"]["approximate"]
    runs = line["runs"]
    assert set(runs) == {"flat", "ivf", "hnsw"}
    for kind in ("ivf", "hnsw"):
        compared = line["compared"][kind]
        run = runs[kind]
        assert run["index"]["kind"] == kind and run["params"]["index"] == kind
        assert run["rows"] == runs["flat"]["rows"] == 660
        assert compared["speedup"] == pytest.approx(
            runs["flat"]["normalize_seconds"] / run["normalize_seconds"]
        )
        assert compared["micro_ap_ratio"] == pytest.approx(
            run["micro_ap"] / runs["flat"]["micro_ap"]
        )
        assert 0.0 <= compared["nth_neighbour_recall"] <= 1.0
    # Normalization helps on the synth data whatever the index: muAP well above chance.
    assert all(0.2 < run["micro_ap"] <= 1.0 for run in runs.values())
    assert runs["flat"]["index"]["kind"] == "flat"


def test_peak_memory_is_plausible(result: dict[str, Any]) -> None:
    rss = result["figures"]["rss"]
    for run in ("n", "large"):
        assert rss[run]["peak_bytes"] > 10 * 2**20
        assert rss[run]["peak_bytes"] == max(rss[run]["all_peak_bytes"])
        assert rss[run]["peak_bytes"] >= 0.9 * rss[run]["polled_peak_bytes"]


def test_machine_description(result: dict[str, Any]) -> None:
    machine = result["machine"]
    assert machine["cores_logical"] >= 1
    assert machine["cpu_model"]
    for package in ("numpy", "faiss-cpu", "zarr", "dask"):
        assert machine["versions"][package] != "not installed"
    assert isinstance(machine["threadpools"], list)
    assert isinstance(machine["threadpools_at_end"], list)


def test_stages_record_the_machine_load(result: dict[str, Any]) -> None:
    stages = result["stages"]
    assert {stage["key"] for stage in stages} >= set(FIGURES) - {"scaling"}
    assert all(stage["seconds"] > 0 and stage["others_cores"] >= 0 for stage in stages)
    assert all(line["others_cores"] >= 0 for line in result["lines"])


def test_targets() -> None:
    assert Target(">=", 1.6).met(1.6) and not Target(">=", 1.6).met(1.59)
    assert Target("<=", 0.15).met(0.1) and not Target("<=", 0.15).met(0.2)
    assert str(Target("<=", 1.15)) == "<= 1.15"


def test_table_has_one_row_per_line(result: dict[str, Any]) -> None:
    assert bench_table(result).row_count == len(result["lines"])


def test_peak_memory_reports_a_failing_command() -> None:
    with pytest.raises(RuntimeError, match="failed"):
        peak_memory(["python3", "-c", "import sys; sys.exit(3)"])


def test_cli_help() -> None:
    outcome = CliRunner().invoke(app, ["bench", "--help"])
    assert outcome.exit_code == 0
    assert "--quick" in outcome.output
    assert "--out" in outcome.output
