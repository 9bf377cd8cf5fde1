"""What produced an output: package versions, recorded in every store and model."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

_PACKAGES = ("streamnorm", "numpy", "faiss-cpu", "zarr", "dask", "distributed")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that shape the numbers."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found
