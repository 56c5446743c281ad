"""Average pooling (theory §7, Proposition 3 corrected) and the fused ReLU → pooling step."""

from __future__ import annotations

import numba
import numpy as np

from ..symmetric import mirror_diagonal_blocks, mirror_upper
from .dense import symmetrize
from .layout import BlockDiag, take_input
from .workspace import empty

__all__ = ["pool_moments", "relu_pool_moments"]


def _pool_rows(M, in_shape, k):
    """Average the first axis of ``M`` (C H W, m) over κ×κ windows: ``A M`` (C E F, m)."""
    C, H, W = in_shape
    E, F = H // k, W // k
    m = M.shape[1]
    R = M.reshape(C, H, W, m)[:, :E * k, :F * k, :]
    return R.reshape(C, E, k, F, k, m).mean(axis=(2, 4)).reshape(C * E * F, m)


@numba.njit(cache=True)
def _pool_cov_row(G, I, C, H, W, k, R, out):
    """Row ``I`` of the upper triangle of ``A Γ Aᵀ`` (see :func:`_pool_cov_upper`)."""
    E = H // k
    F = W // k
    n = C * E * F
    L = G.shape[0]
    c = I // (E * F)
    e = (I // F) % E
    f = I % F
    c_lo = c * H * W                       # the windows J ≥ I read columns from here on
    for col in range(c_lo, L):
        R[col] = 0.0
    for u in range(k):
        for v in range(k):
            r = c * H * W + (e * k + u) * W + f * k + v
            for col in range(c_lo, L):
                R[col] += G[r, col]
    inv = 1.0 / (k * k * k * k)
    for Jo in range(I, n):
        c2 = Jo // (E * F)
        e2 = (Jo // F) % E
        f2 = Jo % F
        acc = 0.0
        for u in range(k):
            base = c2 * H * W + (e2 * k + u) * W + f2 * k
            for v in range(k):
                acc += R[base + v]
        out[I, Jo] = acc * inv


@numba.njit(parallel=True, cache=True)
def _pool_cov_upper(G, C, H, W, k, out):
    """Upper triangle of ``A Γ Aᵀ`` (theory §7): ``out[I, J] = κ⁻⁴ Σ Γ[r, r']`` over the κ²
    rows r of window I and the κ² columns r' of window J, for I ≤ J. Per output row: the
    window's κ² rows of Γ summed once (each entry of Γ read once), then κ² entries per J.
    Parallel over output rows (rows t and n−1−t per task: equal work per task)."""
    n = C * (H // k) * (W // k)
    half = (n + 1) // 2
    for t in numba.prange(half):
        R = np.empty(G.shape[0])
        _pool_cov_row(G, t, C, H, W, k, R, out)
        if n - 1 - t != t:
            _pool_cov_row(G, n - 1 - t, C, H, W, k, R, out)


def pool_moments(mu, gamma, in_shape, kappa, *, work=None, upper_only=False):
    r"""Average pooling, kernel = stride = κ, no padding (theory §7, Proposition 3 corrected).

    ``E Z = Aμ`` and ``Cov Z = AΓAᵀ`` exactly, cross-channel entries included, with
    ``A_(c,i,j),(c,k,l) = κ⁻²`` for ``k ∈ [κi, κi+κ−1]``, ``l ∈ [κj, κj+κ−1]`` (κ terms per axis,
    corrects Eqs. (17)–(21), D13). Computed by block means (no A matrix); trailing rows/columns
    that do not fill a window are dropped, as in the forward pass. A :class:`BlockDiag` Γ with
    channel blocks stays block-diagonal (A acts within a channel); ``gamma`` may be ``[Γ]``
    (released). A dense Γ is pooled by one Numba pass over it (upper triangle, mirrored);
    ``work`` (:class:`~refmem.moments.workspace.Workspace`) supplies the result's buffer.
    ``upper_only``: of a dense Γ only the upper triangle and the diagonal are valid (an
    unmirrored ReLU output, theory §15); the pass reads those and the lower triangles of the
    channel blocks, which are mirrored first (``C`` blocks of ``(HW)²`` instead of Γ).
    """
    gamma = take_input(gamma)
    C, H, W = in_shape
    k = int(kappa)
    mean = _pool_rows(mu[:, None], in_shape, k)[:, 0]
    if gamma is None:
        return mean, None
    if isinstance(gamma, BlockDiag) and gamma.nb == C:
        one = (1, H, W)
        if gamma.diag_only:
            var = _pool_rows(gamma.diagonal()[:, None], in_shape, k)[:, 0] / (k * k)
            return mean, BlockDiag.from_variances(var, C)
        out = np.empty((C,) + ((H // k) * (W // k),) * 2)
        for c in range(C):
            G1 = _pool_rows(gamma.blocks[c], one, k)
            out[c] = symmetrize(_pool_rows(np.ascontiguousarray(G1.T), one, k))
        return mean, BlockDiag(out)
    if isinstance(gamma, BlockDiag):
        gamma = gamma.to_dense()
    elif upper_only:                       # the kernel reads within-channel lower entries
        gamma = mirror_diagonal_blocks(np.ascontiguousarray(gamma, dtype=np.float64), H * W)
    n_out = mean.shape[0]
    out = empty(work, (n_out, n_out))
    _pool_cov_upper(np.ascontiguousarray(gamma, dtype=np.float64), C, H, W, k, out)
    del gamma
    return mean, mirror_upper(out)


def relu_pool_moments(mu, gamma, in_shape, kappa, mode="exact", *, clip_negative=False,
                      work=None):
    r"""ReLU followed by κ×κ average pooling in one step (theory §8 then §7).

    Equal to ``pool_moments(*relu_layer_moments(mu, gamma, mode), in_shape, kappa)``
    (tested); the ReLU covariance is written over the input covariance (``gamma`` is
    consumed: pass ``[Γ]`` to release it) and pooled from there, and a :class:`BlockDiag`
    input is rectified and pooled one channel block at a time, so the rectified covariance
    never needs a second buffer. Returns ``(mean, cov, clip)`` with ``clip`` as in
    :func:`refmem.moments.activation.relu_layer_moments`; ``work`` as in :func:`pool_moments`.
    """
    from .activation import relu_layer_moments

    gamma = take_input(gamma)
    C, H, W = in_shape
    if isinstance(gamma, BlockDiag) and gamma.nb == C and not gamma.diag_only:
        k = int(kappa)
        one = (1, H, W)
        s = H * W
        mean = np.empty(C * (H // k) * (W // k))
        n_o = (H // k) * (W // k)
        out = np.empty((C, n_o, n_o))
        clip = (0, 0.0)
        for c in range(C):
            m_c, g_c, cl = relu_layer_moments(mu[c * s:(c + 1) * s], [gamma.blocks[c]], mode,
                                              clip_negative=clip_negative)
            clip = (clip[0] + cl[0], min(clip[1], cl[1]))
            mean[c * n_o:(c + 1) * n_o], out[c] = pool_moments(m_c, g_c, one, k)
        return mean, BlockDiag(out), clip
    box = [gamma]
    del gamma
    # the pooling pass reads the upper triangle (and mirrors the channel blocks it needs):
    # the ReLU output is not mirrored
    m, g, clip = relu_layer_moments(mu, box, mode, clip_negative=clip_negative,
                                    symmetric=False)
    box = [g] if g is not None else None
    del g                                   # pool_moments holds the only reference
    mean, cov = pool_moments(m, box, in_shape, kappa, work=work, upper_only=True)
    return mean, cov, clip
