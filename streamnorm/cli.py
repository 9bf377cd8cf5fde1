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

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
IdsOption = Annotated[
    Path | None,
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
    train: Annotated[Path, typer.Argument(help="Training descriptors (store, ISC HDF5 or .npy).")],
    out: Annotated[Path, typer.Option("--out", help="Model folder to write.")],
    preset: Annotated[str, typer.Option(help="Parameter preset from configs/.")] = "isc21",
    config: Annotated[
        Path | None, typer.Option(help="TOML file of parameters, applied over the preset.")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="key=value parameter override; repeatable.")
    ] = None,
    ids: IdsOption = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Fit the training-set model: normalize, index exactly, record parameters and fingerprint."""
    from streamnorm.config import build_params
    from streamnorm.model import fit_model

    params = build_params(preset, config, set_)
    model = fit_model(train, out, params, ids_path=ids, overwrite=overwrite, progress=not quiet)
    console.print(
        f"model {out}: {model.n_train_} training vectors, dim {model.dim_}, "
        f"fingerprint {str(model.fingerprint_)[:16]}"
    )


@app.command()
def normalize(
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help="Descriptors to normalize.")],
    model: Annotated[Path, typer.Option("--model", help="Model folder from `streamnorm fit`.")],
    role: Annotated[
        str, typer.Option("--role", help="query or reference: the side of the encoding.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Normalized store to write.")],
    chunk_rows: Annotated[int | None, typer.Option(help="Rows per task and output chunk.")] = None,
    scheduler: Annotated[str, typer.Option(help="threads, processes or synchronous.")] = "threads",
    workers: Annotated[int | None, typer.Option(help="Parallel tasks (default: cores).")] = None,
    ids: IdsOption = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Normalize every row chunk through the model; resumes an interrupted run of itself."""
    from streamnorm.pipeline import normalize as run

    if role not in ("query", "reference"):
        raise StreamnormError(f"--role must be query or reference, not {role!r}")
    if chunk_rows is not None and chunk_rows < 1:
        raise StreamnormError("--chunk-rows must be at least 1")
    if scheduler not in ("threads", "processes", "synchronous"):
        raise StreamnormError(
            f"--scheduler must be threads, processes or synchronous, not {scheduler!r}"
        )
    result = run(
        input_path,
        model,
        cast(Role, role),
        out,
        chunk_rows=chunk_rows,
        ids_path=ids,
        overwrite=overwrite,
        scheduler=scheduler,
        workers=workers,
        progress=not quiet,
    )
    resumed = (
        f", {result.chunks_reused} chunks kept from an earlier run" if result.chunks_reused else ""
    )
    console.print(
        f"{result.path}: {result.rows} rows in {result.seconds:.1f} s "
        f"({result.rows / max(result.seconds, 1e-9):,.0f} rows/s{resumed})"
    )


@app.command()
def match(
    queries: Annotated[Path, typer.Argument(help="Query store (normalized or raw).")],
    refs: Annotated[
        Path, typer.Argument(help="Reference store (same model as the queries, or raw).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Predictions file: .csv or .parquet.")],
    k: Annotated[int, typer.Option("--k", help="Candidates per query.")] = 10,
    max_results: Annotated[
        int,
        typer.Option(
            help="Global top N over all queries, as the ISC evaluation uses; 0 keeps all."
        ),
    ] = 500_000,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Write track-1 predictions (query_id,reference_id,score), best first."""
    from streamnorm.matching import match as run

    if k < 1:
        raise StreamnormError("--k must be at least 1")
    result = run(
        queries,
        refs,
        out,
        k=k,
        max_results=max_results or None,
        overwrite=overwrite,
        progress=not quiet,
    )
    console.print(f"{out}: {len(result.scores)} predictions")


@app.command()
def evaluate(
    preds: Annotated[Path, typer.Argument(help="Predictions (.csv or .parquet).")],
    gt: Annotated[Path, typer.Option("--gt", help="Ground-truth CSV (query_id,reference_id).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print muAP and recall@P90 with the ISC21 definitions (ties: false positives first)."""
    from streamnorm.groundtruth import read_ground_truth, read_predictions
    from streamnorm.metrics import evaluate as run

    truth = read_ground_truth(gt)
    result = run(read_predictions(preds, truth), truth)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    table = Table(title=str(preds))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.to_dict().items():
        table.add_row(
            key,
            "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value),
        )
    console.print(table)


@app.command()
def export(
    store: Annotated[Path, typer.Argument(help="Descriptor store to export.")],
    out: Annotated[Path, typer.Option("--out", help="ISC descriptor HDF5 file to write.")],
    overwrite: Overwrite = False,
) -> None:
    """Write a store as an ISC descriptor HDF5 file (vectors, image_names)."""
    from streamnorm.hdf5_export import export_descriptors

    rows = export_descriptors(store, out, overwrite=overwrite)
    console.print(f"{out}: {rows} descriptors")


@app.command()
def submission(
    queries: Annotated[Path, typer.Argument(help="Normalized query store.")],
    refs: Annotated[Path, typer.Argument(help="Normalized reference store.")],
    out: Annotated[Path, typer.Option("--out", help="Track-2 submission HDF5 file to write.")],
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
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Run the whole job on synthetic data; print muAP and recall@P90 without/with normalization."""
    from streamnorm.demo import run_demo

    run_demo(out, overwrite=overwrite, progress=not quiet, console=console)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    args = sys.argv[1:] if argv is None else argv
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
