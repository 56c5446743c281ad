"""ReLU moments (theory §8): closed-form oracles O1–O7, robustness against an mpmath reference,
PSD of the exact covariance matrix, and the Numba kernels (JIT == Python).

Accuracy requirement (issue "Analytic core"): mean, variance and covariance finite, variance
never negative, and relative error ≤ 1e-9 wherever the true value is a normal float (absolute
otherwise) for standardised means μ/s ∈ [−40, 40] and s → 0. References are computed here
with mpmath (≥ 30 significant digits):

- mean/variance: Proposition 4 evaluated at 50 digits (the cancellation of Eq. (23) costs at
  most ~a⁴ ≈ 3e6, i.e. 7 of the 50 digits);
- covariance: the theory §8.2 one-dimensional integral at 30 digits with Gauss–Legendre panels
  graded geometrically toward the peak and both ends (its own error estimate is asserted to be
  ≤ 1e-20 relative), cross-checked on moderate arguments against an independent form,
  ``E[X₁⁺X₂⁺] = ∫ (z + a₁) E[(a₂ + Z₂)⁺ | Z₁ = z] φ(z) dz`` minus the product of the means.
"""

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import ndtr, roots_legendre
from scipy.stats import multivariate_normal

from refmem.errors import DataError
from refmem.symmetric import mirror_upper
from refmem.relu import (_GK_WG, _GK_WK, _GK_X, RTOL_QUAD, bvn_cdf, relu_cov_exact,
                         relu_cov_pairs_kernel, relu_cov_pairs_kernel_par,
                         relu_cov_pairs_quad_kernel, relu_cov_pairs_quad_kernel_par,
                         relu_cov_taylor, relu_mean_var, relu_moments, unit_mnv)

TINY = np.finfo(float).tiny          # smallest normal float64
REQ = 1e-9                           # required relative accuracy


def assert_accurate(got, true, what, req=REQ, scale=1.0):
    """Relative ≤ req where |true| is a normal float (scaled), absolute ≤ req·TINY·scale otherwise."""
    got, true = float(got), float(true)
    assert math.isfinite(got), f"{what}: not finite ({got})"
    if abs(true) >= TINY * scale:
        assert abs(got - true) <= req * abs(true), f"{what}: {got!r} vs {true!r}"
    else:
        assert abs(got - true) <= max(req, 1.0) * TINY * scale, f"{what}: {got!r} vs {true!r}"


# ---------------------------------------------------------------------- mpmath references
def mp_mean_var(mu, s, dps=50):
    """Proposition 4 at high precision: E = s φ(a) + μ Φ(a), E2 = (μ² + s²) Φ(a) + μ s φ(a).

    The working precision grows with |a| = |μ|/s (E2 − E² cancels by a factor ~a² for a ≫ 1).
    """
    if s != 0 and mu != 0:
        if abs(mu) / s > 60:            # Φ(±a) = 1/0 up to e^-1800: the limits are exact here
            return (mp.mpf(mu), mp.mpf(s) ** 2) if mu > 0 else (mp.mpf(0), mp.mpf(0))
        dps += int(2 * max(0.0, math.log10(abs(mu) / s + 1.0)))
    with mp.workdps(dps):
        mu, s = mp.mpf(mu), mp.mpf(s)
        if s == 0:
            return max(mu, 0), mp.mpf(0)
        a = mu / s
        e1 = s * mp.npdf(a) + mu * mp.ncdf(a)
        e2 = (mu * mu + s * s) * mp.ncdf(a) + mu * s * mp.npdf(a)
        return e1, e2 - e1 * e1


def mp_cov_tform(a1, a2, rho, dps=30):
    """Standardised Cov[X₁⁺, X₂⁺] by the theory §8.2 integral, graded Gauss–Legendre panels."""
    with mp.workdps(dps):
        a1, a2, rho = mp.mpf(a1), mp.mpf(a2), mp.mpf(rho)
        if rho == 0:
            return mp.mpf(0), mp.mpf(0)
        th = mp.asin(rho)
        F = lambda u: (a1 * a1 - 2 * a1 * a2 * u + a2 * a2) / (2 * (1 - u * u))
        lo, hi = (mp.mpf(0), th) if rho > 0 else (th, mp.mpf(0))
        big = max(abs(a1), abs(a2))
        us = mp.mpf(0) if big == 0 else min(abs(a1), abs(a2)) / big * (1 if a1 * a2 >= 0 else -1)
        tp = min(max(mp.asin(us), lo), hi)
        fmin = F(mp.sin(tp)) if abs(mp.sin(tp)) < 1 else max(a1 * a1, a2 * a2) / 2
        g = lambda t: abs(rho - mp.sin(t)) * mp.exp(-(F(mp.sin(t)) - fmin))
        Lh = hi - lo
        pts = {lo, hi, tp}
        for k in range(45):
            for c in (tp, lo, hi):
                pts.add(c + Lh * mp.mpf(2) ** -k)
                pts.add(c - Lh * mp.mpf(2) ** -k)
        pts = sorted(p for p in pts if lo <= p <= hi)
        I, err = mp.quad(g, pts, method="gauss-legendre", error=True)
        sc = mp.exp(-fmin) / (2 * mp.pi)
        return rho * mp.ncdf(a1) * mp.ncdf(a2) + sc * I, sc * err


def _ppm(m, sd):
    r = m / sd
    return sd * mp.npdf(r) + m * mp.ncdf(r)


def mp_cov_conditional(a1, a2, rho, dps=40):
    """Independent form: ∫_{−a₁}^∞ (z + a₁) E[(a₂ + ρz + √(1−ρ²)W)⁺] φ(z) dz − E[X₁⁺]E[X₂⁺]."""
    with mp.workdps(dps):
        a1, a2, rho = mp.mpf(a1), mp.mpf(a2), mp.mpf(rho)
        sd = mp.sqrt(1 - rho * rho)
        f = lambda z: (z + a1) * _ppm(a2 + rho * z, sd) * mp.npdf(z)
        hi = max(-a1, 0) + 40
        pts = sorted(set(mp.linspace(-a1, hi, int(4 * (hi + a1)) + 1)))
        E12 = mp.quad(f, pts + [mp.inf], method="gauss-legendre")
        return E12 - _ppm(a1, 1) * _ppm(a2, 1)


