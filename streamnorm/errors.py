"""User-facing errors.

Every problem a user can cause (bad input, bad configuration, a refused overwrite)
is raised as a :class:`StreamnormError`. The command line prints its message on one
line and exits with code 2; tracebacks are reserved for genuine bugs.
"""

from __future__ import annotations


class StreamnormError(Exception):
    """An error caused by the user's input or configuration, with a one-line message."""


class InputError(StreamnormError):
    """An input file or store is missing, malformed or holds invalid values."""


class ConfigError(StreamnormError):
    """A preset, configuration file or parameter is unknown or out of range."""


class OutputExistsError(StreamnormError):
    """The output already exists and overwriting was not asked for."""


class ModelMismatchError(StreamnormError):
    """Stores or models that must agree (fingerprint, dimension) do not."""
