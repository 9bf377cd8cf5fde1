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
8. the matching benchmark of ``streamnorm.match_bench``, when available.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from rich.console import Console
from rich.table import Table

from streamnorm import bench_items as items
from streamnorm.bench_data import BenchData, BenchSizes, prepare_data
from streamnorm.bench_machine import machine_description, sgemm_rate
from streamnorm.progress import stderr_console

__all__ = ["BenchSizes", "bench_table", "run_bench", "run_bench_command", "write_json"]

FORMAT = "streamnorm-bench/1"
T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """A goal for one ratio: ``ratio <op> threshold``."""

    op: str
    threshold: float

    def met(self, ratio: float) -> bool:
        """Whether ``ratio`` reaches the goal."""
        return ratio >= self.threshold if self.op == ">=" else ratio <= self.threshold

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


# Cost of determinism below 15 % of raw faiss throughput; memory flat in N; an append
# priced by its rows; two workers worth at least 1.6 of one.
TARGETS = {
    "determinism": Target(">=", 0.85),
    "rss": Target("<=", 1.15),
    "append": Target("<=", 0.15),
    "scaling": Target(">=", 1.6),
}


class Stages:
    """Numbered progress messages on stderr, with each stage's duration."""

    def __init__(self, total: int, enabled: bool, console: Console | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.console = console or stderr_console
        self.count = 0

    def run(self, title: str, work: Callable[[], T], summary: Callable[[T], str]) -> T:
        """Run one stage, announcing it before and summarizing it after."""
        self.count += 1
        if self.enabled:
            self.console.print(f"[bold][{self.count}/{self.total}][/bold] {title} ...")
        began = time.perf_counter()
        result = work()
        if self.enabled:
            took = time.perf_counter() - began
            self.console.print(f"      {summary(result)}  [dim]({took:.1f} s)[/dim]")
        return result


def _mb(count: int) -> str:
    return f"{count / 2**20:.0f} MB"


def _rate_text(figures: dict[str, Any]) -> str:
    return f"{figures['vectors_per_s']:,.0f} vec/s, {figures['gflops']:.1f} GFLOP/s"


def _measure(sizes: BenchSizes, data: BenchData, folder: Path, stages: Stages) -> dict[str, Any]:
    """Every line item, in an order that keeps the compared runs close in time."""
    show = stages.enabled
    figures: dict[str, Any] = {}
    figures["sgemm"] = stages.run(
        "numpy float32 GEMM",
        lambda: sgemm_rate(sizes.sgemm_size, sizes.sgemm_reps),
        lambda r: f"{r['gflops']:.1f} GFLOP/s",
    )
    figures["faiss_plain"] = stages.run(
        "plain in-memory faiss search", lambda: items.plain_faiss(data, sizes), _rate_text
    )
    figures["normalize"] = stages.run(
        "streamnorm normalize (threads)",
        lambda: items.pipeline_run(
            data.vectors, data.model, folder / "normalized.zarr", sizes, progress=show
        ),
        _rate_text,
    )
    figures["append"] = {
        "full": figures["normalize"],
        "append": stages.run(
            f"normalize --append of {sizes.n_append} rows",
            lambda: items.pipeline_run(
                data.extra, data.model, folder / "normalized.zarr", sizes, append=True
            ),
            lambda r: f"{r['seconds']:.2f} s",
        ),
    }
    figures["determinism"] = stages.run(
        "cost of determinism: exact search vs raw faiss",
        lambda: items.determinism_cost(data, sizes),
        lambda r: f"exact/raw throughput {r['throughput_ratio']:.3f}",
    )
    figures["rss"] = stages.run(
        f"peak RSS at N and {sizes.rss_factor}N rows (fresh processes)",
        lambda: items.peak_rss(data, sizes, folder),
        lambda r: (
            f"{r['n']['peak_bytes'] / 2**20:.0f} MB -> {r['large']['peak_bytes'] / 2**20:.0f} MB"
        ),
    )
    figures["scaling"] = {"threads": figures["normalize"]}
    # Back to back, so that the two runs of the compared ratio see the same machine.
    for workers in (1, 2):
        figures["scaling"][f"local_cluster_{workers}"] = stages.run(
            f"normalize on local-cluster:{workers}",
            partial(
                items.cluster_run, data, sizes, workers, folder / f"cluster-{workers}.zarr", show
            ),
            lambda r: _rate_text(r["compute"]) + f" (start-up {r['startup_seconds']:.1f} s)",
        )
    figures["match"] = stages.run(
        "matching (streamnorm.match_bench)",
        lambda: items.match_line(sizes),
        lambda r: r.get("skipped", "done"),
    )
    return figures


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
    one, two = scaling["local_cluster_1"], scaling["local_cluster_2"]
    scaling["ratio"] = two["compute"]["vectors_per_s"] / one["compute"]["vectors_per_s"]
    scaling["ratio_with_startup"] = two["total"]["vectors_per_s"] / one["total"]["vectors_per_s"]
    scaling["threads_to_local_cluster_2"] = (
        scaling["threads"]["vectors_per_s"] / two["compute"]["vectors_per_s"]
    )
    scaling["startup"] = (
        "excluded: a LocalCluster of the same shape is started and closed alone just before "
        "each run, and its time subtracted (raw totals under 'total')"
    )


def _line(
    item: str, figure: str, value: str, ratio: float | None, of: str, key: str | None = None
) -> dict[str, Any]:
    target = TARGETS.get(key) if key else None
    return {
        "item": item,
        "figure": figure,
        "value": value,
        "ratio": ratio,
        "ratio_of": of,
        "target": None if target is None else str(target),
        "met": None if target is None or ratio is None else target.met(ratio),
    }


def _match_value(match: dict[str, Any]) -> tuple[str, float | None]:
    if "skipped" in match:
        return f"skipped: {match['skipped']}", None
    result = match["result"]
    shown = [f"{k}={v:.4g}" for k, v in result.items() if isinstance(v, int | float)]
    ratios = [float(v) for k, v in result.items() if "ratio" in k and isinstance(v, int | float)]
    return ", ".join(shown[:6]), ratios[0] if ratios else None


def build_lines(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure of the table: what was measured, its ratio and its target."""
    mb = 2**20
    det, rss, app, scale = (
        figures["determinism"],
        figures["rss"],
        figures["append"],
        figures["scaling"],
    )
    one, two = scale["local_cluster_1"]["compute"], scale["local_cluster_2"]["compute"]
    match_value, match_ratio = _match_value(figures["match"])
    return [
        _line(
            "1", "numpy sgemm (the limit)", f"{figures['sgemm']['gflops']:.1f} GFLOP/s", 1.0, "1"
        ),
        _line(
            "2",
            "plain faiss search",
            _rate_text(figures["faiss_plain"]),
            figures["faiss_plain"]["ratio_to_sgemm"],
            "2 / 1",
        ),
        _line(
            "3a",
            "streamnorm normalize",
            _rate_text(figures["normalize"]),
            figures["normalize"]["ratio_to_sgemm"],
            "3 / 1",
        ),
        _line(
            "3b", "normalize vs plain faiss", "", figures["normalize"]["ratio_to_faiss"], "3 / 2"
        ),
        _line(
            "4",
            "determinism: exact vs raw faiss",
            f"{det['exact']['vectors_per_s']:,.0f} vs {det['raw']['vectors_per_s']:,.0f} vec/s",
            det["throughput_ratio"],
            "exact / raw",
            "determinism",
        ),
        _line(
            "5",
            f"peak RSS, N and {rss['large']['rows'] // max(rss['n']['rows'], 1)}N rows",
            f"{rss['n']['peak_bytes'] / mb:.0f} MB, {rss['large']['peak_bytes'] / mb:.0f} MB",
            rss["ratio"],
            "4N / N",
            "rss",
        ),
        _line(
            "6",
            f"--append {app['row_fraction']:.0%} rows",
            f"{app['append']['seconds']:.2f} s vs {app['full']['seconds']:.2f} s",
            app["ratio"],
            "append / full",
            "append",
        ),
        _line(
            "7a",
            "scaling, compute phase",
            f"1w {one['vectors_per_s']:,.0f}, 2w {two['vectors_per_s']:,.0f} vec/s",
            scale["ratio"],
            "2w / 1w",
            "scaling",
        ),
        _line(
            "7b",
            "scaling, with cluster start-up",
            "",
            scale["ratio_with_startup"],
            "2w / 1w",
        ),
        _line(
            "7c",
            "threads vs local-cluster:2",
            f"threads {scale['threads']['vectors_per_s']:,.0f} vec/s",
            scale["threads_to_local_cluster_2"],
            "threads / 2w",
        ),
        _line("8", "matching", match_value, match_ratio, "match"),
    ]


def jsonable(value: Any) -> Any:
    """``value`` with numpy scalars and arrays, tuples and paths made JSON-native."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
        ``lines`` (the table's rows) and ``seconds``.
    """
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="streamnorm-bench-", dir=workdir) as scratch:
        folder = Path(scratch)
        stages = Stages(10, progress)
        data = stages.run(
            "generating synthetic stores and fitting the model",
            lambda: prepare_data(sizes, folder, progress),
            lambda d: f"{sizes.n_vectors} vectors, {sizes.n_train} training, d={sizes.dim}",
        )
        figures = _measure(sizes, data, folder, stages)
    _derive(figures)
    result = {
        "format": FORMAT,
        "sizes": asdict(sizes),
        "machine": machine_description(),
        "figures": figures,
        "lines": build_lines(figures),
        "seconds": time.perf_counter() - began,
    }
    return dict(jsonable(result))


def bench_table(result: dict[str, Any], title: str = "streamnorm bench") -> Table:
    """The result's lines as a rich table."""
    table = Table(title=title)
    for name, justify in (
        ("#", "right"),
        ("figure", "left"),
        ("value", "right"),
        ("ratio", "right"),
        ("of", "left"),
        ("target", "right"),
        ("met?", "center"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    marks = {True: "[green]yes[/green]", False: "[red]no[/red]", None: "-"}
    for line in result["lines"]:
        ratio = "-" if line["ratio"] is None else f"{line['ratio']:.3f}"
        table.add_row(
            line["item"],
            line["figure"],
            line["value"],
            ratio,
            line["ratio_of"],
            line["target"] or "-",
            marks[line["met"]],
        )
    return table


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Write the result, replacing any earlier file."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")


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
    console.print(bench_table(result, title))
    if out is not None:
        write_json(result, out)
        console.print(f"figures: {out}")
    return result