def ref_cov(a1, a2, rho):
    val, err = mp_cov_tform(a1, a2, rho)
    assert err <= 1e-20 * abs(val) + mp.mpf(10) ** -330, "mpmath reference did not converge"
    return val


# ====================================================================== quadrature constants
def test_gauss_kronrod_constants():
    """GK(10, 21): exact on monomials up to degree 31 (Kronrod) / 19 (Gauss); Gauss nodes = SciPy's."""
    x = np.concatenate([-_GK_X[:0:-1], _GK_X])
    wk = np.concatenate([_GK_WK[:0:-1], _GK_WK])
    wg = np.concatenate([_GK_WG[:0:-1], _GK_WG])
    for deg in range(32):
        exact = 2.0 / (deg + 1) if deg % 2 == 0 else 0.0
        assert abs(np.sum(wk * x ** deg) - exact) < 3e-16
        if deg < 20:
            assert abs(np.sum(wg * x ** deg) - exact) < 3e-16
    gx, gw = roots_legendre(10)
    np.testing.assert_allclose(np.sort(x[wg > 0]), np.sort(gx), rtol=0, atol=2e-16)
    np.testing.assert_allclose(np.sort(wg[wg > 0]), np.sort(gw), rtol=0, atol=2e-15)  # SciPy: ~1e-15


# ====================================================================== closed forms O1–O7
def test_O1_standard_normal():
    m, v = relu_mean_var(0.0, 1.0)
    assert abs(m - 0.3989422804014327) <= 1e-16
    assert abs(v - 0.3408450569081046) <= 1e-16


def test_O2_zero_variance_is_deterministic():
    mu = np.array([-3.0, -0.0, 0.0, 2.5, 1e300, -1e300])
    m, v = relu_mean_var(mu, np.zeros_like(mu))
    np.testing.assert_array_equal(m, np.maximum(mu, 0))
    np.testing.assert_array_equal(v, 0)


@pytest.mark.parametrize("rho,want", [(0.5, None), (-1.0, -1 / (2 * math.pi)), (0.0, 0.0),
                                      (1.0, None), (-0.4, None), (0.999999, None)])
def test_O3_arc_cosine_kernel(rho, want):
    """O3: μ = 0, s = 1: Cov = (√(1−ρ²) + ρ(π − arccos ρ) − 1)/(2π); ρ = 0.5 → 0.1453439."""
    with mp.workdps(40):                       # float64 loses digits in √(1−ρ²) near ρ = 1
        R = mp.mpf(rho)
        closed = float((mp.sqrt(1 - R * R) + R * (mp.pi - mp.acos(R)) - 1) / (2 * mp.pi))
    quad = float(relu_cov_exact(0.0, 1.0, 0.0, 1.0, rho, method="quad"))
    assert abs(quad - closed) <= 1e-15
    got = float(relu_cov_exact(0.0, 1.0, 0.0, 1.0, rho))      # fast routes: bound 1e-10 rel.
    assert abs(got - closed) <= 1e-10 * abs(closed)
    if want is not None:
        assert abs(got - want) <= 1e-15
    if rho == 0.5:
        assert abs(got - 0.1453439) < 5e-8


@pytest.mark.parametrize("a", [-39.0, -25.0, -8.0, -2.0, -0.3, 0.0, 0.4, 3.0, 12.0, 39.0])
def test_O4_rho_one_identical_inputs_gives_prop4_variance(a):
    s = 1.7
    got = float(relu_cov_exact(a * s, s, a * s, s, 1.0))
    want = float(relu_mean_var(a * s, s * s)[1])
    assert_accurate(got, want, f"a={a}", req=1e-11, scale=s * s)


def test_O5_zero_std_gives_zero_covariance():
    assert np.all(relu_cov_exact([1.0, -1.0, 0.0], [0.0, 1.0, 0.0], [2.0, 1.0, 0.3],
                                 [1.0, 0.0, 0.0], [0.5, -0.5, 1.0]) == 0)


def test_O6_bvn_at_origin_and_against_scipy():
    for rho in (-1.0, -0.99, -0.5, -0.1, 0.0, 0.3, 0.9, 0.999, 1.0):
        got = float(bvn_cdf(0.0, 0.0, rho))
        assert abs(got - (0.25 + math.asin(rho) / (2 * math.pi))) <= 1e-15
    rng = np.random.default_rng(0)
    for _ in range(30):
        h, k = rng.normal(size=2) * 2
        rho = rng.uniform(-0.98, 0.98)
        want = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([h, k])
        assert abs(float(bvn_cdf(h, k, rho)) - want) <= 1e-8


def test_O7_price_derivative_at_zero_correlation():
    """O7: ∂Cov/∂Γ₁₂ at Γ₁₂ = 0 equals Φ(a₁)Φ(a₂) (Price's theorem; theory §8.2)."""
    for mu1, s1, mu2, s2 in [(0.3, 1.0, -0.5, 2.0), (1.5, 0.7, 0.2, 1.3), (-2.0, 1.0, -1.0, 0.5)]:
        h = 1e-4
        d = (relu_cov_exact(mu1, s1, mu2, s2, h) - relu_cov_exact(mu1, s1, mu2, s2, -h)) / (
            2 * h * s1 * s2)
        assert abs(d - ndtr(mu1 / s1) * ndtr(mu2 / s2)) <= 1e-9


