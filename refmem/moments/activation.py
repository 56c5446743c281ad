"""ReLU in the network pass: layouts, released inputs and Taylor's negative variances.

The ReLU formulas live in :mod:`refmem.relu` (theory §8: Proposition 4, the exact bivariate
covariance, and the paper's Eq. (28)); this module applies :func:`refmem.relu.relu_moments`
to the covariance layouts of the pass (:class:`BlockDiag` one block at a time — a ReLU keeps
zero cross-block covariances at zero) and handles the one case where the pass would stop:
the first-order Taylor rule (Eq. (28)) with the exact Prop.-4 diagonal is not PSD (D15), so
a later linear layer can hand a ReLU a *negative* variance. With ``clip_negative`` those
variances are set to zero (what the authors' MemSE code does silently) and counted, so the
caller can warn once (:class:`refmem.moments.TaylorNotPSDWarning`).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..relu import NEGLIGIBLE, relu_mean_var, relu_moments
from .layout import BlockDiag, take_input

__all__ = ["relu_layer_moments", "TaylorNotPSDWarning", "warn_clipped"]


class TaylorNotPSDWarning(UserWarning):
    """The Taylor ReLU covariance (Eq. (28)) produced negative variances that were zeroed."""


def _clip(diag_view):
    """Zero the negative entries of a variance view in place: (count, most negative)."""
    neg = diag_view < 0
    n = int(np.count_nonzero(neg))
    if not n:
        return 0, 0.0
    lo = float(diag_view[neg].min())
    diag_view[neg] = 0.0
    return n, lo


def relu_layer_moments(mu, gamma, mode="exact", *, clip_negative=False, negligible=NEGLIGIBLE,
                       symmetric=True):
    r"""``ReLU(X)`` moments for ``X ~ N(mu, gamma)`` in any layout (theory §8).

    Dense Γ: :func:`refmem.relu.relu_moments` written over Γ (``out=Γ``: Γ is consumed).
    :class:`BlockDiag`: the same per block (zero cross-block covariance stays zero, exact
    and Taylor); diagonal blocks: Proposition 4 alone (:func:`refmem.relu.relu_mean_var`).

    Parameters
    ----------
    mu : ndarray (d,)
    gamma : ndarray (d, d), BlockDiag, None, or ``[Γ]`` (released)
    mode : {"exact", "taylor"}
    clip_negative : bool
        Set negative input variances to zero instead of failing (meant for ``taylor``).
    negligible : float
        Exact mode: the negligible-pair floor of :func:`refmem.relu.relu_moments` (default
        :data:`refmem.relu.NEGLIGIBLE`, the unit roundoff, relative to the largest ReLU-output
        variance of the call; 0 computes every pair to the full relative accuracy).
    symmetric : bool
        Dense Γ: False leaves the lower triangle of the result unset (only the upper triangle
        and the diagonal are valid; see :func:`refmem.relu.relu_moments`). Blocks are always
        mirrored.

    Returns
    -------
    mean : ndarray (d,)
    cov : same layout as ``gamma`` (None for a deterministic input)
    clip : (int, float)
        Number of variances set to zero and the most negative one (0, 0.0 if none).
    """
    gamma = take_input(gamma)
    mu = np.ascontiguousarray(mu, dtype=np.float64)
    if gamma is None:
        return np.maximum(mu, 0.0), None, (0, 0.0)
    if isinstance(gamma, BlockDiag):
        s = gamma.s
        if gamma.diag_only:
            d = gamma.diagonal()
            clip = _clip(d) if clip_negative else (0, 0.0)
            mean, var = relu_mean_var(mu, d)
            return mean, BlockDiag.from_variances(var, gamma.nb), clip
        mean = np.empty_like(mu)
        n_tot, lo = 0, 0.0
        for b in range(gamma.nb):
            G = gamma.blocks[b]
            if clip_negative:
                n, m = _clip(np.einsum("ii->i", G))
                n_tot, lo = n_tot + n, min(lo, m)
            mean[b * s:(b + 1) * s], _ = relu_moments(mu[b * s:(b + 1) * s], G, mode, out=G,
                                                      negligible=negligible)
        return mean, gamma, (n_tot, lo)
    clip = _clip(np.einsum("ii->i", gamma)) if clip_negative else (0, 0.0)
    mean, cov = relu_moments(mu, gamma, mode, out=gamma, negligible=negligible,
                             symmetric=symmetric)
    return mean, cov, clip


def warn_clipped(count, most_negative, n_layers):
    """Issue the single warning of a pass that zeroed Taylor's negative variances."""
    if count:
        warnings.warn(
            f"Taylor ReLU covariance (Eq. (28)) is not positive semi-definite here: {count} "
            f"negative variance(s) at the input of {n_layers} ReLU layer(s), the most negative "
            f"{most_negative:.3g}, were set to zero (as the authors' MemSE code does); the "
            "exact covariance (--relu-cov exact) does not have this problem",
            TaylorNotPSDWarning, stacklevel=3)

