"""The ``streamnorm`` command line: a thin layer over the Python API.

User errors print one line, ``error: ...``, and exit with code 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, cast

import click
import typer
from rich.console import Console
from rich.table import Table

from streamnorm.allocator import release_memory_promptly
from streamnorm.encoding import Role
from streamnorm.errors import StreamnormError

app = typer.Typer(
    name="streamnorm",
    help=(
        "Score normalization for copy-detection descriptors, streamed chunk by chunk.\n\n"
        "Typical flow: synth (or bring your own stores) -> fit -> normalize the queries "
        "and the references -> match -> evaluate. Inputs may be zarr descriptor stores, "
        "ISC HDF5 files or .npy files."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
_state = {"debug": False}

SCHEDULER_OPTION_HELP = (
    "Where tasks run: threads, processes, synchronous, local-cluster[:N] (a LocalCluster of N "
    "worker processes) or tcp://HOST:PORT (an existing dask.distributed scheduler)."
)
RUN_CONFIG_HELP = "TOML file of run settings: scheduler, workers, threads (options win)."
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
IdsOption = Annotated[
    str | None,
    typer.Option(
        "--ids", help="For .npy inputs: a text file with one id per line (else row numbers)."
    ),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
) -> None:
    _state["debug"] = debug


@app.command()
def synth(
    out_dir: Annotated[
        Path,
        typer.Argument(help="Folder for train.zarr, refs.zarr, queries.zarr, ground_truth.csv."),
    ],
    queries: Annotated[int, typer.Option(help="Number of queries.")] = 5_000,
    refs: Annotated[int, typer.Option(help="Number of references.")] = 50_000,
    train: Annotated[int, typer.Option(help="Number of training vectors.")] = 50_000,
    dim: Annotated[int, typer.Option(help="Descriptor dimension.")] = 128,
    positives: Annotated[
        float, typer.Option(help="Fraction of queries that copy a reference.")
    ] = 0.5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Write a synthetic DISC21-shaped data set on which normalization matters."""
    from streamnorm.synth import SynthSpec
    from streamnorm.synth_store import write_synth

    spec = SynthSpec(
        n_queries=queries, n_refs=refs, n_train=train, dim=dim, positives=positives, seed=seed
    )
    paths = write_synth(out_dir, spec, overwrite=overwrite, progress=not quiet)
    for name, path in paths.items():
        console.print(f"{name}: {path}")


