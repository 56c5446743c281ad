"""One small, seeded check per proposition of the theory guide (``docs/theory.md``).

Run ``python -m refmem.theory_checks NAME`` (``--list`` shows the names). Each check builds a
tiny network or Gaussian vector, computes the analytic value with refmem's public functions
and compares it with a device-level Monte-Carlo run (:func:`refmem.monte_carlo`), plain NumPy
sampling, or an exact loop oracle. Every line printed is one comparison:

- ``PASS``/``FAIL`` *z-test*: the largest ``|analytic − MC| / SE`` over the ``m`` compared
  entries must not exceed the Bonferroni threshold ``z* = Φ⁻¹(1 − α/(2m))`` with family-wise
  ``α = 1e-4`` (theory §19.2–§19.3): the verdict is derived from the sample size through the SE,
  so a correct formula fails with probability below 1e-4 whatever the seed;
- ``PASS``/``FAIL`` *exact*: agreement with an oracle to a stated tolerance (theory §19.6);
- ``PASS``/``FAIL`` *evidence*: a formula **as printed in a paper** must be rejected by the same
  Monte-Carlo sample, with ``|z| > 2 z*`` (theory §19.5);
- ``INFO``: a measured number (e.g. a relative bias of the Gaussian closure, theory §20),
  with its Monte-Carlo SE, that is reported and not tested.

The exit status is 0 when every line passes, 1 otherwise (2 for a bad command line). The same
``--seed`` gives the same numbers. Each check runs in seconds.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
from scipy.special import ndtri

__all__ = ["CHECKS", "Report", "run", "main", "zstar"]

ALPHA_FW = 1e-4
"""Family-wise false-alarm probability of one z-test line (theory §19.3)."""


def zstar(m: int, alpha: float = ALPHA_FW) -> float:
    """Bonferroni threshold ``Φ⁻¹(1 − α/(2m))`` for ``m`` simultaneous comparisons."""
    return float(ndtri(1.0 - alpha / (2.0 * max(int(m), 1))))


# ====================================================================== report
class Report:
    """Collects and prints the comparison lines of one check."""

    def __init__(self, name, out=None):
        self.name = name
        self.rows = []
        self.out = sys.stdout if out is None else out

    def _emit(self, ok, text):
        tag = "INFO" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append((tag, text))
        print(f"[{tag}] {self.name}: {text}", file=self.out, flush=True)
        return ok

    @staticmethod
    def _z(est, theory, se):
        est, theory, se = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64).ravel()
                                                for a in (est, theory, se)))
        scale = max(1.0, float(np.max(np.abs(theory))) if theory.size else 1.0)
        diff = np.abs(est - theory)
        z = np.where(se > 0, diff / np.where(se > 0, se, 1.0),
                     np.where(diff <= 1e-12 * scale, 0.0, np.inf))
        k = int(np.argmax(z))
        return z, k, est, theory, se

    def ztest(self, what, est, theory, se):
        """Analytic ``theory`` vs Monte-Carlo ``est`` ± ``se``; pass when max|z| <= z*."""
        z, k, est, theory, se = self._z(est, theory, se)
        zs = zstar(z.size)
        ok = bool(z[k] <= zs)
        return self._emit(ok, f"{what}: analytic {theory[k]:.6g} vs MC {est[k]:.6g} ± "
                              f"{se[k]:.2g} (worst of m={z.size}): max|z|={z[k]:.2f} "
                              f"{'<=' if ok else '>'} z*={zs:.2f}")

    def evidence(self, what, est, printed, se):
        """A printed (wrong) formula must be rejected: max|z| > 2 z*."""
        z, k, est, printed, se = self._z(est, printed, se)
        zs = zstar(z.size)
        ok = bool(z[k] > 2 * zs)
        return self._emit(ok, f"EVIDENCE {what}: printed {printed[k]:.6g} vs MC {est[k]:.6g} ± "
                              f"{se[k]:.2g}: max|z|={z[k]:.1f} {'>' if ok else '<='} 2z*="
                              f"{2 * zs:.2f} ({'rejected' if ok else 'NOT rejected'})")

    def exact(self, what, value, oracle, rtol=1e-10, atol=1e-12):
        """Deterministic comparison with an oracle."""
        value = np.asarray(value, dtype=np.float64)
        oracle = np.asarray(oracle, dtype=np.float64)
        err = float(np.max(np.abs(value - oracle))) if value.size else 0.0
        ok = bool(np.all(np.abs(value - oracle) <= atol + rtol * np.abs(oracle)))
        return self._emit(ok, f"{what}: max abs diff {err:.3g} (rtol={rtol:g}, atol={atol:g})")

    def claim(self, what, ok):
        return self._emit(bool(ok), what)

    def info(self, what):
        return self._emit(None, what)

    @property
    def passed(self):
        return all(tag != "FAIL" for tag, _ in self.rows)


CHECKS = {}
"""name → (guide section, one-line description, function(report, seed))."""


def _check(name, section, doc):
    def deco(fn):
        CHECKS[name] = (section, doc, fn)
        return fn
    return deco


# ====================================================================== helpers
def _rng(seed, k):
    return np.random.default_rng([int(seed), int(k)])


def _mc(mapped, x, n, seed, **kw):
    from .montecarlo import monte_carlo
    return monte_carlo(mapped, x, n, seed, **kw)


def _triu(M):
    i, j = np.triu_indices(M.shape[-1])
    return M[..., i, j]


def _skewed_sampler(mu, gamma):
    """Non-Gaussian correlated inputs ``μ + C U`` (U centred exponential, C Cᵀ = Γ).

    Theory §19.8: linear layers must be exact for any input law, so they are tested on one.
    """
    C = np.linalg.cholesky(gamma)

    def sample(rng, m):
        U = rng.exponential(1.0, size=(m, 1, mu.size)) - 1.0
        return mu[None, None, :] + U @ C.T
    return sample


def _random_cov(rng, d, scale=0.3):
    A = rng.normal(size=(d, d)) * scale
    return A @ A.T + 0.05 * np.eye(d)


def _dense_net(rng, L, J, relu_after=False):
    from .layers import Dense, ReLU
    from .network import Network
    layers = [Dense(rng.normal(size=(J, L)) / math.sqrt(L), rng.normal(size=J) * 0.3)]
    if relu_after:
        layers.append(ReLU())
    return Network(layers, (L,))


def _conv_net(rng, cin=2, cout=2, k=3, pad=1, stride=1):
    from .layers import Conv2d
    from .network import Network
    w = rng.normal(size=(cout, cin, k, k)) / math.sqrt(cin * k * k)
    return Network([Conv2d(w, rng.normal(size=cout) * 0.3, stride, pad)], (cin, 4, 4))


def _moments(mapped, x, **kw):
    from .moments import propagate
    return propagate(mapped, x, **kw)


# ====================================================================== §3 mapping
@_check("mapping", "3", "crossbar mapping: g⁺ − g⁻ = λW, g in [g_min, g_u], "
                        "noiseless crossbar / (rλ) = Wᵀx + b")
def check_mapping(rep, seed):
    from .config import CrossbarConfig
    from .mapping import map_network
    rng = _rng(seed, 3)
    net = _dense_net(rng, 6, 4)
    for design in ("scalar", "layer", "column"):
        cfg = CrossbarConfig(sigma=0.0, g_min=0.1, g_u=1.3, design=design, r=1.7)
        ml = map_network(net, cfg).layers[0]
        blk = ml.block()
        W, b = net.layers[0].weight.T, net.layers[0].bias
        rep.exact(f"[{design}] g⁺ − g⁻ = λ_j W_ij (Eqs. (5)–(6), g_min cancels)",
                  blk.gp - blk.gm, blk.lam * W, rtol=1e-12)
        rep.claim(f"[{design}] every target conductance in [g_min, g_u] "
                  "(bias row in the scope of w^u)",
                  ml.check_conductances())
        x = rng.normal(size=(3, 6))
        # loop oracle: currents of the two arrays, TIA gain r, digital rescale 1/(rλ)
        out = np.zeros((3, 4))
        for s in range(3):
            for j in range(4):
                I = sum((blk.gp[i, j] - blk.gm[i, j]) * x[s, i] for i in range(6))
                I += blk.gbp[j] - blk.gbm[j]
                out[s, j] = cfg.r * I / (cfg.r * blk.lam[j])
        rep.exact(f"[{design}] noiseless crossbar, loop over rows, / (rλ_j) = Wᵀx + b", out,
                  net.forward(x), rtol=1e-12)
    # per-weight λ_ij (printed Eq. (4)) cannot be undone by one digital factor per column
    lam_ij = (1.3 - 0.1) / np.abs(W)
    x1, x2 = np.abs(rng.normal(size=(2, 6)))
    y = lambda x: (x @ (lam_ij * W))                                   # noqa: E731
    need1, need2 = (x1 @ W) / y(x1), (x2 @ W) / y(x2)
    rel = float(np.max(np.abs(need1 - need2) / np.abs(need1)))
    rep.claim(f"EVIDENCE per-weight λ_ij (Eq. (4) as printed): the column rescale that recovers "
              f"Wᵀx depends on x (max rel diff between two inputs {rel:.2f} > 0.01)", rel > 0.01)


# ====================================================================== §4 FC
@_check("fc", "4", "Proposition 1 (FC): mean and full covariance vs device-level MC, "
                   "non-Gaussian input")
def check_fc(rep, seed, n=200_000):
    from .config import CrossbarConfig
    from .mapping import map_network
    rng = _rng(seed, 4)
    L, J = 5, 4
    net = _dense_net(rng, L, J)
    mu = rng.normal(size=L) * 0.5
    gamma = _random_cov(rng, L)
    cfg = CrossbarConfig(sigma=0.1, g_min=0.1, g_u=1.0, design="column", r=1.7)
    mapped = map_network(net, cfg)
    an = _moments(mapped, mu[None], input_cov=gamma, cov=True)
    mc = _mc(mapped, mu[None], n, seed, input_sampler=_skewed_sampler(mu, gamma), cov=True)
    rep.ztest("E Z = Wᵀμ + b", mc.mean[0], an.mean[0], mc.mean_se[0])
    rep.ztest("Cov Z = WᵀΓW + diag(v^b + Σ_i v_ij q_i), all J(J+1)/2 entries",
              _triu(mc.cov[0]), _triu(an.cov[0]), _triu(mc.cov_se[0]))
    blk = mapped.layers[0].block()
    q = mu * mu + np.diag(gamma)
    noise = q @ blk.v + blk.vb
    rep.info(f"share of the device noise in the output variance: "
             f"{float(np.mean(noise / an.var[0])):.3f}")
    printed = an.var[0] - 0.5 * (q @ blk.v)          # Eq. (10): σ² instead of 2σ² on input terms
    rep.evidence("Eq. (10) with σ² (not 2σ²) on the input terms (D6)", mc.var[0], printed,
                 mc.var_se[0])
    # O10: deterministic input: diagonal covariance 2σ²/λ²(1 + |x|²), the "1" from the bias row
    x = 0.3 * rng.normal(size=(1, L))
    an0 = _moments(mapped, x, cov=True)
    rep.exact("O10 deterministic x: Cov = diag(2σ²/λ_j² (1 + |x|²)), off-diagonal 0", an0.cov[0],
              np.diag(2 * 0.1**2 / blk.lam**2 * (1 + float(np.sum(x * x)))), rtol=1e-12)
    mc0 = _mc(mapped, x, n // 4, seed + 1)
    rep.ztest("deterministic x: Var Z_j = 2σ²/λ_j² (1 + |x|²)", mc0.var[0], an0.var[0],
              mc0.var_se[0])
    rep.evidence("variance without the bias-row device pair (D5b)", mc0.var[0],
                 an0.var[0] - blk.vb, mc0.var_se[0])


# ====================================================================== §5 UR
@_check("ur", "5", "Proposition 2 (UR conv): shared-device covariance between positions vs MC")
def check_ur(rep, seed, n=40_000):
    from .config import CrossbarConfig
    from .mapping import map_network
    rng = _rng(seed, 5)
    net = _conv_net(rng)
    x = rng.normal(size=(1, 2, 4, 4))
    cfg = CrossbarConfig(sigma=0.1, g_min=0.1, g_u=1.0, design="column", mapping="UR", r=1.3)
    mapped = map_network(net, cfg)
    an = _moments(mapped, x, cov=True)
    mc = _mc(mapped, x, n, seed, cov=True)
    rep.ztest("E Z = w_coᵀ P_p x + b_co", mc.mean[0], an.mean[0], mc.mean_se[0])
    rep.ztest("Cov Z (same-tap shared-device term), all 32·33/2 entries", _triu(mc.cov[0]),
              _triu(an.cov[0]), _triu(mc.cov_se[0]))
    rep.evidence("FC-style covariance without the shared term between positions (D9/D28)",
                 _triu(mc.cov[0]), _triu(np.diag(an.var[0])), _triu(mc.cov_se[0]))


# ====================================================================== §6 UL
@_check("ul", "6", "UL conv (Toeplitz FC): noise on every entry incl. structural zeros vs MC")
def check_ul(rep, seed, n=40_000):
    from .config import CrossbarConfig
    from .mapping import map_network
    rng = _rng(seed, 6)
    net = _conv_net(rng)
    x = rng.normal(size=(1, 2, 4, 4))
    cfg = CrossbarConfig(sigma=0.1, g_min=0.1, g_u=1.0, design="layer", mapping="UL")
    mapped = map_network(net, cfg)
    an = _moments(mapped, x, cov=True)
    mc = _mc(mapped, x, n, seed, cov=True)
    rep.ztest("E Z = W_ULᵀ x + b", mc.mean[0], an.mean[0], mc.mean_se[0])
    rep.ztest("Cov Z diagonal noise summing over all L inputs, all entries", _triu(mc.cov[0]),
              _triu(an.cov[0]), _triu(mc.cov_se[0]))
    v = an.var[0].reshape(2, -1)
    rep.exact("O15 the noise variance is identical for all positions of a channel",
              v, np.repeat(v[:, :1], v.shape[1], axis=1), rtol=1e-12)
    blk = mapped.layers[0].block()
    q = x.ravel() ** 2
    printed = (q @ (blk.v * blk.tap)) + blk.vb          # noise only on the k×k patch (D12)
    rep.evidence("noise counted only on non-zero Toeplitz entries (D12)", mc.var[0], printed,
                 mc.var_se[0])


# ====================================================================== §7 pooling
@_check("pool", "7", "Proposition 3 (average pooling): Aμ and AΓAᵀ vs sampling; printed window")
def check_pool(rep, seed, n=200_000):
    from .layers import AvgPool2d
    from .moments import pool_moments
    rng = _rng(seed, 7)
    shape = (2, 4, 4)
    d = 32
    mu = rng.normal(size=d)
    gamma = _random_cov(rng, d, 0.2)
    mean, cov = pool_moments(mu, gamma, shape, 2)
    X = mu + _skewed_sampler(mu, gamma)(rng, n)[:, 0, :] - mu
    Z = AvgPool2d(2).forward(X.reshape(n, *shape), shape).reshape(n, -1)
    Zc = Z - Z.mean(axis=0)
    prod = Zc[:, :, None] * Zc[:, None, :]
    rep.ztest("E Z = Aμ", Z.mean(axis=0), mean, Z.std(axis=0, ddof=1) / math.sqrt(n))
    rep.ztest("Cov Z = AΓAᵀ (cross-channel entries included)",
              _triu(prod.mean(axis=0) * n / (n - 1)),
              _triu(cov), _triu(prod.std(axis=0, ddof=1)) / math.sqrt(n))
    # batchnorm fusion: K' = K γ/√(v+ε), b' = (b − m)γ/√(v+ε) + β gives the same forward pass
    from .layers import BatchNorm, Conv2d
    from .network import Network
    bn = BatchNorm(rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3),
                   rng.uniform(0.5, 2, 3))
    conv = Conv2d(rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), 1, 1)
    net = Network([conv, bn], (2, 4, 4))
    xb = rng.normal(size=(2, 2, 4, 4))
    rep.exact("batchnorm fused into the conv before mapping: same forward pass",
              net.fused().forward(xb), net.forward(xb), rtol=1e-12, atol=1e-12)
    # printed Eqs. (17)–(21): k = i..i+s (s+1 terms) with weight 1/s² on a constant map
    s = 2
    c = np.ones((4, 4))
    val = sum(c[k, l] for k in range(0, 0 + s + 1) for l in range(0, 0 + s + 1)) / s**2
    one = pool_moments(np.ones(16), None, (1, 4, 4), 2)[0][0]
    rep.claim(f"EVIDENCE printed window (s+1 terms per axis, 1/s²) maps a constant 1 to {val:.2f}, "
              f"not 1 (D13); pool_moments gives {one:.2f}", val != 1.0 and one == 1.0)


# ====================================================================== §8.1 ReLU
@_check("relu", "8.1", "Proposition 4 (ReLU mean and variance) vs sampling; oracles; cancellation")
def check_relu(rep, seed, n=400_000):
    from .relu import relu_mean_var
    rng = _rng(seed, 81)
    mus = np.array([0.4, -1.0, 2.0, 0.0, -3.0])
    ss = np.array([1.3, 0.7, 0.5, 2.0, 1.0])
    X = mus + ss * rng.normal(size=(n, mus.size))
    Y = np.maximum(X, 0.0)
    m, v = relu_mean_var(mus, ss**2)
    Yc = Y - Y.mean(axis=0)
    rep.ztest("E ReLU(X) = sφ(a) + μΦ(a), 5 (μ, s) cases", Y.mean(axis=0), m,
              Y.std(axis=0, ddof=1) / math.sqrt(n))
    rep.ztest("V ReLU(X) (stable form), 5 cases", Y.var(axis=0, ddof=1), v,
              (Yc**2).std(axis=0, ddof=1) / math.sqrt(n))
    m0, v0 = relu_mean_var(0.0, 1.0)
    rep.exact("O1 ReLU(N(0,1)): mean 1/√(2π), variance 1/2 − 1/(2π)", [m0, v0],
              [1 / math.sqrt(2 * math.pi), 0.5 - 0.5 / math.pi], rtol=1e-14)
    rep.exact("O2 zero variance: (max(μ,0), 0)", np.array(relu_mean_var([-1.0, 2.0], [0.0, 0.0])),
              [[0.0, 2.0], [0.0, 0.0]], rtol=0, atol=0)
    # D14: E[Z²] − E[Z]² in float32 at μ = 100, s = 0.01
    from scipy.special import ndtr
    mu32, s32 = np.float32(100.0), np.float32(0.01)
    a = mu32 / s32
    ph = np.float32(math.exp(-0.5 * float(a) ** 2) / math.sqrt(2 * math.pi))
    P = np.float32(ndtr(float(a)))
    e1 = s32 * ph + mu32 * P
    e2 = (mu32 * mu32 + s32 * s32) * P + mu32 * s32 * ph
    naive = float(e2 - e1 * e1)
    stable = float(relu_mean_var(100.0, 1e-4)[1])
    rep.claim(f"EVIDENCE Eq. (23) E[Z²]−E[Z]² in float32 at μ=100, s=0.01 gives {naive:.3g}; the "
              f"stable form gives {stable:.6g} (true 1e-4, D14)",
              abs(naive - 1e-4) > 0.5e-4 and abs(stable - 1e-4) < 1e-12)


# ====================================================================== §8.2 ReLU covariance
@_check("relu-cov", "8.2", "exact covariance of two rectified Gaussians vs sampling; "
                          "Taylor Eq. (28); PSD")
def check_relu_cov(rep, seed, n=400_000):
    from .relu import bvn_cdf, relu_cov_exact, relu_cov_taylor, relu_moments
    rng = _rng(seed, 82)
    cases = [((0.3, -0.5), (1.0, 2.0), 0.7), ((0.0, 0.0), (1.0, 1.0), 0.5),
             ((1.0, 2.0), (0.5, 1.5), -0.6), ((-1.0, 0.5), (1.0, 1.0), 0.95),
             ((0.2, -0.3), (1.0, 1.0), 0.8), ((-2.0, -1.5), (1.0, 0.7), 0.99)]
    est, se, ex, ty = [], [], [], []
    for (m1, m2), (s1, s2), rho in cases:
        Z = rng.normal(size=(n, 2))
        X1 = m1 + s1 * Z[:, 0]
        X2 = m2 + s2 * (rho * Z[:, 0] + math.sqrt(1 - rho * rho) * Z[:, 1])
        Y1, Y2 = np.maximum(X1, 0), np.maximum(X2, 0)
        p = (Y1 - Y1.mean()) * (Y2 - Y2.mean())
        est.append(p.sum() / (n - 1))
        se.append(p.std(ddof=1) / math.sqrt(n))
        ex.append(float(relu_cov_exact(m1, s1, m2, s2, rho)))
        ty.append(float(relu_cov_taylor(m1, m2, rho * s1 * s2)))
    rep.ztest("Cov[X₁⁺, X₂⁺] exact bivariate formula, 6 cases", est, ex, se)
    from scipy.stats import norm
    closed = []
    for (m1, m2), (s1, s2), rho in cases:         # theory §8.2 step 5 (truncated moments)
        a1, a2 = m1 / s1, m2 / s2
        r1 = math.sqrt(1 - rho * rho)
        c1, c2 = (a1 - rho * a2) / r1, (a2 - rho * a1) / r1
        e12 = ((a1 * a2 + rho) * float(bvn_cdf(a1, a2, rho))
               + a1 * norm.pdf(a2) * norm.cdf(c1) + a2 * norm.pdf(a1) * norm.cdf(c2)
               + r1 / (2 * math.pi) * math.exp(-(a1 * a1 - 2 * rho * a1 * a2 + a2 * a2)
                                                 / (2 * r1 * r1)))
        e1 = norm.pdf(a1) + a1 * norm.cdf(a1)
        e2 = norm.pdf(a2) + a2 * norm.cdf(a2)
        closed.append(s1 * s2 * (e12 - e1 * e2))
    rep.exact("the integral form equals the closed form of step 5 (Φ₂ by bvn_cdf), 6 cases",
              ex, closed, rtol=1e-9, atol=1e-13)
    rep.evidence("Eq. (28) Taylor covariance 1[μ₁>0]1[μ₂>0]Γ₁₂ (D15)", est, ty, se)
    rho = np.array([-1.0, -0.4, 0.0, 0.5, 1.0])
    arc = (np.sqrt(1 - rho**2) + rho * (np.pi - np.arccos(rho)) - 1) / (2 * np.pi)
    rep.exact("O3 μ=0, s=1: arc-cosine kernel (√(1−ρ²) + ρ(π − arccos ρ) − 1)/(2π)",
              relu_cov_exact(0.0, 1.0, 0.0, 1.0, rho), arc, rtol=1e-10, atol=1e-14)
    G = np.array([[1.0, 0.999], [0.999, 1.0]])
    _, Ct = relu_moments(np.array([0.5, 0.5]), G.copy(), mode="taylor")
    _, Ce = relu_moments(np.array([0.5, 0.5]), G.copy(), mode="exact")
    et, ee = np.linalg.eigvalsh(Ct)[0], np.linalg.eigvalsh(Ce)[0]
    rep.claim("EVIDENCE Prop. 4 diagonal + Eq. (28) off-diagonal at μ=(0.5,0.5), ρ=0.999 is "
              "not PSD: "
              f"min eigenvalue {et:.3f}; exact rule {ee:.2e} >= 0 (D15)", et < 0 <= ee + 1e-15)


# ====================================================================== §9 MSE
@_check("mse", "9", "Eq. (7): MSE = Var + (E − z)² vs MC on a Dense–ReLU–Dense net "
                    "where it is exact")
def check_mse(rep, seed, n=100_000):
    from .config import CrossbarConfig
    from .layers import Dense, ReLU
    from .mapping import map_network
    from .network import Network
    rng = _rng(seed, 9)
    net = Network([Dense(rng.normal(size=(6, 5)) / 2, np.zeros(6)), ReLU(),
                   Dense(np.abs(rng.normal(size=(3, 6))) / 2, rng.normal(size=3) * 0.2)], (5,))
    x = 0.2 * rng.normal(size=(2, 5))
    cfg = CrossbarConfig(sigma=0.3, g_min=0.0, g_u=1.0, design="layer")
    mapped = map_network(net, cfg)
    an = _moments(mapped, x)
    mc = _mc(mapped, x, n, seed)
    rep.ztest("per-output MSE_j = Γ_jj + (μ_j − z_j)² (deterministic input: the ReLU input is "
              "exactly Gaussian, so this is exact)", mc.mse, an.mse, mc.mse_se)
    rep.info(f"share of the squared bias (μ − z)² in the MSE: "
             f"{float(np.sum(an.bias**2) / np.sum(an.mse)):.3f} "
             "(the ReLU shifts the mean at r = 1)")
    rep.evidence("MSE without the bias term (variance only)", mc.mse, an.var, mc.mse_se)


# ====================================================================== §10 MC count
@_check("mc-count", "10", "Eq. (46): coverage of n = ⌈(z s/(p x̄))²⌉ and the oracle n = 38416")
def check_mc_count(rep, seed, reps=2000):
    from .montecarlo import mc_sample_count
    rep.exact("O19 z=1.96, s/x̄=1, p=0.01 → n = 38416", mc_sample_count(1.0, 1.0, 0.01, z=1.96),
              38416, rtol=0, atol=0)
    rng = _rng(seed, 10)
    for m, s in ((0.0, 1.0), (1.5, 0.5)):
        tm = m * m + s * s                                   # E Y², Y ~ N(m, s²)
        ts = math.sqrt(4 * m * m * s * s + 2 * s**4)        # sd of Y²
        p = 0.05
        n = mc_sample_count(tm, ts, p)
        hit = 0
        for _ in range(reps):
            y = m + s * rng.normal(size=n)
            hit += abs(np.mean(y * y) - tm) <= p * tm
        cov = hit / reps
        se = math.sqrt(0.95 * 0.05 / reps)
        rep.ztest(f"coverage of ±p x̄ for e = Y², Y~N({m},{s}²), n={n}, {reps} replicates "
                  f"(nominal 0.95)", cov, 0.95, se)


# ====================================================================== §11 power
def _power_vs_mc(rep, seed, n, salt, what):
    """The shared body of the power checks ``power-fc``, ``power-ur``, ``power-ul``.

    Maps a small network (``what="FC"``: one dense layer driven by a correlated Gaussian input;
    ``"UR"``/``"UL"``: one padded convolution on a fixed image with that conv mapping), z-tests
    the four power terms of theory §11 (analytic vs device-level MC) and returns
    ``(net, x, gamma, cfg, mapped, an, mc)`` for the check's own extra lines."""
    from .config import CrossbarConfig
    from .mapping import map_network
    rng = _rng(seed, salt)
    if what == "FC":
        L, J = 5, 4
        net = _dense_net(rng, L, J)
        x = np.abs(rng.normal(size=L))[None]
        gamma = _random_cov(rng, L, 0.2)
    else:
        net = _conv_net(rng, pad=1)
        x = np.abs(rng.normal(size=(1, 2, 4, 4)))
        gamma = None
    mapping = "UR" if what == "FC" else what                # a dense layer ignores the mapping
    cfg = CrossbarConfig(sigma=0.1, g_min=0.2, g_u=1.0, design="layer", mapping=mapping, r=2.0)
    mapped = map_network(net, cfg)
    an = _moments(mapped, x, input_cov=gamma)
    mc = _mc(mapped, x, n, seed, input_cov=gamma)
    for k in ("power_mem", "power_tia_pos", "power_tia_neg", "power"):
        rep.ztest(f"{what} {k}", getattr(mc, k), getattr(an, k), getattr(mc, k + "_se"))
    return net, x, gamma, cfg, mapped, an, mc


