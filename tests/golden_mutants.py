"""An independent NumPy implementation of every golden case, with deliberate formula errors.

Used by ``tests/test_golden.py`` to build candidate files for ``refmem check``:

- ``mutant=None, dtype=float64`` — the corrected specification written a second time, with
  explicit matrices (Toeplitz, pooling matrix, tap-Toeplitz conductances) and its own mapping,
  quantization, batchnorm fusion and ReLU quadrature. It must pass the float64 tier: an
  independent cross-check of ``refmem.moments`` / ``refmem.power``.
- ``mutant=None, dtype=float32`` — the same in single precision; it must pass the float32
  tier (this is how the tier was sized).
- ``mutant=<name>`` — one formula replaced by the wrong reading listed in theory §16
  (:data:`MUTANTS`); ``refmem check`` must fail every case whose ``detects`` attribute names
  the mutant's discrepancy, by at least 10× the tolerance.

Nothing here imports refmem's moments, power, relu or mapping code; refmem is used only for
the layer containers and the configuration parser.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from refmem.layers import AvgPool2d, BatchNorm, Conv2d, Dense, Dropout, Flatten, ReLU

MUTANTS = {
    "sigma2_prop1": (("D6",), "printed Eq. (10): σ² instead of 2σ² on the input terms of Prop. 1"),
    "no_bias_noise": (("D5b",), "no bias-device noise in the moments (FC, UR, UL)"),
    "ul_nonzero_only": (("D12",), "UL device noise only on the programmed (non-zero) Toeplitz entries"),
    "ur_no_shared": (("D9", "D28"), "UR without the shared-device term between positions (FC-style noise)"),
    "relu_taylor": (("D15",), "first-order Taylor Eq. (28) instead of the exact ReLU covariance"),
    "mem_power_mean": (("D17",), "memristor power with E[X] instead of E[X²]"),
    "mem_power_mean_sq": (("D7",), "memristor power with E[X]² instead of E[X²] (Γ_ii dropped)"),
    "conv_tia_no_lambda2": (("D23",), "conv TIA power without λ² (Eq. (41) read against Eq. (31))"),
    "power_no_gmin": (("D19", "D22"), "power without the g_min offset of the conductances"),
    "pool_printed_window": (("D13",), "printed pooling window k = i..i+s (s+1 terms) with 1/s²"),
}
"""mutant name → (discrepancy ids of theory §16 it reproduces, description). A golden case whose
``detects`` attribute names one of the ids must catch the mutant."""


# ---------------------------------------------------------------------- structure
def _fuse(layers):
    """Batchnorm folded into the preceding dense/conv (theory §7), dropout removed."""
    out = []
    for layer in layers:
        if isinstance(layer, BatchNorm):
            prev = out[-1]
            sc = layer.gamma / np.sqrt(layer.running_var + layer.eps)
            w = prev.weight * sc.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
            b0 = prev.bias if prev.bias is not None else np.zeros(prev.weight.shape[0])
            b = (b0 - layer.running_mean) * sc + layer.beta
            out[-1] = (Dense(w, b) if isinstance(prev, Dense)
                       else Conv2d(w, b, prev.stride, prev.padding))
        elif not isinstance(layer, Dropout):
            out.append(layer)
    return out


def _iota(shape, k, st, pad):
    """ι(p, a) by literal loops (theory §5): (n_pos, C k²), -1 in the padding."""
    C, H, W = shape
    E, F = (H + 2 * pad - k) // st + 1, (W + 2 * pad - k) // st + 1
    idx = -np.ones((E * F, C * k * k), dtype=np.int64)
    for oh in range(E):
        for ow in range(F):
            for c in range(C):
                for u in range(k):
                    for v in range(k):
                        h, w = st * oh + u - pad, st * ow + v - pad
                        if 0 <= h < H and 0 <= w < W:
                            idx[oh * F + ow, c * k * k + u * k + v] = c * H * W + h * W + w
    return idx, (E, F)


def _toeplitz(taps_by_col, idx, L, n_pos, dtype):
    """Spread a (taps, C) array onto the (L, C n_pos) Toeplitz layout (theory §6); absent = 0."""
    T = np.zeros((L, taps_by_col.shape[1] * n_pos), dtype=dtype)
    for c in range(taps_by_col.shape[1]):
        for p in range(n_pos):
            for a in range(idx.shape[1]):
                if idx[p, a] >= 0:
                    T[idx[p, a], c * n_pos + p] = taps_by_col[a, c]
    return T


def _pool_matrix(shape, s, dtype, printed=False):
    """Average pooling A (theory §7); ``printed``: Eq. (17) as printed (rows i..i+s, 1/s²)."""
    C, H, W = shape
    E, F = H // s, W // s
    A = np.zeros((C * E * F, C * H * W), dtype=dtype)
    for c in range(C):
        for i in range(E):
            for j in range(F):
                rows = range(i, i + s + 1) if printed else range(s * i, s * i + s)
                cols = range(j, j + s + 1) if printed else range(s * j, s * j + s)
                for kk in rows:
                    for ll in cols:
                        if kk < H and ll < W:
                            A[c * E * F + i * F + j, c * H * W + kk * W + ll] = 1.0 / (s * s)
    return A, (C, E, F)


class _Xbar:
    """One crossbar layer: explicit matrices in crossbar orientation (rows = inputs)."""


def _quantize(a, delta, bits):
    nq = 2 ** (bits - 1) - 1
    return delta * np.clip(np.rint(a / delta), -nq, nq)


def _build(case, dtype):
    """Fused layers, shapes and the mapped crossbars (theory §3, §6, §14), in ``dtype``."""
    cfg = case.config
    net = case.network
    layers = _fuse(net.layers)
    shape = tuple(net.input_shape)
    steps, xbars = [], []
    for pos, layer in enumerate(layers):
        in_shape = shape
        if isinstance(layer, Dense):
            xb = _Xbar()
            xb.kind, xb.scheme = "xbar", "FC"
            xb.Wref = layer.weight.T.astype(dtype)
            xb.bref = None if layer.bias is None else layer.bias.astype(dtype)
            xb.idx, xb.n_pos = None, 1
            shape = (layer.weight.shape[0],)
        elif isinstance(layer, Conv2d):
            xb = _Xbar()
            xb.kind, xb.scheme = "xbar", cfg.mapping
            k = layer.weight.shape[2]
            xb.Wref = layer.weight.reshape(layer.weight.shape[0], -1).T.astype(dtype)
            xb.bref = None if layer.bias is None else layer.bias.astype(dtype)
            xb.idx, (E, F) = _iota(in_shape, k, layer.stride, layer.padding)
            xb.n_pos = E * F
            shape = (layer.weight.shape[0], E, F)
        elif isinstance(layer, ReLU):
            steps.append(("relu", pos, in_shape, None))
            continue
        elif isinstance(layer, AvgPool2d):
            steps.append(("pool", pos, in_shape, layer.kernel_size))
            C, H, W = in_shape
            shape = (C, H // layer.kernel_size, W // layer.kernel_size)
            continue
        elif isinstance(layer, Flatten):
            steps.append(("flatten", pos, in_shape, None))
            shape = (int(np.prod(shape)),)
            continue
        else:
            raise TypeError(layer)
        xb.pos, xb.in_shape, xb.L = pos, in_shape, int(np.prod(in_shape))
        xb.index = len(xbars)
        xbars.append(xb)
        steps.append(("xbar", pos, in_shape, xb))
    n = len(xbars)
    noisy = cfg.noisy_layer_set(n)
    bits = cfg.bits_per_layer(n)
    bias_on = cfg.bias_on_crossbar
    for xb, kb in zip(xbars, bits):
        xb.W, xb.b, xb.delta = xb.Wref, xb.bref, None
        if kb is not None:                                             # theory §14
            m = np.abs(xb.Wref).max()
            if xb.bref is not None and bias_on:
                m = max(m, np.abs(xb.bref).max())
            xb.delta = m / (2 ** (kb - 1) - 1)
            if cfg.quant_mode == "fixed":
                xb.W = _quantize(xb.Wref, xb.delta, kb)
                if xb.bref is not None and bias_on:
                    xb.b = _quantize(xb.bref, xb.delta, kb)
        # explicit columns
        if xb.scheme == "UL":
            xb.M = _toeplitz(xb.W, xb.idx, xb.L, xb.n_pos, dtype)
            xb.tap = _toeplitz(np.ones_like(xb.W), xb.idx, xb.L, xb.n_pos, dtype) > 0
            xb.bcol = None if xb.b is None else np.repeat(xb.b, xb.n_pos)
        else:
            xb.M = xb.W
            xb.tap = np.ones(xb.W.shape, dtype=bool)
            xb.bcol = xb.b
        wu = np.abs(xb.M).max(axis=0)                                  # theory §3.1
        if xb.bcol is not None and bias_on:
            wu = np.maximum(wu, np.abs(xb.bcol))
        xb.wu_col = wu
        xb.noisy = xb.index in noisy
        xb.bias_row = xb.bcol is not None and bias_on
    gmax = max(float(xb.wu_col.max()) for xb in xbars)
    for xb in xbars:
        lw = xb.wu_col.max()
        if cfg.design == "scalar":
            wu = np.full_like(xb.wu_col, gmax)
        elif cfg.design == "layer":
            wu = np.full_like(xb.wu_col, lw)
        else:
            wu = np.where(xb.wu_col > 0, xb.wu_col, lw)
        ncol = wu.shape[0]
        if cfg.lam is not None:
            lam = np.full(ncol, cfg.lam, dtype=dtype)
        else:
            gu = cfg.g_u
            if isinstance(gu, dict):
                gu = np.broadcast_to(np.asarray(gu[xb.index], dtype=dtype), (ncol,))
            elif isinstance(gu, tuple):
                gu = np.full(ncol, gu[0] if len(gu) == 1 else gu[xb.index], dtype=dtype)
            else:
                gu = np.full(ncol, gu, dtype=dtype)
            lam = (gu - cfg.g_min) / wu                                 # λ = (g_u − g_min)/w^u
        xb.lam = lam.astype(dtype)
        _conductances(xb, cfg, dtype)
    return steps, xbars, shape


def _sigma2(cfg, g):
    if cfg.sigma_table is not None:
        gs = np.asarray(cfg.sigma_table[0], dtype=g.dtype)
        ss = np.asarray(cfg.sigma_table[1], dtype=g.dtype)
        s = np.interp(g, gs, ss).astype(g.dtype)
    else:
        s = np.full(g.shape, cfg.sigma, dtype=g.dtype)
    return s * s


def _conductances(xb, cfg, dtype):
    """g± = λ max(±w, 0) + g_min (Eqs. (5)-(6)), device variances σ²(g±), and the weight-unit
    pair variance v = (σ²(g+) + σ²(g−))/λ² + α²w² + Δ²/12 (theory §3.2, §13, §14)."""
    gmin = cfg.g_min
    if xb.scheme == "UR":
        lam_rows = xb.lam[None, :]
        xb.gp = lam_rows * np.maximum(xb.W, 0) + gmin                    # (taps, C)
        xb.gm = lam_rows * np.maximum(-xb.W, 0) + gmin
        Wv = xb.W
        tap = np.ones(xb.W.shape, dtype=bool)
    else:
        xb.gp = xb.lam[None, :] * np.maximum(xb.M, 0) + gmin             # (rows, cols)
        xb.gm = xb.lam[None, :] * np.maximum(-xb.M, 0) + gmin
        Wv = xb.M
        tap = xb.tap
    zero = np.zeros_like(xb.gp)
    xb.sp = _sigma2(cfg, xb.gp) if xb.noisy else zero
    xb.sm = _sigma2(cfg, xb.gm) if xb.noisy else zero
    v = (xb.sp + xb.sm) / (xb.lam[None, :] ** 2)
    if xb.noisy and cfg.alpha:
        v = v + cfg.alpha ** 2 * Wv * Wv
    dither = xb.delta is not None and cfg.quant_mode == "dither"
    if dither:
        v = v + np.where(tap, xb.delta ** 2 / 12, 0).astype(dtype)
    xb.v = v
    xb.gbp = xb.gbm = xb.sbp = xb.sbm = xb.vb = None
    if xb.bias_row:
        bb = xb.b                                                        # per channel / column
        lam_b = xb.lam
        if xb.scheme == "UL":
            bb = xb.bcol
        xb.gbp = lam_b * np.maximum(bb, 0) + gmin
        xb.gbm = lam_b * np.maximum(-bb, 0) + gmin
        xb.sbp = _sigma2(cfg, xb.gbp) if xb.noisy else np.zeros_like(xb.gbp)
        xb.sbm = _sigma2(cfg, xb.gbm) if xb.noisy else np.zeros_like(xb.gbm)
        vb = (xb.sbp + xb.sbm) / lam_b ** 2
        if xb.noisy and cfg.alpha:
            vb = vb + cfg.alpha ** 2 * bb * bb
        if dither:
            vb = vb + xb.delta ** 2 / 12
        xb.vb = vb


# ---------------------------------------------------------------------- layer moments
def _crossbar_moments(xb, mu, G, mutant):
    """Theory §4 (FC), §5 (UR), §6 (UL): output mean and covariance in weight units."""
    q = mu * mu + np.diag(G)
    vb = xb.vb
    if vb is not None and mutant == "no_bias_noise":
        vb = np.zeros_like(vb)
    if xb.scheme in ("FC", "UL"):
        v = xb.v
        if xb.scheme == "UL" and mutant == "ul_nonzero_only":
            v = np.where(xb.tap, v, 0)
        noise = q @ v
        if xb.scheme == "FC" and mutant == "sigma2_prop1":
            noise = 0.5 * noise                                     # printed Eq. (10)
        if vb is not None:
            noise = noise + vb
        mean = mu @ xb.M
        if xb.bcol is not None:
            mean = mean + xb.bcol
        cov = xb.M.T @ G @ xb.M
        cov = 0.5 * (cov + cov.T)
        cov[np.diag_indices_from(cov)] += noise
        return mean, cov
    # UR: signal through the Toeplitz matrix, noise shared over positions (same tap a)
    T = _toeplitz(xb.W, xb.idx, xb.L, xb.n_pos, mu.dtype)
    mean = mu @ T
    if xb.b is not None:
        mean = mean + np.repeat(xb.b, xb.n_pos)
    cov = T.T @ G @ T
    cov = 0.5 * (cov + cov.T)
    L = xb.L
    Qe = np.zeros((L + 1, L + 1), dtype=mu.dtype)
    Qe[:L, :L] = G + np.outer(mu, mu)
    ii = np.where(xb.idx < 0, L, xb.idx)                            # (n_pos, taps)
    n_pos = xb.n_pos
    for c in range(xb.W.shape[1]):
        N = np.zeros((n_pos, n_pos), dtype=mu.dtype)
        for a in range(ii.shape[1]):
            N += xb.v[a, c] * Qe[np.ix_(ii[:, a], ii[:, a])]
        if vb is not None:
            N += vb[c]
        if mutant == "ur_no_shared":
            N = np.diag(np.diag(N))
        sl = slice(c * n_pos, (c + 1) * n_pos)
        cov[sl, sl] += N
    return mean, cov


_GL_X, _GL_W = np.polynomial.legendre.leggauss(24)


def _relu(mu, G, exact):
    """Prop. 4 (theory §8.1, stable variance) and the covariance: exact (theory §8.2, composite
    Gauss–Legendre, 8 panels × 24 nodes) or Taylor Eq. (28)."""
    dt = mu.dtype
    s = np.sqrt(np.maximum(np.diag(G), 0))
    pos = s > 0
    ssafe = np.where(pos, s, 1)
    a = np.where(pos, mu / ssafe, 0)
    inv = dt.type(1 / math.sqrt(2 * math.pi))
    phi = inv * np.exp(-0.5 * a * a)
    Phi = ndtr(a).astype(dt)
    Phib = ndtr(-a).astype(dt)
    mean = np.where(pos, s * phi + mu * Phi, np.maximum(mu, 0))
    # stable variance, theory §8.1
    vpos = 1 + (a * a - 1) * Phib - a * phi - (phi - a * Phib) ** 2
    vneg = (a * a + 1) * Phi + a * phi - (phi + a * Phi) ** 2
    var = np.where(pos, s * s * np.where(a >= 0, vpos, vneg), 0)
    n = mu.shape[0]
    C = np.zeros((n, n), dtype=dt)
    iu, ju = np.triu_indices(n, 1)
    if exact:
        ok = pos[iu] & pos[ju]
        i, j = iu[ok], ju[ok]
        rho = np.clip(G[i, j] / (s[i] * s[j]), -1, 1)
        th = np.arcsin(rho)
        a1, a2 = a[i], a[j]
        panels = 8
        xs = ((_GL_X + 1) / 2).astype(dt)
        ws = (_GL_W / 2).astype(dt)
        integ = np.zeros(i.shape[0], dtype=dt)
        for pnl in range(panels):
            t = th[:, None] * ((pnl + xs[None, :]) / panels)            # (pairs, nodes)
            st, ct = np.sin(t), np.cos(t)
            f = (rho[:, None] - st) * np.exp(-(a1[:, None] - a2[:, None] * st) ** 2
                                             / (2 * ct * ct) - 0.5 * a2[:, None] ** 2)
            integ += (f @ ws) * th / panels
        val = rho * Phi[i] * Phi[j] + integ * dt.type(1 / (2 * math.pi))
        C[i, j] = s[i] * s[j] * val
    else:
        C[iu, ju] = np.where((mu[iu] > 0) & (mu[ju] > 0), G[iu, ju], 0)
    C = C + C.T
    C[np.diag_indices(n)] = var
    return mean, C


# ---------------------------------------------------------------------- power (theory §11)
def _power(xb, mu, G, r, gmin, mutant):
    """Expected memristor and TIA power of one crossbar from its input moments."""
    q = mu * mu + np.diag(G)
    qm = {"mem_power_mean": mu, "mem_power_mean_sq": mu * mu}.get(mutant, q)
    off = gmin if mutant == "power_no_gmin" else 0.0
    if xb.scheme == "UR":
        # tap-Toeplitz: the pair (c, a) is driven by X_ι(p,a) at every position (D21)
        Gp = _toeplitz(xb.gp - off, xb.idx, xb.L, xb.n_pos, mu.dtype)
        Gm = _toeplitz(xb.gm - off, xb.idx, xb.L, xb.n_pos, mu.dtype)
        Sp = _toeplitz(xb.sp, xb.idx, xb.L, xb.n_pos, mu.dtype)
        Sm = _toeplitz(xb.sm, xb.idx, xb.L, xb.n_pos, mu.dtype)
        rep = xb.n_pos
        lam_col = np.repeat(xb.lam, rep)
    else:
        Gp, Gm, Sp, Sm = xb.gp - off, xb.gm - off, xb.sp, xb.sm
        rep = 1
        lam_col = xb.lam
    mem = qm @ (Gp + Gm).sum(axis=1)
    tia = []
    for Gx, Sx, gb, sb in ((Gp, Sp, xb.gbp, xb.sbp), (Gm, Sm, xb.gbm, xb.sbm)):
        EI = mu @ Gx
        VI = np.einsum("ij,ij->j", Gx, G @ Gx) + q @ Sx
        if gb is not None:
            EI = EI + np.repeat(gb - off, rep)
            VI = VI + np.repeat(sb, rep)
        per_col = r * (EI * EI + VI)
        if mutant == "conv_tia_no_lambda2" and xb.scheme in ("UR", "UL"):
            per_col = per_col / lam_col ** 2
        tia.append(per_col.sum())
    if xb.gbp is not None:
        mem = mem + xb.n_pos * ((xb.gbp - off) + (xb.gbm - off)).sum() if xb.scheme == "UR" \
            else mem + ((xb.gbp - off) + (xb.gbm - off)).sum()
    return mem, tia[0], tia[1]


# ---------------------------------------------------------------------- the network
def _reference(steps, x):
    """Noiseless forward of the unquantized fused network (the MSE reference, theory §9)."""
    out = []
    for xv in x:
        h = xv.reshape(-1)
        for kind, pos, in_shape, arg in steps:
            if kind == "xbar":
                if arg.scheme == "FC":
                    h = h @ arg.Wref + (0 if arg.bref is None else arg.bref)
                else:
                    T = _toeplitz(arg.Wref, arg.idx, arg.L, arg.n_pos, h.dtype)
                    h = h @ T + (0 if arg.bref is None else np.repeat(arg.bref, arg.n_pos))
            elif kind == "relu":
                h = np.maximum(h, 0)
            elif kind == "pool":
                A, _ = _pool_matrix(in_shape, arg, h.dtype)
                h = A @ h
        out.append(h)
    return np.array(out)


def candidate(case, mutant=None, dtype=np.float64) -> dict:
    """Every compared quantity of ``case`` (a :class:`refmem.golden.GoldenCase`) computed
    independently, optionally with the formula error ``mutant``; arrays in ``dtype``."""
    if mutant is not None and mutant not in MUTANTS:
        raise KeyError(mutant)
    dtype = np.dtype(dtype)
    # OpenBLAS single-precision kernels occasionally raise a spurious "invalid value" flag on
    # finite data; every result is checked for finiteness below instead.
    with np.errstate(invalid="ignore" if dtype == np.float32 else "warn"):
        out = _candidate(case, mutant, dtype)
    for k, v in out.items():
        if v.dtype != dtype:
            raise AssertionError(f"{k} computed in {v.dtype}, not {dtype}")
        if not np.all(np.isfinite(v)):
            raise AssertionError(f"{k} has non-finite values")
    return out


def _candidate(case, mutant, dtype):
    cfg = case.config
    steps, xbars, _ = _build(case, dtype)
    x = case.x.astype(dtype)
    Bn = x.shape[0]
    exact = cfg.relu_cov == "exact" and mutant != "relu_taylor"
    r = dtype.type(cfg.r)
    res = {"mean": [], "var": [], "cov": []}
    per = {}
    pw = np.zeros((3, Bn, len(xbars)), dtype=dtype)
    for b in range(Bn):
        mu = x[b].reshape(-1)
        L = mu.shape[0]
        G = (case.input_cov[b].astype(dtype) if case.input_cov is not None
             else np.zeros((L, L), dtype=dtype))
        for kind, pos, in_shape, arg in steps:
            if kind == "xbar":
                pw[:, b, arg.index] = _power(arg, mu, G, r, dtype.type(cfg.g_min), mutant)
                mu, G = _crossbar_moments(arg, mu, G, mutant)
            elif kind == "relu":
                mu, G = _relu(mu, G, exact)
            elif kind == "pool":
                A, _ = _pool_matrix(in_shape, arg, dtype, printed=mutant == "pool_printed_window")
                mu, G = A @ mu, A @ G @ A.T
            per.setdefault(pos, {"mean": [], "var": []})
            per[pos]["mean"].append(mu)
            per[pos]["var"].append(np.diag(G).copy())
        res["mean"].append(mu)
        res["var"].append(np.diag(G).copy())
        res["cov"].append(G)
    out = {k: np.array(v) for k, v in res.items()}
    ref = _reference(steps, x)
    out["reference"] = ref
    out["bias"] = out["mean"] - ref
    out["mse"] = out["var"] + out["bias"] ** 2
    out["mse_mean"] = out["mse"].mean(axis=1)
    out["mse_max"] = out["mse"].max(axis=1)
    out["power_mem"], out["power_tia_pos"], out["power_tia_neg"] = pw
    out["power_layers"] = pw.sum(axis=0)
    out["power"] = out["power_layers"].sum(axis=1)
    for pos, d in per.items():
        out[f"layers/{pos:02d}/mean"] = np.array(d["mean"])
        out[f"layers/{pos:02d}/var"] = np.array(d["var"])
    return out
