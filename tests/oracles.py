"""Literal loop restatements of the spec's equations (theory §18 T1 style).

Each function restates one corrected equation as directly as possible — explicit index loops,
no vectorisation, no refmem imports — and cites its section. The vectorised code in
``refmem.moments`` / ``refmem.power`` / ``refmem.relu`` must agree with these to ~1e-12.
Sizes in the tests are kept tiny: the UR oracle is a 6-index loop.

Conventions (theory §1): ``W[i, j]`` connects input i to output j; conv kernels are
``K[c_o, c, u, v]`` with tap index ``a = c k² + u k + v``; NCHW flattening; outputs of a conv
are flattened as ``(c_o, o_h, o_w)``.
"""

import math

import numpy as np


# ---------------------------------------------------------------------- mapping (theory §3.2)
def conductances(W, lam, g_min):
    """g± = λ_j max(±W_ij, 0) + g_min (Eqs. (5)–(6), theory §3.2), element by element."""
    L, J = W.shape
    gp = np.empty((L, J))
    gm = np.empty((L, J))
    for i in range(L):
        for j in range(J):
            w = W[i, j]
            gp[i, j] = lam[j] * (w if w > 0 else 0.0) + g_min
            gm[i, j] = lam[j] * (-w if w < 0 else 0.0) + g_min
    return gp, gm


def bias_conductances(b, lam, g_min):
    gbp = np.array([lam[j] * max(b[j], 0.0) + g_min for j in range(len(b))])
    gbm = np.array([lam[j] * max(-b[j], 0.0) + g_min for j in range(len(b))])
    return gbp, gbm


def pair_variance(W, lam, g_min, sigma_fn, alpha=0.0, dither_var=0.0, mask=None):
    """Weight-unit pair variance v_ij = (σ²(g⁺) + σ²(g⁻))/λ_j² + α² W_ij² + Δ²/12 (theory §3.2, §13, §14).

    ``mask`` (bool, like W): entries that are programmed weights (dither applies only there).
    """
    gp, gm = conductances(W, lam, g_min)
    L, J = W.shape
    v = np.empty((L, J))
    for i in range(L):
        for j in range(J):
            s_p = sigma_fn(gp[i, j])
            s_m = sigma_fn(gm[i, j])
            v[i, j] = (s_p * s_p + s_m * s_m) / lam[j] ** 2 + alpha ** 2 * W[i, j] ** 2
            if mask is None or mask[i, j]:
                v[i, j] += dither_var
    return v


def bias_variance(b, lam, g_min, sigma_fn, alpha=0.0, dither_var=0.0):
    gbp, gbm = bias_conductances(b, lam, g_min)
    return np.array([(sigma_fn(gbp[j]) ** 2 + sigma_fn(gbm[j]) ** 2) / lam[j] ** 2
                     + alpha ** 2 * b[j] ** 2 + dither_var for j in range(len(b))])


# ---------------------------------------------------------------------- FC (theory §4)
def fc_moments(W, b, v, vb, mu, Gam):
    """Proposition 1 corrected (theory §4), term by term.

    E Z_j = Σ_i W_ij μ_i + b_j;
    Cov[Z_j, Z_j'] = Σ_i Σ_i' W_ij W_i'j' Γ_ii' + δ_jj' (v^b_j + Σ_i v_ij (μ_i² + Γ_ii)).
    ``b``/``vb`` may be None; ``Gam`` None means Γ = 0.
    """
    L, J = W.shape
    G = np.zeros((L, L)) if Gam is None else Gam
    mean = np.zeros(J)
    cov = np.zeros((J, J))
    for j in range(J):
        mean[j] = sum(W[i, j] * mu[i] for i in range(L)) + (0.0 if b is None else b[j])
    for j in range(J):
        for j2 in range(J):
            s = 0.0
            for i in range(L):
                for i2 in range(L):
                    s += W[i, j] * W[i2, j2] * G[i, i2]
            if j == j2:
                s += 0.0 if vb is None else vb[j]
                for i in range(L):
                    s += v[i, j] * (mu[i] ** 2 + G[i, i])
            cov[j, j2] = s
    return mean, cov


# ---------------------------------------------------------------------- conv index map (theory §5)
def iota(in_shape, k, stride, pad, oh, ow, c, u, v):
    """ι(p, a) = (c, st·o_h + u − pad, st·o_w + v − pad) as a flat NCHW index, or None (padding)."""
    C, H, W = in_shape
    h = stride * oh + u - pad
    w = stride * ow + v - pad
    if 0 <= h < H and 0 <= w < W:
        return c * H * W + h * W + w
    return None


def out_side(n, k, stride, pad):
    return (n + 2 * pad - k) // stride + 1


