"""Statistical acceptance bands for Monte-Carlo tests (theory §19.2–19.3).

A Monte-Carlo estimate passes if ``|est − theory| ≤ z* SE + atol`` with a Bonferroni
threshold ``z* = Φ⁻¹(1 − α/(2m))`` for ``m`` simultaneous comparisons and family-wise
``α = 1e-4``; ``atol`` (1e-12 × scale) lets entries whose SE is exactly zero be compared exactly.
"""

import numpy as np
from scipy.special import ndtri


def zstar(m, alpha=1e-4):
    """Bonferroni threshold for ``m`` comparisons (3.9 for m=1, 4.7 for 36, 5.2 for 528)."""
    return float(ndtri(1.0 - alpha / (2.0 * max(int(m), 1))))


def max_z(est, theory, se):
    """Largest |z| over entries with a positive standard error."""
    est, theory, se = np.broadcast_arrays(np.asarray(est, float), np.asarray(theory, float),
                                          np.asarray(se, float))
    ok = se > 0
    return float(np.max(np.abs(est[ok] - theory[ok]) / se[ok])) if ok.any() else 0.0


def assert_within(est, theory, se, *, m=None, atol_scale=1.0, what=""):
    """Assert every entry within the Bonferroni band; report the worst z on failure."""
    est, theory, se = np.broadcast_arrays(np.asarray(est, float), np.asarray(theory, float),
                                          np.asarray(se, float))
    m = est.size if m is None else m
    z = zstar(m)
    atol = 1e-12 * atol_scale
    bad = np.abs(est - theory) > z * se + atol
    assert not bad.any(), (f"{what}: {bad.sum()} of {est.size} entries outside the band; "
                           f"max |z| = {max_z(est, theory, se):.2f} > z* = {z:.2f}")
    return max_z(est, theory, se)
