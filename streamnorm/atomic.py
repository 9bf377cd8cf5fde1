"""Files that appear under their name only once completely written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streamnorm.errors import OutputExistsError, StreamnormError
from streamnorm.locations import Location, as_text, exists, is_url, upload


@contextmanager
def atomic_output(target: Location, overwrite: bool = False) -> Iterator[Path]:
    """Yield a local staging path; on success it becomes ``target`` in one step.

    Local targets are staged beside themselves and renamed into place. URL targets are
    staged in a temporary folder and uploaded once complete (object stores make a
    single upload visible atomically).

    Raises
    ------
    OutputExistsError
        When ``target`` exists and ``overwrite`` is false.
    """
    if exists(target) and not overwrite:
        raise OutputExistsError(f"{target}: output already exists (use --overwrite to replace it)")
    if is_url(target):
        folder = Path(tempfile.gettempdir())
        name = as_text(target).rstrip("/").rsplit("/", 1)[-1]
    else:
        folder = Path(target).parent
        name = Path(target).name
        if not folder.is_dir():
            raise StreamnormError(f"{target}: the folder {folder} does not exist")
    handle, staged = tempfile.mkstemp(prefix=f".{name}.", suffix=".partial", dir=folder)
    os.close(handle)
    staging = Path(staged)
    try:
        yield staging
        # mkstemp creates 0600 files; give the result ordinary permissions.
        staging.chmod(0o644)
        upload(staging, target)
    finally:
        staging.unlink(missing_ok=True)