def test_closed_form_rosenbaum_agrees():
    """The theory §8.2 closed form (truncated-bivariate moments, Φ₂ from SciPy) equals the integral."""
    rng = np.random.default_rng(1)
    for _ in range(25):
        a1, a2 = rng.uniform(-2.5, 2.5, size=2)
        rho = rng.uniform(-0.95, 0.95)
        c1 = (a1 - rho * a2) / math.sqrt(1 - rho ** 2)
        c2 = (a2 - rho * a1) / math.sqrt(1 - rho ** 2)
        P2 = multivariate_normal(mean=[0, 0], cov=[[1, rho], [rho, 1]]).cdf([a1, a2])
        phi = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        E12 = ((a1 * a2 + rho) * P2 + a1 * phi(a2) * ndtr(c1) + a2 * phi(a1) * ndtr(c2)
               + math.sqrt(1 - rho ** 2) / (2 * math.pi)
               * math.exp(-(a1 ** 2 - 2 * rho * a1 * a2 + a2 ** 2) / (2 * (1 - rho ** 2))))
        m = lambda a: phi(a) + a * ndtr(a)
        want = E12 - m(a1) * m(a2)
        assert abs(float(relu_cov_exact(a1, 1, a2, 1, rho)) - want) <= 1e-8


def test_taylor_rule_eq28():
    np.testing.assert_array_equal(relu_cov_taylor([1.0, 1.0, -1.0, 0.0], [2.0, -1.0, 3.0, 1.0],
                                                  [0.3, 0.3, 0.3, 0.3]), [0.3, 0.0, 0.0, 0.0])


# ====================================================================== robustness vs mpmath
A_GRID = [-40.0, -38.5, -37.0, -30.0, -20.0, -10.0, -5.0, -2.0000001, -2.0, -1.9999999, -1.0,
          -1e-9, 0.0, 1e-9, 0.5, 2.0, 6.0, 10.0, 25.0, 38.0, 40.0]


def test_mean_var_against_mpmath_grid():
    """Mean and variance, a ∈ [−40, 40] (a fine grid plus branch boundaries), s = 1 and 3e-5."""
    grid = np.unique(np.concatenate([np.linspace(-40, 40, 321), A_GRID]))
    for s in (1.0, 3e-5):
        m, v = relu_mean_var(grid * s, np.full(grid.shape, s * s))
        assert np.all(v >= 0) and np.all(m >= 0)
        for a, mi, vi in zip(grid, m, v):
            em, ev = mp_mean_var(a * s, s)
            assert_accurate(mi, em, f"mean a={a} s={s}", scale=s)
            assert_accurate(vi, ev, f"var a={a} s={s}", scale=s * s)


@pytest.mark.parametrize("s", [1e-6, 1e-100, 1e-155, 1e-160, 1e-300, 5e-324])
def test_mean_var_s_to_zero(s):
    """s → 0 (including subnormal s): finite, non-negative, accurate (absolute near underflow)."""
    for mu in (-1.0, -1e-300, 0.0, 1e-310, 1e-300, 2.0):
        for a_target in (None, -3.0, 0.5):
            mm = mu if a_target is None else a_target * s
            m, v = relu_mean_var(mm, s * s)
            assert np.isfinite(m) and np.isfinite(v) and v >= 0 and m >= 0
            em, ev = mp_mean_var(mm, math.sqrt(s * s))          # the variance actually passed
            assert_accurate(m, em, f"mean mu={mm} s={s}", scale=max(s, 1e-300))
            assert abs(v - float(ev)) <= REQ * float(ev) + 2 * TINY


COV_CASES = [(a1, a2, rho)
             for a1 in (-37.0, -20.0, -6.0, -1.0, 0.0, 2.0, 15.0, 39.5)
             for a2 in (-26.0, -2.5, 0.7, 30.0)
             for rho in (-1.0, -0.999999, -0.6, -1e-7, 1e-7, 0.45, 0.999999, 1.0)]


def _check_cov_case(a1, a2, rho):
    got = relu_cov_exact(a1, 1.0, a2, 1.0, rho)
    assert_accurate(got, ref_cov(a1, a2, rho), f"cov {a1},{a2},{rho}")


def test_covariance_against_mpmath_grid():
    """Exact covariance over a ∈ [−40, 40]², ρ ∈ [−1, 1] (default suite: every third case)."""
    for case in COV_CASES[::3]:
        _check_cov_case(*case)


@pytest.mark.slow
def test_covariance_against_mpmath_full_grid():
    for case in COV_CASES:
        _check_cov_case(*case)


@pytest.mark.parametrize("a1,a2,rho", [(0.3, -0.5, 0.7), (-1.0, 0.5, 0.95), (-2.0, -1.5, 0.99),
                                       (1.0, 2.0, -0.6), (-1.5, -1.2, -0.8), (0.0, 2.0, -0.3)])
def test_mpmath_reference_against_independent_form(a1, a2, rho):
    """The mpmath §8.2 integral used as reference agrees with the conditional-expectation form."""
    a = mp_cov_tform(a1, a2, rho)[0]
    b = mp_cov_conditional(a1, a2, rho)
    assert abs(a - b) <= mp.mpf(10) ** -20 * abs(a)
    assert_accurate(relu_cov_exact(a1, 1.0, a2, 1.0, rho), a, "implementation")


@settings(max_examples=max(10, settings().max_examples))
@given(a1=st.floats(-40, 40), a2=st.floats(-40, 40),
       rho=st.one_of(st.floats(-1, 1), st.sampled_from([-1.0, 1.0, 1e-12, -1e-12, 0.0])),
       ls1=st.floats(-150, 150), ls2=st.floats(-150, 150))
