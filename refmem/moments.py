"""Analytic moment propagation through a network on noisy crossbars (Kern et al., MemSE).

Implements the corrected specification (``spec §n`` = ``/shared/spec/equations.md``), not
the paper's printed equations. For every input sample the mean vector ``μ`` and the full
covariance ``Γ`` are carried through the batchnorm-fused network, layer by layer
(Algorithm 1 as corrected in spec §15: every layer's power **and** moments are computed from
its **input** moments, D16; ``Γ`` is re-symmetrised after every linear layer).

Layers
------
- **FC** (:func:`dense_moments`, spec §4, Proposition 1 corrected — Eq. (9)–(11), D6/D7):
  ``E Z = Wᵀμ + b``, ``Cov Z = WᵀΓW + diag(vᵀq + v^b)`` with ``q = μ² + diag Γ`` and the
  weight-unit pair variances ``v = (σ²(g⁺) + σ²(g⁻))/λ² + α²w² + Δ²/12`` taken from
  :meth:`refmem.mapping.MappedLayer.block` (device noise, spec §13 α, spec §14 dither);
- **UR conv** (:func:`ur_moments`, spec §5, Proposition 2 corrected — Eqs. (12)–(16), D8/D9):
  the signal term is the double convolution ``W_ULᵀ Γ W_UL``; the noise term is shared by all
  positions of an output channel and uses the **same** tap at both positions,
  ``Σ_a v[a, c_o] Q_ι(p,a),ι(p',a) + v^b[c_o]`` with ``Q = Γ + μμᵀ``
  (:func:`ur_shared_noise_kernel`, Numba);
- **UL conv** (:func:`ul_moments`, spec §6): FC with the Toeplitz matrix; every entry is a
  noisy pair (structural zeros at ``g_min``), so the noise is diagonal and sums over **all**
  inputs (D12); the signal term is the same double convolution as UR;
- **average pooling** (:func:`pool_moments`, spec §7, Proposition 3 corrected, D13) and
  **flatten** (identity on the flat NCHW vector);
- **ReLU** (:mod:`refmem.relu`, spec §8): Proposition 4 mean/variance in a stable form, and
  the exact bivariate covariance (default, spec §8.2) or the paper's Eq. (28) (``taylor``).

The TIA gain ``r`` is undone digitally by ``1/(rλ)`` (spec §3.3), so it does **not** enter the
moments; it enters power only (:mod:`refmem.power`, spec §11, with the physical ``r``).
The output MSE per output is ``Γ_jj + (μ_j − z_j)²`` against the reference ``z`` (the
unquantized, noiseless network; spec §9, Eq. (7)).

A deterministic input keeps the covariance *lazy* (``None``) until the first crossbar layer,
whose covariance is built directly from its noise term (FC/UL: diagonal; UR: the shared-device
term from ``μμᵀ`` restricted to patches); no zero L×L matrix is ever allocated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numba
import numpy as np

from .errors import ConfigError, DataError
from .layers import AvgPool2d, Conv2d, Dense, Flatten, ReLU
from .power import fc_power, layer_power, ul_power, ur_power
from .relu import relu_moments

__all__ = ["propagate", "MomentsResult", "dense_moments", "conv_mean", "conv_signal_cov",
           "ur_moments", "ul_moments", "ul_noise", "pool_moments", "relu_moments",
           "layer_power", "ur_shared_noise_kernel", "symmetrize"]

CHUNK_BYTES = 128 * 2**20
"""Temporary memory per streamed chunk (im2col gathers, UL column blocks)."""


# ====================================================================== small helpers
def symmetrize(G, block=2048):
    """``G ← (G + Gᵀ)/2`` in place, blockwise (no full temporary; spec §15)."""
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


def _q(mu, gamma):
    """Raw second moments ``q_i = μ_i² + Γ_ii`` (spec §1)."""
    return mu * mu if gamma is None else mu * mu + np.diagonal(gamma)


# ====================================================================== FC (spec §4)
def dense_moments(W, b, v, vb, mu, gamma):
    r"""Output moments of a noisy FC crossbar (spec §4, Proposition 1 corrected).

    Corrects Eq. (10) (``2σ²`` on every input term, D6; ``Γ_ii`` for the printed ``γ_i²``,
    D7) and generalises it to per-pair variances::

        E Z   = Wᵀμ + b                                            (Eq. (9))
        Cov Z = WᵀΓW + diag_j( v^b_j + Σ_i v_ij (μ_i² + Γ_ii) )     (Eqs. (10)–(11))

    Valid for any input law with mean μ and covariance Γ (no Gaussianity needed; oracle O12).

    Parameters
    ----------
    W : ndarray (L, J)
        Weights, row i = input, column j = output (spec §1).
    b : ndarray (J,) or None
        Bias (None: no bias).
    v : ndarray (L, J)
        Pair variances in weight units (``block().v``: device + α + dither).
    vb : ndarray (J,) or None
        Bias-row pair variances (None: no bias row, e.g. a digital bias).
    mu : ndarray (L,)
    gamma : ndarray (L, L) or None
        Input covariance; None = deterministic input.

    Returns
    -------
    mean : ndarray (J,)
    cov : ndarray (J, J)
    """
    mean = mu @ W
    if b is not None:
        mean = mean + b
    noise = _q(mu, gamma) @ v                                   # Σ_i v_ij q_i
    if vb is not None:
        noise = noise + vb                                      # bias row, x_b = 1
    if gamma is None:
        cov = np.diag(noise)
    else:
        cov = W.T @ (gamma @ W)
        symmetrize(cov)
        cov[np.diag_indices_from(cov)] += noise
    return mean, cov


# ====================================================================== conv (spec §5, §6)
def _safe_index(idx, L):
    return np.where(idx < 0, L, idx)


def conv_mean(Wur, b, idx, mu):
    r"""Mean of a convolution output (spec §5/§6): ``w_{c_o}ᵀ P_p μ + b_{c_o}``, flattened (c_o, p).

    ``Wur`` (C_in k², C_out) is the UR matrix; ``idx`` (n_pos, C_in k²) the index map ι(p, a)
    (−1 in the zero padding). Identical for UR and UL (``W_ULᵀμ + b ⊗ 1``).
    """
    ext = np.concatenate([mu, [0.0]])
    y = ext[_safe_index(idx, mu.shape[0])] @ Wur                # (n_pos, C_out)
    if b is not None:
        y = y + b
    return np.ascontiguousarray(y.T).ravel()


def _conv_rows(M, Wur, idx, *, transpose_out=False, chunk_bytes=CHUNK_BYTES):
    """Convolve every row of ``M`` (m, L): ``M W_UL`` (m, J), or its transpose (J, m)."""
    m_rows, L = M.shape
    n_pos, taps = idx.shape
    C = Wur.shape[1]
    J = C * n_pos
    safe = _safe_index(idx, L)
    step = int(max(1, min(m_rows, chunk_bytes // (8 * n_pos * taps + 8 * (L + 1)))))
    out = np.empty((J, m_rows) if transpose_out else (m_rows, J))
    ext = np.zeros((step, L + 1))
    for r0 in range(0, m_rows, step):
        r1 = min(m_rows, r0 + step)
        m = r1 - r0
        ext[:m, :L] = M[r0:r1]
        P = ext[:m][:, safe]                                    # (m, n_pos, taps): im2col
        Y = (P.reshape(m * n_pos, taps) @ Wur).reshape(m, n_pos, C)
        blk = Y.transpose(0, 2, 1).reshape(m, J)                # columns (c_o, p)
        if transpose_out:
            out[:, r0:r1] = blk.T
        else:
            out[r0:r1] = blk
    return out


_GEMM_SIZE = 400_000
"""Largest multiply-add count of one small GEMM in :func:`_conv_cols_s1` (kept below the size
where OpenBLAS goes multi-threaded, which is slow when other processes load the cores)."""


def _conv_cols_s1(src, K, pad, in_shape, *, from_rows=False):
    """``W_ULᵀ X`` for a stride-1 convolution, X = ``src`` (L, m) or ``srcᵀ`` (``from_rows``).

    Streams over column blocks of X: each block is copied into a zero-padded
    (C_in, H+2pad, W+2pad, m) buffer and convolved by one batched GEMM per kernel offset
    (no index gathers). Returns (C_out E F, m), rows ordered (c_o, o_h, o_w).
    """
    Co, Ci, k, _ = K.shape
    C, H, W = in_shape
    Hp, Wp = H + 2 * pad, W + 2 * pad
    E, F = Hp - k + 1, Wp - k + 1
    m_tot = src.shape[0] if from_rows else src.shape[1]
    step = int(max(1, min(m_tot, _GEMM_SIZE // (Co * Ci * F))))
    out = np.empty((Co * E * F, m_tot))
    buf = np.zeros((C, Hp, Wp, step))
    acc = np.empty((E, Co, F * step))
    for c0 in range(0, m_tot, step):
        c1 = min(m_tot, c0 + step)
        m = c1 - c0
        Xp = buf[..., :m] if m == step else np.zeros((C, Hp, Wp, m))
        blk = src[c0:c1].T if from_rows else src[:, c0:c1]
        Xp[:, pad:pad + H, pad:pad + W, :] = blk.reshape(C, H, W, m)
        a = acc[..., :F * m] if m == step else np.empty((E, Co, F * m))
        a[...] = 0.0
        for u in range(k):
            for v in range(k):
                view = Xp[:, u:u + E, v:v + F, :].transpose(1, 0, 2, 3).reshape(E, C, F * m)
                a += np.matmul(K[:, :, u, v], view)
        out[:, c0:c1] = a.reshape(E, Co, F, m).transpose(1, 0, 2, 3).reshape(Co * E * F, m)
    return out


def conv_signal_cov(Wur, idx, gamma, *, geometry=None, chunk_bytes=CHUNK_BYTES):
    r"""Signal term of a convolution's output covariance: ``W_ULᵀ Γ W_UL`` (spec §5, §6).

    ``Σ_{a,a'} w_{c_o}[a] w_{c_o'}[a'] Γ_ι(p,a),ι(p',a')`` — the "double convolution" of Γ,
    computed as two streamed convolution passes (``T = W_ULᵀΓ``, then ``W_ULᵀTᵀ``, using Γ = Γᵀ);
    the Toeplitz matrix is never formed. With ``geometry = (in_shape, k, stride, pad)`` and
    stride 1, each pass is a batched GEMM per kernel offset on a padded buffer; otherwise an
    im2col gather with ``idx``. Returns the (J, J) matrix (J = C_out n_pos), symmetrised.
    """
    if geometry is not None and geometry[2] == 1:
        in_shape, k, _, pad = geometry
        K = np.ascontiguousarray(Wur.T).reshape(Wur.shape[1], in_shape[0], k, k)
        T = _conv_cols_s1(gamma, K, pad, in_shape)                      # W_ULᵀ Γ   (J, L)
        cov = _conv_cols_s1(T, K, pad, in_shape, from_rows=True)        # W_ULᵀ Tᵀ  (J, J)
    else:
        T = _conv_rows(gamma, Wur, idx, transpose_out=True, chunk_bytes=chunk_bytes)
        cov = _conv_rows(T, Wur, idx, chunk_bytes=chunk_bytes)
    del T
    return symmetrize(cov)


def _geometry(ml):
    """(in_shape, k, stride, pad) of a conv MappedLayer."""
    return (tuple(ml.in_shape), ml.conv.k, ml.conv.stride, ml.conv.padding)


@numba.njit(cache=True)
def ur_shared_noise_kernel(mu, G, has_g, idx, v, vb, out):
    r"""UR shared-device noise term (spec §5, corrected Eqs. (14)–(16), D9).

    ``out[c, p, p'] = Σ_a v[a, c] (Γ + μμᵀ)[ι(p,a), ι(p',a)] + vb[c]`` for every pair of
    positions p, p' of the same output channel c — the **same** tap a at both positions
    (padded taps contribute nothing). ``G`` is ignored when ``has_g`` is False (deterministic
    input, ``Q = μμᵀ``). ``out`` has shape (C_out, n_pos, n_pos) and is overwritten.
    """
    n_pos, taps = idx.shape
    C = v.shape[1]
    acc = np.empty(C)
    for p in range(n_pos):
        for p2 in range(p, n_pos):
            for c in range(C):
                acc[c] = vb[c]
            for a in range(taps):
                i = idx[p, a]
                j = idx[p2, a]
                if i < 0 or j < 0:
                    continue
                qv = mu[i] * mu[j]
                if has_g:
                    qv += G[i, j]
                for c in range(C):
                    acc[c] += v[a, c] * qv
            for c in range(C):
                out[c, p, p2] = acc[c]
                out[c, p2, p] = acc[c]


def ur_noise(v, vb, idx, mu, gamma):
    """Per-channel shared noise blocks (C_out, n_pos, n_pos) of a UR layer (spec §5)."""
    n_pos = idx.shape[0]
    C = v.shape[1]
    out = np.empty((C, n_pos, n_pos))
    vbz = np.zeros(C) if vb is None else np.ascontiguousarray(vb, dtype=np.float64)
    G = np.zeros((1, 1)) if gamma is None else gamma
    ur_shared_noise_kernel(np.ascontiguousarray(mu), G, gamma is not None,
                           np.ascontiguousarray(idx, dtype=np.int64),
                           np.ascontiguousarray(v, dtype=np.float64), vbz, out)
    return out


def ur_moments(Wur, b, v, vb, idx, mu, gamma, *, geometry=None):
    r"""Output moments of a UR convolution (unfold-repeat, spec §5, Proposition 2 corrected).

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
    gamma : ndarray (L, L) or None
    geometry : (in_shape, k, stride, pad), optional
        Enables the gather-free stride-1 path of :func:`conv_signal_cov`.

    Returns
    -------
    mean : ndarray (C_out n_pos,), cov : ndarray (C_out n_pos, C_out n_pos); flattened (c_o, p).
    """
    mean = conv_mean(Wur, b, idx, mu)
    n_pos = idx.shape[0]
    nz = ur_noise(v, vb, idx, mu, gamma)
    if gamma is None:
        J = mean.shape[0]
        cov = np.zeros((J, J))
    else:
        cov = conv_signal_cov(Wur, idx, gamma, geometry=geometry)
    for c in range(Wur.shape[1]):
        cov[c * n_pos:(c + 1) * n_pos, c * n_pos:(c + 1) * n_pos] += nz[c]
    return mean, cov


def ul_noise(blocks, mu, gamma, n_cols):
    """Diagonal noise of a UL layer: ``Σ_n v[n, j] q_n + v^b_j`` over **all** L inputs (spec §6)."""
    q = _q(mu, gamma)
    noise = np.empty(n_cols)
    for blk in blocks:
        nz = q @ blk.v
        if blk.vb is not None:
            nz = nz + blk.vb
        noise[blk.cols] = nz
    return noise


def ul_moments(Wur, b, idx, noise, mu, gamma, *, geometry=None):
    r"""Output moments of a UL convolution (unrolled-linear Toeplitz crossbar, spec §6).

    FC (spec §4) with ``W = W_UL``: ``E Z = W_ULᵀμ + b ⊗ 1``,
    ``Cov Z = W_ULᵀ Γ W_UL + diag(noise)``. Every Toeplitz entry is a pair — structural zeros
    at ``g_min`` are noisy — so ``noise_j = Σ_{n=1}^{L} v_{nj} q_n + v^b_j`` sums over all inputs
    (D12; :func:`ul_noise`). Each column has its own devices: no shared noise between
    positions.
    """
    mean = conv_mean(Wur, b, idx, mu)
    if gamma is None:
        cov = np.diag(noise)
    else:
        cov = conv_signal_cov(Wur, idx, gamma, geometry=geometry)
        cov[np.diag_indices_from(cov)] += noise
    return mean, cov


# ====================================================================== pooling (spec §7)
def pool_moments(mu, gamma, in_shape, kappa):
    r"""Average pooling, kernel = stride = κ, no padding (spec §7, Proposition 3 corrected).

    ``E Z = Aμ`` and ``Cov Z = AΓAᵀ`` exactly, cross-channel entries included, with
    ``A_(c,i,j),(c,k,l) = κ⁻²`` for ``k ∈ [κi, κi+κ−1]``, ``l ∈ [κj, κj+κ−1]`` (κ terms per axis,
    corrects Eqs. (17)–(21), D13). Computed by block means (no A matrix); trailing rows/columns
    that do not fill a window are dropped, as in the forward pass.
    """
    C, H, W = in_shape
    k = int(kappa)
    E, F = H // k, W // k

    def rows(M):            # average the first axis (length C H W) over the windows
        m = M.shape[1]
        R = M.reshape(C, H, W, m)[:, :E * k, :F * k, :]
        return R.reshape(C, E, k, F, k, m).mean(axis=(2, 4)).reshape(C * E * F, m)

    mean = rows(mu[:, None])[:, 0]
    if gamma is None:
        return mean, None
    G1 = rows(gamma)                                    # A Γ      (n_out, L)
    G2 = rows(np.ascontiguousarray(G1.T))               # A (AΓ)ᵀ = A Γ Aᵀ
    return mean, symmetrize(G2)


# ====================================================================== the network pass
from .results import MomentsResult  # noqa: E402  (the result object lives with its schema)


def _check_input_cov(input_cov, B, L):
    """Validate ``input_cov`` ((L, L) or (B, L, L), :func:`refmem.network.check_input_cov`);
    returns a per-sample getter."""
    if input_cov is None:
        return lambda b: None
    from .network import check_input_cov
    C = check_input_cov(input_cov, B, L)
    C = C[0] if C.shape[0] == 1 and np.ndim(input_cov) == 2 else C

    def get(b):
        M = C if C.ndim == 2 else C[b]
        if not np.any(M):
            return None                       # a zero covariance is a deterministic input
        return symmetrize(np.array(M, dtype=np.float64, order="C"))
    return get


class _Prepared:
    """Static per-layer data shared by all samples (blocks of small layers are cached)."""

    def __init__(self, mapped, cache_bytes=None):
        self.mapped = mapped
        self.bypos = mapped.by_position()
        self.blk = {}
        self.ul_cache = {}
        self.cache_bytes = CHUNK_BYTES if cache_bytes is None else cache_bytes
        for pos, ml in self.bypos.items():
            if ml.scheme in ("FC", "UR"):
                self.blk[pos] = ml.block()

    def ul_blocks(self, pos):
        """Column blocks of a UL layer (cached when small, else rebuilt on each call)."""
        if pos in self.ul_cache:
            return self.ul_cache[pos]
        ml = self.bypos[pos]
        L, J = ml.n_rows, ml.n_cols
        per_col = 8 * L * 10                            # ~10 dense (L,) arrays per column
        step = int(max(1, self.cache_bytes // per_col))
        if per_col * J <= self.cache_bytes:
            blocks = [ml.block()]
            self.ul_cache[pos] = blocks
            return blocks
        return (ml.block(np.arange(c0, min(J, c0 + step))) for c0 in range(0, J, step))


def _conv_cov_staged(ml, st, add_noise):
    """Signal covariance of a conv layer from ``st.G``, releasing ``st.G`` after the first pass.

    Same result as :func:`conv_signal_cov`; the input covariance is dropped as soon as
    ``T = W_ULᵀΓ`` is formed, so at most two large matrices are alive (network pass only).
    """
    geo = _geometry(ml)
    if geo[2] == 1:
        in_shape, k, _, pad = geo
        K = np.ascontiguousarray(ml.W.T).reshape(ml.W.shape[1], in_shape[0], k, k)
        T = _conv_cols_s1(st.G, K, pad, in_shape)
        st.G = None                                 # the only reference: freed here
        cov = _conv_cols_s1(T, K, pad, in_shape, from_rows=True)
    else:
        T = _conv_rows(st.G, ml.W, ml.idx, transpose_out=True)
        st.G = None
        cov = _conv_rows(T, ml.W, ml.idx)
    del T
    symmetrize(cov)
    add_noise(cov)
    return cov


def _crossbar_step(prep, pos, st):
    """Power (input moments) then moments of one crossbar layer; updates ``st`` in place."""
    ml = prep.bypos[pos]
    r = ml.config.r
    mu = st.mu
    if ml.scheme == "FC":
        blk = prep.blk[pos]
        pw = fc_power(blk, mu, st.G, r)
        st.mu, st.G = dense_moments(blk.W, blk.b, blk.v, blk.vb, mu, st.G)
    elif ml.scheme == "UR":
        blk = prep.blk[pos]
        pw = ur_power(blk, ml.idx, mu, st.G, r)
        nz = ur_noise(blk.v, blk.vb, ml.idx, mu, st.G)   # shared-device term, from (μ, Γ_in)
        n_pos = ml.n_pos

        def add(cov):
            for c in range(nz.shape[0]):
                cov[c * n_pos:(c + 1) * n_pos, c * n_pos:(c + 1) * n_pos] += nz[c]
        new_mu = conv_mean(ml.W, ml.b, ml.idx, mu)
        if st.G is None:
            cov = np.zeros((new_mu.shape[0],) * 2)
            add(cov)
        else:
            cov = _conv_cov_staged(ml, st, add)
        st.mu, st.G = new_mu, cov
    else:
        noise = np.empty(ml.n_cols)
        q = _q(mu, st.G)

        def blocks_with_noise():
            for blk in prep.ul_blocks(pos):
                nz = q @ blk.v                               # Σ_n v_nj q_n over all L rows
                if blk.vb is not None:
                    nz = nz + blk.vb
                noise[blk.cols] = nz
                yield blk
        pw = ul_power(ml, mu, st.G, r, blocks_with_noise())
        new_mu = conv_mean(ml.W, ml.b, ml.idx, mu)
        if st.G is None:
            cov = np.diag(noise)
        else:
            def add(cov):
                cov[np.diag_indices_from(cov)] += noise
            cov = _conv_cov_staged(ml, st, add)
        st.mu, st.G = new_mu, cov
    pw.total = pw.mem + pw.tia_pos + pw.tia_neg
    return pw


def propagate(mapped, x, *, input_cov=None, cov=False, per_layer=False, progress=False):
    r"""Analytic output moments, MSE and power of ``mapped`` for a batch ``x`` (spec §15).

    Algorithm 1 as corrected in spec §15 (D16): for every sample, every layer's power and
    output moments are computed from its **input** moments ``(μ, Γ)``; Γ is symmetrised after
    every linear layer; the ReLU covariance rule is ``mapped.config.relu_cov`` (``exact``,
    spec §8.2, default; or ``taylor``, Eq. (28)). ``r`` enters power only (spec §3.3).

    Parameters
    ----------
    mapped : refmem.mapping.MappedNetwork
        From :func:`refmem.map_network` (batchnorm fused, dropout removed).
    x : array (B, *input_shape)
        Inputs (the mean input when ``input_cov`` is given).
    input_cov : array (L, L) or (B, L, L), optional
        Covariance of a random input around ``x`` (L = prod(input_shape)); must be finite,
        symmetric and PSD. None: deterministic inputs (lazy covariance).
    cov : bool
        Keep the full output covariance (``result.cov``, (B, J, J)).
    per_layer : bool
        Record the mean and variance after every layer (``result.groups()``).
    progress : bool
        Show a tqdm progress bar over the samples.

    Returns
    -------
    MomentsResult
    """
    net = mapped.network
    x = net.check_input(x)
    B = x.shape[0]
    L = int(np.prod(net.input_shape))
    get_cov = _check_input_cov(input_cov, B, L)
    fused = mapped.fused
    shapes = fused.shapes
    mode = mapped.config.relu_cov
    prep = _Prepared(mapped)
    n_xb = mapped.n_crossbar
    xb_index = {ml.position: ml.index for ml in mapped.layers}
    for pos, layer in enumerate(fused.layers):
        if not isinstance(layer, (Dense, Conv2d, AvgPool2d, ReLU, Flatten)):
            raise ConfigError(f"layer {pos:02d} ({layer.type}) is not supported by the analytic pass")

    J = int(np.prod(shapes[-1]))
    mean = np.empty((B, J))
    var = np.empty((B, J))
    covs = np.empty((B, J, J)) if cov else None
    p_mem = np.zeros((B, n_xb))
    p_tp = np.zeros((B, n_xb))
    p_tn = np.zeros((B, n_xb))
    rec = {pos: {"mean": np.empty((B, int(np.prod(shapes[pos + 1])))),
                 "var": np.empty((B, int(np.prod(shapes[pos + 1]))))}
           for pos in range(len(fused.layers))} if per_layer else None

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=B, desc="moments", unit="input")
    for b in range(B):
        st = SimpleNamespace(mu=x[b].reshape(-1).copy(), G=get_cov(b))
        for pos, layer in enumerate(fused.layers):
            if pos in prep.bypos:
                pw = _crossbar_step(prep, pos, st)
                k = xb_index[pos]
                p_mem[b, k], p_tp[b, k], p_tn[b, k] = pw.mem, pw.tia_pos, pw.tia_neg
            elif isinstance(layer, ReLU):
                G = st.G
                st.G = None
                st.mu, st.G = relu_moments(st.mu, G, mode, out=G)
                del G
            elif isinstance(layer, AvgPool2d):
                G = st.G
                st.G = None
                st.mu, st.G = pool_moments(st.mu, G, shapes[pos], layer.kernel_size)
                del G
            # Flatten: identity on the flat NCHW vector
            if rec is not None:
                rec[pos]["mean"][b] = st.mu
                rec[pos]["var"][b] = 0.0 if st.G is None else np.diagonal(st.G)
        mean[b] = st.mu
        if st.G is None:
            var[b] = 0.0
            if cov:
                covs[b] = 0.0
        else:
            var[b] = np.diagonal(st.G)
            if cov:
                covs[b] = st.G
        st.G = None
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    ref = mapped.reference(x)
    bias = mean - ref
    mse = var + bias * bias                                     # spec §9, Eq. (7)
    p_layers = p_mem + p_tp + p_tn
    return MomentsResult(mean=mean, var=var, mse=mse, reference=ref, bias=bias, cov=covs,
                         power=p_layers.sum(axis=1), power_layers=p_layers, power_mem=p_mem,
                         power_tia_pos=p_tp, power_tia_neg=p_tn, per_layer=rec)