def ur_moments(K, b, v, vb, stride, pad, in_shape, mu, Gam):
    """Proposition 2 corrected (theory §5) as the literal 6-index sums (D8, D9).

    ``v[c_o, c, u, v']`` and ``vb[c_o]`` are weight-unit pair variances of the shared crossbar.
    Cov[Z_(c_o,p), Z_(c_o',p')] = Σ_(c,u,v) Σ_(c',u',v') K[c_o,c,u,v] K[c_o',c',u',v'] Γ[ι(p,a), ι(p',a')]
        + δ_(c_o c_o') (vb[c_o] + Σ_(c,u,v) v[c_o,c,u,v] (Γ + μμᵀ)[ι(p,a), ι(p',a)]).
    """
    Co, Ci, k, _ = K.shape
    C, H, W = in_shape
    E, F = out_side(H, k, stride, pad), out_side(W, k, stride, pad)
    L = C * H * W
    G = np.zeros((L, L)) if Gam is None else Gam
    outs = [(co, oh, ow) for co in range(Co) for oh in range(E) for ow in range(F)]
    J = len(outs)
    mean = np.zeros(J)
    cov = np.zeros((J, J))
    for n, (co, oh, ow) in enumerate(outs):
        s = 0.0 if b is None else b[co]
        for c in range(Ci):
            for u in range(k):
                for vv in range(k):
                    i = iota(in_shape, k, stride, pad, oh, ow, c, u, vv)
                    if i is not None:
                        s += K[co, c, u, vv] * mu[i]
        mean[n] = s
    for n, (co, oh, ow) in enumerate(outs):
        for n2, (co2, oh2, ow2) in enumerate(outs):
            s = 0.0
            for c in range(Ci):
                for u in range(k):
                    for vv in range(k):
                        i = iota(in_shape, k, stride, pad, oh, ow, c, u, vv)
                        if i is None:
                            continue
                        for c2 in range(Ci):
                            for u2 in range(k):
                                for v2 in range(k):
                                    i2 = iota(in_shape, k, stride, pad, oh2, ow2, c2, u2, v2)
                                    if i2 is not None:
                                        s += K[co, c, u, vv] * K[co2, c2, u2, v2] * G[i, i2]
            if co == co2:
                s += 0.0 if vb is None else vb[co]
                for c in range(Ci):                      # the SAME tap at both positions
                    for u in range(k):
                        for vv in range(k):
                            i = iota(in_shape, k, stride, pad, oh, ow, c, u, vv)
                            i2 = iota(in_shape, k, stride, pad, oh2, ow2, c, u, vv)
                            if i is not None and i2 is not None:
                                s += v[co, c, u, vv] * (G[i, i2] + mu[i] * mu[i2])
            cov[n, n2] = s
    return mean, cov


def toeplitz(K, stride, pad, in_shape):
    """W_UL (theory §6): (W_UL)[n, (c_o, p)] = Σ_a w_(c_o)[a] 1[ι(p, a) = n], by loops; also the tap mask."""
    Co, Ci, k, _ = K.shape
    C, H, W = in_shape
    E, F = out_side(H, k, stride, pad), out_side(W, k, stride, pad)
    L = C * H * W
    T = np.zeros((L, Co * E * F))
    mask = np.zeros((L, Co * E * F), dtype=bool)
    for co in range(Co):
        for oh in range(E):
            for ow in range(F):
                col = co * E * F + oh * F + ow
                for c in range(Ci):
                    for u in range(k):
                        for vv in range(k):
                            i = iota(in_shape, k, stride, pad, oh, ow, c, u, vv)
                            if i is not None:
                                T[i, col] += K[co, c, u, vv]
                                mask[i, col] = True
    return T, mask


# ---------------------------------------------------------------------- pooling (theory §7)
def avgpool_moments(mu, Gam, in_shape, kappa):
    """Proposition 3 corrected (theory §7, D13): A[(c,i,j),(c,k,l)] = κ⁻², k ∈ [κi, κi+κ−1]; AΓAᵀ by loops."""
    C, H, W = in_shape
    E, F = H // kappa, W // kappa
    L = C * H * W
    n = C * E * F
    A = np.zeros((n, L))
    for c in range(C):
        for i in range(E):
            for j in range(F):
                for kk in range(kappa * i, kappa * i + kappa):
                    for ll in range(kappa * j, kappa * j + kappa):
                        A[c * E * F + i * F + j, c * H * W + kk * W + ll] = 1.0 / kappa ** 2
    mean = np.zeros(n)
    cov = np.zeros((n, n))
    for r in range(n):
        mean[r] = sum(A[r, t] * mu[t] for t in range(L))
    if Gam is not None:
        for r in range(n):
            for r2 in range(n):
                cov[r, r2] = sum(A[r, t] * A[r2, t2] * Gam[t, t2]
                                 for t in range(L) for t2 in range(L))
    return mean, cov


# ---------------------------------------------------------------------- ReLU (theory §8)
def _phi(a):
    return math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)


def _Phi(a):
    return 0.5 * (1.0 + math.erf(a / math.sqrt(2.0)))


def relu_mean_var_naive(mu, var):
    """Proposition 4 (theory §8.1) in the paper's own form E Z² − (E Z)² (moderate a only)."""
    if var == 0:
        return max(mu, 0.0), 0.0
    s = math.sqrt(var)
    a = mu / s
    m = s * _phi(a) + mu * _Phi(a)
    m2 = (mu * mu + var) * _Phi(a) + mu * s * _phi(a)
    return m, m2 - m * m


def relu_taylor_moments(mu, Gam):
    """Eq. (28) (theory §8.3): off-diagonal 1[μ_i > 0] 1[μ_j > 0] Γ_ij; Prop. 4 diagonal."""
    d = len(mu)
    mean = np.zeros(d)
    cov = np.zeros((d, d))
    for i in range(d):
        mean[i], cov[i, i] = relu_mean_var_naive(mu[i], Gam[i, i])
        for j in range(d):
            if j != i:
                cov[i, j] = Gam[i, j] if (mu[i] > 0 and mu[j] > 0) else 0.0
    return mean, cov


