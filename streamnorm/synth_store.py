"""Writing a synthetic data set to disk: three descriptor stores and a ground truth."""

from __future__ import annotations

import csv
import dataclasses
import shutil
from pathlib import Path

from streamnorm.atomic import atomic_output
from streamnorm.errors import OutputExistsError
from streamnorm.progress import track
from streamnorm.store import ChunkedStore, chunk_ranges, write_chunk
from streamnorm.synth import Split, SynthSpec, generate_split, ground_truth

_CHUNK_ROWS = 16384
_SPLITS: tuple[tuple[Split, str], ...] = (
    ("train", "train.zarr"),
    ("refs", "refs.zarr"),
    ("queries", "queries.zarr"),
)


def write_synth(
    out_dir: str | Path, spec: SynthSpec, *, overwrite: bool = False, progress: bool = False
) -> dict[str, Path]:
    """Write ``train.zarr``, ``refs.zarr``, ``queries.zarr`` and ``ground_truth.csv``.

    Rows are generated and written one chunk at a time, so any size fits in memory.

    Returns
    -------
    dict
        Paths of the written files, keyed ``train``, ``refs``, ``queries``, ``ground_truth``.
    """
    folder = Path(out_dir)
    paths: dict[str, Path] = {split: folder / name for split, name in _SPLITS}
    paths["ground_truth"] = folder / "ground_truth.csv"
    existing = [p for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{existing[0]}: output already exists (use --overwrite to replace it)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    for split, _ in _SPLITS:
        target = paths[split]
        if target.exists():
            shutil.rmtree(target)
        n_rows = {"train": spec.n_train, "refs": spec.n_refs, "queries": spec.n_queries}[split]
        attrs = {"kind": "descriptors", "synth": dataclasses.asdict(spec)}
        store = ChunkedStore.create(
            target, n_rows, spec.dim, _CHUNK_ROWS, attrs, with_background=False
        )
        chunks = list(chunk_ranges(n_rows, _CHUNK_ROWS))
        for index, start, stop in track(chunks, f"synth: {split}", enabled=progress):
            vectors, ids = generate_split(spec, split, start, stop)
            write_chunk(str(target), index, start, vectors, ids=ids)
        store.mark_complete()
    with (
        atomic_output(paths["ground_truth"], overwrite=True) as staging,
        staging.open("w", newline="") as stream,
    ):
        writer = csv.writer(stream)
        writer.writerow(["query_id", "reference_id"])
        for query_id, reference_id in ground_truth(spec):
            writer.writerow([query_id, reference_id or ""])
    return paths
