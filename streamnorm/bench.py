"""``streamnorm bench``: throughput, cost of determinism, memory, append and scaling.

The machine this runs on is shared and noisy, so every figure that matters is a *ratio*
of two measurements taken side by side in the same run: the pipeline against numpy's
GEMM rate and against a hand-written faiss search, the deterministic search against raw
faiss, 4N rows against N rows, an append against a full run, two workers against one.

Line items (see :func:`run_bench`):

1. numpy float32 GEMM rate: the machine's limit;
2. a plain in-memory faiss search, as a user would write it;
3. :func:`streamnorm.pipeline.normalize` on a zarr store;
4. the cost of determinism: exact search vs raw faiss on the same blocks;
5. peak RSS of ``streamnorm normalize`` at N and 4N rows, each in a fresh process;
6. ``--append`` of 10 % new rows against the full run;
7. scaling over ``local-cluster:1``, ``local-cluster:2`` and ``threads``;
8. the matching benchmark of ``streamnorm.match_bench``, when available;
9. approximate training indexes (IVF, HNSW) against exact: speed-up and muAP ratio.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from threadpoolctl import threadpool_info

from streamnorm import bench_items as items
from streamnorm.bench_approx import approximate_line
from streamnorm.bench_data import BenchData, BenchSizes, prepare_data
from streamnorm.bench_machine import machine_description, sgemm_rate
from streamnorm.bench_report import bench_table, build_lines, jsonable, mb, rate_text, write_json
from streamnorm.bench_stages import Stages

__all__ = ["BenchSizes", "bench_table", "run_bench", "run_bench_command", "write_json"]

FORMAT = "streamnorm-bench/1"


def _measure(sizes: BenchSizes, data: BenchData, folder: Path, stages: Stages) -> dict[str, Any]:
    """Every line item, in an order that keeps the compared runs close in time."""
    show = stages.enabled
    figures: dict[str, Any] = {}
    figures["sgemm"] = _sgemm(stages, sizes, "at the start")
    figures["faiss_plain"] = stages.run(
        "faiss_plain",
        "plain in-memory faiss search",
        lambda: items.plain_faiss(data, sizes),
        rate_text,
    )
    figures["normalize"] = stages.run(
        "normalize",
        "streamnorm normalize (threads)",
        lambda: items.pipeline_run(
            data.vectors, data.model, folder / "normalized.zarr", sizes, progress=show
        ),
        rate_text,
    )
    figures["append"] = {
        "full": figures["normalize"],
        "append": stages.run(
            "append",
            f"normalize --append of {sizes.n_append} rows",
            lambda: items.pipeline_run(
                data.extra, data.model, folder / "normalized.zarr", sizes, append=True
            ),
            lambda r: f"{r['seconds']:.2f} s",
        ),
    }
    figures["determinism"] = stages.run(
        "determinism",
        "cost of determinism: exact search vs raw faiss",
        lambda: items.determinism_cost(data, sizes),
        lambda r: f"exact/raw throughput {r['throughput_ratio']:.3f}",
    )
    figures["rss"] = _peak_memory(stages, data, sizes, folder)
    figures["scaling"] = {"threads": figures["normalize"]}
    for label, run in (
        ("local_cluster", partial(items.cluster_run, data, sizes)),
        ("one_thread", partial(items.one_thread_cluster_run, data, sizes)),
    ):
        figures["scaling"][label] = _worker_pair(stages, label, run, sizes.scaling_reps, folder)
    figures["match"] = stages.run(
        "match",
        "matching (streamnorm.match_bench)",
        lambda: items.match_line(sizes),
        lambda r: r.get("skipped", "done"),
    )
    if sizes.approximate is not None:
        approximate = sizes.approximate
        figures["approximate"] = stages.run(
            "approximate",
            f"approximate indexes vs exact, {approximate.n_train:,} training vectors",
            lambda: approximate_line(approximate, folder),
            lambda r: ", ".join(
                f"{kind} x{c['speedup']:.1f} muAP x{c['micro_ap_ratio']:.3f}"
                for kind, c in r["compared"].items()
            ),
        )
    # Measured again at the end: a limit taken while others held the cores would flatter
    # every ratio against it, and interference only ever lowers the rate.
    first, last = figures["sgemm"], _sgemm(stages, sizes, "again at the end")
    figures["sgemm"] = {
        **max(first, last, key=lambda r: r["gflops"]),
        "gflops_start": first["gflops"],
        "gflops_end": last["gflops"],
        "stage": "sgemm" if first["gflops"] >= last["gflops"] else "sgemm_end",
    }
    return figures


def _sgemm(stages: Stages, sizes: BenchSizes, when: str) -> dict[str, Any]:
    return stages.run(
        "sgemm" if when == "at the start" else "sgemm_end",
        f"numpy float32 GEMM, {when}",
        lambda: sgemm_rate(sizes.sgemm_size, sizes.sgemm_reps),
        lambda r: f"{r['gflops']:.1f} GFLOP/s",
    )


_PAIR_TITLES = {
    "local_cluster": "normalize on local-cluster:{workers}",
    "one_thread": "normalize on a running cluster of {workers} one-thread worker(s)",
}


def _compute_rate(run: dict[str, Any]) -> float:
    return float(run["compute"]["vectors_per_s"])


def _peak_memory(
    stages: Stages, data: BenchData, sizes: BenchSizes, folder: Path
) -> dict[str, Any]:
    """Peak RSS at N and ``rss_factor`` N rows, each size ``rss_reps`` times in ABBA order.

    The largest peak of each size counts: it is what memory must be provisioned for.
    """
    sources = {"n": ("N", data.vectors), "large": (f"{sizes.rss_factor}N", data.large)}
    runs: dict[str, list[dict[str, Any]]] = {"n": [], "large": []}
    for rep in range(max(1, sizes.rss_reps)):
        for name in ("n", "large") if rep % 2 == 0 else ("large", "n"):
            label, source = sources[name]
            out = folder / f"rss-{name}-{rep}.zarr"
            runs[name].append(
                stages.run(
                    "rss",
                    f"peak RSS of `streamnorm normalize` at {label} rows (a fresh process)",
                    partial(items.peak_rss, source, data, sizes, out),
                    lambda r: mb(r["peak_bytes"]),
                )
            )
    figures: dict[str, Any] = {
        name: {
            **max(found, key=lambda r: r["peak_bytes"]),
            "all_peak_bytes": [r["peak_bytes"] for r in found],
        }
        for name, found in runs.items()
    }
    figures["ratio"] = figures["large"]["peak_bytes"] / figures["n"]["peak_bytes"]
    return figures


def _pair_summary(run: dict[str, Any]) -> str:
    startup = run["startup_seconds"]
    return rate_text(run["compute"]) + (f" (start-up {startup:.1f} s)" if startup else "")


def _worker_pair(
    stages: Stages,
    label: str,
    run: Callable[[int, Path], dict[str, Any]],
    reps: int,
    folder: Path,
) -> dict[str, Any]:
    """Runs on one and two workers, back to back, in ABBA order over repetitions.

    Alternating the order cancels a steady drift of the machine's load; the fastest
    run of each size counts, since interference only ever slows a run down.
    """
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    for rep in range(max(1, reps)):
        for workers in (1, 2) if rep % 2 == 0 else (2, 1):
            out = folder / f"{label}-{workers}-{rep}.zarr"
            figures = stages.run(
                label,
                _PAIR_TITLES[label].format(workers=workers),
                partial(run, workers, out),
                _pair_summary,
            )
            # The cores the run really got: fewer than its workers when others held some.
            runs[workers].append({**figures, "cores_used": stages.records[-1].own_cores})
    best = {workers: max(found, key=_compute_rate) for workers, found in runs.items()}
    ratio = _compute_rate(best[2]) / _compute_rate(best[1])
    return {
        "1": best[1],
        "2": best[2],
        "ratio": ratio,
        "ratio_per_core": ratio * best[1]["cores_used"] / max(best[2]["cores_used"], 1e-9),
        "ratio_with_startup": best[2]["total"]["vectors_per_s"] / best[1]["total"]["vectors_per_s"],
        "all_compute_rates": {
            str(w): [_compute_rate(r) for r in found] for w, found in runs.items()
        },
    }


def _derive(figures: dict[str, Any]) -> None:
    """The ratios, computed from the raw figures and stored beside them."""
    sgemm = figures["sgemm"]["gflops"]
    faiss_plain = figures["faiss_plain"]
    faiss_plain["ratio_to_sgemm"] = faiss_plain["gflops"] / sgemm
    run = figures["normalize"]
    run["ratio_to_sgemm"] = run["gflops"] / sgemm
    run["ratio_to_faiss"] = run["vectors_per_s"] / faiss_plain["vectors_per_s"]
    append = figures["append"]
    append["ratio"] = append["append"]["seconds"] / append["full"]["seconds"]
    append["row_fraction"] = append["append"]["rows"] / append["full"]["rows"]
    scaling = figures["scaling"]
    # Worker scaling at equal resources per worker: with default sizing a single worker
    # already runs one thread per core, so its pair says little about workers.
    scaling["ratio"] = scaling["one_thread"]["ratio"]
    scaling["threads_to_local_cluster_2"] = scaling["threads"]["vectors_per_s"] / _compute_rate(
        scaling["local_cluster"]["2"]
    )
    scaling["startup"] = (
        "excluded: a LocalCluster of the same shape is started and closed alone just before "
        "each local-cluster run, and its time subtracted (raw totals under 'total'); "
        "the one-thread runs use a cluster started before the timed call"
    )


def run_bench(
    sizes: BenchSizes, workdir: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Generate data, measure every line item side by side, and derive the ratios.

    Parameters
    ----------
    sizes : BenchSizes
        How much work each line does (:meth:`BenchSizes.quick`, :meth:`BenchSizes.full`).
    workdir : str or Path, optional
        Where to create the temporary folder of the generated stores and outputs (the
        system's temporary folder by default); it is removed at the end.
    progress : bool
        Stage messages and progress bars on stderr.

    Returns
    -------
    dict
        JSON-native: ``format``, ``sizes``, ``machine``, ``figures`` (every measurement),
        ``lines`` (the table's rows), ``stages`` (duration and load from other
        processes of every stage) and ``seconds``.
    """
    began = time.perf_counter()
    # Described before anything runs: the pipeline's tasks may leave thread pools resized.
    machine = machine_description()
    with tempfile.TemporaryDirectory(prefix="streamnorm-bench-", dir=workdir) as scratch:
        folder = Path(scratch)
        stages = Stages(9 + 2 * max(1, sizes.rss_reps) + 4 * max(1, sizes.scaling_reps), progress)
        data = stages.run(
            "data",
            "generating synthetic stores and fitting the model",
            lambda: prepare_data(sizes, folder, progress),
            lambda d: f"{sizes.n_vectors} vectors, {sizes.n_train} training, d={sizes.dim}",
        )
        figures = _measure(sizes, data, folder, stages)
    _derive(figures)
    result = {
        "format": FORMAT,
        "sizes": asdict(sizes),
        "machine": {**machine, "threadpools_at_end": threadpool_info()},
        "figures": figures,
        "lines": build_lines(figures, {r.key: stages.others_cores(r.key) for r in stages.records}),
        "stages": stages.as_dicts(),
        "seconds": time.perf_counter() - began,
    }
    return dict(jsonable(result))


def run_bench_command(console: Console, quick: bool, out: Path | None) -> dict[str, Any]:
    """What ``streamnorm bench`` does: run, print the table, write the JSON."""
    sizes = BenchSizes.quick() if quick else BenchSizes.full()
    result = run_bench(sizes, progress=True)
    result["mode"] = "quick" if quick else "full"
    machine = result["machine"]
    title = (
        f"streamnorm bench ({result['mode']}, {result['seconds']:.0f} s, "
        f"{machine['cores_logical']} cores, {machine['cpu_model']})"
    )
    # A file or pipe has no width: do not squeeze the table into rich's default 80 columns.
    shown = console if console.is_terminal else Console(file=console.file, width=140)
    shown.print(bench_table(result, title))
    if out is not None:
        write_json(result, out)
        console.print(f"figures: {out}")
    return result