@_check("power-fc", "11.1", "Propositions 5–6, Corollary 1 (FC power) vs device-level MC")
def check_power_fc(rep, seed, n=100_000):
    from .mapping import map_network
    net, x, gamma, cfg, mapped, an, mc = _power_vs_mc(rep, seed, n, 111, "FC")
    mu, J = x[0], net.layers[0].bias.size                   # L = 5 inputs, J = 4 outputs
    blk = mapped.layers[0].block()
    q = mu * mu + np.diag(gamma)
    an0 = _moments(map_network(net, cfg.with_(sigma=0.0)), mu[None], input_cov=gamma)
    rep.exact("O18 memristor power does not depend on σ", an.power_mem, an0.power_mem,
              rtol=1e-13)
    rep.exact("O18b σ adds exactly r σ² (Σ_i q_i + 1) per column to each TIA",
              [an.power_tia_pos[0, 0] - an0.power_tia_pos[0, 0],
               an.power_tia_neg[0, 0] - an0.power_tia_neg[0, 0]],
              [cfg.r * 0.1**2 * (q.sum() + 1) * J] * 2, rtol=1e-9)
    q = mu * mu + np.diag(gamma)
    printed = q @ (blk.lam * np.abs(blk.W)).sum(axis=1)      # Prop. 5 proof: |G_ij| X_i² (D17)
    rep.evidence("memristor power Σ|G_ij|X_i² of the Prop. 5 proof (D17)", mc.power_mem, printed,
                 mc.power_mem_se)
    rep.evidence("memristor power without the bias pairs (Corollary 1 as printed, D20)",
                 mc.power_mem, an.power_mem - np.sum(blk.gbp + blk.gbm), mc.power_mem_se)