def test_covariance_hypothesis_extremes(a1, a2, rho, ls1, ls2):
    """Random standardised means, correlations and scales 10^±150: finite, accurate, and
    |Cov| ≤ √(V₁V₂) (Cauchy–Schwarz)."""
    s1, s2 = 10.0 ** ls1, 10.0 ** ls2
    got = float(relu_cov_exact(a1 * s1, s1, a2 * s2, s2, rho))
    assert math.isfinite(got)
    want = ref_cov(a1, a2, rho)
    with mp.workdps(30):
        want_abs = want * mp.mpf(s1) * mp.mpf(s2)   # judge the returned (possibly subnormal) value
    assert_accurate(got, want_abs, f"cov {a1},{a2},{rho} s={s1},{s2}")
    v1 = float(relu_mean_var(a1, 1.0)[1])
    v2 = float(relu_mean_var(a2, 1.0)[1])
    assert abs(got / (s1 * s2)) <= math.sqrt(v1) * math.sqrt(v2) * (1 + 1e-12) + 1e-300


@given(mu=st.floats(-1e300, 1e300), lv=st.floats(-320, 300), sgn=st.booleans())
def test_mean_var_hypothesis_extremes(mu, lv, sgn):
    """Any finite μ and variance in [1e-320, 1e300]: finite, E ≥ max(μ, 0), V ≥ 0, V ≤ var."""
    var = 10.0 ** lv
    m, v = relu_mean_var(mu, var)
    assert np.isfinite(m) and np.isfinite(v)
    assert v >= 0 and m >= 0
    assert m >= max(mu, 0.0) * (1 - 1e-15)              # Jensen
    assert v <= var * (1 + 1e-12) + 1e-320               # Var[f(X)] ≤ Var X for 1-Lipschitz f


def test_bad_inputs():
    with pytest.raises(DataError):
        relu_mean_var(np.nan, 1.0)
    with pytest.raises(DataError):
        relu_mean_var(0.0, -1.0)
    with pytest.raises(DataError):
        relu_cov_exact(0.0, -1.0, 0.0, 1.0, 0.5)
    with pytest.raises(DataError):
        relu_cov_exact(np.inf, 1.0, 0.0, 1.0, 0.5)
    with pytest.raises(DataError):
        relu_moments(np.zeros(3), np.eye(3), "linear")
    # tiny negative rounding residues are accepted as 0
    m, v = relu_mean_var(1.0, -1e-18)
    assert v == 0 and m == 1.0


# ====================================================================== matrix form
def test_exact_matrix_is_psd_and_taylor_can_fail():
    """Theory §8.2: the exact covariance matrix is PSD. D15: Prop. 4 diagonal + Eq. (28)
    off-diagonals is not (μ = (0.5, 0.5), Γ₁₂ = 0.999: min eigenvalue −0.446)."""
    rng = np.random.default_rng(2)
    for d in (2, 5, 12):
        A = rng.normal(size=(d, d))
        G = A @ A.T / d
        mu = rng.normal(size=d) * np.sqrt(np.diag(G))
        _, C = relu_moments(mu, G, "exact")
        np.testing.assert_array_equal(C, C.T)
        assert np.linalg.eigvalsh(C)[0] >= -1e-12 * np.trace(C)
    mu = np.array([0.5, 0.5])
    G = np.array([[1.0, 0.999], [0.999, 1.0]])
    _, Ct = relu_moments(mu, G, "taylor")
    assert abs(np.linalg.eigvalsh(Ct)[0] - (-0.446)) < 1e-3
    _, Ce = relu_moments(mu, G, "exact")
    assert np.linalg.eigvalsh(Ce)[0] >= 0


def test_matrix_form_uses_pairwise_formula_and_in_place():
    rng = np.random.default_rng(3)
    d = 6
    A = rng.normal(size=(d, d))
    G = A @ A.T / d
    G[0, :] = G[:, 0] = 0.0                      # a deterministic coordinate
    mu = rng.normal(size=d)
    m, C = relu_moments(mu, G.copy(), "exact")
    s = np.sqrt(np.diag(G))
    for i in range(d):
        for j in range(d):
            if i == j:
                want = relu_mean_var(mu[i], G[i, i])[1]
            elif s[i] == 0 or s[j] == 0:
                want = 0.0
            else:
                a, b = min(i, j), max(i, j)          # the lower triangle mirrors i < j
                want = relu_cov_exact(mu[a], s[a], mu[b], s[b], G[a, b] / (s[a] * s[b]))
            # the row pass may sum more series orders than the per-pair route: both are within
            # EPS_FAST = 1e-10 of the truth
            assert abs(C[i, j] - want) <= 2 * R.EPS_FAST * abs(want)
    np.testing.assert_array_equal(m, relu_mean_var(mu, np.diag(G))[0])
    G2 = G.copy()
    m2, C2 = relu_moments(mu, G2, "exact", out=G2)
    assert C2 is G2
    np.testing.assert_array_equal(C2, C)
    for mode in ("exact", "taylor"):
        mm, cc = relu_moments(mu, None, mode)
        np.testing.assert_array_equal(mm, np.maximum(mu, 0))
        assert cc is None


def test_row_pass_against_mpmath_and_the_pair_route():
    """The matrix (row-at-a-time) pass on a correlation matrix whose pairs take every route:
    each entry within the contract (1e-9) of mpmath, and within 2·EPS_FAST of the per-pair
    route (:func:`relu_cov_exact`, same routes; more series orders at most)."""
    rng = np.random.default_rng(11)
    d = 48
    A = rng.normal(size=(d, 3 * d)) + rng.normal(size=(d, 1)) * 0.8   # common mode: ρ up to ~0.8
    G = A @ A.T
    sd = np.sqrt(np.diag(G))
    G = G / np.outer(sd, sd)                                            # s = 1: a = μ
    mu = np.concatenate([rng.uniform(-3, 3, 24), rng.uniform(-14, -4, 12), rng.uniform(4, 9, 12)])
    _, C = relu_moments(mu, G.copy(), "exact", parallel=True)
    iu = np.triu_indices(d, 1)
    pair = relu_cov_exact(mu[iu[0]], 1.0, mu[iu[1]], 1.0, G[iu])
    got = C[iu]
    assert np.all(np.abs(got - pair) <= 2 * R.EPS_FAST * np.abs(pair) + 1e-300)
    pick = np.random.default_rng(0).choice(len(got), 120, replace=False)
    for t in pick:
        i, j = iu[0][t], iu[1][t]
        assert_accurate(got[t], ref_cov(mu[i], mu[j], G[i, j]), f"pair {i},{j}")