# ---------------------------------------------------------------------- power (theory §11)
def fc_power(gp, gm, gbp, gbm, vp, vm, vbp, vbm, mu, Gam, r):
    """Theory §11.1 / Corollary 1 corrected: Σ_j [Σ_i (g⁺+g⁻)_ij q_i + (g^b⁺+g^b⁻)_j + P_TIA⁺_j + P_TIA⁻_j].

    P_TIA±_j = r ((Σ_i g±_ij μ_i + g^b±_j)² + Σ_i Σ_i' g±_ij g±_i'j Γ_ii' + Σ_i σ²(g±_ij) q_i + σ²(g^b±_j)).
    ``vp, vm`` are per-device variances σ²(g±). Returns (mem, tia_pos, tia_neg).
    """
    L, J = gp.shape
    G = np.zeros((L, L)) if Gam is None else Gam
    q = [mu[i] ** 2 + G[i, i] for i in range(L)]
    mem = 0.0
    tia = [0.0, 0.0]
    for j in range(J):
        for i in range(L):
            mem += (gp[i, j] + gm[i, j]) * q[i]
        if gbp is not None:
            mem += (gbp[j] + gbm[j]) * 1.0 ** 2
        for s, (g, vd, gb, vbd) in enumerate(((gp, vp, gbp, vbp), (gm, vm, gbm, vbm))):
            EI = sum(g[i, j] * mu[i] for i in range(L)) + (0.0 if gb is None else gb[j])
            VI = 0.0
            for i in range(L):
                for i2 in range(L):
                    VI += g[i, j] * g[i2, j] * G[i, i2]
                VI += vd[i, j] * q[i]
            VI += 0.0 if gb is None else vbd[j]
            tia[s] += r * (EI ** 2 + VI)
    return mem, tia[0], tia[1]


def ur_power(gp, gm, gbp, gbm, vp, vm, vbp, vbm, stride, pad, in_shape, k, mu, Gam, r):
    """Theory §11.2 / Corollary 2 corrected, by loops over (c_o, p, a).

    ``gp[c_o, c, u, v]`` etc. are the shared crossbar's conductances and per-device variances.
    Memristors: Σ_(c_o,a) (g⁺+g⁻) Σ_p q_ι(p,a) + n_pos Σ_(c_o) (g^b⁺+g^b⁻) (tap-shifted input, D21/D22);
    TIA±: r Σ_(c_o,p) [(E I±)² + V I±] with per-device variances (D23).
    """
    Co, Ci = gp.shape[:2]
    C, H, W = in_shape
    E, F = out_side(H, k, stride, pad), out_side(W, k, stride, pad)
    L = C * H * W
    G = np.zeros((L, L)) if Gam is None else Gam
    q = [mu[i] ** 2 + G[i, i] for i in range(L)]
    taps = [(c, u, v) for c in range(Ci) for u in range(k) for v in range(k)]
    mem = 0.0
    tia = [0.0, 0.0]
    for co in range(Co):
        for oh in range(E):
            for ow in range(F):
                rows = [iota(in_shape, k, stride, pad, oh, ow, *t) for t in taps]
                for t, i in zip(taps, rows):
                    if i is not None:
                        mem += (gp[(co,) + t] + gm[(co,) + t]) * q[i]
                if gbp is not None:
                    mem += gbp[co] + gbm[co]
                for s, (g, vd, gb, vbd) in enumerate(((gp, vp, gbp, vbp), (gm, vm, gbm, vbm))):
                    EI = (0.0 if gb is None else gb[co])
                    VI = (0.0 if gb is None else vbd[co])
                    for t, i in zip(taps, rows):
                        if i is None:
                            continue
                        EI += g[(co,) + t] * mu[i]
                        VI += vd[(co,) + t] * q[i]
                        for t2, i2 in zip(taps, rows):
                            if i2 is not None:
                                VI += g[(co,) + t] * g[(co,) + t2] * G[i, i2]
                    tia[s] += r * (EI ** 2 + VI)
    return mem, tia[0], tia[1]


# ======================================================================================
# LEGACY ANALYTIC PASS (round 1), frozen as the oracle of the fast path (issue 15, point 5)
# ======================================================================================
# A verbatim copy of refmem/moments.py and refmem/power.py as they stood at commit c8078fb
# (before the fast analytic pass), every top-level name prefixed ``legacy_`` (the power
# functions ``legacy_power_``); the entry point is :func:`legacy_propagate`. It imports only
# ``refmem.relu.relu_moments`` (the ReLU kernels have their own mpmath contract in
# test_relu.py), the layer classes and the errors. The fast ``refmem.propagate.propagate``
# must agree with it to rtol 1e-10 (tests/test_propagate.py). Never edit it to follow the code.
from dataclasses import dataclass, field  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numba  # noqa: E402

from refmem.errors import ConfigError, DataError  # noqa: E402
from refmem.layers import AvgPool2d, Conv2d, Dense, Flatten, ReLU  # noqa: E402
from refmem.relu import relu_moments  # noqa: E402

