"""Validators of plain user-given numbers shared by every entry point (one per kind).

Seeds seed a ``numpy.random.SeedSequence`` and are recorded as int64 attributes, hence the
range ``0 ≤ seed < 2⁶³``; counts (realizations, images, epochs) are integers in a range.
Both raise :class:`~refmem.errors.ConfigError` with a one-line message, so that a run is
refused *before* any computation.
"""

from __future__ import annotations

import numbers

from .errors import ConfigError

SEED_MAX = 2**63 - 1


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an ``int`` in ``[0, 2⁶³ − 1]`` (bools and non-integral numbers refused)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ConfigError(f"{what} must be a non-negative integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{what} must be an integer in [0, 2**63 - 1], got {seed}")
    return seed


def check_count(n, what: str, minimum: int = 1, maximum: int = SEED_MAX) -> int:
    """``n`` as an ``int`` in ``[minimum, maximum]``."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral):
        raise ConfigError(f"{what} must be an integer, got {n!r}")
    n = int(n)
    if not minimum <= n <= maximum:
        hi = "" if maximum == SEED_MAX else f" and <= {maximum}"
        raise ConfigError(f"{what} must be >= {minimum}{hi}, got {n}")
    return n