@pytest.mark.kernel
def test_pair_kernels_jit_equal_python():
    """JIT kernel == its Python statement (style G3); parallel == serial bit for bit; the fast
    kernels write the upper triangle only."""
    rng = np.random.default_rng(4)
    d = 7
    A = rng.normal(size=(d, d))
    G = A @ A.T / d
    G[1, 2] = G[2, 1] = 0.0
    mu = rng.normal(size=d) * 3
    mu[3] = -50.0                                  # beyond the ±40 limit
    s = np.sqrt(np.diag(G))
    mu[4] = mu[5] = 0.3                            # a pair on the ρ = 1 route
    G[4, :] = G[5, :] = G[:, 4] = G[:, 5] = G[4, 4] = 0.0
    G[4, 4] = G[5, 5] = G[4, 5] = G[5, 4] = 1.0
    s = np.sqrt(np.diag(G))
    mnv = unit_mnv(mu, s)
    outs, quads, counts = [], [], []
    for kern in (relu_cov_pairs_kernel, relu_cov_pairs_kernel_par):
        for f in (kern, getattr(kern, "py_func", kern)):
            out = np.zeros((d, d))
            counts.append(f(mu, s, G, out, mnv, RTOL_QUAD, _GK_X, _GK_WK, _GK_WG, np.ones(d),
                            0.0))
            assert not np.tril(out).any()          # the upper triangle only (relu_moments mirrors)
            outs.append(mirror_upper(out))
    for kern in (relu_cov_pairs_quad_kernel, relu_cov_pairs_quad_kernel_par):
        for f in (kern, getattr(kern, "py_func", kern)):
            out = np.zeros((d, d))
            f(mu, s, G, out, RTOL_QUAD, _GK_X, _GK_WK, _GK_WG)
            quads.append(out)
    for o in outs[1:]:
        np.testing.assert_allclose(o, outs[0], rtol=1e-13, atol=1e-300)
    np.testing.assert_array_equal(outs[2], outs[0])            # parallel == serial (JIT)
    for c in counts:
        np.testing.assert_array_equal(c, counts[0])
        assert c[:5].sum() == d * (d - 1) // 2
    assert counts[0][4] >= 1                                   # the ρ = 1 pair
    for o in quads[1:]:
        np.testing.assert_allclose(o, quads[0], rtol=1e-13, atol=1e-300)
    np.testing.assert_array_equal(quads[2], quads[0])
    off = ~np.eye(d, dtype=bool)                               # routes agree with quadrature
    np.testing.assert_allclose(outs[0][off], quads[0][off], rtol=1e-9, atol=1e-300)
    np.testing.assert_array_equal(outs[0], outs[0].T)


# ====================================================================== fast routes (theory §8.2)
from refmem import relu as R  # noqa: E402
from scipy.optimize import brentq  # noqa: E402
from scipy.special import log_ndtr  # noqa: E402


def route_of(a1, a2, rho):
    return int(relu_cov_exact(a1, 1.0, a2, 1.0, rho, return_route=True)[1])


def mp_cov_rho1(a1, a2, dps=80):
    """ρ = 1 reference: E[(a₁+Z)⁺(a₂+Z)⁺] = (a₁a₂ + 1)Φ(m) + Mφ(m), m = min, M = max, minus the
    product of the means (Prop. 4), at 80 digits (independent of Eq. U1)."""
    with mp.workdps(dps):
        a1, a2 = mp.mpf(a1), mp.mpf(a2)
        m, M = min(a1, a2), max(a1, a2)
        E12 = (a1 * a2 + 1) * mp.ncdf(m) + M * mp.npdf(m)
        return E12 - _ppm(a1, 1) * _ppm(a2, 1)


def test_cramer_inequality_and_product_bound_constants():
    """Eq. S3 uses |He_n(x)| e^{−x²/4} <= K √(n!) (K = 1.086435); Eq. P1 uses
    (|ρ| arcsin|ρ| − 1 + √(1−ρ²))/ρ² <= π/2 − 1 and (π/2 − 1)/(2π) <= 0.0909."""
    from numpy.polynomial.hermite_e import hermeval
    x = np.linspace(-30, 30, 6001)
    for n in range(0, 60):
        c = np.zeros(n + 1)
        c[n] = 1.0
        with np.errstate(over="ignore", invalid="ignore"):
            v = np.abs(hermeval(x, c)) * np.exp(-x * x / 4) / math.sqrt(math.factorial(n))
        assert np.nanmax(v) <= R._CRAMER_K
    r = np.linspace(1e-4, 1.0, 10001)
    h = (r * np.arcsin(r) - 1 + np.sqrt(1 - r * r)) / r ** 2
    assert np.all(h <= math.pi / 2 - 1 + 1e-12)
    assert (math.pi / 2 - 1) / (2 * math.pi) <= 0.0909


@pytest.mark.kernel
@pytest.mark.parametrize("a1,a2,ar,lam", [
    (0.5, -1.0, 0.3, 0.0),            # direct branch
    (-25.0, -17.0, 0.0029, 154.0),    # deep tails: |ρ|^{Λ+3} underflows, log domain
    (-37.0, -36.0, 0.8, 340.0),       # e^{(a_i² + a_j²)/4} ~ 1e290: log domain
    (-9.0, -12.0, 0.05, 19.0)])
