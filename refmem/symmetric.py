"""Symmetric matrices stored by their upper triangle: the in-place mirror (theory §15).

The analytic pass computes only the upper triangle of each covariance (the signal term of a
convolution, the exact ReLU covariance) and copies it onto the lower triangle here. A plain
transposed copy of a GB-sized matrix runs at about 1 GB/s (one cache line per element
written); this kernel copies 64×64 tiles through a contiguous buffer, on every core.
:func:`diagonal_rows` finds the rows that are zero off the diagonal (the Taylor rule's
inactive units), which a convolution's first pass reads by their diagonal entry alone.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["mirror_upper", "mirror_diagonal_blocks", "diagonal_rows", "paired_row"]

_TILE = 64


@numba.njit(inline="always")
def paired_row(t, side, n):
    """Row ``side`` of parallel task ``t`` when the rows of an upper triangle (n rows, row r
    costing about n − r) are dealt out in pairs ``t, n−1−t`` — equal work per task over
    ``(n + 1) // 2`` tasks. −1 for side 1 of the middle task of an odd n (no second row).
    Used as ``for t in prange((n + 1) // 2): for side in range(2): r = paired_row(t, side, n);
    if r < 0: break``."""
    t = np.int64(t)
    r = t if side == 0 else n - 1 - t
    return np.int64(-1) if side == 1 and r == t else r


@numba.njit(cache=True)
def _mirror_block(out, bi, bj, B, hi, d, scale, T):
    """``out[j, i] = out[i, j]`` for ``i < j < hi`` in the tile of rows ``bi:bi+B``, columns
    ``bj:bj+B``; with ``scale`` first ``out[i, j] *= d_i d_j`` there. Through the contiguous
    buffer ``T`` (B, B): the tile's rows are read, and the mirrored rows written, contiguously
    (a direct column-wise write hits one cache set per column when the row length is a power
    of two, measured 5× slower)."""
    i1 = min(bi + B, hi)
    j1 = min(bj + B, hi)
    for i in range(bi, i1):
        di = d[i] if scale else 1.0
        for j in range(max(bj, i + 1), j1):
            v = out[i, j]
            if scale:
                v = v * di * d[j]
                out[i, j] = v
            T[j - bj, i - bi] = v
    for j in range(bj, j1):
        for i in range(bi, min(i1, j)):
            out[j, i] = T[j - bj, i - bi]


@numba.njit(cache=True, parallel=True)
def _mirror_upper_par(out, B, d, scale):
    n = (out.shape[0] + B - 1) // B
    for t in numba.prange((n + 1) // 2):        # tile rows t and n−1−t per task
        T = np.empty((B, B))
        for side in range(2):
            bi = paired_row(t, side, n)
            if bi < 0:
                break
            for bj in range(bi, n):
                _mirror_block(out, bi * B, bj * B, B, out.shape[0], d, scale, T)


def mirror_upper(G, scale=None):
    """Copy the upper triangle of the square matrix ``G`` onto its lower triangle, in place.

    Returns ``G`` (exactly symmetric). Bit-exact: entries are copied, never averaged.
    ``scale`` (d,), optional: first multiply every entry above the diagonal by
    ``scale_i scale_j`` (``D G D`` off the diagonal, D = diag(scale); the diagonal is not
    touched) in the same pass — the Taylor ReLU rule, Eq. (28), :func:`refmem.relu.relu_moments`.
    """
    if G.shape[0] != G.shape[1]:
        raise ValueError(f"mirror_upper needs a square matrix, got {G.shape}")
    if G.dtype != np.float64 or not G.flags.c_contiguous:
        raise ValueError("mirror_upper needs a C-contiguous float64 matrix")
    if scale is None:
        _mirror_upper_par(G, _TILE, np.empty(0), False)
    else:
        d = np.ascontiguousarray(scale, dtype=np.float64)
        if d.shape != (G.shape[0],):
            raise ValueError(f"mirror_upper: scale has shape {d.shape}, expected ({G.shape[0]},)")
        _mirror_upper_par(G, _TILE, d, True)
    return G


@numba.njit(cache=True, parallel=True)
def _mirror_diag_par(out, s, B):
    for b in numba.prange(out.shape[0] // s):
        T = np.empty((B, B))
        b0 = b * s
        for bi in range(b0, b0 + s, B):
            for bj in range(bi, b0 + s, B):
                _mirror_block(out, bi, bj, B, b0 + s, np.empty(0), False, T)


def mirror_diagonal_blocks(G, s):
    """Mirror the upper triangle of each ``s × s`` diagonal block of ``G`` onto its lower
    triangle, in place; the rest of ``G`` is not touched. Returns ``G``.

    For a consumer that reads the upper triangle of a symmetric matrix plus the lower
    triangles of its diagonal blocks (the dense pooling kernel,
    :func:`refmem.moments.pool_moments` with ``upper_only``): ``d/s`` blocks of ``s²`` instead
    of the whole matrix.
    """
    d = G.shape[0]
    if G.shape[1] != d or s < 1 or d % s:
        raise ValueError(f"mirror_diagonal_blocks needs a square matrix of whole {s}-blocks, "
                         f"got {G.shape}")
    if G.dtype != np.float64 or not G.flags.c_contiguous:
        raise ValueError("mirror_diagonal_blocks needs a C-contiguous float64 matrix")
    _mirror_diag_par(G, int(s), _TILE)
    return G


@numba.njit(cache=True, parallel=True)
def _diagonal_rows(G, out):
    for i in numba.prange(G.shape[0]):
        flag = True
        for j in range(G.shape[1]):
            if G[i, j] != 0.0 and j != i:
                flag = False
                break
        out[i] = flag


def diagonal_rows(G):
    """Rows of the square matrix ``G`` that are zero off the diagonal: bool (d,).

    Under the Taylor ReLU rule (Eq. (28), theory §8.3) these are the inactive units
    (``μ_i ≤ 0``), about half of them: a convolution's first pass
    (:func:`refmem.moments.conv_cols` with ``diag_rows``) reads them as their diagonal entry
    alone (theory §15). A row with any nonzero (or NaN) entry off the diagonal is not
    flagged; a row stops being read at its first such entry, so a dense matrix costs little
    more than one entry a row.
    """
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"diagonal_rows needs a square matrix, got shape {G.shape}")
    out = np.empty(G.shape[0], dtype=np.bool_)
    _diagonal_rows(np.ascontiguousarray(G, dtype=np.float64), out)
    return out
