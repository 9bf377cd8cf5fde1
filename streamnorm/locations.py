"""Where data live: local paths, or any URL fsspec reaches (``s3://``, ``gs://``, ``file://``).

Credentials and endpoints are found the standard way of each file system: environment
variables (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...) or fsspec's configuration.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.core import url_to_fs

Location = str | os.PathLike[str]


def is_url(location: Location) -> bool:
    """True for ``scheme://...`` locations."""
    return "://" in str(location)


def as_text(location: Location) -> str:
    """The location as a string, URLs untouched (``Path`` would fold their ``//``)."""
    return str(location)


def filesystem(location: Location) -> tuple[Any, str]:
    """The fsspec file system and the path within it."""
    fs, path = url_to_fs(as_text(location))
    return fs, path


def exists(location: Location) -> bool:
    """Whether a file or folder exists."""
    if not is_url(location):
        return Path(location).exists()
    fs, path = filesystem(location)
    return bool(fs.exists(path))


def is_dir(location: Location) -> bool:
    """Whether a folder (or object prefix) exists."""
    if not is_url(location):
        return Path(location).is_dir()
    fs, path = filesystem(location)
    return bool(fs.isdir(path))


def suffix(location: Location) -> str:
    """The lower-case suffix of the last component, e.g. ``.npy``."""
    return PurePosixPath(as_text(location).rstrip("/")).suffix.lower()


def join(location: Location, name: str) -> str:
    """A child location."""
    if not is_url(location):
        return str(Path(location) / name)
    return as_text(location).rstrip("/") + "/" + name


def remove(location: Location) -> None:
    """Delete a file or a whole folder."""
    if not is_url(location):
        target = Path(location)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        return
    fs, path = filesystem(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def open_file(location: Location, mode: str = "rb") -> Any:
    """Open a file for reading or writing, wherever it is."""
    return fsspec.open(as_text(location), mode).open()


def read_text(location: Location) -> str:
    """A whole small text file."""
    with fsspec.open(as_text(location), "r") as handle:
        return str(handle.read())


def local_copy(location: Location, key: str | None = None) -> Path:
    """A local path for a file or folder: itself when local, else a cached download.

    Parameters
    ----------
    key : str, optional
        Identifies the content (a fingerprint); the download is reused while it matches.
    """
    if not is_url(location):
        return Path(location)
    digest = hashlib.sha256(f"{as_text(location)}|{key}".encode()).hexdigest()[:24]
    cache = Path(tempfile.gettempdir()) / "streamnorm-cache" / digest
    if cache.exists():
        return cache
    fs, path = filesystem(location)
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache.parent))
    try:
        target = staging / "content"
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", str(target), recursive=True)
        else:
            fs.get(path, str(target))
        # Losing the race to another process finishing the same download is fine.
        with contextlib.suppress(OSError):
            target.rename(cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache


def upload(local: Path, location: Location) -> None:
    """Copy a local file or folder to ``location`` (a plain move when local)."""
    if not is_url(location):
        os.replace(local, Path(location))
        return
    fs, path = filesystem(location)
    if local.is_dir():
        fs.put(str(local).rstrip("/") + "/", path, recursive=True)
    else:
        fs.put(str(local), path)