def test_cramer_part_against_mpmath(a1, a2, ar, lam):
    """The Cramér part of Eq. S3' (theory §8.2): K² e^{(a_i²+a_j²)/4} |ρ|^{Λ+3} /
    ((Λ+2)(Λ+3)(1−|ρ|)), in either branch of its evaluation, to 1e-12 relative (a bound:
    never 0 where the true value is positive)."""
    K = R._CRAMER_K
    lee = 2 * math.log(K) + (a1 * a1 + a2 * a2) / 4
    ee = math.exp(lee) if lee < 700 else math.inf
    got = R._cramer_part(ee, lee, ar, lam, 1.0 / (1.0 - ar))
    with mp.workdps(40):
        want = (mp.mpf(K) ** 2 * mp.e ** ((mp.mpf(a1) ** 2 + mp.mpf(a2) ** 2) / 4)
                * mp.mpf(ar) ** (lam + 3) / ((lam + 2) * (lam + 3) * (1 - mp.mpf(ar))))
    # on the series route (|a| <= 37, |ρ| <= 0.85) the part is at most
    # K² e^{684.5} / (2·3·0.15) ≈ 3e297: always a finite float
    assert want < 1e308
    assert got > 0 and abs(got - float(want)) <= 1e-12 * float(want)


@pytest.mark.kernel
@pytest.mark.parametrize("a", [-37.0, -12.0, -3.3, 0.0, 0.7, 5.0, 20.0])
def test_series_tables_against_mpmath(a):
    """Per-unit tables (Eq. S2): q_k(a) = He_k(a)/√(k!(k+1)(k+2)) and its error bound."""
    K = R.K_SERIES
    U = np.empty((1, R._NU))
    QE = np.empty((1, 2 * K))
    R._unit_prep(np.array([a]), np.array([1.0]), np.zeros((1, 3)), U, QE)
    with mp.workdps(60):
        for k in (0, 1, 2, 5, 30, 77, K - 1):
            He = mp.hermite(k, mp.mpf(a) / mp.sqrt(2)) / mp.mpf(2) ** (mp.mpf(k) / 2)
            q = He / mp.sqrt(mp.factorial(k) * (k + 1) * (k + 2))
            err = abs(QE[0, k] - q)
            bound = QE[0, K + k] - abs(QE[0, k])
            assert err <= bound * 1.0001 + mp.mpf(10) ** -300, (k, float(err), bound)
    assert U[0, R._UR] == pytest.approx(ndtr(a) / (math.exp(-a * a / 2) / math.sqrt(2 * math.pi)),
                                        rel=1e-12)


@pytest.mark.parametrize("a1,a2", [(-34.9, -34.0), (-20.0, 3.0), (-3.0, -2.5), (0.0, 0.0),
                                   (2.5, -1.0), (39.0, 12.0), (-35.1, -20.0)])
@pytest.mark.parametrize("drho", [0.0, 5e-16])
def test_rho_one_route_against_mpmath(a1, a2, drho):
    """Route U (Eq. U1) at ρ = 1 and within 1e-15 of it; a < −35 leaves it (still accurate)."""
    rho = 1.0 - drho
    r = route_of(a1, a2, rho)
    assert (r == 4) == (min(a1, a2) >= R._A_ONE)
    assert_accurate(relu_cov_exact(a1, 1.0, a2, 1.0, rho), mp_cov_rho1(a1, a2), f"{a1},{a2}")


def _p_margin(a1, a2, rho):
    lo, hi = (0.0, rho) if rho > 0 else (rho, 0.0)
    fmin = R._fmin_and_peak(a1, a2, lo, hi)[0]
    return fmin + log_ndtr(a1) + log_ndtr(a2) - R._P_LOG


@settings(max_examples=12, deadline=None)
@given(rho=st.floats(-0.99, 0.99).filter(lambda r: abs(r) > 0.01), c=st.floats(0.2, 1.0),
       delta=st.floats(-0.3, 0.3))
def test_product_route_boundary_hypothesis(rho, c, delta):
    """Around the switch-over of Eq. P1 (a₂ = c a₁, a₁ at the margin's root ± δ): accurate on
    both sides, and the product route is taken exactly where the margin is >= 0."""
    a_root = brentq(lambda a: _p_margin(a, c * a, rho), 0.0, 40.0)
    a1 = a_root + delta
    a2 = c * a1
    assert (route_of(a1, a2, rho) == 1) == (_p_margin(a1, a2, rho) >= 0)
    assert_accurate(relu_cov_exact(a1, 1.0, a2, 1.0, rho), ref_cov(a1, a2, rho), f"{a1},{a2},{rho}")


@settings(max_examples=12, deadline=None)
@given(which=st.sampled_from(["rho", "a", "terms", "negrho"]), u=st.floats(0, 1),
       v=st.floats(0, 1), w=st.floats(0, 1))
def test_series_route_boundaries_hypothesis(which, u, v, w):
    """Around the series route's limits: |ρ| = RHO_SERIES, |a| = A_SERIES, the K_SERIES
    term budget (deep tails with |ρ a₁ a₂| ≈ 60–140) and ρ < 0 (alternating terms)."""
    if which == "rho":
        rho = (R.RHO_SERIES + (u - 0.5) * 0.02) * (1 if v > 0.5 else -1)
        a1, a2 = (w - 0.5) * 6, (v - 0.5) * 6
    elif which == "a":
        a1 = -(R.A_SERIES + (u - 0.5) * 0.4)
        a2 = (v - 0.5) * 8
        rho = (w - 0.5) * 0.1
    elif which == "terms":
        a1, a2 = -(6 + 14 * u), -(6 + 14 * v)
        rho = min(0.95, (60 + 80 * w) / (a1 * a2))
    else:
        a1, a2 = (u - 0.7) * 14, (v - 0.7) * 14
        rho = -0.05 - 0.85 * w
    got, route = relu_cov_exact(a1, 1.0, a2, 1.0, rho, return_route=True)
    assert int(route) in (1, 2, 3)
    assert_accurate(got, ref_cov(a1, a2, rho), f"{which}: {a1},{a2},{rho} route {int(route)}")


