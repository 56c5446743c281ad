"""Fully-connected crossbar layer (theory §4, Proposition 1 corrected) and shared helpers."""

from __future__ import annotations

import numpy as np

from .layout import BlockDiag, cov_diagonal, take_input

__all__ = ["dense_moments", "symmetrize", "raw_second_moments"]


def symmetrize(G, block=2048):
    """``G ← (G + Gᵀ)/2`` in place, blockwise (no full temporary; theory §15)."""
    n = G.shape[0]
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        d = G[i0:i1, i0:i1]
        d[...] = 0.5 * (d + d.T)
        for j0 in range(i1, n, block):
            j1 = min(n, j0 + block)
            avg = 0.5 * (G[i0:i1, j0:j1] + G[j0:j1, i0:i1].T)
            G[i0:i1, j0:j1] = avg
            G[j0:j1, i0:i1] = avg.T
    return G


def raw_second_moments(mu, gamma):
    """Raw second moments ``q_i = μ_i² + Γ_ii`` (theory §1); any covariance layout."""
    d = cov_diagonal(gamma)
    return mu * mu if d is None else mu * mu + d


def dense_moments(W, b, v, vb, mu, gamma, *, layout="dense"):
    r"""Output moments of a noisy FC crossbar (theory §4, Proposition 1 corrected).

    Corrects Eq. (10) (``2σ²`` on every input term, D6; ``Γ_ii`` for the printed ``γ_i²``,
    D7) and generalises it to per-pair variances::

        E Z   = Wᵀμ + b                                            (Eq. (9))
        Cov Z = WᵀΓW + diag_j( v^b_j + Σ_i v_ij (μ_i² + Γ_ii) )     (Eqs. (10)–(11))

    Valid for any input law with mean μ and covariance Γ (no Gaussianity needed; oracle O12).

    Parameters
    ----------
    W : ndarray (L, J)
        Weights, row i = input, column j = output (theory §1).
    b : ndarray (J,) or None
        Bias (None: no bias).
    v : ndarray (L, J)
        Pair variances in weight units (``block().v``: device + α + dither).
    vb : ndarray (J,) or None
        Bias-row pair variances (None: no bias row, e.g. a digital bias).
    mu : ndarray (L,)
    gamma : ndarray (L, L), BlockDiag, None, or ``[Γ]``
        Input covariance; None = deterministic input; a one-element list releases it
        (:func:`refmem.moments.layout.take_input`).
    layout : {"dense", "blocks"}
        Layout of a deterministic input's (diagonal) output covariance: a dense matrix, or a
        :class:`BlockDiag` of 1×1 blocks.

    Returns
    -------
    mean : ndarray (J,)
    cov : ndarray (J, J) or BlockDiag
    """
    gamma = take_input(gamma)
    mean = mu @ W
    if b is not None:
        mean = mean + b
    noise = raw_second_moments(mu, gamma) @ v                   # Σ_i v_ij q_i
    if vb is not None:
        noise = noise + vb                                      # bias row, x_b = 1
    if gamma is None:
        if layout == "blocks":
            return mean, BlockDiag.from_variances(noise, noise.shape[0])
        return mean, np.diag(noise)
    if isinstance(gamma, BlockDiag):
        GW = gamma.matmul(W)
    else:
        GW = gamma @ W
    del gamma
    cov = W.T @ GW
    del GW
    symmetrize(cov)
    cov[np.diag_indices_from(cov)] += noise
    return mean, cov