@_check("power-ur", "11.2", "Propositions 7–8, Corollary 2 (UR power) vs device-level MC")
def check_power_ur(rep, seed, n=40_000):
    _, x, _, cfg, mapped, an, mc = _power_vs_mc(rep, seed, n, 112, "UR")
    ml = mapped.layers[0]
    blk = ml.block()
    q = np.concatenate([x.ravel() ** 2, [0.0]])
    idx = np.where(ml.idx < 0, q.size - 1, ml.idx)          # (n_pos, taps), padding → 0
    k = 3
    centre = np.array([(a // (k * k)) * k * k + (k // 2) * k + k // 2 for a in range(idx.shape[1])])
    qc = q[idx[:, centre]].sum(axis=0)                       # window-centre pixel for every tap
    printed = qc @ (blk.gp + blk.gm).sum(axis=1) + ml.n_pos * np.sum(blk.gbp + blk.gbm)
    rep.evidence("Eq. (36) drive by the window-centre pixel for every tap (D21)", mc.power_mem,
                 printed, mc.power_mem_se)
    rep.evidence("Eq. (40) bias power without 2 g_min (D22)", mc.power_mem,
                 an.power_mem - ml.n_pos * 2 * cfg.g_min * ml.n_cols, mc.power_mem_se)


@_check("power-ul", "11.1", "UL power (Toeplitz FC, structural zeros at g_min) vs device-level MC")
def check_power_ul(rep, seed, n=20_000):
    _power_vs_mc(rep, seed, n, 113, "UL")


# ====================================================================== §12 optimisation
@_check("opt-oracle", "12", "Eq. (45) on one FC layer (scalar design, x >= 0): "
                           "closed-form g_u*, MSE(g_u*) = ν")
def check_opt_oracle(rep, seed):
    from .config import CrossbarConfig
    from .mapping import map_network
    rng = _rng(seed, 12)
    net = _dense_net(rng, 6, 3)
    x = np.abs(rng.normal(size=(1, 6)))
    sigma, g_min, nu = 0.05, 0.1, 0.02
    W, b = net.layers[0].weight, net.layers[0].bias
    w_u = max(np.abs(W).max(), np.abs(b).max())
    gstar = g_min + w_u * math.sqrt(2 * sigma**2 * (1 + float(np.sum(x * x))) / nu)
    an = _moments(map_network(net, CrossbarConfig(sigma=sigma, g_min=g_min, g_u=gstar)), x)
    rep.exact(f"MSE(g_u* = {gstar:.4f}) = ν = {nu} (O20)", an.mse_mean[0], nu, rtol=1e-10)
    grid = np.linspace(g_min + 0.05, 3.0, 60)
    res = [_moments(map_network(net, CrossbarConfig(sigma=sigma, g_min=g_min, g_u=g)), x)
           for g in grid]
    mse = np.array([r.mse_mean[0] for r in res])
    pw = np.array([r.power[0] for r in res])
    rep.claim("MSE strictly decreasing and E P strictly increasing in g_u on a 60-point grid",
              np.all(np.diff(mse) < 0) and np.all(np.diff(pw) > 0))
    k = int(np.argmin(pw))
    rep.claim(f"EVIDENCE Algorithm 2's final argmin P (constraint ignored) picks g_u={grid[k]:.3f} "
              f"with MSE {mse[k]:.3g} > ν = {nu} (infeasible, D26)", mse[k] > nu)


# ====================================================================== §13 multiplicative
@_check("mult", "13", "[M] multiplicative noise (1 + αξ)w: moments vs MC; "
                      "= crossbar with σ(g) = αg, g_min = 0")
def check_mult(rep, seed, n=200_000):
    from .config import CrossbarConfig
    from .mapping import map_network
    rng = _rng(seed, 13)
    L, J = 5, 3
    net = _dense_net(rng, L, J)
    x = rng.normal(size=(1, L))
    alpha = 0.3
    mapped = map_network(net, CrossbarConfig(sigma=0.0, alpha=alpha))
    an = _moments(mapped, x, cov=True)
    mc = _mc(mapped, x, n, seed, cov=True)
    rep.ztest("E Z = Wᵀx + b", mc.mean[0], an.mean[0], mc.mean_se[0])
    rep.ztest("Cov Z = diag(α²(b² + (W⊙W)ᵀx²)) (O21b)", _triu(mc.cov[0]), _triu(an.cov[0]),
              _triu(mc.cov_se[0]))
    W, b = net.layers[0].weight.T, net.layers[0].bias
    rep.exact("O21b closed form α²(b_j² + Σ_i W_ij² x_i²)", an.var[0],
              alpha**2 * (b**2 + (x**2) @ W**2), rtol=1e-12)

    # [M]'s experiment on a shipped one-hidden-layer MNIST MLP: noise on layer 0, 1, or both.
    # With one hidden ReLU and deterministic images the closure is exact (theory §20), so the
    # analytic per-output MSE is z-tested against Monte-Carlo.
    from .datasets import shipped_path
    from .modelfile import load_model
    mlp = load_model(shipped_path("models/mnist5k_mlp_784-100-10.h5"))
    xs = np.load(shipped_path("example_input.npy"))[:4]
    for layers, name in (((0,), "the first layer"), ((1,), "the second layer"),
                         ("all", "both layers")):
        mm = map_network(mlp, CrossbarConfig(alpha=alpha, noisy_layers=layers))
        a_ = _moments(mm, xs)
        m_ = _mc(mm, xs, 1000, seed + 7)
        rep.ztest(f"[M] MLP 784-100-10, α={alpha} on {name}: per-output MSE", m_.mse, a_.mse,
                  m_.mse_se)

    def prop(g):
        return alpha * g
    m2 = map_network(net, CrossbarConfig(sigma_fn=prop, g_min=0.0, g_u=1.0, design="layer"))
    rep.exact("crossbar with σ(g) = αg, g_min = 0 gives the same pair variances v = α²W²",
              m2.layers[0].block().v, mapped.layers[0].block().v, rtol=1e-12, atol=1e-15)


# ====================================================================== §14 quantization
@_check("quant", "14", "k-bit quantization: dithered Δ²/12 model vs MC; accuracy of Δ²/12 vs k")
def check_quant(rep, seed, n=200_000):
    from .config import CrossbarConfig
    from .mapping import map_network
    from .quantize import quant_step, quantize
    rng = _rng(seed, 14)
    L, J = 5, 3
    net = _dense_net(rng, L, J)
    x = rng.normal(size=(1, L))
    mapped = map_network(net, CrossbarConfig(sigma=0.0, bits=3, quant_mode="dither"))
    an = _moments(mapped, x, cov=True)
    mc = _mc(mapped, x, n, seed, cov=True)
    rep.ztest("dithered 3-bit: E Z", mc.mean[0], an.mean[0], mc.mean_se[0])
    rep.ztest("dithered 3-bit: Cov Z with Δ²/12 per pair", _triu(mc.cov[0]), _triu(an.cov[0]),
              _triu(mc.cov_se[0]))
    w = rng.normal(size=200_000)
    ratios = {}
    for k in (2, 3, 6):
        d = quant_step(np.abs(w).max(), k)
        e = quantize(w, d, k) - w
        ratios[k] = float(np.mean(e * e) / (d * d / 12))
    rep.info("E e²/(Δ²/12) for Gaussian weights, per-layer max-abs grid: " +
             ", ".join(f"k={k}: {r:.3f}" for k, r in ratios.items()))
    rep.claim(f"Δ²/12 accurate at k=6 (ratio {ratios[6]:.3f} within 3%), not at k=2 "
              f"(ratio {ratios[2]:.3f}: most weights round to 0)",
              abs(ratios[6] - 1) < 0.03 and ratios[2] < 0.8)
    d = quant_step(1.0, 8)
    rep.exact("O22 k=8, max|A| = 1: Δ = 1/127 and the max-abs weight is exact",
              [d, quantize(1.0, d, 8)],
              [1 / 127, 1.0], rtol=1e-15)


# ====================================================================== §15 forward pass
@_check("forward", "15", "Algorithm 1: σ = 0 oracle (O9) and the update order of D16 vs MC")
def check_forward(rep, seed, n=200_000):
    from .config import CrossbarConfig
    from .datasets import shipped_path
    from .mapping import map_network
    from .modelfile import load_model
    from .relu import relu_mean_var
    net = load_model(shipped_path("models/mnist5k_mlp_784-100-10.h5"))
    x = np.load(shipped_path("example_input.npy"))[:4]
    an = _moments(map_network(net, CrossbarConfig(sigma=0.0)), x, cov=True)
    rep.exact("O9 σ = 0 on the shipped 784-100-10 MLP: mean = reliable forward", an.mean,
              net.forward(x), rtol=1e-10, atol=1e-12)
    rep.exact("O9 σ = 0: output covariance = 0 and MSE = 0 (to rounding)",
              [np.abs(an.cov).max(), an.mse.max()], [0.0, 0.0], rtol=0, atol=1e-20)
    rng = _rng(seed, 15)
    mu, s = np.array([0.5, -0.3, 1.2]), np.array([1.0, 0.8, 0.6])
    Y = np.maximum(mu + s * rng.normal(size=(n, 3)), 0)
    m_ok, v_ok = relu_mean_var(mu, s**2)
    _, v_bad = relu_mean_var(m_ok, s**2)        # printed order: μ overwritten before Φ_V uses it
    se = ((Y - Y.mean(axis=0)) ** 2).std(axis=0, ddof=1) / math.sqrt(n)
    rep.ztest("ReLU variance from the INPUT μ", Y.var(axis=0, ddof=1), v_ok, se)
    rep.evidence("ReLU variance with μ already updated (Algorithm 1 as printed, D16)",
                 Y.var(axis=0, ddof=1), v_bad, se)


# ====================================================================== §20 Gaussian closure
@_check("closure", "20", "Gaussian closure at the ReLU: analytic vs MC MSE, "
                         "2-hidden-layer MLP and a small CNN (INFO)")
def check_closure(rep, seed, n=1000):
    from .config import CrossbarConfig
    from .datasets import shipped_path
    from .layers import AvgPool2d, Conv2d, Dense, Flatten, ReLU
    from .mapping import map_network
    from .modelfile import load_model
    from .network import Network
    net = load_model(shipped_path("models/mnist5k_mlp_784-100-100-10.h5"))
    x = np.load(shipped_path("example_input.npy"))[:10]
    for sigma in (0.02, 0.1):
        mapped = map_network(net, CrossbarConfig(sigma=sigma, g_u=1.0, design="layer"))
        an = _moments(mapped, x)
        mc = _mc(mapped, x, n, seed)
        a, m, se = float(np.mean(an.mse)), mc.mse_overall, mc.mse_overall_se
        rep.info(f"MLP 784-100-100-10, σ={sigma}: analytic MSE {a:.5g} vs MC {m:.5g} ± {se:.2g} "
                 f"(rel {(a - m) / m:+.3%}, z={(a - m) / se:+.1f})")
    rng = _rng(seed, 20)
    cnn = Network([Conv2d(rng.normal(size=(4, 1, 3, 3)) / 3, rng.normal(size=4) * 0.1, 1, 1),
                   ReLU(),
                   Conv2d(rng.normal(size=(4, 4, 3, 3)) / 6, rng.normal(size=4) * 0.1, 1, 1),
                   ReLU(), AvgPool2d(2), Flatten(),
                   Dense(rng.normal(size=(8, 64)) / 8, rng.normal(size=8) * 0.1), ReLU(),
                   Dense(rng.normal(size=(3, 8)) / 3, rng.normal(size=3) * 0.1)], (1, 8, 8))
    xc = rng.uniform(0, 1, size=(2, 1, 8, 8))
    for mapping, sigma, m in (("UR", 0.1, 10 * n), ("UR", 0.3, 10 * n), ("UR", 0.5, 10 * n),
                              ("UL", 0.3, n)):
        mapped = map_network(cnn, CrossbarConfig(sigma=sigma, g_u=1.0, design="layer",
                                                 mapping=mapping))
        an = _moments(mapped, xc)
        mc = _mc(mapped, xc, m, seed)
        a, mm, se = float(np.mean(an.mse)), mc.mse_overall, mc.mse_overall_se
        rep.info(f"random 4-layer CNN ({mapping}), σ={sigma}: analytic MSE {a:.5g} vs MC "
                 f"{mm:.5g} ± {se:.2g} (rel {(a - mm) / mm:+.2%}, z={(a - mm) / se:+.1f})")


# ====================================================================== driver
def run(names, seed=0, out=None) -> bool:
    """Run the named checks; True when every line passed."""
    ok = True
    for name in names:
        section, doc, fn = CHECKS[name]
        rep = Report(name, out)
        t0 = time.perf_counter()
        print(f"== {name} (theory §{section}): {doc}", file=rep.out)
        fn(rep, seed)
        print(f"   ({name}: {time.perf_counter() - t0:.1f} s)", file=rep.out)
        ok &= rep.passed
    return ok


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m refmem.theory_checks",
        description="Check one proposition of the theory guide (docs/theory.md) against "
                    "Monte-Carlo or an exact oracle.")
    p.add_argument("names", nargs="*", metavar="NAME", help="checks to run ('all' for every one)")
    p.add_argument("--list", action="store_true", help="list the checks and their sections")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    args = p.parse_args(argv)
    if args.list or not args.names:
        for name, (sec, doc, _) in CHECKS.items():
            print(f"{name:11s} theory §{sec:5s} {doc}")
        return 0
    names = list(CHECKS) if args.names == ["all"] else args.names
    bad = [nm for nm in names if nm not in CHECKS]
    if bad:
        print(f"refmem: error: unknown check {bad[0]!r} (choose from {', '.join(CHECKS)})",
              file=sys.stderr)
        return 2
    if args.seed < 0:
        print("refmem: error: --seed must be a non-negative integer", file=sys.stderr)
        return 2
    return 0 if run(names, args.seed) else 1


if __name__ == "__main__":
    sys.exit(main())