def legacy_power_q(mu, gamma):
    """q_i = E X_i² = μ_i² + Γ_ii."""
    return mu * mu if gamma is None else mu * mu + np.diagonal(gamma)


def legacy_power_fc_power(blk, mu, gamma, r):
    r"""Expected power of an FC crossbar (theory §11.1, Corollary 1 corrected, D17–D20).

    Parameters
    ----------
    blk : namespace from :meth:`refmem.mapping.MappedLayer.block`
        ``gp, gm`` (L, J) conductances; ``gbp, gbm`` (J,) bias row or None; ``vp, vm`` (L, J)
        and ``vbp, vbm`` (J,) per-device variances σ²(g±).
    mu : ndarray (L,)
    gamma : ndarray (L, L) or None
    r : float
        Physical TIA gain.

    Returns
    -------
    namespace with scalars ``mem``, ``tia_pos``, ``tia_neg``.
    """
    q = legacy_power_q(mu, gamma)
    mem = float(q @ (blk.gp + blk.gm).sum(axis=1))                   # Prop. 5: Σ (g⁺+g⁻) q
    tia = []
    for g, vdev, gb, vbdev in ((blk.gp, blk.vp, blk.gbp, blk.vbp),
                               (blk.gm, blk.vm, blk.gbm, blk.vbm)):
        EI = mu @ g                                                 # E I = gᵀ μ + g^b x_b
        VI = q @ vdev                                               # Σ σ²(g_i) q_i
        if gamma is not None:
            VI = VI + np.einsum("ij,ij->j", g, gamma @ g)           # gᵀ Γ g
        if gb is not None:
            EI = EI + gb
            VI = VI + vbdev
        tia.append(r * float(np.sum(EI * EI + VI)))                 # Prop. 6: r (E I² )
    if blk.gbp is not None:
        mem += float(np.sum(blk.gbp + blk.gbm))                     # eq. (30) with x_b² = 1
    return SimpleNamespace(mem=mem, tia_pos=tia[0], tia_neg=tia[1])


def legacy_power_gather(vec, idx):
    """``vec[ι(p, a)]`` with 0 in the padding: (n_pos, taps)."""
    ext = np.concatenate([vec, [0.0]])
    return ext[np.where(idx < 0, vec.shape[0], idx)]


