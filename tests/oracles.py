"""Literal loop restatements of the spec's equations (spec §18 T1 style).

Each function restates one corrected equation as directly as possible — explicit index loops,
no vectorisation, no refmem imports — and cites its section. The vectorised code in
``refmem.moments`` / ``refmem.power`` / ``refmem.relu`` must agree with these to ~1e-12.
Sizes in the tests are kept tiny: the UR oracle is a 6-index loop.

Conventions (spec §1): ``W[i, j]`` connects input i to output j; conv kernels are
``K[c_o, c, u, v]`` with tap index ``a = c k² + u k + v``; NCHW flattening; outputs of a conv
are flattened as ``(c_o, o_h, o_w)``.
"""

import math

import numpy as np


# ---------------------------------------------------------------------- mapping (spec §3.2)
def conductances(W, lam, g_min):
    """g± = λ_j max(±W_ij, 0) + g_min (Eqs. (5)–(6), spec §3.2), element by element."""
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
    """Weight-unit pair variance v_ij = (σ²(g⁺) + σ²(g⁻))/λ_j² + α² W_ij² + Δ²/12 (spec §3.2, §13, §14).

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


# ---------------------------------------------------------------------- FC (spec §4)
def fc_moments(W, b, v, vb, mu, Gam):
    """Proposition 1 corrected (spec §4), term by term.

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


# ---------------------------------------------------------------------- conv index map (spec §5)
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
    """Proposition 2 corrected (spec §5) as the literal 6-index sums (D8, D9).

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
    """W_UL (spec §6): (W_UL)[n, (c_o, p)] = Σ_a w_(c_o)[a] 1[ι(p, a) = n], by loops; also the tap mask."""
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


# ---------------------------------------------------------------------- pooling (spec §7)
def avgpool_moments(mu, Gam, in_shape, kappa):
    """Proposition 3 corrected (spec §7, D13): A[(c,i,j),(c,k,l)] = κ⁻², k ∈ [κi, κi+κ−1]; AΓAᵀ by loops."""
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


# ---------------------------------------------------------------------- ReLU (spec §8)
def _phi(a):
    return math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)


def _Phi(a):
    return 0.5 * (1.0 + math.erf(a / math.sqrt(2.0)))


def relu_mean_var_naive(mu, var):
    """Proposition 4 (spec §8.1) in the paper's own form E Z² − (E Z)² (moderate a only)."""
    if var == 0:
        return max(mu, 0.0), 0.0
    s = math.sqrt(var)
    a = mu / s
    m = s * _phi(a) + mu * _Phi(a)
    m2 = (mu * mu + var) * _Phi(a) + mu * s * _phi(a)
    return m, m2 - m * m


def relu_taylor_moments(mu, Gam):
    """Eq. (28) (spec §8.3): off-diagonal 1[μ_i > 0] 1[μ_j > 0] Γ_ij; Prop. 4 diagonal."""
    d = len(mu)
    mean = np.zeros(d)
    cov = np.zeros((d, d))
    for i in range(d):
        mean[i], cov[i, i] = relu_mean_var_naive(mu[i], Gam[i, i])
        for j in range(d):
            if j != i:
                cov[i, j] = Gam[i, j] if (mu[i] > 0 and mu[j] > 0) else 0.0
    return mean, cov


# ---------------------------------------------------------------------- power (spec §11)
def fc_power(gp, gm, gbp, gbm, vp, vm, vbp, vbm, mu, Gam, r):
    """Spec §11.1 / Corollary 1 corrected: Σ_j [Σ_i (g⁺+g⁻)_ij q_i + (g^b⁺+g^b⁻)_j + P_TIA⁺_j + P_TIA⁻_j].

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
    """Spec §11.2 / Corollary 2 corrected, by loops over (c_o, p, a).

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