@app.command()
def fit(
    train: Annotated[str, typer.Argument(help="Training descriptors (store, ISC HDF5 or .npy).")],
    out: Annotated[str, typer.Option("--out", help="Model folder to write.")],
    preset: Annotated[str, typer.Option(help="Parameter preset from configs/.")] = "isc21",
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of parameters, applied over the preset; may also set scheduler, "
            "workers and threads."
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value parameter override; repeatable.")
    ] = None,
    index: Annotated[
        str | None,
        typer.Option(
            "--index",
            help="Training index: flat (exact), ivf (exact within the nearest lists), hnsw "
            "(graph walk, candidates rescored exactly) or auto "
            "(by training size and memory). Same as --set index=...",
        ),
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_OPTION_HELP)] = None,
    ids: IdsOption = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Fit the training-set model: normalize, index, record parameters and fingerprint."""
    from streamnorm.config import build_params, run_settings
    from streamnorm.model import fit_model
    from streamnorm.schedulers import Runner

    overrides = [*(set_ or []), *([f"index={index}"] if index else [])]
    params = build_params(preset, config, overrides)
    run = run_settings(config, scheduler=scheduler)
    with Runner(run.scheduler, run.workers, run.threads) as runner:
        model = fit_model(
            train,
            out,
            params,
            ids_path=ids,
            overwrite=overwrite,
            progress=not quiet,
            scheduler=runner,
        )
    report = model.index_report_
    recall = report.get("nth_neighbour_recall")
    console.print(
        f"model {out}: {model.n_train_} training vectors, dim {model.dim_}, "
        f"fingerprint {str(model.fingerprint_)[:16]}\n"
        f"index: {report.get('kind')} ({report.get('reason')})"
        + ("" if recall is None else f", n-th neighbour recall vs exact {recall:.3f}")
    )


@app.command()
def normalize(
    input_path: Annotated[str, typer.Argument(metavar="INPUT", help="Descriptors to normalize.")],
    model: Annotated[str, typer.Option("--model", help="Model folder from `streamnorm fit`.")],
    role: Annotated[
        str, typer.Option("--role", help="query or reference: the side of the encoding.")
    ],
    out: Annotated[str, typer.Option("--out", help="Normalized store to write.")],
    chunk_rows: Annotated[
        int | None,
        typer.Option(help="Rows per task and output chunk (default 8192; 16384 with IVF)."),
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_OPTION_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help=RUN_CONFIG_HELP)] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel tasks (default: cores).")] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="faiss/BLAS threads per task (default: cores / parallel tasks)."),
    ] = None,
    memory_limit: Annotated[
        str | None,
        typer.Option(
            help="Memory the run may use, e.g. 8GB: caps the chunk size, then the tasks in flight."
        ),
    ] = None,
    append: Annotated[
        bool,
        typer.Option(
            "--append",
            help="Add the input's rows after those of an existing store (same model and role); "
            "the result is byte-identical to normalizing everything in one go.",
        ),
    ] = False,
    ids: IdsOption = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Normalize every row chunk through the model; resumes an interrupted run of itself."""
    from streamnorm.config import run_settings
    from streamnorm.pipeline import normalize as run
    from streamnorm.resources import parse_bytes

    settings = run_settings(
        config, scheduler=scheduler, workers=workers, threads=threads, run_keys_only=True
    )

    if role not in ("query", "reference"):
        raise StreamnormError(f"--role must be query or reference, not {role!r}")
    if chunk_rows is not None and chunk_rows < 1:
        raise StreamnormError("--chunk-rows must be at least 1")
    result = run(
        input_path,
        model,
        cast(Role, role),
        out,
        chunk_rows=chunk_rows,
        ids_path=ids,
        overwrite=overwrite,
        append=append,
        scheduler=settings.scheduler,
        workers=settings.workers,
        threads=settings.threads,
        memory_limit=None if memory_limit is None else parse_bytes(memory_limit),
        progress=not quiet,
    )
    kept = f", {result.chunks_reused} chunks kept" if result.chunks_reused else ""
    rate = result.rows_added / max(result.seconds, 1e-9)
    console.print(
        f"{result.path}: {result.rows_added} rows added ({result.rows} in the store) "
        f"in {result.seconds:.1f} s ({rate:,.0f} rows/s{kept})"
    )


@app.command()
def verify(
    store: Annotated[str, typer.Argument(metavar="OUT", help="Normalized store to audit.")],
    input_path: Annotated[str, typer.Option("--input", help="The input (or one appended batch).")],
    model: Annotated[str, typer.Option("--model", help="The model the store was made with.")],
    sample: Annotated[int, typer.Option(help="Rows to recompute; 0 checks every row.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the random sample.")] = 0,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_OPTION_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help=RUN_CONFIG_HELP)] = None,
    ids: IdsOption = None,
    quiet: Quiet = False,
) -> None:
    """Recompute sampled rows one vector at a time and compare them byte for byte.

    Exit 0 when all match, 1 with the first mismatching ids otherwise.
    """
    from streamnorm.config import run_settings
    from streamnorm.schedulers import Runner
    from streamnorm.verify import verify as run

    settings = run_settings(config, scheduler=scheduler, run_keys_only=True)
    with Runner(settings.scheduler, settings.workers) as runner:
        report = run(
            store,
            input_path,
            model,
            sample=sample or None,
            seed=seed,
            ids_path=ids,
            scheduler=runner,
            progress=not quiet,
        )
    if report.ok:
        console.print(f"{store}: {report.checked} rows recomputed alone, all byte-identical")
        return
    shown = ", ".join(report.mismatched_ids[:10])
    console.print(f"{store}: {len(report.mismatched_ids)} of {report.checked} rows differ: {shown}")
    raise typer.Exit(1)


