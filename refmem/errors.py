"""User-facing errors.

Every problem a user can cause (a missing or malformed file, a wrong shape, a NaN weight, a
negative sigma, a g_u outside (g_min, g_max], an unknown layer type) raises a subclass of
:class:`RefmemError` with a one-line message. The CLI prints that line on stderr and exits
with status 2; it never shows a traceback for these.
"""


class RefmemError(Exception):
    """Base class of every user-facing refmem error (one-line message)."""


class ConfigError(RefmemError, ValueError):
    """An invalid crossbar / noise configuration."""


class ModelFileError(RefmemError, ValueError):
    """A model file (or in-memory network) that does not follow the refmem-model schema."""


class DataError(RefmemError, ValueError):
    """A missing or malformed data file, or an input of the wrong shape."""


class UsageError(RefmemError, ValueError):
    """A malformed command line (unknown option, missing argument, bad choice)."""

