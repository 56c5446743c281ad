"""Convolution crossbar layers: UR (theory §5) and UL (theory §6), with the streamed signal term.

The signal term of either mapping is the "double convolution" ``W_ULᵀ Γ W_UL`` of the input
covariance; it is computed without the Toeplitz matrix in two passes that both read rows of
row-major matrices: :func:`conv_cols` forms ``Uᵀ = W_ULᵀ Γ`` by gathering, per output
position, the rows of Γ its taps read and multiplying them by the UR matrix (one GEMM per
position); :func:`conv_rows` then convolves every row of ``Uᵀ`` (``Uᵀ W_UL``; an im2col
gather plus one GEMM, or a direct Numba kernel when the layer has few channels), filling
only the upper triangle of the symmetric result, which is then mirrored.
"""

from __future__ import annotations

import functools

import numba
import numpy as np

from ..layers import gather_patches, im2col_index
from ..mapping import ul_column_sums
from ..symmetric import diagonal_rows, mirror_upper, paired_row
from .dense import raw_second_moments
from .layout import BlockDiag, take_input
from .workspace import empty, zeros

__all__ = ["conv_mean", "conv_cols", "conv_rows", "conv_signal_cov", "ur_moments",
           "ul_moments", "ul_noise", "ul_noise_taps", "ur_noise", "ur_shared_noise_kernel",
           "CHUNK_BYTES"]

CHUNK_BYTES = 64 * 2**20
"""Size of the im2col buffer of one streamed chunk of rows."""

UT_BYTES = 256 * 2**20
"""Size of the block of ``Uᵀ = W_ULᵀ Γ`` that :func:`conv_signal_cov` holds at a time."""

_DIRECT_MAX_WORK = 16 * 144
""":func:`conv_rows` convolves directly (Numba, :func:`_conv_rows_runs`) instead of im2col +
GEMM when ``C_in k² · C_out`` is at most this (measured on 2 cores: the direct kernel is 2–3×
faster on the 16→16-channel 3×3 layer on 32×32 images, even on 32→16 and slower above; a
GEMM with so few columns runs at a few % of the BLAS peak)."""



def conv_mean(Wur, b, idx, mu):
    r"""Mean of a convolution output (theory §5/§6): ``w_{c_o}ᵀ P_p μ + b_{c_o}``, flattened (c_o, p).

    ``Wur`` (C_in k², C_out) is the UR matrix; ``idx`` (n_pos, C_in k²) the index map ι(p, a)
    (−1 in the zero padding). Identical for UR and UL (``W_ULᵀμ + b ⊗ 1``).
    """
    y = gather_patches(mu[None, :], idx)[0] @ Wur               # (n_pos, C_out)
    if b is not None:
        y = y + b
    return np.ascontiguousarray(y.T).ravel()


@numba.njit(parallel=True, cache=True)
def _im2col_rows(X, idx, cols):
    """``cols[r n_pos + p, a] = X[r, ι(p, a)]`` (0 where ι = −1), parallel over rows r."""
    m = X.shape[0]
    n_pos, taps = idx.shape
    for r in numba.prange(m):
        for p in range(n_pos):
            row = r * n_pos + p
            for a in range(taps):
                i = idx[p, a]
                cols[row, a] = X[r, i] if i >= 0 else 0.0


def tap_runs(idx):
    """Contiguous runs of the index map: rows ``(a, p0, i0, n)`` meaning that tap ``a`` at the
    positions ``p0 … p0+n−1`` reads the inputs ``i0 … i0+n−1`` (padded reads, ι = −1, are left
    out), sorted by tap; and ``ptr`` (taps + 1,) with the runs of tap ``a`` at
    ``ptr[a]:ptr[a+1]``. For a stride-1 convolution a run is one output row."""
    idx = np.asarray(idx, dtype=np.int64)
    n_pos, taps = idx.shape
    ok = idx >= 0
    cont = np.zeros_like(ok)
    cont[1:] = ok[1:] & ok[:-1] & (idx[1:] == idx[:-1] + 1)
    start = ok & ~cont                                     # (n_pos, taps)
    a, p0 = np.nonzero(start.T)                            # sorted by tap, then position
    # a run ends at the next position of its tap that does not continue it (or at n_pos)
    flat_brk = np.flatnonzero(~cont.T)                     # tap-major flat indices a n_pos + p
    stops = np.union1d(flat_brk, np.arange(1, taps + 1) * n_pos)
    s0 = a * n_pos + p0
    end = stops[np.searchsorted(stops, s0, side="right")] - a * n_pos
    runs = np.stack([a, p0, idx[p0, a], end - p0], axis=1).astype(np.int64)
    ptr = np.searchsorted(a, np.arange(taps + 1)).astype(np.int64)
    return runs, ptr