@app.command()
def match(
    out: Annotated[str, typer.Option("--out", help="Predictions file: .csv or .parquet.")],
    queries: Annotated[
        str | None, typer.Argument(help="Query store (normalized or raw).", show_default=False)
    ] = None,
    refs: Annotated[
        str | None,
        typer.Argument(
            help="Reference store (same model as the queries, or raw).", show_default=False
        ),
    ] = None,
    k: Annotated[
        int | None,
        typer.Option("--k", help="Candidates per query (default 10; with --update, the state's)."),
    ] = None,
    max_results: Annotated[
        int,
        typer.Option(help="Global top N over the per-query candidates, best first; 0 keeps all."),
    ] = 500_000,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            help="Also save the match state here (per-query top-k), for later --update runs. "
            "With --update: write the updated state here instead of replacing STATE.",
        ),
    ] = None,
    update: Annotated[
        str | None,
        typer.Option(
            "--update",
            help="Merge the references of --refs into this saved state (queries are re-read "
            "from the path recorded in it) and write predictions over all references so far.",
        ),
    ] = None,
    new_refs: Annotated[
        str | None, typer.Option("--refs", help="With --update: the new reference store.")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            help="Tiles searched at once (default: every core); with another --scheduler, "
            "faiss threads per query-block task."
        ),
    ] = None,
    query_block_rows: Annotated[int | None, typer.Option(help="Rows per query block.")] = None,
    reference_block_rows: Annotated[
        int | None, typer.Option(help="Rows per reference block.")
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_OPTION_HELP)] = None,
    config: Annotated[Path | None, typer.Option(help=RUN_CONFIG_HELP)] = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Write track-1 predictions (query_id,reference_id,score), best first.

    Keeps each query's exact top --k references, then the best --max-results of those pairs
    over all queries (ties: query id, then reference id).

    References arriving later: `match Q R --out P --state S`, then
    `match --update S --refs R2 --out P2`.
    """
    from streamnorm.config import run_settings
    from streamnorm.match_cli import run_match

    settings = run_settings(config, scheduler=scheduler, threads=threads, run_keys_only=True)
    run_match(
        console,
        queries,
        refs,
        out,
        k=k,
        max_results=max_results,
        state=state,
        update=update,
        new_refs=new_refs,
        threads=settings.threads,
        query_block_rows=query_block_rows,
        reference_block_rows=reference_block_rows,
        overwrite=overwrite,
        progress=not quiet,
        scheduler=settings.scheduler,
        workers=settings.workers,
    )


@app.command()
def evaluate(
    preds: Annotated[
        list[Path], typer.Argument(help="One or more predictions files (.csv or .parquet).")
    ],
    gt: Annotated[Path, typer.Option("--gt", help="Ground-truth CSV (query_id,reference_id).")],
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Name of each file in the table and plot; repeat per file."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="PNG: overlaid precision-recall curves and score histograms."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print muAP and recall@P90 with the ISC21 definitions (ties: false positives first).

    With several files, one table row per file (JSON: a list), e.g.
    `evaluate raw.csv norm.csv --gt gt.csv --plot pr.png --label raw --label norm`.
    """
    from streamnorm.match_cli import evaluate_files

    runs = evaluate_files(preds, gt, labels=label, plot=plot)
    if as_json:
        # One file keeps the plain object scripts already read; several give a list.
        rows = [{"label": r.label, "path": str(r.path), **r.metrics} for r in runs]
        print(json.dumps(runs[0].metrics if len(runs) == 1 else rows, indent=2))
        return

    def cell(value: object) -> str:
        return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)

    if len(runs) == 1:
        table = Table(title=str(runs[0].path))
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in runs[0].metrics.items():
            table.add_row(key, cell(value))
    else:
        table = Table(title=f"{len(runs)} prediction files against {gt}")
        table.add_column("run")
        for key in runs[0].metrics:
            table.add_column(key, justify="right")
        for run in runs:
            table.add_row(run.label, *(cell(value) for value in run.metrics.values()))
    console.print(table)
    if plot is not None:
        console.print(f"plot: {plot}")


@app.command()
def export(
    store: Annotated[str, typer.Argument(help="Descriptor store to export.")],
    out: Annotated[str, typer.Option("--out", help="ISC descriptor HDF5 file to write.")],
    overwrite: Overwrite = False,
) -> None:
    """Write a store as an ISC descriptor HDF5 file (vectors, image_names)."""
    from streamnorm.hdf5_export import export_descriptors

    rows = export_descriptors(store, out, overwrite=overwrite)
    console.print(f"{out}: {rows} descriptors")


