"""Covariance layouts of the analytic pass: dense or block-diagonal across channels.

A deterministic input makes the first crossbar layer's output covariance block-diagonal:
across output channels for a UR convolution (every position of a channel shares the same
devices, no device is shared between channels; theory §5) and diagonal for a UL convolution or
an FC layer (every column has its own devices; theory §4, §6). A ReLU keeps a zero
cross-covariance at zero (two jointly Gaussian variables with zero covariance are
independent, so are their rectifications; Eq. (28) also gives 0), and average pooling works
within a channel (theory §7). So until the next crossbar layer mixes the channels the
covariance can be carried as its diagonal blocks: for the 13-conv CNN that is 16 blocks of
1024² instead of one 16384² matrix (128 MB instead of 2 GB).

:class:`BlockDiag` is that layout. Every layer function of :mod:`refmem.moments` accepts it
wherever it accepts a dense ``(L, L)`` covariance; functions without a block path call
:func:`as_dense` (same numbers, more memory).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BlockDiag", "as_dense", "cov_diagonal", "take_input"]


class BlockDiag:
    """Block-diagonal covariance ``diag(Γ_0, …, Γ_{nb−1})`` with equal square blocks.

    Parameters
    ----------
    blocks : ndarray (nb, s, s)
        The diagonal blocks; flat index ``i`` lies in block ``i // s`` at offset ``i % s``
        (for an NCHW map with channel blocks, ``s = H W``).
    diag_only : bool
        The blocks are themselves diagonal (UL or FC output from a deterministic input); lets
        ReLU and pooling work on the variances alone.
    """

    __slots__ = ("blocks", "diag_only")

    def __init__(self, blocks, diag_only=False):
        blocks = np.asarray(blocks, dtype=np.float64)
        if blocks.ndim != 3 or blocks.shape[1] != blocks.shape[2]:
            raise ValueError(f"BlockDiag needs (nb, s, s) blocks, got shape {blocks.shape}")
        self.blocks = blocks
        self.diag_only = bool(diag_only)

    @classmethod
    def from_variances(cls, var, n_blocks):
        """Diagonal covariance ``diag(var)`` laid out as ``n_blocks`` diagonal blocks."""
        var = np.asarray(var, dtype=np.float64)
        s = var.shape[0] // n_blocks
        blocks = np.zeros((n_blocks, s, s))
        ii = np.arange(s)
        blocks[:, ii, ii] = var.reshape(n_blocks, s)
        return cls(blocks, diag_only=True)

    @property
    def nb(self) -> int:
        return self.blocks.shape[0]

    @property
    def s(self) -> int:
        return self.blocks.shape[1]

    @property
    def shape(self):
        n = self.nb * self.s
        return (n, n)

    def diagonal(self) -> np.ndarray:
        """The variances (a new (n,) array)."""
        return np.diagonal(self.blocks, axis1=1, axis2=2).reshape(-1).copy()

    def to_dense(self) -> np.ndarray:
        """The full (n, n) matrix."""
        n, s = self.shape[0], self.s
        out = np.zeros((n, n))
        for b in range(self.nb):
            out[b * s:(b + 1) * s, b * s:(b + 1) * s] = self.blocks[b]
        return out

    def take(self, i, j) -> np.ndarray:
        """Entries ``Γ[i, j]`` for integer index arrays of one shape (0 across blocks)."""
        s = self.s
        bi, ti = np.divmod(np.asarray(i), s)
        bj, tj = np.divmod(np.asarray(j), s)
        return np.where(bi == bj, self.blocks[bi, ti, tj], 0.0)

    def row_sums(self) -> np.ndarray:
        """``Γ 1`` (n,)."""
        return self.blocks.sum(axis=2).reshape(-1)

    def matmul(self, M) -> np.ndarray:
        """``Γ M`` for a dense ``M`` (n, m)."""
        s = self.s
        out = np.empty((self.shape[0], M.shape[1]))
        for b in range(self.nb):
            out[b * s:(b + 1) * s] = self.blocks[b] @ M[b * s:(b + 1) * s]
        return out


def as_dense(gamma):
    """``None`` → ``None``; a dense matrix → itself; :class:`BlockDiag` → its full matrix."""
    return gamma.to_dense() if isinstance(gamma, BlockDiag) else gamma


def cov_diagonal(gamma) -> np.ndarray | None:
    """The variances of a covariance in any layout (``None`` for a deterministic vector)."""
    if gamma is None:
        return None
    if isinstance(gamma, BlockDiag):
        return gamma.diagonal()
    return np.diagonal(gamma)


def take_input(gamma):
    """Unwrap a covariance handed over as a one-element list ``[Γ]`` (empties the list).

    The layer functions accept ``gamma=[G]`` to *release* the input covariance: they hold the
    only reference (the caller keeps none) and drop it as soon as it has been read, so Γ is
    freed while the output is built (saves one L×L matrix at the peak of the network pass).
    """
    if isinstance(gamma, list):
        if len(gamma) != 1:
            raise ValueError("a released covariance is passed as a one-element list [G]")
        return gamma.pop()
    return gamma