@numba.njit(parallel=True, cache=True)
def _conv_rows_runs(X, runs, ptr, Wur, n_pos, row0, upper, out):
    """Direct convolution of the rows of ``X`` along the runs of :func:`tap_runs`:
    ``out[r, c n_pos + p] = Σ_a Wur[a, c] X[r, ι(p, a)]`` for ``c ≥ c_lo(r)``
    (``c_lo = (row0 + r) // n_pos`` with ``upper``, else 0). Four output channels at a time,
    each accumulated in a row buffer of its own with the run as the (vectorised) inner loop;
    parallel over rows r. Used where a GEMM would have too few columns (``_DIRECT_MAX_WORK``)."""
    m = X.shape[0]
    taps, C = Wur.shape
    for r in numba.prange(m):
        c_lo = min(C, (row0 + r) // n_pos) if upper else 0
        x = X[r]
        acc0 = np.empty(n_pos)
        acc1 = np.empty(n_pos)
        acc2 = np.empty(n_pos)
        acc3 = np.empty(n_pos)
        c = c_lo
        while c < C:
            nb = min(4, C - c)
            acc0[:] = 0.0
            acc1[:] = 0.0
            acc2[:] = 0.0
            acc3[:] = 0.0
            for a in range(taps):
                w0 = Wur[a, c]
                w1 = Wur[a, c + 1] if nb > 1 else 0.0
                w2 = Wur[a, c + 2] if nb > 2 else 0.0
                w3 = Wur[a, c + 3] if nb > 3 else 0.0
                for q in range(ptr[a], ptr[a + 1]):
                    p0 = runs[q, 1]
                    i0 = runs[q, 2]
                    n = runs[q, 3]
                    xs = x[i0:i0 + n]
                    a0 = acc0[p0:p0 + n]
                    a1 = acc1[p0:p0 + n]
                    a2 = acc2[p0:p0 + n]
                    a3 = acc3[p0:p0 + n]
                    for t in range(n):
                        xv = xs[t]
                        a0[t] += w0 * xv
                        a1[t] += w1 * xv
                        a2[t] += w2 * xv
                        a3[t] += w3 * xv
            out[r, c * n_pos:(c + 1) * n_pos] = acc0
            if nb > 1:
                out[r, (c + 1) * n_pos:(c + 2) * n_pos] = acc1
            if nb > 2:
                out[r, (c + 2) * n_pos:(c + 3) * n_pos] = acc2
            if nb > 3:
                out[r, (c + 3) * n_pos:(c + 4) * n_pos] = acc3
            c += nb


_PLANE_MIN_POS = 64
""":func:`conv_rows` uses the plane kernel (:func:`_conv_rows_plane3`) for 3×3 stride-1 layers
with at least this many output positions (measured on 2 cores: 64–90 GFLOP/s on the 32×32,
16×16 and 8×8 maps of the 13-conv CNN against 30–55 for the direct/GEMM paths; on 4×4 maps
and smaller the GEMM is faster)."""

_PLANE_CHUNK = 128                # output-plane entries accumulated at a time (cache)


@numba.njit(parallel=True, cache=True)
def _conv_rows_plane3(X, Wk, Cin, H, W, pad, row0, upper, out, rows):
    """3×3 stride-1 convolution of the rows ``rows`` of ``X`` (m, C_in H W) into the same rows
    of ``out`` (m, C_out n_pos).

    Each row is copied into a zero-padded image (``Hp × Wp`` per channel) so that every tap
    reads the same contiguous stretch shifted by ``u Wp + v``: the output is accumulated on
    the padded-width plane (``Ho × Wp``; the ``Wp − Wo`` extra columns per row are discarded),
    three taps of a kernel row and four output channels per pass over the input
    (``Wk`` (C_out + 3, C_in, 3, 3), the last three channels zero). With ``upper`` only the
    channels ``c ≥ (row0 + r) // n_pos`` of row r are written. Parallel over rows."""
    m = rows.shape[0]
    C = Wk.shape[0] - 3
    Hp = H + 2 * pad
    Wp = W + 2 * pad
    Ho = Hp - 2
    Wo = Wp - 2
    n_pos = Ho * Wo
    P = Ho * Wp
    plane = Hp * Wp
    QC = _PLANE_CHUNK
    for t_r in numba.prange(m):
        r = rows[t_r]
        c_lo = min(C, (row0 + r) // n_pos) if upper else 0
        xp = np.zeros(Cin * plane + 2)
        for ci in range(Cin):
            for h in range(H):
                d0 = ci * plane + (h + pad) * Wp + pad
                s0 = ci * H * W + h * W
                xp[d0:d0 + W] = X[r, s0:s0 + W]
        acc0 = np.empty(QC)
        acc1 = np.empty(QC)
        acc2 = np.empty(QC)
        acc3 = np.empty(QC)
        for c in range(c_lo, C, 4):
            for q0 in range(0, P, QC):
                nq = min(QC, P - q0)
                a0 = acc0[:nq]
                a1 = acc1[:nq]
                a2 = acc2[:nq]
                a3 = acc3[:nq]
                a0[:] = 0.0
                a1[:] = 0.0
                a2[:] = 0.0
                a3[:] = 0.0
                for ci in range(Cin):
                    for u in range(3):
                        base = ci * plane + u * Wp + q0
                        x0 = xp[base:base + nq]
                        x1 = xp[base + 1:base + 1 + nq]
                        x2 = xp[base + 2:base + 2 + nq]
                        w00 = Wk[c, ci, u, 0]
                        w01 = Wk[c, ci, u, 1]
                        w02 = Wk[c, ci, u, 2]
                        w10 = Wk[c + 1, ci, u, 0]
                        w11 = Wk[c + 1, ci, u, 1]
                        w12 = Wk[c + 1, ci, u, 2]
                        w20 = Wk[c + 2, ci, u, 0]
                        w21 = Wk[c + 2, ci, u, 1]
                        w22 = Wk[c + 2, ci, u, 2]
                        w30 = Wk[c + 3, ci, u, 0]
                        w31 = Wk[c + 3, ci, u, 1]
                        w32 = Wk[c + 3, ci, u, 2]
                        for t in range(nq):
                            xa = x0[t]
                            xb = x1[t]
                            xc = x2[t]
                            a0[t] += w00 * xa + w01 * xb + w02 * xc
                            a1[t] += w10 * xa + w11 * xb + w12 * xc
                            a2[t] += w20 * xa + w21 * xb + w22 * xc
                            a3[t] += w30 * xa + w31 * xb + w32 * xc
                nb = min(4, C - c)
                for t in range(nq):
                    q = q0 + t
                    h = q // Wp
                    w = q - h * Wp
                    if w < Wo:
                        o = h * Wo + w
                        out[r, c * n_pos + o] = a0[t]
                        if nb > 1:
                            out[r, (c + 1) * n_pos + o] = a1[t]
                        if nb > 2:
                            out[r, (c + 2) * n_pos + o] = a2[t]
                        if nb > 3:
                            out[r, (c + 3) * n_pos + o] = a3[t]


@functools.lru_cache(maxsize=64)
def _index_map(in_shape, k, stride, pad):
    return im2col_index(in_shape, k, stride, pad)


def _plane_geometry(idx, geometry):
    """``(C_in, H, W, pad)`` when ``geometry = (in_shape, k, stride, pad)`` is a 3×3 stride-1
    layer with at least :data:`_PLANE_MIN_POS` positions **and** ``idx`` is its index map
    (checked entry by entry: a wrong geometry falls back to the general paths); else None."""
    if geometry is None:
        return None
    in_shape, k, stride, pad = geometry
    in_shape = tuple(int(v) for v in in_shape)
    if int(k) != 3 or int(stride) != 1 or idx.shape[0] < _PLANE_MIN_POS:
        return None
    ref = _index_map(in_shape, 3, 1, int(pad))
    if ref.shape != idx.shape or not np.array_equal(ref, idx):
        return None
    return in_shape + (int(pad),)


def conv_rows(src, Wur, idx, *, upper=False, row0=0, out=None, chunk_bytes=CHUNK_BYTES,
              work=None, geometry=None, rows=None):
    r"""Convolve every row of ``src`` (m, L): ``src W_UL`` (m, J), J = C_out n_pos (theory §5).

    ``out[r, (c_o, p)] = Σ_a Wur[a, c_o] src[r, ι(p, a)]``. With ``upper`` only the output
    columns of channels ``c_o ≥ (row0 + r₀) // n_pos`` are written for a chunk starting at row
    r₀ — every entry on or above the diagonal of a symmetric (J, J) result whose row r is
    ``row0 + r`` (the rest of ``out`` is left untouched). ``work``: a
    :class:`~refmem.moments.workspace.Workspace` for the im2col buffer (None: numpy).
    ``geometry = (in_shape, k, stride, pad)``: with a 3×3 stride-1 layer whose index map is
    ``idx`` the rows are convolved by the plane kernel (:func:`_conv_rows_plane3`), else by
    the direct Numba kernel (few channels) or im2col + GEMM — the same sums in another order.
    ``rows`` (int array), optional: convolve only these rows of ``src`` into the same rows of
    ``out`` (the others are not touched); the plane kernel reads and writes them in place,
    the other paths through a gathered copy.
    """
    Wur = np.asarray(Wur, dtype=np.float64)
    idx = np.ascontiguousarray(idx, dtype=np.int64)
    m_tot = src.shape[0]
    n_pos, taps = idx.shape
    C = Wur.shape[1]
    J = C * n_pos
    if out is None:
        out = np.empty((m_tot, J))
    step = int(max(1, min(m_tot, chunk_bytes // (8 * n_pos * max(taps, 1)))))
    plane = _plane_geometry(idx, geometry)
    if plane is not None:
        Cin, H, W, pad = plane
        Wk = np.zeros((C + 3, Cin, 3, 3))
        Wk[:C] = Wur.T.reshape(C, Cin, 3, 3)
        sel = np.arange(m_tot) if rows is None else np.asarray(rows, dtype=np.int64)
        _conv_rows_plane3(np.ascontiguousarray(src), Wk, Cin, H, W, pad, row0, upper, out, sel)
        return out
    if rows is not None:                    # the row-batched paths: through a compact copy
        rows = np.asarray(rows, dtype=np.int64)
        if not (upper and rows.size):
            out[rows] = conv_rows(src[rows], Wur, idx, chunk_bytes=chunk_bytes, work=work)
            return out
        for r in rows:                      # rows of different channels c_lo
            conv_rows(src[r:r + 1], Wur, idx, upper=True, row0=row0 + r, out=out[r:r + 1],
                      chunk_bytes=chunk_bytes, work=work)
        return out
    if taps * C <= _DIRECT_MAX_WORK:        # few channels: direct Numba convolution along runs
        Wc = np.ascontiguousarray(Wur)
        runs, ptr = tap_runs(idx)
        _conv_rows_runs(np.ascontiguousarray(src), runs, ptr, Wc, n_pos, row0, upper, out)
        return out
    cols = empty(work, (step * n_pos, taps))
    for r0 in range(0, m_tot, step):
        r1 = min(m_tot, r0 + step)
        m = r1 - r0
        cb = cols[:m * n_pos]
        _im2col_rows(np.ascontiguousarray(src[r0:r1]), idx, cb)
        c_lo = min(C, (row0 + r0) // n_pos) if upper else 0
        Cc = C - c_lo
        # one GEMM (Cc, taps)(taps, m n_pos); its rows are channel-major, so the copy into
        # place moves runs of n_pos contiguous entries (measured 1.05–1.5× faster than the
        # (m n_pos, taps)(taps, Cc) orientation with its element-wise transposed copy, and
        # ~10× faster for Cc < 8)
        Yt = Wur[:, c_lo:].T @ cb.T
        dst = out[r0:r1, c_lo * n_pos:].reshape(m, Cc, n_pos)
        assert not dst.flags.owndata     # a view into out, never a copy
        dst[...] = Yt.reshape(Cc, m, n_pos).transpose(1, 0, 2)
        del dst, Yt
    return out


def conv_cols(src, Wur, idx, *, out=None, diag_rows=None):
    r"""Convolve along the **row** index of ``src`` (L, m): ``W_ULᵀ src`` (J, m), J = C_out n_pos.

    ``out[(c_o, p), :] = Σ_a Wur[a, c_o] src[ι(p, a), :]`` (theory §5; padded taps read
    zeros). For a symmetric ``src = Γ`` this is ``(Γ W_UL)ᵀ``, the first pass of
    :func:`conv_signal_cov`, produced row-major so that the second pass reads rows. Per output
    position p, the rows of ``src`` its taps read are gathered into a (taps, m) buffer and
    multiplied by ``Wur[taps]ᵀ`` in one GEMM whose result lands in place (rows ``c_o n_pos + p``).
    ``out`` may be any (J, m) view with unit column stride (e.g. a column strip of a larger
    matrix); every entry is written.

    ``diag_rows`` (L,) bool, optional, for a square ``src``: rows known to be zero off the
    diagonal (:func:`refmem.symmetric.diagonal_rows`; the inactive units under the Taylor
    rule, Eq. (28)). A tap reading such a row i contributes ``Wur[a, c_o] src[i, i]`` to
    column i alone, so it is left out of the GEMM (theory §15) — the same sum without its
    zero terms.
    """
    Wur = np.asarray(Wur, dtype=np.float64)
    idx = np.asarray(idx, dtype=np.int64)
    n_pos, taps = idx.shape
    C = Wur.shape[1]
    m = src.shape[1]
    if out is None:
        out = np.empty((C * n_pos, m))
    o3 = out.reshape(C, n_pos, m)
    assert not o3.flags.owndata and np.may_share_memory(o3, out)   # a view, never a copy
    ok = idx >= 0
    if diag_rows is not None:
        if src.shape[0] != m or diag_rows.shape != (m,):
            raise ValueError("conv_cols: diag_rows needs a square src and one flag per row")
        on_diag = ok & diag_rows[np.where(ok, idx, 0)]
        ok &= ~on_diag
    WT = np.ascontiguousarray(Wur.T)
    buf = np.empty((taps, m))
    for p in range(n_pos):
        row = idx[p]
        okp = ok[p]
        if okp.all():
            np.take(src, row, axis=0, out=buf, mode="clip")   # unbuffered (ι ≥ 0 here)
            o3[:, p, :] = WT @ buf
        elif okp.any():
            sel = np.flatnonzero(okp)
            b = buf[:sel.size]
            np.take(src, row[sel], axis=0, out=b)
            o3[:, p, :] = Wur[sel].T @ b
        else:
            o3[:, p, :] = 0.0
    if diag_rows is not None:
        p_d, a_d = np.nonzero(on_diag)
        i_d = idx[p_d, a_d]                     # distinct for one p: no two updates collide
        o3[:, p_d, i_d] += Wur[a_d].T * src[i_d, i_d]
    return out


def _block_taps(idx, s, blk):
    """Taps of ``idx`` reading block ``blk`` of size ``s``: (tap indices, local index map)."""
    inside = (idx >= 0) & (idx // s == blk)
    sel = np.nonzero(inside.any(axis=0))[0]
    local = np.where(inside[:, sel], idx[:, sel] - blk * s, -1)
    return sel, local


def conv_signal_cov(Wur, idx, gamma, *, geometry=None, chunk_bytes=CHUNK_BYTES,
                    ut_bytes=UT_BYTES, work=None, symmetric=True, rows=None):
    r"""Signal term of a convolution's output covariance: ``W_ULᵀ Γ W_UL`` (theory §5, §6).

    ``Σ_{a,a'} w_{c_o}[a] w_{c_o'}[a'] Γ_ι(p,a),ι(p',a')`` — the double convolution of Γ, as
    two passes over rows: ``Uᵀ = W_ULᵀ Γ`` by :func:`conv_cols` (for a :class:`BlockDiag` Γ
    one block at a time, each with the taps that read it, into its own column strip), then
    ``Uᵀ W_UL`` by :func:`conv_rows` on the rows of ``Uᵀ``, upper triangle only, mirrored.
    The Toeplitz matrix is never formed and no large matrix is transposed. ``Uᵀ`` is made
    and consumed one block of output positions at a time (rows ``(c_o, p)``, p in the block),
    so it never exists whole: the pass needs the result plus ``ut_bytes``.

    Parameters
    ----------
    Wur : ndarray (C_in k², C_out)
    idx : ndarray (n_pos, C_in k²)
        ι(p, a), −1 in the padding.
    gamma : ndarray (L, L), BlockDiag or ``[Γ]``
        Symmetric input covariance; a one-element list releases it after the first pass.
    geometry : (in_shape, k, stride, pad), optional
        The layer's geometry: lets :func:`conv_rows` use its plane kernel on 3×3 stride-1
        layers (checked against ``idx``; the numbers are the same sums either way).
    chunk_bytes : int
        Size of the im2col buffer of the second pass (:func:`conv_rows`).
    ut_bytes : int
        Size of one block of ``Uᵀ`` (at least one position's rows are made at a time).
    work : Workspace, optional
        Where ``Uᵀ``, the result and the im2col buffer come from
        (:class:`refmem.moments.workspace.Workspace`; None: fresh numpy arrays).
    symmetric : bool
        Mirror the upper triangle (default). False: only the upper triangle and the diagonal
        are valid — for a consumer that reads nothing else (the exact ReLU,
        :func:`refmem.relu.relu_moments`), saving one pass over the matrix.
    rows : ndarray (J,) bool, optional
        Compute only the entries whose row **and** column are flagged, and the whole
        diagonal — what the Taylor ReLU rule (Eq. (28), theory §8.3) reads when ``rows`` are
        the units of positive mean. Where the plane kernel applies (3×3 stride-1 maps of at
        least :data:`_PLANE_MIN_POS` positions) the second pass convolves only the flagged
        rows of ``Uᵀ``: an unflagged row's variance is the one dot product
        ``Σ_a Wur[a, c_o] Uᵀ[(c_o, p), ι(p, a)]`` and the rest of its upper triangle is set to
        0; elsewhere every row is computed. The other entries of the upper triangle are
        finite and meaningless. None (default): every entry.

    Returns
    -------
    ndarray (J, J), J = C_out n_pos, exactly symmetric (upper triangle only with
    ``symmetric=False``).
    """
    gamma = take_input(gamma)
    L = gamma.shape[0]
    n_pos = idx.shape[0]
    C = Wur.shape[1]
    J = C * n_pos
    nb = int(max(1, min(n_pos, ut_bytes // (8 * C * L))))      # positions per block
    cov = empty(work, (J, J))          # the larger buffer first (best fit in a Workspace)
    Ut = empty(work, (C * nb, L))
    if rows is not None:
        rows = np.asarray(rows, dtype=bool)
        if rows.shape != (J,):
            raise ValueError(f"conv_signal_cov: rows has shape {rows.shape}, expected ({J},)")
    # only a row-by-row kernel (the plane kernel) gains from convolving the flagged rows
    # alone; the GEMM path of small maps then computes every row, as without ``rows``
    by_row = rows is not None and _plane_geometry(idx, geometry) is not None
    # rows zero off the diagonal (Taylor's inactive units) enter the first pass by their
    # diagonal entry alone (None where there are none: the plain GEMMs)
    if isinstance(gamma, BlockDiag):
        s = gamma.s
        taps = [_block_taps(idx, s, blk) for blk in range(gamma.nb)]
        diag = [diagonal_rows(B) for B in gamma.blocks]
        diag = [f if f.any() else None for f in diag]
    else:
        diag = diagonal_rows(gamma)
        diag = diag if diag.any() else None
    for p0 in range(0, n_pos, nb):
        p1 = min(n_pos, p0 + nb)
        k = p1 - p0
        Ub = Ut[:C * k]                                # rows (c_o, p) for p0 ≤ p < p1
        if isinstance(gamma, BlockDiag):
            for blk, (sel, local) in enumerate(taps):
                strip = Ub[:, blk * s:(blk + 1) * s]
                if sel.size:
                    conv_cols(gamma.blocks[blk], Wur[sel], local[p0:p1], out=strip,
                              diag_rows=diag[blk])
                else:
                    strip[...] = 0.0
        else:
            conv_cols(gamma, Wur, idx[p0:p1], out=Ub, diag_rows=diag)  # (Γ W_UL)ᵀ, Γ = Γᵀ
        if k == n_pos and not by_row:                  # all rows of the result at once
            conv_rows(Ub, Wur, idx, upper=True, out=cov, chunk_bytes=chunk_bytes, work=work,
                      geometry=geometry)
            continue
        for c in range(C):                             # rows c n_pos + p0 … of the result
            r0 = c * n_pos + p0
            Uc = Ub[c * k:(c + 1) * k]
            if not by_row:
                conv_rows(Uc, Wur, idx, upper=True, row0=r0, out=cov[r0:r0 + k],
                          chunk_bytes=chunk_bytes, work=work, geometry=geometry)
                continue
            keep = rows[r0:r0 + k]
            on = np.flatnonzero(keep)
            off = np.flatnonzero(~keep)
            if on.size:                                # the flagged rows, in place
                conv_rows(Uc, Wur, idx, upper=True, row0=r0, out=cov[r0:r0 + k], rows=on,
                          chunk_bytes=chunk_bytes, work=work, geometry=geometry)
            if off.size:                               # the others: their variance only
                cov[r0 + off, c * n_pos:] = 0.0
                ii = idx[p0 + off]                     # (n_off, taps)
                taps_read = Uc[off[:, None], np.maximum(ii, 0)]
                cov[r0 + off, r0 + off] = np.where(ii >= 0, taps_read, 0.0) @ Wur[:, c]
    del gamma, Ut, Ub
    return mirror_upper(cov) if symmetric else cov


@numba.njit(parallel=True, cache=True)
def ur_shared_noise_kernel(mu, G, s, has_g, idx, v, vb, out):
    r"""UR shared-device noise term (theory §5, corrected Eqs. (14)–(16), D9).

    ``out[c, p, p'] = Σ_a v[a, c] (Γ + μμᵀ)[ι(p,a), ι(p',a)] + vb[c]`` for every pair of
    positions p, p' of the same output channel c — the **same** tap a at both positions
    (padded taps contribute nothing). Γ is given as blocks ``G`` (nb, s, s) of a
    block-diagonal matrix (a dense Γ is one block, ``s = L``); entries across blocks are 0.
    ``G`` is ignored when ``has_g`` is False (deterministic input, ``Q = μμᵀ``). ``out`` has
    shape (C_out, n_pos, n_pos) and is overwritten. Parallel over pairs of rows (p, n_pos−1−p).
    """
    n_pos, taps = idx.shape
    C = v.shape[1]
    for t in numba.prange((n_pos + 1) // 2):
        acc = np.empty((n_pos, C))
        for side in range(2):
            p = paired_row(t, side, n_pos)                # t, then n_pos − 1 − t
            if p < 0:
                break
            for p2 in range(p, n_pos):
                for c in range(C):
                    acc[p2, c] = vb[c]
            # tap by tap, along the row of Q read by tap a at p (cache-friendly); the sum over
            # a runs in the same order for every (c, p, p2) as a tap-inner loop would
            for a in range(taps):
                i = idx[p, a]
                if i < 0:
                    continue
                mi = mu[i]
                bi = i // s
                il = i - bi * s
                lo = bi * s                                # Γ's block holding row i
                hi = lo + s
                for p2 in range(p, n_pos):
                    j = idx[p2, a]
                    if j < 0:
                        continue
                    qv = mi * mu[j]
                    if has_g:
                        if lo <= j < hi:
                            qv += G[bi, il, j - lo]
                    for c in range(C):
                        acc[p2, c] += v[a, c] * qv
            for c in range(C):
                for p2 in range(p, n_pos):
                    out[c, p, p2] = acc[p2, c]
                    out[c, p2, p] = acc[p2, c]


def ur_noise(v, vb, idx, mu, gamma):
    """Per-channel shared noise blocks (C_out, n_pos, n_pos) of a UR layer (theory §5)."""
    n_pos = idx.shape[0]
    C = v.shape[1]
    out = np.empty((C, n_pos, n_pos))
    vbz = np.zeros(C) if vb is None else np.ascontiguousarray(vb, dtype=np.float64)
    if gamma is None:
        G, s = np.zeros((1, 1, 1)), 1
    elif isinstance(gamma, BlockDiag):
        G, s = gamma.blocks, gamma.s
    else:
        G, s = gamma[None], gamma.shape[0]
    ur_shared_noise_kernel(np.ascontiguousarray(mu, dtype=np.float64), G, s, gamma is not None,
                           np.ascontiguousarray(idx, dtype=np.int64),
                           np.ascontiguousarray(v, dtype=np.float64), vbz, out)
    return out


def ur_moments(Wur, b, v, vb, idx, mu, gamma, *, geometry=None, layout="dense", work=None,
               symmetric=True, active_only=False):
    r"""Output moments of a UR convolution (unfold-repeat, theory §5, Proposition 2 corrected).

    One crossbar ``(C_in k² [+1]) × C_out`` reused at every position, so all positions of a
    channel share the device noise (A3)::

        E Z_{c_o,p}        = w_{c_o}ᵀ P_p μ + b_{c_o}                        (Eq. (13), D8)
        Cov[Z_{c_o,p}, Z_{c_o',p'}] = Σ_{a,a'} w_{c_o}[a] w_{c_o'}[a'] Γ_ι(p,a),ι(p',a')
            + δ_{c_o c_o'} ( Σ_a v[a, c_o] Q_ι(p,a),ι(p',a) + v^b_{c_o} )    (Eqs. (14)–(16), D9)

    Parameters
    ----------
    Wur : ndarray (C_in k², C_out)
    b : ndarray (C_out,) or None
    v : ndarray (C_in k², C_out)
        Pair variances in weight units (``block().v``).
    vb : ndarray (C_out,) or None
    idx : ndarray (n_pos, C_in k²)
        ι(p, a), −1 in the padding.
    mu : ndarray (L,)
    gamma : ndarray (L, L), BlockDiag, None or ``[Γ]``
        Input covariance (None: deterministic input; a one-element list is released after
        use, :func:`refmem.moments.layout.take_input`).
    geometry : (in_shape, k, stride, pad), optional
        Passed to :func:`conv_signal_cov` (its fast kernel for 3×3 stride-1 layers).
    layout : {"dense", "blocks"}
        With a deterministic input the output covariance is block-diagonal across channels
        (only the shared-device term); ``"blocks"`` returns it as a :class:`BlockDiag`.
    work : Workspace, optional
        Buffers for the large matrices (:class:`refmem.moments.workspace.Workspace`).
    symmetric : bool
        False: of a dense result only the upper triangle and the diagonal are valid (see
        :func:`conv_signal_cov`).
    active_only : bool
        For a Taylor ReLU next (Eq. (28)): of a dense result only the entries between units
        of positive mean, and the diagonal, are valid (``rows`` of :func:`conv_signal_cov`).

    Returns
    -------
    mean : ndarray (C_out n_pos,), cov : ndarray (C_out n_pos, C_out n_pos) or BlockDiag;
    flattened (c_o, p).
    """
    gamma = take_input(gamma)
    mean = conv_mean(Wur, b, idx, mu)
    n_pos = idx.shape[0]
    nz = ur_noise(v, vb, idx, mu, gamma)
    if gamma is None:
        if layout == "blocks":
            return mean, BlockDiag(nz)
        J = mean.shape[0]
        cov = zeros(work, (J, J))
    else:
        box = [gamma]
        del gamma
        cov = conv_signal_cov(Wur, idx, box, geometry=geometry, work=work,
                              symmetric=symmetric, rows=mean > 0 if active_only else None)
    for c in range(Wur.shape[1]):
        cov[c * n_pos:(c + 1) * n_pos, c * n_pos:(c + 1) * n_pos] += nz[c]
    return mean, cov


def ul_noise(blocks, mu, gamma, n_cols, *, out=None):
    """Diagonal noise of a UL layer: ``Σ_n v[n, j] q_n + v^b_j`` over **all** L inputs (theory §6).

    ``blocks``: explicit column blocks (:meth:`refmem.mapping.MappedLayer.block`); only their
    columns of ``out`` (default: a new (n_cols,) array) are written.
    """
    q = raw_second_moments(mu, gamma)
    noise = np.empty(n_cols) if out is None else out
    for blk in blocks:
        nz = q @ blk.v
        if blk.vb is not None:
            nz = nz + blk.vb
        noise[blk.cols] = nz
    return noise


def ul_noise_taps(tb, mu, gamma):
    """:func:`ul_noise` from the tap form of the layer (:meth:`MappedLayer.ul_taps`): the
    structural zeros of a column contribute ``v_z (Σ_n q_n − Σ_taps q)`` (theory §6, D12)."""
    q = raw_second_moments(mu, gamma)
    noise = ul_column_sums(tb, tb.v, tb.z.v, q)
    if tb.vb is not None:
        noise = noise + tb.vb
    return noise


def ul_moments(Wur, b, idx, noise, mu, gamma, *, geometry=None, layout="dense", work=None,
               symmetric=True, active_only=False):
    r"""Output moments of a UL convolution (unrolled-linear Toeplitz crossbar, theory §6).

    FC (theory §4) with ``W = W_UL``: ``E Z = W_ULᵀμ + b ⊗ 1``,
    ``Cov Z = W_ULᵀ Γ W_UL + diag(noise)``. Every Toeplitz entry is a pair — structural zeros
    at ``g_min`` are noisy — so ``noise_j = Σ_{n=1}^{L} v_{nj} q_n + v^b_j`` sums over all inputs
    (D12; :func:`ul_noise`). Each column has its own devices: no shared noise between
    positions. ``gamma`` and ``layout`` as in :func:`ur_moments` (a deterministic input gives a
    diagonal covariance, laid out as diagonal channel blocks with ``"blocks"``); ``work``,
    ``symmetric``, ``geometry`` and ``active_only`` as in :func:`ur_moments`.
    """
    gamma = take_input(gamma)
    mean = conv_mean(Wur, b, idx, mu)
    if gamma is None:
        if layout == "blocks":
            return mean, BlockDiag.from_variances(noise, Wur.shape[1])
        return mean, np.diag(noise)
    box = [gamma]
    del gamma
    cov = conv_signal_cov(Wur, idx, box, geometry=geometry, work=work, symmetric=symmetric,
                          rows=mean > 0 if active_only else None)
    cov[np.diag_indices_from(cov)] += noise
    return mean, cov
