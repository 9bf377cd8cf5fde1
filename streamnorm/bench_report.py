"""The benchmark's result table: one row per figure, its ratio, target and conditions."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table


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


# The pipeline at 60 % of the GEMM limit and 85 % of a hand-written faiss search; cost
# of determinism below 15 % of raw faiss throughput; memory flat in N; an append
# priced by its rows; two workers worth at least 1.6 of one; an approximate index ten
# times faster than exact for at most 1 % of muAP.
TARGETS = {
    "to_sgemm": Target(">=", 0.6),
    "to_faiss": Target(">=", 0.85),
    "determinism": Target(">=", 0.85),
    "rss": Target("<=", 1.15),
    "append": Target("<=", 0.15),
    "scaling": Target(">=", 1.6),
    "approximate_speedup": Target(">=", 10.0),
    "approximate_quality": Target(">=", 0.99),
}


def mb(count: float) -> str:
    """Bytes as whole megabytes (MiB)."""
    return f"{count / 2**20:.0f} MB"


def rate_text(figures: dict[str, Any]) -> str:
    """Vectors/s and effective GFLOP/s of a throughput figure."""
    return f"{figures['vectors_per_s']:,.0f} vec/s, {figures['gflops']:.1f} GFLOP/s"


@dataclass(frozen=True)
class _Row:
    item: str
    figure: str
    value: str
    ratio: float | None
    of: str
    stages: tuple[str, ...]
    target: str | None = None


def _match_value(match: dict[str, Any]) -> tuple[str, float | None]:
    if "skipped" in match:
        return f"skipped: {match['skipped']}", None
    result = match["result"]
    # Rates and memory: what the line is about; the sizes are in the JSON.
    wanted = ("per_s", "rss")
    shown = [
        f"{key}={value:,.4g}"
        for key, value in result.items()
        if isinstance(value, int | float) and any(part in key for part in wanted)
    ]
    ratio = result.get("ratio")
    return ", ".join(shown[:4]), float(ratio) if isinstance(ratio, int | float) else None


def _throughput_rows(figures: dict[str, Any]) -> list[_Row]:
    plain, run = figures["faiss_plain"], figures["normalize"]
    det, sgemm = figures["determinism"], figures["sgemm"]
    # The load behind the limit is that of the GEMM run that counted.
    limit = sgemm.get("stage", "sgemm")
    return [
        _Row("1", "numpy sgemm (the limit)", f"{sgemm['gflops']:.1f} GFLOP/s", 1.0,
             "1", (limit,)),
        _Row("2", "plain faiss search", rate_text(plain), plain["ratio_to_sgemm"], "2 / 1",
             (limit, "faiss_plain")),
        _Row("3a", "streamnorm normalize", rate_text(run), run["ratio_to_sgemm"], "3 / 1",
             (limit, "normalize"), "to_sgemm"),
        _Row("3b", "normalize vs plain faiss", "", run["ratio_to_faiss"], "3 / 2",
             ("faiss_plain", "normalize"), "to_faiss"),
        _Row("4", "determinism: exact vs raw faiss",
             f"{det['exact']['vectors_per_s']:,.0f} vs {det['raw']['vectors_per_s']:,.0f} vec/s",
             det["throughput_ratio"], "exact / raw", ("determinism",), "determinism"),
    ]  # fmt: skip


def _resource_rows(figures: dict[str, Any]) -> list[_Row]:
    rss, app = figures["rss"], figures["append"]
    factor = rss["large"]["rows"] // max(rss["n"]["rows"], 1)
    return [
        _Row("5", f"peak RSS, N and {factor}N rows",
             f"{mb(rss['n']['peak_bytes'])}, {mb(rss['large']['peak_bytes'])}",
             rss["ratio"], f"{factor}N / N", ("rss",), "rss"),
        _Row("6", f"--append {app['row_fraction']:.0%} rows",
             f"{app['append']['seconds']:.2f} s vs {app['full']['seconds']:.2f} s",
             app["ratio"], "append / full", ("normalize", "append"), "append"),
    ]  # fmt: skip


def _scaling_rows(figures: dict[str, Any]) -> list[_Row]:
    scale = figures["scaling"]
    cluster, single = scale["local_cluster"], scale["one_thread"]

    def pair(runs: dict[str, Any]) -> str:
        one, two = runs["1"], runs["2"]
        return (
            f"1w {one['compute']['vectors_per_s']:,.0f} on {one['cores_used']:.2f} cores, "
            f"2w {two['compute']['vectors_per_s']:,.0f} on {two['cores_used']:.2f}"
        )

    return [
        # With default sizing one worker already runs a thread per core: informative only.
        _Row("7a", "scaling local-cluster:2 / :1", pair(cluster), cluster["ratio"],
             "2w / 1w, compute", ("local_cluster",)),
        _Row("7b", "  same, with cluster start-up", "", cluster["ratio_with_startup"],
             "2w / 1w, total", ("local_cluster",)),
        _Row("7c", "threads vs local-cluster:2",
             f"threads {scale['threads']['vectors_per_s']:,.0f} vec/s",
             scale["threads_to_local_cluster_2"], "threads / 2w", ("normalize", "local_cluster")),
        _Row("7d", "scaling, 1 thread per worker", pair(single), single["ratio"],
             "2w / 1w, compute", ("one_thread",), "scaling"),
        _Row("7e", "  same, per core received", "", single["ratio_per_core"],
             "(2w / 1w) / cores", ("one_thread",)),
    ]  # fmt: skip


def _approximate_rows(figures: dict[str, Any]) -> list[_Row]:
    line = figures.get("approximate")
    if not line:
        return []
    runs, exact = line["runs"], line["runs"]["flat"]
    rows = []
    for letter, (kind, compared) in zip("acegik", line["compared"].items(), strict=False):
        run = runs[kind]
        recall = compared.get("nth_neighbour_recall")
        rows += [
            _Row(f"9{letter}", f"{kind} vs exact: normalize speed",
                 f"{run['vectors_per_s']:,.0f} vs {exact['vectors_per_s']:,.0f} vec/s, "
                 f"{line['sizes']['n_train']:,} training",
                 compared["speedup"], "exact / " + kind + " time", ("approximate",),
                 "approximate_speedup"),
            _Row(f"9{chr(ord(letter) + 1)}", f"{kind} vs exact: muAP",
                 f"{run['micro_ap']:.4f} vs {exact['micro_ap']:.4f}"
                 + ("" if recall is None else f", n-th recall {recall:.2f}"),
                 compared["micro_ap_ratio"], kind + " / exact", ("approximate",),
                 "approximate_quality"),
        ]  # fmt: skip
    return rows


def build_lines(figures: dict[str, Any], loads: dict[str, float]) -> list[dict[str, Any]]:
    """One row per figure: what was measured, its ratio, its target and its conditions.

    Parameters
    ----------
    figures : dict
        The measurements, with the derived ratios.
    loads : dict
        Per stage key, the cores other processes kept busy (the worst stage of the key).

    Returns
    -------
    list of dict
        ``item``, ``figure``, ``value``, ``ratio``, ``ratio_of``, ``target``, ``met``
        and ``others_cores`` (the worst load from other processes behind the ratio).
    """
    match_value, match_ratio = _match_value(figures["match"])
    rows = [
        *_throughput_rows(figures),
        *_resource_rows(figures),
        *_scaling_rows(figures),
        _Row("8", "matching", match_value, match_ratio, "streamnorm / faiss", ("match",)),
        *_approximate_rows(figures),
    ]
    lines = []
    for row in rows:
        target = TARGETS.get(row.target) if row.target else None
        lines.append(
            {
                "item": row.item,
                "figure": row.figure,
                "value": row.value,
                "ratio": row.ratio,
                "ratio_of": row.of,
                "target": None if target is None else str(target),
                "met": None if target is None or row.ratio is None else target.met(row.ratio),
                "others_cores": max((loads.get(key, 0.0) for key in row.stages), default=0.0),
            }
        )
    return lines


def bench_table(result: dict[str, Any], title: str = "streamnorm bench") -> Table:
    """The result's lines as a rich table."""
    table = Table(
        title=title,
        caption="others: cores kept busy by other processes during the line's runs (worst)",
    )
    for name, justify in (
        ("#", "right"),
        ("figure", "left"),
        ("value", "right"),
        ("ratio", "right"),
        ("of", "left"),
        ("target", "right"),
        ("met?", "center"),
        ("others", "right"),
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
            f"{line['others_cores']:.1f}",
        )
    return table


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


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Write the result, replacing any earlier file."""
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
