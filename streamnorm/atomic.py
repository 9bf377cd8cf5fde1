"""Files that appear under their name only once completely written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from streamnorm.errors import OutputExistsError, StreamnormError


@contextmanager
def atomic_output(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging path beside ``target``; rename it into place on success.

    Raises
    ------
    OutputExistsError
        When ``target`` exists and ``overwrite`` is false.
    """
    final = Path(target)
    if final.exists() and not overwrite:
        raise OutputExistsError(f"{final}: output already exists (use --overwrite to replace it)")
    folder = final.parent
    if not folder.is_dir():
        raise StreamnormError(f"{final}: the folder {folder} does not exist")
    handle, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=folder)
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        # mkstemp creates 0600 files; give the result ordinary permissions.
        staging.chmod(0o644)
        os.replace(staging, final)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