def test_routes_straddle_their_boundaries():
    """The boundary tests above really see both sides (fixed examples)."""
    a_root = brentq(lambda a: _p_margin(a, a, 0.5), 0.0, 40.0)
    assert route_of(a_root + 0.05, a_root + 0.05, 0.5) == 1
    assert route_of(a_root - 0.05, a_root - 0.05, 0.5) != 1
    assert route_of(0.3, -0.2, R.RHO_SERIES - 0.01) == 2
    assert route_of(0.3, -0.2, R.RHO_SERIES + 0.01) == 3
    assert route_of(-36.9, 0.5, 0.02) == 2 and route_of(-37.1, 0.5, 0.02) == 3
    assert route_of(-10.0, -10.0, 0.5) == 2 and route_of(-20.0, -20.0, 0.5) == 3
    assert route_of(1.0, 1.0, 1.0) == 4 and route_of(-35.5, -35.5, 1.0) == 3


def test_fast_routes_agree_with_quadrature_on_random_pairs():
    """auto == quad to the contract on 3000 random pairs over every route (no mpmath)."""
    rng = np.random.default_rng(7)
    n = 3000
    a1 = rng.uniform(-38, 38, n) * rng.uniform(0, 1, n) ** 2
    a2 = rng.uniform(-38, 38, n) * rng.uniform(0, 1, n) ** 2
    rho = np.concatenate([rng.uniform(-1, 1, n - 200), np.ones(100), 1 - 1e-16 * np.arange(100)])
    a2[-200:-100] = a1[-200:-100]
    s1, s2 = 10.0 ** rng.uniform(-3, 3, n), 10.0 ** rng.uniform(-3, 3, n)
    got, route = relu_cov_exact(a1 * s1, s1, a2 * s2, s2, rho, return_route=True)
    quad = relu_cov_exact(a1 * s1, s1, a2 * s2, s2, rho, method="quad")
    assert set(np.unique(route)) >= {1, 2, 3, 4}
    big = np.abs(quad) >= TINY
    assert np.all(np.abs(got[big] - quad[big]) <= 2e-9 * np.abs(quad[big]))
    assert np.all(np.abs(got[~big] - quad[~big]) <= 2 * TINY)


@pytest.mark.parametrize("a1,a2,rho", [
    (-25.57513809961176, -17.072671032025873, 0.0028800890482417974),   # monotone bound (S3')
    (-22.074215473701177, -24.272366746643126, 0.002339461413935974),
    (-31.43406949352081, -17.961802922975956, -0.08211894749390966),    # alternating, rejected
    (-31.43406949352081, -14.519146063437287, -0.09689281138410112),
    (-12.0, -14.0, 0.3), (-30.0, 2.0, 0.2), (-9.0, -1.0, -0.6)])
def test_series_deep_tail_pairs_against_mpmath(a1, a2, rho):
    """Deep-tail pairs from the full-width CNN after conv 2 (theory §8.2, Eqs. S3–S4): the
    sharper monotone-region remainder accepts the series only where it is accurate, and
    alternating sums (ρ < 0) whose rounding bound fails go to the quadrature."""
    got, route = relu_cov_exact(a1, 1.0, a2, 1.0, rho, return_route=True)
    assert_accurate(got, ref_cov(a1, a2, rho), f"{a1},{a2},{rho} route {int(route)}")


@pytest.mark.parametrize("a1,a2,rho", [(-2.7, -2.69, 0.9999), (3.3, 2.35, 0.9958), (-4.8, -4.82, 0.999996),
                                       (-20.15, -21.56, -0.9999999999995), (0.4, -0.4, -0.995),
                                       (-23.72, -22.05, -0.9999963), (1.0, 6.0, 0.99),
                                       (-30.0, -29.0, 1 - 1e-13)])
def test_fallback_near_one_correlation_against_mpmath(a1, a2, rho):
    """Fallback quadrature for 0.99 <= |ρ| < 1 (w = log cos t on |t| >= π/4, theory §8.2 route
    Q) against mpmath, and against the reference quadrature route."""
    got, route = relu_cov_exact(a1, 1.0, a2, 1.0, rho, return_route=True)
    want = ref_cov(a1, a2, rho)
    assert_accurate(got, want, f"{a1},{a2},{rho} route {int(route)}")
    quad = relu_cov_exact(a1, 1.0, a2, 1.0, rho, method="quad")
    assert_accurate(quad, want, f"quad {a1},{a2},{rho}")


@pytest.mark.parametrize("mode", ["exact", "taylor"])
@pytest.mark.parametrize("d", [5, 300])
def test_relu_moments_reads_and_writes_the_upper_triangle(mode, d):
    """relu_moments reads only the upper triangle and the diagonal of Γ (NaN below changes
    nothing); symmetric=False leaves the lower triangle of ``out`` as it was and its upper
    triangle and diagonal equal the mirrored result bit for bit (serial and parallel)."""
    rng = np.random.default_rng(d)
    A = rng.normal(size=(d, d))
    G = A @ A.T / d
    G = np.triu(G) + np.triu(G, 1).T
    mu = rng.normal(size=d)
    m0, full = relu_moments(mu, G.copy(), mode)
    np.testing.assert_array_equal(full, full.T)
    junk = G.copy()
    low = np.tril_indices(d, -1)
    junk[low] = np.nan
    m1, same = relu_moments(mu, junk.copy(), mode)
    np.testing.assert_array_equal(m1, m0)
    np.testing.assert_array_equal(same, full)
    out = junk.copy()
    _, upper = relu_moments(mu, out, mode, out=out, symmetric=False)
    assert upper is out and np.isnan(upper[low]).all()
    iu = np.triu_indices(d)
    np.testing.assert_array_equal(upper[iu], full[iu])