@app.command()
def submission(
    queries: Annotated[str, typer.Argument(help="Normalized query store.")],
    refs: Annotated[str, typer.Argument(help="Normalized reference store.")],
    out: Annotated[str, typer.Option("--out", help="Track-2 submission HDF5 file to write.")],
    overwrite: Overwrite = False,
) -> None:
    """Write the track-2 submission layout (query, reference, query_ids, reference_ids)."""
    from streamnorm.hdf5_export import export_submission

    n_queries, n_refs = export_submission(queries, refs, out, overwrite=overwrite)
    console.print(f"{out}: {n_queries} queries, {n_refs} references")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Working folder for the demo.")] = Path(
        "demo-out"
    ),
    scheduler: Annotated[str, typer.Option(help=SCHEDULER_OPTION_HELP)] = "threads",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Run the whole job on synthetic data; print muAP and recall@P90 without/with normalization."""
    from streamnorm.demo import run_demo

    run_demo(out, overwrite=overwrite, scheduler=scheduler, progress=not quiet, console=console)


@app.command()
def tune(
    queries: Annotated[Path, typer.Argument(help="Raw validation queries.")],
    refs: Annotated[Path, typer.Argument(help="Raw references.")],
    train: Annotated[Path, typer.Option("--train", help="Raw training descriptors.")],
    gt: Annotated[Path, typer.Option("--gt", help="Ground-truth CSV of the queries.")],
    out: Annotated[Path, typer.Option("--out", help="TOML config to write (for fit --config).")],
    grid: Annotated[
        Path | None, typer.Option("--grid", help="TOML grid: each parameter a list of values.")
    ] = None,
    base_preset: Annotated[
        str, typer.Option("--base-preset", help="Preset for the parameters the grid leaves.")
    ] = "isc21",
    config: Annotated[
        Path | None,
        typer.Option(
            help="TOML file of parameters over --base-preset; may also set scheduler, workers "
            "and threads."
        ),
    ] = None,
    scheduler: Annotated[str | None, typer.Option(help=SCHEDULER_OPTION_HELP)] = None,
    k: Annotated[int, typer.Option("--k", help="Candidates per query.")] = 10,
    max_results: Annotated[
        int, typer.Option(help="Global top N over all queries; 0 keeps all.")
    ] = 500_000,
    show: Annotated[int, typer.Option(help="Rows of the table to print; 0 prints all.")] = 20,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Search statistic x n x beta x side for the best muAP; write the best as a config."""
    from streamnorm.config import build_params, run_settings
    from streamnorm.schedulers import Runner
    from streamnorm.tuning import read_grid, result_table, write_config
    from streamnorm.tuning import tune as run

    if k < 1:
        raise StreamnormError("--k must be at least 1")
    if out.exists() and not overwrite:
        raise StreamnormError(f"{out}: output already exists (use --overwrite to replace it)")
    settings = run_settings(config, scheduler=scheduler)
    with Runner(settings.scheduler, settings.workers, settings.threads) as runner:
        result = run(
            queries,
            refs,
            train,
            gt,
            grid=read_grid(grid) if grid is not None else None,
            base_params=build_params(base_preset, config),
            k=k,
            max_results=max_results or None,
            scheduler=runner,
            progress=not quiet,
        )
    best = result.best_row
    console.print(result_table(result, show or None, title=f"tune: {len(result.rows)} points"))
    summary = f"best of {len(result.rows)} grid points on {gt}: muAP {best.micro_ap:.4f}, "
    summary += f"R@P90 {best.recall_at_p90:.4f}"
    write_config(result.best, out, comment=f"streamnorm tune: {summary}", overwrite=overwrite)
    console.print(f"{out}: {summary}")


@app.command()
def bench(
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: about 2 minutes on 2 cores.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="JSON file for every figure and the machine description."),
    ] = None,
) -> None:
    """Measure throughput, cost of determinism, memory, append and scaling, as ratios.

    Generates its own data; every figure is compared side by side in the same run.
    """
    from streamnorm.bench import run_bench_command

    run_bench_command(console, quick=quick, out=out)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
    # This process belongs to the command, so its allocator can be set for long runs.
    release_memory_promptly()
    try:
        code = app(args=args, prog_name="streamnorm", standalone_mode=False)
    except StreamnormError as error:
        if _state["debug"]:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