def legacy_power_patch_quadforms(gamma, idx, Wm, chunk_bytes=64 * 2**20):
    r"""``Σ_{a,a'} Wm[a,c] Wm[a',c] Γ[ι(p,a), ι(p,a')]`` for every position p and column c.

    The per-position quadratic form of theory §11.2 (``Γ_∅ = 0`` in the padding), computed from
    gathered taps×taps blocks of Γ, streamed over positions. Returns (n_pos, C).
    """
    n_pos, taps = idx.shape
    safe = np.where(idx < 0, 0, idx)
    ok = (idx >= 0).astype(np.float64)
    out = np.empty((n_pos, Wm.shape[1]))
    step = max(1, int(chunk_bytes // (8 * taps * taps)))
    for p0 in range(0, n_pos, step):
        s = safe[p0:p0 + step]
        m = ok[p0:p0 + step]
        Gp = gamma[s[:, :, None], s[:, None, :]] * (m[:, :, None] * m[:, None, :])
        out[p0:p0 + step] = np.einsum("pab,ac,bc->pc", Gp, Wm, Wm, optimize=True)
    return out


def legacy_power_ur_power(blk, idx, mu, gamma, r):
    r"""Expected power of a UR convolution crossbar (theory §11.2, Corollary 2 corrected).

    ``blk`` holds the shared crossbar: ``gp, gm, vp, vm`` (C_in k², C_out) and the bias row;
    ``idx`` (n_pos, C_in k²) is ι(p, a) (−1 in the padding).

    - memristors: ``Σ_{c_o,a} (g⁺+g⁻)_{a,c_o} Σ_p q_ι(p,a) + n_pos Σ_{c_o} (g^b⁺+g^b⁻)``
      (Prop. 7 with the tap-shifted input, D21; eq. (37) with ``2 g_min``, D22);
    - TIA: ``r Σ_p [(E I±_{c_o,p})² + V I±_{c_o,p}]`` (Prop. 8 via currents, D23), where
      ``V I = gᵀ Γ_p g + Σ_a σ²(g_a) q_ι(p,a) + σ²(g^b)``; shared devices do not matter here.
    """
    n_pos = idx.shape[0]
    qp = legacy_power_gather(legacy_power_q(mu, gamma), idx)                    # (n_pos, taps)
    mp_ = legacy_power_gather(mu, idx)
    qsum = qp.sum(axis=0)                               # Σ_p q_ι(p,a)
    mem = float(qsum @ (blk.gp + blk.gm).sum(axis=1))
    tia = []
    for g, vdev, gb, vbdev in ((blk.gp, blk.vp, blk.gbp, blk.vbp),
                               (blk.gm, blk.vm, blk.gbm, blk.vbm)):
        EI = mp_ @ g                                    # (n_pos, C_out)
        VI = qp @ vdev
        if gamma is not None:
            VI = VI + legacy_power_patch_quadforms(gamma, idx, g)
        if gb is not None:
            EI = EI + gb
            VI = VI + vbdev
        tia.append(r * float(np.sum(EI * EI + VI)))
    if blk.gbp is not None:
        mem += n_pos * float(np.sum(blk.gbp + blk.gbm))  # eq. (37): n_pos (λ|b| + 2 g_min) x_b²
    return SimpleNamespace(mem=mem, tia_pos=tia[0], tia_neg=tia[1])


def legacy_power_ul_power(ml, mu, gamma, r, blocks):
    r"""Expected power of a UL (Toeplitz) convolution crossbar (theory §11.1 with W = W_UL, §6).

    Every Toeplitz entry is a pair, structural zeros at ``g_min`` included. The terms linear in
    the inputs (memristor power, mean currents, device-variance term) are summed over explicit
    column blocks ``blocks`` (an iterable of :meth:`MappedLayer.block` namespaces); the
    quadratic form ``g±ᵀ Γ g±`` uses the structure ``g± = λ w± + g_min 1`` (w± the Toeplitz
    column of max(±w, 0)):
    ``λ² w±ᵀΓw± + 2 λ g_min w±ᵀ(Γ1) + g_min² 1ᵀΓ1``, with ``w±ᵀΓw±`` a per-position patch
    quadratic form (:func:`legacy_power_patch_quadforms`).
    """
    q = legacy_power_q(mu, gamma)
    gmin = ml.config.g_min
    mem = 0.0
    EIp = np.empty(ml.n_cols)
    EIm = np.empty(ml.n_cols)
    VIp = np.empty(ml.n_cols)
    VIm = np.empty(ml.n_cols)
    for blk in blocks:
        c = blk.cols
        mem += float(q @ (blk.gp + blk.gm).sum(axis=1))
        EIp[c] = mu @ blk.gp
        EIm[c] = mu @ blk.gm
        VIp[c] = q @ blk.vp
        VIm[c] = q @ blk.vm
        if blk.gbp is not None:
            mem += float(np.sum(blk.gbp + blk.gbm))
            EIp[c] += blk.gbp
            EIm[c] += blk.gbm
            VIp[c] += blk.vbp
            VIm[c] += blk.vbm
    if gamma is not None:
        lam = ml.lam
        rs = gamma.sum(axis=1)
        tot = float(rs.sum())
        rsp = legacy_power_gather(rs, ml.idx)                        # (n_pos, taps)
        for VI, wpm in ((VIp, np.maximum(ml.W, 0.0)), (VIm, np.maximum(-ml.W, 0.0))):
            qf = legacy_power_patch_quadforms(gamma, ml.idx, wpm).T.ravel()      # column (c_o, p)
            cross = (rsp @ wpm).T.ravel()
            VI += lam * lam * qf + 2.0 * gmin * lam * cross + gmin * gmin * tot
    tia_pos = r * float(np.sum(EIp * EIp + VIp))
    tia_neg = r * float(np.sum(EIm * EIm + VIm))
    return SimpleNamespace(mem=mem, tia_pos=tia_pos, tia_neg=tia_neg)


def legacy_power_layer_power(ml, mu, gamma, *, blocks=None):
    """Expected power of one crossbar layer (theory §11) from its input moments.

    ``ml`` is a :class:`refmem.mapping.MappedLayer`; the physical ``r`` of its configuration
    is used. ``blocks`` (UL only): iterable of column blocks; default: the whole layer at once.
    Returns a namespace ``mem``, ``tia_pos``, ``tia_neg``, ``total``.
    """
    r = ml.config.r
    if ml.scheme == "FC":
        out = legacy_power_fc_power(ml.block(), mu, gamma, r)
    elif ml.scheme == "UR":
        out = legacy_power_ur_power(ml.block(), ml.idx, mu, gamma, r)
    else:
        out = legacy_power_ul_power(ml, mu, gamma, r, [ml.block()] if blocks is None else blocks)
    out.total = out.mem + out.tia_pos + out.tia_neg
    return out


legacy_CHUNK_BYTES = 128 * 2**20
"""Temporary memory per streamed chunk (im2col gathers, UL column blocks)."""


# ====================================================================== small helpers
def legacy_symmetrize(G, block=2048):
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


def legacy_q(mu, gamma):
    """Raw second moments ``q_i = μ_i² + Γ_ii`` (theory §1)."""
    return mu * mu if gamma is None else mu * mu + np.diagonal(gamma)


# ====================================================================== FC (theory §4)
def legacy_dense_moments(W, b, v, vb, mu, gamma):
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
    noise = legacy_q(mu, gamma) @ v                                   # Σ_i v_ij q_i
    if vb is not None:
        noise = noise + vb                                      # bias row, x_b = 1
    if gamma is None:
        cov = np.diag(noise)
    else:
        cov = W.T @ (gamma @ W)
        legacy_symmetrize(cov)
        cov[np.diag_indices_from(cov)] += noise
    return mean, cov


# ====================================================================== conv (theory §5, §6)
def legacy_safe_index(idx, L):
    return np.where(idx < 0, L, idx)


def legacy_conv_mean(Wur, b, idx, mu):
    r"""Mean of a convolution output (theory §5/§6): ``w_{c_o}ᵀ P_p μ + b_{c_o}``, flattened (c_o, p).

    ``Wur`` (C_in k², C_out) is the UR matrix; ``idx`` (n_pos, C_in k²) the index map ι(p, a)
    (−1 in the zero padding). Identical for UR and UL (``W_ULᵀμ + b ⊗ 1``).
    """
    ext = np.concatenate([mu, [0.0]])
    y = ext[legacy_safe_index(idx, mu.shape[0])] @ Wur                # (n_pos, C_out)
    if b is not None:
        y = y + b
    return np.ascontiguousarray(y.T).ravel()


def legacy_conv_rows(M, Wur, idx, *, transpose_out=False, chunk_bytes=legacy_CHUNK_BYTES):
    """Convolve every row of ``M`` (m, L): ``M W_UL`` (m, J), or its transpose (J, m)."""
    m_rows, L = M.shape
    n_pos, taps = idx.shape
    C = Wur.shape[1]
    J = C * n_pos
    safe = legacy_safe_index(idx, L)
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


legacy_GEMM_SIZE = 400_000
"""Largest multiply-add count of one small GEMM in :func:`legacy_conv_cols_s1` (kept below the size
where OpenBLAS goes multi-threaded, which is slow when other processes load the cores)."""


def legacy_conv_cols_s1(src, K, pad, in_shape, *, from_rows=False):
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
    step = int(max(1, min(m_tot, legacy_GEMM_SIZE // (Co * Ci * F))))
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


def legacy_conv_signal_cov(Wur, idx, gamma, *, geometry=None, chunk_bytes=legacy_CHUNK_BYTES):
    r"""Signal term of a convolution's output covariance: ``W_ULᵀ Γ W_UL`` (theory §5, §6).

    ``Σ_{a,a'} w_{c_o}[a] w_{c_o'}[a'] Γ_ι(p,a),ι(p',a')`` — the "double convolution" of Γ,
    computed as two streamed convolution passes (``T = W_ULᵀΓ``, then ``W_ULᵀTᵀ``, using Γ = Γᵀ);
    the Toeplitz matrix is never formed. With ``geometry = (in_shape, k, stride, pad)`` and
    stride 1, each pass is a batched GEMM per kernel offset on a padded buffer; otherwise an
    im2col gather with ``idx``. Returns the (J, J) matrix (J = C_out n_pos), symmetrised.
    """
    if geometry is not None and geometry[2] == 1:
        in_shape, k, _, pad = geometry
        K = np.ascontiguousarray(Wur.T).reshape(Wur.shape[1], in_shape[0], k, k)
        T = legacy_conv_cols_s1(gamma, K, pad, in_shape)                      # W_ULᵀ Γ   (J, L)
        cov = legacy_conv_cols_s1(T, K, pad, in_shape, from_rows=True)        # W_ULᵀ Tᵀ  (J, J)
    else:
        T = legacy_conv_rows(gamma, Wur, idx, transpose_out=True, chunk_bytes=chunk_bytes)
        cov = legacy_conv_rows(T, Wur, idx, chunk_bytes=chunk_bytes)
    del T
    return legacy_symmetrize(cov)


def legacy_geometry(ml):
    """(in_shape, k, stride, pad) of a conv MappedLayer."""
    return (tuple(ml.in_shape), ml.conv.k, ml.conv.stride, ml.conv.padding)


@numba.njit(cache=False)
def legacy_ur_shared_noise_kernel(mu, G, has_g, idx, v, vb, out):
    r"""UR shared-device noise term (theory §5, corrected Eqs. (14)–(16), D9).

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


def legacy_ur_noise(v, vb, idx, mu, gamma):
    """Per-channel shared noise blocks (C_out, n_pos, n_pos) of a UR layer (theory §5)."""
    n_pos = idx.shape[0]
    C = v.shape[1]
    out = np.empty((C, n_pos, n_pos))
    vbz = np.zeros(C) if vb is None else np.ascontiguousarray(vb, dtype=np.float64)
    G = np.zeros((1, 1)) if gamma is None else gamma
    legacy_ur_shared_noise_kernel(np.ascontiguousarray(mu), G, gamma is not None,
                           np.ascontiguousarray(idx, dtype=np.int64),
                           np.ascontiguousarray(v, dtype=np.float64), vbz, out)
    return out


def legacy_ur_moments(Wur, b, v, vb, idx, mu, gamma, *, geometry=None):
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
    gamma : ndarray (L, L) or None
    geometry : (in_shape, k, stride, pad), optional
        Enables the gather-free stride-1 path of :func:`legacy_conv_signal_cov`.

    Returns
    -------
    mean : ndarray (C_out n_pos,), cov : ndarray (C_out n_pos, C_out n_pos); flattened (c_o, p).
    """
    mean = legacy_conv_mean(Wur, b, idx, mu)
    n_pos = idx.shape[0]
    nz = legacy_ur_noise(v, vb, idx, mu, gamma)
    if gamma is None:
        J = mean.shape[0]
        cov = np.zeros((J, J))
    else:
        cov = legacy_conv_signal_cov(Wur, idx, gamma, geometry=geometry)
    for c in range(Wur.shape[1]):
        cov[c * n_pos:(c + 1) * n_pos, c * n_pos:(c + 1) * n_pos] += nz[c]
    return mean, cov


def legacy_ul_noise(blocks, mu, gamma, n_cols):
    """Diagonal noise of a UL layer: ``Σ_n v[n, j] q_n + v^b_j`` over **all** L inputs (theory §6)."""
    q = legacy_q(mu, gamma)
    noise = np.empty(n_cols)
    for blk in blocks:
        nz = q @ blk.v
        if blk.vb is not None:
            nz = nz + blk.vb
        noise[blk.cols] = nz
    return noise


def legacy_ul_moments(Wur, b, idx, noise, mu, gamma, *, geometry=None):
    r"""Output moments of a UL convolution (unrolled-linear Toeplitz crossbar, theory §6).

    FC (theory §4) with ``W = W_UL``: ``E Z = W_ULᵀμ + b ⊗ 1``,
    ``Cov Z = W_ULᵀ Γ W_UL + diag(noise)``. Every Toeplitz entry is a pair — structural zeros
    at ``g_min`` are noisy — so ``noise_j = Σ_{n=1}^{L} v_{nj} q_n + v^b_j`` sums over all inputs
    (D12; :func:`legacy_ul_noise`). Each column has its own devices: no shared noise between
    positions.
    """
    mean = legacy_conv_mean(Wur, b, idx, mu)
    if gamma is None:
        cov = np.diag(noise)
    else:
        cov = legacy_conv_signal_cov(Wur, idx, gamma, geometry=geometry)
        cov[np.diag_indices_from(cov)] += noise
    return mean, cov


# ====================================================================== pooling (theory §7)
def legacy_pool_moments(mu, gamma, in_shape, kappa):
    r"""Average pooling, kernel = stride = κ, no padding (theory §7, Proposition 3 corrected).

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
    return mean, legacy_symmetrize(G2)


# ====================================================================== the network pass
@dataclass
class legacy_MomentsResult:
    """Analytic moments, MSE and power for a batch of ``B`` inputs and ``J`` outputs.

    Attributes
    ----------
    mean, var, mse, reference, bias : ndarray (B, J)
        Output mean and variance, per-output MSE ``var + (mean − reference)²`` (theory §9),
        the reference output (unquantized noiseless network) and ``bias = mean − reference``.
    cov : ndarray (B, J, J) or None
        Full output covariance (only when requested).
    power : ndarray (B,)
        Expected total power per inference (theory §11).
    power_layers, power_mem, power_tia_pos, power_tia_neg : ndarray (B, n_crossbar)
        Per crossbar layer: total, memristors (bias rows included), TIA of the positive and
        negative arrays.
    mse_mean, mse_max : ndarray (B,)
        MSE averaged / maximised over outputs.
    per_layer : dict or None
        ``{position: {"mean": (B, n), "var": (B, n)}}`` after every layer of the fused
        network (when requested).
    """

    mean: np.ndarray
    var: np.ndarray
    mse: np.ndarray
    reference: np.ndarray
    bias: np.ndarray
    cov: np.ndarray | None
    power: np.ndarray
    power_layers: np.ndarray
    power_mem: np.ndarray
    power_tia_pos: np.ndarray
    power_tia_neg: np.ndarray
    mse_mean: np.ndarray
    mse_max: np.ndarray
    per_layer: dict | None = field(default=None, repr=False)

    def datasets(self) -> dict:
        """Name → array, as written by ``refmem moments`` (docs/result_format.md)."""
        d = {k: getattr(self, k) for k in (
            "mean", "var", "mse", "reference", "bias", "power", "power_layers", "power_mem",
            "power_tia_pos", "power_tia_neg", "mse_mean", "mse_max")}
        if self.cov is not None:
            d["cov"] = self.cov
        return d

    def groups(self) -> dict:
        """``"layers/NN"`` → ``{"mean": (B, n), "var": (B, n)}`` (empty without ``per_layer``)."""
        if not self.per_layer:
            return {}
        return {f"layers/{pos:02d}": dict(v) for pos, v in sorted(self.per_layer.items())}


def legacy_check_input_cov(input_cov, B, L):
    """Validate ``input_cov`` ((L, L) or (B, L, L)); returns a per-sample getter."""
    if input_cov is None:
        return lambda b: None
    C = np.asarray(input_cov)
    if C.dtype.kind not in "biuf":
        raise DataError(f"input covariance must be numeric, got dtype {C.dtype}")
    C = C.astype(np.float64, copy=False)
    if C.shape not in ((L, L), (B, L, L)):
        raise DataError(f"input covariance has shape {C.shape}, expected ({L}, {L}) or "
                        f"({B}, {L}, {L})")
    if not np.all(np.isfinite(C)):
        raise DataError("input covariance contains NaN or infinite values")
    mats = [C] if C.ndim == 2 else list(C)
    for M in mats:
        scale = float(np.max(np.abs(M))) if M.size else 0.0
        if scale == 0.0:
            continue
        if np.max(np.abs(M - M.T)) > 1e-10 * scale:
            raise DataError("input covariance is not symmetric")
        if np.any(np.diagonal(M) < 0):
            raise DataError("input covariance has a negative variance on its diagonal")
        if np.linalg.eigvalsh(0.5 * (M + M.T))[0] < -1e-10 * max(float(np.trace(M)), scale):
            raise DataError("input covariance is not positive semi-definite")

    def get(b):
        M = C if C.ndim == 2 else C[b]
        if not np.any(M):
            return None                       # a zero covariance is a deterministic input
        return legacy_symmetrize(np.array(M, dtype=np.float64, order="C"))
    return get


class legacy_Prepared:
    """Static per-layer data shared by all samples (blocks of small layers are cached)."""

    def __init__(self, mapped, cache_bytes=None):
        self.mapped = mapped
        self.bypos = mapped.by_position()
        self.blk = {}
        self.ul_cache = {}
        self.cache_bytes = legacy_CHUNK_BYTES if cache_bytes is None else cache_bytes
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


def legacy_conv_cov_staged(ml, st, add_noise):
    """Signal covariance of a conv layer from ``st.G``, releasing ``st.G`` after the first pass.

    Same result as :func:`legacy_conv_signal_cov`; the input covariance is dropped as soon as
    ``T = W_ULᵀΓ`` is formed, so at most two large matrices are alive (network pass only).
    """
    geo = legacy_geometry(ml)
    if geo[2] == 1:
        in_shape, k, _, pad = geo
        K = np.ascontiguousarray(ml.W.T).reshape(ml.W.shape[1], in_shape[0], k, k)
        T = legacy_conv_cols_s1(st.G, K, pad, in_shape)
        st.G = None                                 # the only reference: freed here
        cov = legacy_conv_cols_s1(T, K, pad, in_shape, from_rows=True)
    else:
        T = legacy_conv_rows(st.G, ml.W, ml.idx, transpose_out=True)
        st.G = None
        cov = legacy_conv_rows(T, ml.W, ml.idx)
    del T
    legacy_symmetrize(cov)
    add_noise(cov)
    return cov


def legacy_crossbar_step(prep, pos, st):
    """Power (input moments) then moments of one crossbar layer; updates ``st`` in place."""
    ml = prep.bypos[pos]
    r = ml.config.r
    mu = st.mu
    if ml.scheme == "FC":
        blk = prep.blk[pos]
        pw = legacy_power_fc_power(blk, mu, st.G, r)
        st.mu, st.G = legacy_dense_moments(blk.W, blk.b, blk.v, blk.vb, mu, st.G)
    elif ml.scheme == "UR":
        blk = prep.blk[pos]
        pw = legacy_power_ur_power(blk, ml.idx, mu, st.G, r)
        nz = legacy_ur_noise(blk.v, blk.vb, ml.idx, mu, st.G)   # shared-device term, from (μ, Γ_in)
        n_pos = ml.n_pos

        def add(cov):
            for c in range(nz.shape[0]):
                cov[c * n_pos:(c + 1) * n_pos, c * n_pos:(c + 1) * n_pos] += nz[c]
        new_mu = legacy_conv_mean(ml.W, ml.b, ml.idx, mu)
        if st.G is None:
            cov = np.zeros((new_mu.shape[0],) * 2)
            add(cov)
        else:
            cov = legacy_conv_cov_staged(ml, st, add)
        st.mu, st.G = new_mu, cov
    else:
        noise = np.empty(ml.n_cols)
        q = legacy_q(mu, st.G)

        def blocks_with_noise():
            for blk in prep.ul_blocks(pos):
                nz = q @ blk.v                               # Σ_n v_nj q_n over all L rows
                if blk.vb is not None:
                    nz = nz + blk.vb
                noise[blk.cols] = nz
                yield blk
        pw = legacy_power_ul_power(ml, mu, st.G, r, blocks_with_noise())
        new_mu = legacy_conv_mean(ml.W, ml.b, ml.idx, mu)
        if st.G is None:
            cov = np.diag(noise)
        else:
            def add(cov):
                cov[np.diag_indices_from(cov)] += noise
            cov = legacy_conv_cov_staged(ml, st, add)
        st.mu, st.G = new_mu, cov
    pw.total = pw.mem + pw.tia_pos + pw.tia_neg
    return pw


def legacy_propagate(mapped, x, *, input_cov=None, cov=False, per_layer=False, progress=False):
    r"""Analytic output moments, MSE and power of ``mapped`` for a batch ``x`` (theory §15).

    Algorithm 1 as corrected in theory §15 (D16): for every sample, every layer's power and
    output moments are computed from its **input** moments ``(μ, Γ)``; Γ is symmetrised after
    every linear layer; the ReLU covariance rule is ``mapped.config.relu_cov`` (``exact``,
    theory §8.2, default; or ``taylor``, Eq. (28)). ``r`` enters power only (theory §3.3).

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
    legacy_MomentsResult
    """
    net = mapped.network
    x = net.check_input(x)
    B = x.shape[0]
    L = int(np.prod(net.input_shape))
    get_cov = legacy_check_input_cov(input_cov, B, L)
    fused = mapped.fused
    shapes = fused.shapes
    mode = mapped.config.relu_cov
    prep = legacy_Prepared(mapped)
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
                pw = legacy_crossbar_step(prep, pos, st)
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
                st.mu, st.G = legacy_pool_moments(st.mu, G, shapes[pos], layer.kernel_size)
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
    mse = var + bias * bias                                     # theory §9, Eq. (7)
    p_layers = p_mem + p_tp + p_tn
    return legacy_MomentsResult(mean=mean, var=var, mse=mse, reference=ref, bias=bias, cov=covs,
                         power=p_layers.sum(axis=1), power_layers=p_layers, power_mem=p_mem,
                         power_tia_pos=p_tp, power_tia_neg=p_tn, mse_mean=mse.mean(axis=1),
                         mse_max=mse.max(axis=1), per_layer=rec)
