"""Uniform k-bit weight quantization (theory §14).

Grid (a fixed choice, since neither paper specifies one; spec M1): symmetric, mid-tread, per
crossbar layer, scaled by the max-abs over ``A = [W; b]`` (the crossbar rows including the bias
row). ``N_q = 2^(k-1) - 1`` positive levels, codes ``{-N_q, …, N_q}``, step
``Δ = max|A| / N_q`` and ``q(a) = Δ clip(round(a/Δ), -N_q, N_q)`` (round half to even). The
max-abs weight is exactly representable; ``k = 2`` gives the ternary grid ``{-Δ, 0, Δ}``.
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def quant_step(max_abs: float, bits: int) -> float:
    """Δ = max|A| / (2^(k-1) - 1) (theory §14)."""
    if bits < 2:
        raise ConfigError(f"quantization needs at least 2 bits, got {bits}")
    return float(max_abs) / (2 ** (bits - 1) - 1)


def quantize(a, delta: float, bits: int) -> np.ndarray:
    """q(a) = Δ clip(round(a/Δ), -N_q, N_q) (theory §14); the identity when Δ = 0."""
    a = np.asarray(a, dtype=np.float64)
    if delta == 0:
        return a.copy()
    nq = 2 ** (bits - 1) - 1
    return delta * np.clip(np.rint(a / delta), -nq, nq)