@pytest.mark.kernel
def test_vector_routing_equals_the_scalar_route():
    """_route_chunk (the branch-free classification of the row pass) gives every pair the
    route of _route, and the trivial and product values bit for bit, on units across every
    boundary (|a| = 37, 40, deep tails, s = 0) and correlations at 0, ±0.85, near and at ±1;
    it leaves to the scalar route only |ρ| >= 1 − 1e-15 and product values near underflow."""
    rng = np.random.default_rng(21)
    a = np.concatenate([[-45.0, -40.0, -37.0, -36.9, -12.0, -8.0, -3.0, -0.5, 0.0, 0.3, 2.0,
                         6.0, 20.0, 36.9, 37.0, 40.5, 45.0], rng.uniform(-10, 10, 23)])
    d = a.size
    sd = np.exp(rng.uniform(-3, 3, d))
    sd[8] = 0.0
    mu = a * np.where(sd > 0, sd, 1.0)
    U, QE = R._unit_tables(mu, sd, unit_mnv(mu, sd))
    UT = np.ascontiguousarray(U.T)
    rhos = np.concatenate([[0.0, 0.85, -0.85, 0.8500001, 1 - 1e-16, 1.0, -1.0, -1 + 1e-16,
                            1e-300], rng.uniform(-1, 1, d - 9)])
    seen = set()
    for i in range(d):
        RHO = rng.permutation(rhos)
        S12 = sd[i] * sd
        n = d
        out = [np.full(n, np.nan) for _ in range(5)]
        CD = np.full(n, -1, dtype=np.int64)
        R._route_chunk(U[i, R._UA], U[i, R._UP], U[i, R._ULP], U[i, R._UR], U[i, R._UEE], RHO,
                       S12, UT[R._UA], UT[R._UP], UT[R._ULP], UT[R._UR], UT[R._UEE], *out, CD)
        res, RR, BA = out[0], out[1], out[2]
        for j in range(n):
            rho = min(1.0, max(-1.0, RHO[j]))
            c, r = getattr(R._route, "py_func", R._route)(U, i, j, rho, S12[j])
            code = CD[j]
            seen.add(int(code))
            if code == R._C_SLOW:
                p = U[i, R._UP] * U[j, R._UP]
                fast = (p > 1e-280 and abs(rho) > 1e-280 and 1e-280 < S12[j] < 1e280
                        and abs(rho) * p > 1e-280)
                assert abs(rho) >= R._RHO_ONE or (r == 1 and not fast)
                continue
            assert code == r, (i, j, code, r)
            if code in (0, 1):
                assert res[j] == c or (res[j] == 0.0 and c == 0.0)
            if code == 2:
                assert RR[j] == rho and BA[j] == rho * U[i, R._UR] * U[j, R._UR]
            else:
                assert RR[j] == 0.0
    assert {0, 1, 2, 3, R._C_SLOW} <= seen


def test_negligible_floor_sets_the_quadrature_absolute_tolerance():
    """With the floor τ, a quadrature pair that is not zeroed may stop once its error estimate
    is below ``_QUAD_ATOL τ max v`` (absolute): deep-tail pairs with a high correlation (route
    Q) move, but by less than that, and stay within that of mpmath."""
    moved = 0
    for a1, a2, r in [(-6.0, -2.0, 0.9), (-8.0, -1.6, 0.78)]:
        mu = np.array([0.0, a1, a2])
        G = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, r], [0.0, r, 1.0]])
        assert route_of(a1, a2, r) == 3
        _, v = relu_mean_var(mu, np.diag(G))
        _, full = relu_moments(mu, G.copy(), "exact", parallel=False)
        tau = 0.5 * np.sqrt(v[1] * v[2]) / v.max()           # the pair is not zeroed
        _, c = relu_moments(mu, G.copy(), "exact", parallel=False, negligible=tau)
        atol = R._QUAD_ATOL * tau * v.max()
        assert abs(c[1, 2] - full[1, 2]) <= atol
        assert abs(c[1, 2] - float(ref_cov(a1, a2, r))) <= atol + 1e-9 * abs(full[1, 2])
        moved += c[1, 2] != full[1, 2]
    assert moved >= 1


def test_negligible_pairs_are_zeroed_only_within_their_bound():
    """relu_moments(negligible=τ): exactly the pairs with sqrt(v_i v_j) ≤ τ max v are 0 (and
    their exact value is within that bound, Cauchy–Schwarz), every other entry is bit-identical
    to the full computation; τ = 0 is the full computation (serial and parallel kernels)."""
    rng = np.random.default_rng(3)
    d = 40
    A = rng.normal(size=(d, d))
    G = A @ A.T / d + 0.05 * np.eye(d)
    mu = rng.normal(size=d) * 2.0
    mu[:12] = -rng.uniform(8.0, 14.0, size=12) * np.sqrt(np.diag(G)[:12])   # deep tails
    _, full = relu_moments(mu, G, "exact", parallel=False)
    _, v = relu_mean_var(mu, np.diag(G))
    tau = 1e-12
    for par in (False, True):
        _, c0 = relu_moments(mu, G, "exact", parallel=par, negligible=0.0)
        np.testing.assert_array_equal(c0, full)
        _, c = relu_moments(mu, G, "exact", parallel=par, negligible=tau)
        bound = np.sqrt(np.outer(v, v))
        zeroed = (bound <= tau * v.max()) & ~np.eye(d, dtype=bool)
        assert zeroed.sum() > 0 and (~zeroed).sum() > d
        np.testing.assert_array_equal(c[zeroed], 0.0)
        np.testing.assert_array_equal(c[~zeroed], full[~zeroed])
        assert np.all(np.abs(full[zeroed]) <= bound[zeroed] * (1 + 1e-12))
    with pytest.raises(DataError):
        relu_moments(mu, G, "exact", negligible=-1.0)
