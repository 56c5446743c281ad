"""Moments of a rectified Gaussian vector (theory §8): mean, variance and covariance of ReLU(X).

Every function here works on the pre-activation moments of a Gaussian vector ``X`` (theory §2
A6): means ``mu``, standard deviations ``s`` (``s_i = sqrt(Γ_ii)``), correlations ``rho`` and
the standardised means ``a = mu / s``.

- :func:`relu_mean_var` — Proposition 4 (theory §8.1) in a cancellation-free form, including the
  deep negative tail (a continued fraction for the Mills ratio replaces the cancelling
  ``E Z² − (E Z)²`` of Eq. (23), corrects D14);
- :func:`relu_cov_exact` — the exact covariance of two rectified jointly Gaussian variables
  (theory §8.2, corrects Eq. (28), D15). Each pair takes the cheapest of four exact routes whose
  proven error bound is below ``EPS_FAST = 1e-10`` relative (theory §8.2 "Fast evaluation"):
  the ρ = 1 formula (Eq. U1), the product ``Γ₁₂Φ(a₁)Φ(a₂)`` when the integral term is provably
  negligible (Eq. P1), the Mehler/Hermite series in ρ with per-unit coefficients and a
  Cramér remainder bound (Eqs. S1–S4), and otherwise the adaptive Gauss–Kronrod quadrature of
  the one-dimensional integral over ``t ∈ [0, arcsin ρ]`` (``method="quad"`` forces it; it is
  the reference route);
- :func:`relu_cov_taylor` — the paper's first-order rule, Eq. (28) with ``f'(μ) = 1[μ > 0]``
  (theory §8.3; kept for comparison — it is rejected by Monte-Carlo and can be non-PSD);
- :func:`relu_moments` — the matrix form used by the network pass: mean vector and full
  covariance matrix (exact or Taylor off-diagonals, Prop. 4 diagonal); its pair kernels
  :func:`relu_cov_pairs_kernel` / ``_par`` use the routes above (per-unit tables once, then
  O(1)–O(K) work a pair), :func:`relu_cov_pairs_quad_kernel` / ``_par`` the quadrature only;
- :func:`bvn_cdf` — the bivariate normal cdf ``Φ₂(h, k; ρ)`` (Plackett's integral, theory §8.2),
  a building block for tests and for the closed form.

Accuracy (checked against mpmath at 50 digits in ``tests/test_relu.py``): relative error
≤ 1e-9 wherever the true value is a normal float (absolute otherwise) for standardised means
in [−40, 40], any ``s`` ≥ 0 (``s → 0`` included) and ``ρ ∈ [−1, 1]``; the variance is never
negative and the exact covariance matrix is PSD (up to rounding).

Numerics of the exact covariance (standardised, ``C = Cov / (s₁ s₂)``)::

    C = ρ Φ(a₁) Φ(a₂) + (1/2π) ∫_0^{arcsin ρ} (ρ − sin t) exp(−f(sin t)) dt,
    f(u) = (a₁² − 2 a₁ a₂ u + a₂²) / (2 (1 − u²)).

``f`` has a single minimum on (−1, 1), at ``u* = a₁/a₂`` or ``a₂/a₁`` (the one of modulus
≤ 1), where ``f = max(a₁², a₂²)/2``. The integrand is scaled by ``exp(f_min)`` (the factor is
applied at the end), so it is O(1) at its peak whatever the tail depth, and the interval is
split at the peak. The integral is then evaluated by globally adaptive 21-point
Gauss–Kronrod quadrature (the 10-point Gauss–Legendre rule with its Kronrod extension and
QUADPACK's error heuristic) to a relative tolerance of 1e-13. For ρ ≥ 0 both terms are
positive; for ρ < 0 the integral is positive and ``ρΦΦ`` negative, and their cancellation is
bounded by about ``|ρ a₁ a₂|`` (≤ 1.6e3 where the result is a normal float). Standardised
means beyond ±40 are replaced by their limits (error below 1e-340 relative).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy.special import ndtr

from .errors import DataError
from .symmetric import mirror_upper, paired_row

__all__ = ["relu_mean_var", "relu_cov_exact", "relu_cov_taylor", "relu_moments", "bvn_cdf",
           "A_LIMIT", "RTOL_QUAD"]

A_LIMIT = 40.0
"""Standardised means with |a| > A_LIMIT are replaced by ±∞ (Φ(−40) ≈ 4e-350 is below the
smallest subnormal float, so the limit is exact in float64)."""

RTOL_QUAD = 1e-13
"""Relative tolerance of the adaptive Gauss–Kronrod quadrature (theory §8.2 integral)."""

_MAX_PANELS = 256
_WS_SIZE = 4 * _MAX_PANELS + 23
_U_FORM_MAX = 0.9
_LOGCOS_RHO = 0.99     # fallback: |ρ| from here to 1 integrated in w = log cos t on |t| >= π/4
_SPLIT_RANGE = 4.0      # split at an interior peak only if f varies by more than this       # |ρ| up to this: integrate in u = sin t (cheaper, same integral)
_TAIL_A = -2.0          # a below this: continued-fraction (Mills ratio) branch of Prop. 4
_CF_TERMS = 120         # converged to machine precision for a <= -2 (checked with mpmath)
_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_2PI = 1.0 / (2.0 * math.pi)
_2PI = 2.0 * math.pi

# Gauss–Kronrod (10, 21) on [-1, 1]: abscissae x_k >= 0 (x_0 = 0), Kronrod weights, and the
# Gauss weights of the 10-point Gauss–Legendre nodes (odd k; 0 for the Kronrod-only nodes).
# Computed with mpmath at 60 digits (Stieltjes polynomial roots, exactness to degree 31);
# ``tests/test_relu.py`` re-checks exactness on monomials and the Gauss nodes against SciPy.
_GK_X = np.array([
    0.0,
    0.14887433898163121088, 0.29439286270146019813, 0.4333953941292471908,
    0.56275713466860468334, 0.67940956829902440623, 0.78081772658641689706,
    0.86506336668898451073, 0.930157491355708226, 0.97390652851717172008,
    0.99565716302580808074])
_GK_WK = np.array([
    0.14944555400291690566,
    0.14773910490133849137, 0.1427759385770600808, 0.13470921731147332593,
    0.12349197626206585108, 0.1093871588022976419, 0.093125454583697605535,
    0.075039674810919952767, 0.054755896574351996031, 0.032558162307964727479,
    0.011694638867371874278])
_GK_WG = np.array([
    0.0,
    0.29552422471475287017, 0.0, 0.26926671930999635509,
    0.0, 0.219086362515982044, 0.0,
    0.14945134915058059315, 0.0, 0.066671344308688137594,
    0.0])


# ====================================================================== mean and variance
def _mills_cf(x):
    """Continued-fraction tails ``T₁, T₂`` of the Mills ratio, for ``x >= 2`` (array).

    ``R(x) = Φ̄(x)/φ(x) = 1/(x + T₁)``, ``T_k = k/(x + T_{k+1})`` (Laplace's continued fraction),
    evaluated backwards from ``T_{N+1} = 0`` with N = 120 terms.
    """
    T = np.zeros_like(x)
    T2 = np.zeros_like(x)
    for k in range(_CF_TERMS, 0, -1):
        T2, T = T, k / (x + T)
    return T, T2


def relu_mean_var(mu, var):
    r"""Mean and variance of ``ReLU(X)`` for ``X ~ N(mu, var)`` (elementwise, broadcasting).

    Theory §8.1 (Proposition 4 with γ read as the standard deviation, D7), evaluated without
    cancellation (corrects Eq. (23), D14). With ``s = sqrt(var)``, ``a = mu/s``:

    - ``a >= 0``: ``E = s(φ(a) + aΦ(a))``,
      ``V = s² [1 + (a²−1)Φ̄(a) − aφ(a) − (φ(a) − aΦ̄(a))²]``;
    - ``−2 <= a < 0``: ``E = s(φ(a) + aΦ(a))``, ``V = s² [(a²+1)Φ(a) + aφ(a) − E²/s²]``;
    - ``a < −2`` (deep tail): with Laplace's continued fraction ``R = Φ(a)/φ(a) = 1/(x + T₁)``,
      ``x = −a``, ``E = s φ(a) T₁ R`` and ``V = s² φ(a) T₁ R (T₂ − φ(a) T₁ R)``, where
      ``1 − xR = T₁R`` and ``(x²+1)R − x = T₁T₂R`` remove the cancellation (the spec's
      truncated-normal / asymptotic-series route, in an exactly equivalent form);
    - ``a > 40``: ``E = mu``, ``V = s²``; ``s = 0``: ``E = max(mu, 0)``, ``V = 0`` (oracle O2).

    The result is accurate to ~1e-15 relative (mpmath check), never negative.

    Parameters
    ----------
    mu, var : array_like
        Means and variances of the Gaussian inputs. Variances must be >= 0; a negative
        rounding residue (above −1e-9 (mu² + max|var|)) is treated as 0.

    Returns
    -------
    mean, var : ndarray
        Float64 arrays of the broadcast shape; the variance is never negative.
    """
    mu, var = np.broadcast_arrays(np.asarray(mu, dtype=np.float64),
                                  np.asarray(var, dtype=np.float64))
    if np.any(np.isnan(mu)) or np.any(np.isnan(var)):
        raise DataError("ReLU moments: NaN in the input mean or variance")
    neg = var < 0
    if np.any(neg):
        with np.errstate(over="ignore"):
            if np.any(var[neg] < -1e-9 * (mu[neg] * mu[neg] + np.max(np.abs(var)))):
                raise DataError("ReLU moments: negative input variance")
    shape = mu.shape
    mu = mu.ravel()
    s = np.sqrt(np.maximum(var.ravel(), 0.0))
    mean = np.maximum(mu, 0.0)
    v = np.zeros_like(mu)
    pos = s > 0
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        a = np.where(pos, mu / np.where(pos, s, 1.0), 0.0)
    big = pos & (a > A_LIMIT)
    v[big] = s[big] ** 2
    # a >= 0
    m = pos & (a >= 0) & ~big
    if m.any():
        am, sm = a[m], s[m]
        ph = _INV_SQRT2PI * np.exp(-0.5 * am * am)
        Pb = ndtr(-am)
        mean[m] = sm * (ph + am * ndtr(am))
        v[m] = sm * sm * (1.0 + (am * am - 1.0) * Pb - am * ph - (ph - am * Pb) ** 2)
    # -2 <= a < 0
    m = pos & (a < 0) & (a >= _TAIL_A)
    if m.any():
        am, sm = a[m], s[m]
        ph = _INV_SQRT2PI * np.exp(-0.5 * am * am)
        P = ndtr(am)
        e1 = ph + am * P
        mean[m] = sm * e1
        v[m] = sm * sm * ((am * am + 1.0) * P + am * ph - e1 * e1)
    # a < -2: continued fraction, no cancellation
    m = pos & (a < _TAIL_A)
    if m.any():
        am, sm = a[m], s[m]
        x = -am
        with np.errstate(over="ignore", under="ignore"):
            ph = _INV_SQRT2PI * np.exp(-0.5 * np.minimum(x, 1e154) ** 2)
            T1, T2 = _mills_cf(x)
            R = 1.0 / (x + T1)
            e1 = ph * T1 * R                      # E/s = φ(a)(1 − xR)
            mean[m] = sm * e1
            v[m] = sm * sm * e1 * (T2 - e1)       # V/s² = φT₁R(T₂ − φT₁R)
    np.maximum(v, 0.0, out=v)
    return mean.reshape(shape), v.reshape(shape)


# ====================================================================== exact covariance
@numba.njit(cache=True)
def _ndtr_scalar(x):
    """Φ(x) = erfc(−x/√2)/2 (relative accuracy in both tails)."""
    return 0.5 * math.erfc(-x / _SQRT2)


@numba.njit(cache=True)
def _gk21_panel(kind, a1, a2, rho, fmin, t0, t1, gx, gwk, gwg, res, fv):
    """One 21-point Gauss–Kronrod panel on [t0, t1]; writes (K21, error estimate, |f| integral).

    ``kind`` 0: integrand ``|ρ − sin t| exp(−(f(sin t) − f_min))`` (covariance, theory §8.2);
    ``kind`` 1: ``exp(−(f(sin t) − f_min))`` (Plackett's integral for Φ₂);
    ``kind`` 2: the covariance integrand in ``u = sin t``: ``|ρ − u| exp(−(f(u) − f_min))/sqrt(1 − u²)``
    (no sin/cos; used for |ρ| <= 0.9, where the Jacobian is smooth);
    ``kind`` 3: the covariance integrand in ``w = log cos t`` (sign of t that of ρ):
    ``|ρ − sin t| exp(−(f(sin t) − f_min)) cot|t|`` (resolves the scales √(1 − ρ²) … 1 near
    t = ±π/2 evenly; used by the fallback for 0.99 <= |ρ| < 1 on |t| >= π/4).
    Error estimate: QUADPACK's ``resasc·min(1, (200|K−G|/resasc)^1.5)`` with a round-off floor.
    """
    c = 0.5 * (t0 + t1)
    h = 0.5 * (t1 - t0)
    for k in range(11):
        for sgn in range(2):
            if k == 0 and sgn == 1:
                continue
            t = c + h * gx[k] if sgn == 0 else c - h * gx[k]
            if kind == 2:                       # u = sin t, dt = du / sqrt(1 - u²)
                u = t
                cs2 = (1.0 - u) * (1.0 + u)
            elif kind == 3:                     # w = log cos t, dt = −cot t dw (sign of ρ)
                cs = math.exp(t)
                cs2 = cs * cs
                u = math.sqrt((1.0 - cs) * (1.0 + cs))
                if rho < 0.0:
                    u = -u
            else:
                u = math.sin(t)
                cs = math.cos(t)
                cs2 = cs * cs
            d = a1 - a2 * u
            fval = 0.5 * d * d / cs2 + 0.5 * a2 * a2
            e = math.exp(-(fval - fmin))
            if kind == 0:
                e *= abs(rho - u)
            elif kind == 2:
                e *= abs(rho - u) / math.sqrt(cs2)
            elif kind == 3:
                e *= abs(rho - u) * cs / abs(u) if u != 0.0 else 0.0
            fv[2 * k - 1 + sgn if k > 0 else 0] = e
    rk = gwk[0] * fv[0]
    rg = 0.0
    rabs = abs(rk)
    for k in range(1, 11):
        s2 = fv[2 * k - 1] + fv[2 * k]
        rk += gwk[k] * s2
        rg += gwg[k] * s2
        rabs += gwk[k] * (abs(fv[2 * k - 1]) + abs(fv[2 * k]))
    mean = 0.5 * rk
    rasc = gwk[0] * abs(fv[0] - mean)
    for k in range(1, 11):
        rasc += gwk[k] * (abs(fv[2 * k - 1] - mean) + abs(fv[2 * k] - mean))
    err = abs(rk - rg) * abs(h)
    rasc *= abs(h)
    if rasc != 0.0 and err != 0.0:
        err = rasc * min(1.0, (200.0 * err / rasc) ** 1.5)
    rabs *= abs(h)
    if rabs > 1e-290:
        err = max(50.0 * 2.220446049250313e-16 * rabs, err)
    res[0] = rk * h
    res[1] = err


@numba.njit(cache=True)
def _adaptive(kind, a1, a2, rho, fmin, lo, mid, hi, rtol, gx, gwk, gwg, ws, offset, atol):
    """Globally adaptive GK21 on [lo, hi] (split at ``mid`` if strictly inside); returns ∫.

    Stops when the error estimate is at most ``rtol`` relative to the larger of ``|∫|`` and
    ``|∫ + offset|``, or at most ``atol`` (absolute, in the integral's units; 0: none).

    ``ws`` is a caller-allocated workspace of :data:`_WS_SIZE` floats (no allocation per call).
    """
    P = _MAX_PANELS
    a_ = ws[0:P]
    b_ = ws[P:2 * P]
    val = ws[2 * P:3 * P]
    err = ws[3 * P:4 * P]
    res = ws[4 * P:4 * P + 2]
    fv = ws[4 * P + 2:4 * P + 23]
    n = 0
    if lo < mid < hi:
        a_[0], b_[0], a_[1], b_[1] = lo, mid, mid, hi
        n = 2
    else:
        a_[0], b_[0] = lo, hi
        n = 1
    for i in range(n):
        _gk21_panel(kind, a1, a2, rho, fmin, a_[i], b_[i], gx, gwk, gwg, res, fv)
        val[i] = res[0]
        err[i] = res[1]
    while True:
        tot = 0.0
        etot = 0.0
        worst = 0
        for i in range(n):
            tot += val[i]
            etot += err[i]
            if err[i] > err[worst]:
                worst = i
        if (etot <= rtol * max(abs(tot), abs(tot + offset)) or etot <= atol or etot <= 1e-300
                or n + 1 >= _MAX_PANELS):
            return tot
        m = 0.5 * (a_[worst] + b_[worst])
        if not (a_[worst] < m < b_[worst]):      # interval exhausted at float resolution
            return tot
        a_[n], b_[n] = m, b_[worst]
        b_[worst] = m
        _gk21_panel(kind, a1, a2, rho, fmin, a_[worst], b_[worst], gx, gwk, gwg, res, fv)
        val[worst] = res[0]
        err[worst] = res[1]
        _gk21_panel(kind, a1, a2, rho, fmin, a_[n], b_[n], gx, gwk, gwg, res, fv)
        val[n] = res[0]
        err[n] = res[1]
        n += 1


@numba.njit(cache=True)
def _f_of_u(a1, a2, u):
    """f(u) = (a₁ − a₂u)²/(2(1−u²)) + a₂²/2 (+∞ at |u| = 1 unless a₁ = a₂u)."""
    d = a1 - a2 * u
    den = (1.0 - u) * (1.0 + u)
    if den <= 0.0:
        return 0.5 * a2 * a2 if d == 0.0 else math.inf
    return 0.5 * d * d / den + 0.5 * a2 * a2


@numba.njit(cache=True)
def _fmin_and_peak(a1, a2, ulo, uhi):
    """Minimum of f(u) = (a₁² − 2a₁a₂u + a₂²)/(2(1−u²)) on [ulo, uhi] and its location."""
    m1 = abs(a1)
    m2 = abs(a2)
    big = max(m1, m2)
    if big == 0.0:
        return 0.0, 0.0
    ustar = min(m1, m2) / big
    if a1 * a2 < 0.0:
        ustar = -ustar
    if ulo <= ustar <= uhi:
        return 0.5 * big * big, ustar
    u = ulo if ustar < ulo else uhi
    d = a1 - a2 * u
    return 0.5 * d * d / ((1.0 - u) * (1.0 + u)) + 0.5 * a2 * a2, u


@numba.njit(cache=True)
def _log_ndtr(a):
    """log Φ(a) without underflow: direct for a >= −37 (Φ is a normal float there), else
    ``−a²/2 − log√(2π) + log R(−a)`` with the Mills ratio ``R = 1/(x + T₁)`` (30-term continued
    fraction, converged for x > 37)."""
    if a >= -37.0:
        return math.log(0.5 * math.erfc(-a / _SQRT2))
    x = -a
    T = 0.0
    for k in range(30, 0, -1):
        T = k / (x + T)
    return -0.5 * x * x - 0.5 * math.log(2.0 * math.pi) - math.log(x + T)


@numba.njit(cache=True)
def _scaled_ndtr_product(rho, a1, a2, s12, logs12):
    """ρ Φ(a₁) Φ(a₂) s₁s₂, in the log domain when a factor or a partial product nears
    underflow (so that no intermediate is subnormal when the result is a normal float)."""
    p = _ndtr_scalar(a1) * _ndtr_scalar(a2)
    if p > 1e-280 and abs(rho) > 1e-280 and 1e-280 < s12 < 1e280 and abs(rho) * p > 1e-280:
        return rho * p * s12
    lg = math.log(abs(rho)) + _log_ndtr(a1) + _log_ndtr(a2) + logs12
    return math.exp(lg) if rho > 0 else -math.exp(lg)


@numba.njit(cache=True)
def _relu_cov_core(a1, a2, rho, s12, logs12, rtol, gx, gwk, gwg, ws, rel_total, atol):
    """``Cov[X₁⁺, X₂⁺] = s₁s₂ C(a₁, a₂, ρ)`` (theory §8.2) for finite a and ρ ∈ [−1, 1].

    The scale enters inside the exponentials (``exp(−f_min + log s₁s₂)``, log-domain Φ
    products), so a normal-float result is accurate even when ``C`` itself is subnormal.
    ``rel_total``: stop the quadrature at ``rtol`` relative to the larger of the covariance
    (ρΦΦ term included) and the integral, instead of the integral alone (the fast routes'
    fallback; never stricter than the quadrature route). ``atol`` > 0: also stop once the
    error estimate of the covariance is at most ``atol`` (absolute; the network pass's
    negligible-pair floor, :func:`relu_moments`); 0: relative accuracy only.
    """
    if rho > 1.0:
        rho = 1.0
    elif rho < -1.0:
        rho = -1.0
    if rho == 0.0:
        return 0.0
    # limits |a| > A_LIMIT: X⁺ = X (a → +∞) or X⁺ = 0 (a → −∞)
    if a1 < -A_LIMIT or a2 < -A_LIMIT:
        return 0.0
    if a1 > A_LIMIT and a2 > A_LIMIT:
        return rho * s12
    if a1 > A_LIMIT:                           # Cov[X₁, X₂⁺] = Γ₁₂ Φ(a₂) (Stein)
        return _scaled_ndtr_product(rho, a2, A_LIMIT * 2.0, s12, logs12)
    if a2 > A_LIMIT:
        return _scaled_ndtr_product(rho, a1, A_LIMIT * 2.0, s12, logs12)
    base = _scaled_ndtr_product(rho, a1, a2, s12, logs12)
    theta = math.asin(rho)
    if rho > 0.0:
        ulo, uhi, tlo, thi = 0.0, rho, 0.0, theta
    else:
        ulo, uhi, tlo, thi = rho, 0.0, theta, 0.0
    fmin, upeak = _fmin_and_peak(a1, a2, ulo, uhi)
    e = math.exp(-fmin)
    if e > 1e-280 and 1e-280 < s12 < 1e280:
        scale = e * s12
    else:
        scale = math.exp(-fmin + logs12)
    if scale == 0.0:
        return base
    if upeak != ulo and upeak != uhi:
        # interior peak: split there only if the integrand varies strongly over the interval
        fl = _f_of_u(a1, a2, ulo)
        fh = _f_of_u(a1, a2, uhi)
        if max(fl, fh) - fmin < _SPLIT_RANGE:
            upeak = ulo
    atol_i = atol * _2PI / scale              # the covariance's tolerance in integral units
    off = 0.0
    if rel_total:
        off = _2PI * base / scale
        if not abs(off) < 1e300:
            off = 1e300 if off > 0 else -1e300
    if rel_total and _LOGCOS_RHO <= abs(rho) < 1.0:
        # |t| <= π/4 in t, |t| >= π/4 in w = log cos t (split at the peak where inside)
        tq = 0.25 * math.pi
        tp = math.asin(upeak)
        if rho > 0.0:
            lo_a, hi_a = 0.0, tq
        else:
            lo_a, hi_a = -tq, 0.0
        mid_a = tp if lo_a < tp < hi_a else lo_a
        ia = _adaptive(0, a1, a2, rho, fmin, lo_a, mid_a, hi_a, rtol, gx, gwk, gwg, ws, off,
                       atol_i)
        wlo = 0.5 * math.log((1.0 - abs(rho)) * (1.0 + abs(rho)))
        whi = math.log(math.cos(tq))
        wp = 0.5 * math.log((1.0 - abs(upeak)) * (1.0 + abs(upeak))) if abs(upeak) < 1.0 else wlo
        mid_b = wp if (abs(tp) > tq and wlo < wp < whi) else wlo
        ib = _adaptive(3, a1, a2, rho, fmin, wlo, mid_b, whi, rtol, gx, gwk, gwg, ws, off,
                       atol_i)
        integral = ia + ib
    elif abs(rho) <= _U_FORM_MAX:
        integral = _adaptive(2, a1, a2, rho, fmin, ulo, upeak, uhi, rtol, gx, gwk, gwg, ws, off,
                             atol_i)
    else:
        integral = _adaptive(0, a1, a2, rho, fmin, tlo, math.asin(upeak), thi, rtol, gx, gwk, gwg,
                             ws, off, atol_i)
    return base + scale * integral * _INV_2PI


@numba.njit(cache=True)
def _relu_cov_scalar(mu1, s1, mu2, s2, rho, rtol, gx, gwk, gwg, ws):
    """``Cov[X₁⁺, X₂⁺]`` for X Gaussian with means mu, stds s, correlation rho (theory §8.2)."""
    if s1 == 0.0 or s2 == 0.0 or rho == 0.0:
        return 0.0                                    # oracle O5
    a1 = mu1 / s1
    a2 = mu2 / s2
    if math.isinf(a1):
        a1 = 2.0 * A_LIMIT if a1 > 0 else -2.0 * A_LIMIT
    if math.isinf(a2):
        a2 = 2.0 * A_LIMIT if a2 > 0 else -2.0 * A_LIMIT
    s12 = s1 * s2
    if 1e-280 < s12 < 1e280:
        logs12 = math.log(s12)
    else:
        logs12 = math.log(s1) + math.log(s2)
    return _relu_cov_core(a1, a2, rho, s12, logs12, rtol, gx, gwk, gwg, ws, False, 0.0)


@numba.njit(cache=True)
def _relu_cov_vec(mu1, s1, mu2, s2, rho, rtol, gx, gwk, gwg, out):
    """Elementwise exact ReLU covariance over 1-D arrays (all of one length) into ``out``."""
    ws = np.empty(_WS_SIZE)
    for i in range(out.shape[0]):
        out[i] = _relu_cov_scalar(mu1[i], s1[i], mu2[i], s2[i], rho[i], rtol, gx, gwk, gwg, ws)


@numba.njit(cache=True)
def _relu_cov_row(i, mu, s, G, out, rtol, gx, gwk, gwg):
    """Row i of the exact ReLU covariance: ``out[i, j] = out[j, i]`` for j > i (in place OK)."""
    d = mu.shape[0]
    ws = np.empty(_WS_SIZE)
    for j in range(i + 1, d):
        g = G[i, j]
        if g == 0.0 or s[i] == 0.0 or s[j] == 0.0:
            c = 0.0
        else:
            rho = g / (s[i] * s[j])
            c = _relu_cov_scalar(mu[i], s[i], mu[j], s[j], rho, rtol, gx, gwk, gwg, ws)
        out[i, j] = c
        out[j, i] = c


@numba.njit(cache=True)
def relu_cov_pairs_quad_kernel(mu, s, G, out, rtol, gx, gwk, gwg):
    """Exact ReLU covariance of every pair i < j by adaptive quadrature only (theory §8.2).

    The pre-fast-path kernel, kept as the fallback's oracle and for benchmarks
    (``scripts/bench_relu.py``). ``out[i, j] = out[j, i] = Cov[X_i⁺, X_j⁺]`` from ``mu`` (d,), ``s`` (d,) (standard
    deviations, a copy of ``sqrt(diag G)``) and the upper triangle of ``G`` (d, d). ``out`` may
    be ``G`` itself (in place: row i reads only ``G[i, j]``, j > i, before writing it, and
    writes the lower triangle, which is never read). The diagonal is not touched.
    """
    for i in range(mu.shape[0]):
        _relu_cov_row(i, mu, s, G, out, rtol, gx, gwk, gwg)


@numba.njit(cache=True, parallel=True)
def relu_cov_pairs_quad_kernel_par(mu, s, G, out, rtol, gx, gwk, gwg):
    """Parallel :func:`relu_cov_pairs_quad_kernel` (rows k and d−1−k per task, balancing the triangle).

    Every entry is computed by the same scalar code, so the result equals the serial kernel
    bit for bit whatever the number of threads.
    """
    d = mu.shape[0]
    half = (d + 1) // 2
    for k in numba.prange(half):
        _relu_cov_row(k, mu, s, G, out, rtol, gx, gwk, gwg)
        k2 = d - 1 - k
        if k2 != k:
            _relu_cov_row(k2, mu, s, G, out, rtol, gx, gwk, gwg)


# ====================================================================== fast exact covariance
# theory §8.2 "Fast evaluation": exact routes chosen per pair by error bounds
# (derivation and notation in the theory guide; standardised C = Cov/(s_i s_j)):
#   U  ρ = 1       C = v_i + m_i (n_i − n_j)  (a_i <= a_j; no cancellation)        Eq. (U1)
#   P  product     C = ρ Φ(a_i)Φ(a_j) when the integral term is provably < EPS_FAST of it
#                  (|integral| <= 0.0909 ρ² e^{−f_min})                            Eq. (P1)
#   S  series      C = φ_iφ_j [ρ R_i R_j + Σ_{k>=0} ρ^{k+2} q_k(a_i) q_k(a_j)]  (Mehler),
#                  summed until Cramér's remainder bound plus the rounding and table
#                  error bounds are < EPS_FAST of the value, at most K_SERIES terms    Eq. (S1–S4)
#   Q  quadrature  the adaptive Gauss–Kronrod route (_relu_cov_core) for every other pair.
K_SERIES = 128                    # even (the series loop takes two orders a step)
"""Most series terms per pair (orders n = 2 .. K_SERIES + 1; theory §8.2, Eq. S1)."""
A_SERIES = 37.0
"""Series route only for |a| <= A_SERIES (φ(a) and the tables stay normal floats)."""
RHO_SERIES = 0.85
"""Series route only for |ρ| <= RHO_SERIES."""
EPS_FAST = 1e-10
"""Relative error bound the product and series routes must prove (contract: 1e-9)."""
_CRAMER_K = 1.086435               # |He_n(x)| e^{-x²/4} <= K sqrt(n!)  (Cramér; A&S 22.14.17)
_P_LOG = math.log(0.0909 / EPS_FAST)  # product route: f_min + log Φ(a₁) + log Φ(a₂) >= _P_LOG
_U_ROUND = 1.12e-16
_LOG_SQRT2PI = 0.5 * math.log(2.0 * math.pi)
PATH_NAMES = ("trivial", "product", "series", "quadrature", "rho=1")
_NROUTES = 5
_RHO_ONE = 1.0 - 1e-15            # ρ within 1e-15 of 1: the ρ = 1 formula (rel. change <= 7e-13)
_A_ONE = -35.0                    # ... for a >= −35 (m, n, v normal floats; Φ₂/v <= a²/2 + 1)
_R_MAX = 1e150                    # series route only where R = Φ/φ <= _R_MAX
_SER_W = 1.0 / np.sqrt(np.arange(1.0, K_SERIES + 1.0) * np.arange(2.0, K_SERIES + 2.0))
_SER_SQ = np.sqrt(np.arange(0.0, K_SERIES))
_SER_R1 = 1.0 / np.sqrt(np.arange(1.0, K_SERIES + 1.0))
_SER_W2 = 1.0 / _SER_W                  # √((k+1)(k+2))
_SER_TAIL = 1.0 / (np.arange(2.0, K_SERIES + 2.0) * np.arange(3.0, K_SERIES + 3.0))
# per-unit table columns
_UA, _UP, _ULP, _ULS, _UR, _ULPHI, _UPHI, _UEE, _UM, _UN, _UV, _ULAM, _ULEE = range(13)
_NU = 13
_PAR_BLOCKS = 256                 # row blocks of the parallel pair kernel
_RTOL_FALLBACK = 1e-12            # quadrature tolerance of the fallback (contract 1e-9)
_VEC_CHUNK = 4096                 # elements per call of the elementwise kernel
_QUAD_ATOL = 1e-3
"""With the negligible-pair floor ``thr`` of :func:`relu_moments` (the network pass), the
quadrature of a pair also stops once its error estimate is at most ``_QUAD_ATOL · thr``
(absolute): 1000× inside the floor, the margin the relative tolerance keeps to the contract."""


@numba.njit(cache=True)
def _unit_prep(mu, s, mnv, U, QE):
    """Per-unit quantities of the fast covariance (theory §8.2), written into caller arrays.

    ``U[i]`` = (a, Φ(a), log Φ(a), log s, R = Φ(a)/φ(a), log φ(a), φ(a), K e^{a²/4}, m, n, v)
    with ``a = μ/s`` (±2·A_LIMIT for infinite, 0 for s = 0) and ``(m, n, v) = mnv[i]``.
    For |a| <= A_SERIES, ``QE[i, k] = q_k(a) = He_k(a)/√(k! (k+1)(k+2))`` (k < K_SERIES) by the
    normalised recurrence ``h_{k+1} = (a h_k − √k h_{k−1})/√(k+1)``, and
    ``QE[i, K_SERIES + k] = |q_k| + e_k`` with ``e_k`` a running bound on the absolute
    rounding error of the stored ``q_k`` (first-order forward error analysis of the
    recurrence).
    """
    K = K_SERIES
    for i in range(mu.shape[0]):
        if s[i] > 0.0:
            ai = mu[i] / s[i]
            if math.isinf(ai):
                ai = 2.0 * A_LIMIT if ai > 0 else -2.0 * A_LIMIT
            U[i, _ULS] = math.log(s[i])
        else:
            ai = 0.0
            U[i, _ULS] = -math.inf
        U[i, _UA] = ai
        U[i, _UP] = _ndtr_scalar(ai)
        U[i, _ULP] = _log_ndtr(ai)
        U[i, _UM] = mnv[i, 0]
        U[i, _UN] = mnv[i, 1]
        U[i, _UV] = mnv[i, 2]
        if abs(ai) <= A_SERIES:
            lphi = -0.5 * ai * ai - _LOG_SQRT2PI
            U[i, _ULPHI] = lphi
            U[i, _UPHI] = math.exp(lphi)
            U[i, _UR] = math.exp(U[i, _ULP] - lphi)
            U[i, _UEE] = _CRAMER_K * math.exp(0.25 * ai * ai)
            U[i, _ULEE] = math.log(_CRAMER_K) + 0.25 * ai * ai
            U[i, _ULAM] = math.floor((ai * ai - 2.0) / 4.0)   # |a| >= √(4k+2) for k <= Λ
            hm = 0.0
            hc = 1.0
            em = 0.0
            ec = 0.0
            for k in range(K):
                w = _SER_W[k]
                QE[i, k] = hc * w
                QE[i, K + k] = abs(hc * w) * (1.0 + 3.0 * _U_ROUND) + ec * w
                sk = _SER_SQ[k]
                r1 = _SER_R1[k]
                hn = (ai * hc - sk * hm) * r1
                en = (abs(ai) * ec + sk * em + 6.0 * _U_ROUND * (abs(ai * hc) + sk * abs(hm))) * r1
                hm = hc
                hc = hn
                em = ec
                ec = en
        else:
            U[i, _ULPHI] = -math.inf
            U[i, _UPHI] = 0.0
            U[i, _UR] = math.inf
            U[i, _UEE] = math.inf
            U[i, _ULEE] = math.inf
            U[i, _ULAM] = -1.0
            for k in range(2 * K):
                QE[i, k] = 0.0


@numba.njit(cache=True)
def _product_term(rho, Pi, Pj, lPi, lPj, s12, logs12):
    """ρ Φ(a_i) Φ(a_j) s_i s_j from per-unit Φ and log Φ (log domain near underflow)."""
    p = Pi * Pj
    if p > 1e-280 and abs(rho) > 1e-280 and 1e-280 < s12 < 1e280 and abs(rho) * p > 1e-280:
        return rho * p * s12
    lg = math.log(abs(rho)) + lPi + lPj + logs12
    return math.exp(lg) if rho > 0 else -math.exp(lg)


@numba.njit(cache=True)
def _pair_cheap(ai, aj, lPi, lPj, Pi, Pj, rho, s12, logs12, vmi, vmj):
    """Closed-form routes of the exact covariance (theory §8.2), scalars only.

    Returns ``(value, route)``: route 0 trivial (ρ = 0 or a limit), 4 ρ = 1 (Eq. U1),
    1 product (Eq. P1) — final values; or route 2 (try the series) / 3 (quadrature) with
    value 0. ``vmi = (m, n, v)`` of unit i: the 3 scalars of :func:`unit_mnv` as a tuple.
    """
    if rho == 0.0 or ai < -A_LIMIT or aj < -A_LIMIT:
        return 0.0, 0
    if ai > A_LIMIT and aj > A_LIMIT:
        return rho * s12, 0
    ar = abs(rho)
    if rho >= _RHO_ONE and ai >= _A_ONE and aj >= _A_ONE:
        # ρ = 1: X_j = s_j(a_j + Z), X_i = s_i(a_i + Z); for a_i <= a_j (Eq. U1)
        if ai <= aj:
            c = vmi[2] + vmi[0] * (vmi[1] - vmj[1])
        else:
            c = vmj[2] + vmj[0] * (vmj[1] - vmi[1])
        if c > 1e-290 and 1e-280 < s12 < 1e280:
            return c * s12, 4
    if ar >= 1.0:
        return 0.0, 3
    # P: |integral term| <= 0.0909 ρ² e^{−f_min} (Eq. P1)
    if rho > 0.0:
        fmin = _fmin_and_peak(ai, aj, 0.0, rho)[0]
    else:
        fmin = _fmin_and_peak(ai, aj, rho, 0.0)[0]
    if fmin + lPi + lPj >= _P_LOG:
        return _product_term(rho, Pi, Pj, lPi, lPj, s12, logs12), 1
    if ar <= RHO_SERIES and abs(ai) <= A_SERIES and abs(aj) <= A_SERIES and s12 > 0.0:
        return 0.0, 2
    return 0.0, 3


@numba.njit(cache=True)
def _series_tail_monotone(m, ar, rm2, ai, aj, lami, lamj, Ai, Aj, Ei, Ej):
    """Remainder bound of the series after the terms k <= m using the monotone region of the
    Hermite polynomials (theory §8.2, Eq. S3').

    For ``k + 1 <= Λ = ⌊(a² − 2)/4⌋`` (``|a|`` beyond the largest zero √(4k+2) of He_k and
    He_{k+1}), ``|h_{k+1}(a)| <= |a| |h_k(a)|/√(k+1)``, so for m < k <= Λ
    ``|h_k| <= |h_m| γ^{k−m}`` with ``γ = |a|/√(m+1)``; otherwise Cramér ``|h_k| <= K e^{a²/4}``.
    The terms of orders m+1 .. min Λ then form a geometric series of ratio ``|ρ| γ_i γ_j`` and
    the rest is Cramér's bound from min Λ on (added by the caller). ``Ai``, ``Aj`` bound
    ``|q_m|``, ``rm2 = |ρ|^{m+2}``. Returns ``(geometric part, min Λ)``, ``(inf, 0)`` when the
    geometric ratio is >= 1 or no unit is in its monotone region.
    """
    lam = 1e300
    if m < lami:
        Mi = Ai * _SER_W2[m]
        gi = abs(ai) * _SER_R1[m]
        lam = lami
    else:
        Mi = Ei
        gi = 1.0
    if m < lamj:
        Mj = Aj * _SER_W2[m]
        gj = abs(aj) * _SER_R1[m]
        lam = min(lam, lamj)
    else:
        Mj = Ej
        gj = 1.0
    if lam == 1e300:
        return math.inf, 0.0
    g = ar * gi * gj
    if g >= 1.0:
        return math.inf, 0.0
    return rm2 * Mi * Mj * _SER_TAIL[m] * g / (1.0 - g), lam


@numba.njit(cache=True)
def _series_value(B, lphii, lphij, phii, phij, s12, logs12):
    """``C = s_i s_j φ(a_i) φ(a_j) B`` without intermediate underflow (theory §8.2, Eq. S1)."""
    fac = phii * phij
    if fac > 1e-290 and 1e-280 < s12 < 1e280 and fac * s12 > 1e-290:
        return fac * s12 * B
    lg = lphii + lphij + logs12 + math.log(abs(B))
    return math.exp(lg) if B > 0 else -math.exp(lg)


@numba.njit(cache=True)
def _cramer_part(ee, lee, ar, lam, inv1r):
    """Cramér part of Eq. S3' from order Λ + 1 on: ``K² e^{(a_i² + a_j²)/4} |ρ|^{Λ+3} /
    ((Λ+2)(Λ+3)(1 − |ρ|))``, ``ee`` its first factor (``lee`` = log ee). Directly where
    ``|ρ|^{Λ+3}`` and the product are normal floats (two ulps), else in the log domain (no
    underflow to 0, which would understate the bound)."""
    pw = ar ** (lam + 3.0)
    if pw > 1e-280 and ee < 1e280:
        return ee * pw / ((lam + 2.0) * (lam + 3.0)) * inv1r
    return math.exp(lee + (lam + 3.0) * math.log(ar) - math.log((lam + 2.0) * (lam + 3.0))) * inv1r


@numba.njit(cache=True, inline="always")
def _route(U, i, j, rho, s12):
    """Route of pair (i, j) (ρ clipped to [−1, 1]): ``(value, route)`` — trivial (0: ρ = 0 or
    s₁s₂ = 0), :func:`_pair_cheap`'s closed forms, 2 for the series (only where its base term
    ρ R_i R_j is finite) or 3 for the quadrature. The one classification of both pair loops."""
    if s12 == 0.0 or rho == 0.0:
        return 0.0, 0
    c, r = _pair_cheap(U[i, _UA], U[j, _UA], U[i, _ULP], U[j, _ULP], U[i, _UP], U[j, _UP], rho,
                       s12, U[i, _ULS] + U[j, _ULS], (U[i, _UM], U[i, _UN], U[i, _UV]),
                       (U[j, _UM], U[j, _UN], U[j, _UV]))
    if r == 2 and not abs(rho * U[i, _UR] * U[j, _UR]) <= _R_MAX * _R_MAX:
        return 0.0, 3
    return c, r


@numba.njit(cache=True)
def _cov_pair_list(U, QE, I, J, RHO, S12, out, route, rtol, gx, gwk, gwg, ws, cnt, atol):
    """Exact ``Cov[X_I⁺, X_J⁺]`` for a list of pairs (theory §8.2, all routes), into ``out``.

    ``U``, ``QE``: per-unit tables of :func:`_unit_prep`; pair t is units ``I[t]``, ``J[t]``
    with correlation ``RHO[t]`` (clipped to [−1, 1]) and ``S12[t] = s_i s_j`` (0: covariance
    0). Each pair takes the cheapest route whose error bound holds: ρ = 1 formula, product,
    Mehler series (summed until its proven error is < EPS_FAST of the value, Eqs. S1–S4) or
    the adaptive quadrature. ``route[t]`` and ``cnt`` (per-route counts, then the number of
    series terms) record the route. ``atol``: absolute tolerance of the quadrature besides
    the relative one (:func:`_relu_cov_core`; 0: none).
    """
    K = K_SERIES
    for t in range(I.shape[0]):
        i = I[t]
        j = J[t]
        rho = min(1.0, max(-1.0, RHO[t]))
        s12 = S12[t]
        c, r = _route(U, i, j, rho, s12)
        ai = U[i, _UA]
        aj = U[j, _UA]
        logs12 = U[i, _ULS] + U[j, _ULS]
        if r == 2:
            # S: B = ρ R_i R_j + Σ_k ρ^{k+2} q_k(a_i) q_k(a_j), stop when the error bound
            # (Cramér remainder Eq. S3 + rounding and table errors Eq. S4) < EPS_FAST |B|
            ar = abs(rho)
            base = rho * U[i, _UR] * U[j, _UR]
            ee = U[i, _UEE] * U[j, _UEE]
            inv1r = 1.0 / (1.0 - ar)
            S = 0.0
            Sabs = 0.0          # Σ |ρ|^{k+2} |q_k(a_i) q_k(a_j)|
            SA = 0.0            # Σ |ρ|^{k+2} (|q_k| + e_k)(a_i) (|q_k| + e_k)(a_j)
            rk = rho * rho      # ρ^{k+2} of the next order pair
            r = 3
            blk_prev = 0.0      # Σ|terms| of the previous block of 4 (early give-up only)
            sabs_prev = 0.0
            lam_c = -1.0        # cache of the Cramér part of Eq. S3'
            cram = 0.0
            r2 = rho * rho
            S1 = 0.0            # odd orders in separate chains (shorter dependency chains)
            Sabs1 = 0.0
            SA1 = 0.0
            for kk in range(0, K, 2):
                p = QE[i, kk] * QE[j, kk]
                p1 = QE[i, kk + 1] * QE[j, kk + 1]
                S += rk * p
                S1 += rk * p1
                Sabs += rk * abs(p)
                Sabs1 += rk * abs(p1)
                SA += rk * (QE[i, K + kk] * QE[j, K + kk])
                SA1 += rk * (QE[i, K + kk + 1] * QE[j, K + kk + 1])
                rk *= r2
                k = kk + 1
                if k % 4 != 3 and k != K - 1:
                    continue
                tail = ee * rk * _SER_TAIL[k] * inv1r
                B = base + (S + rho * S1)
                Sabs_k = Sabs + ar * Sabs1
                SA_k = SA + ar * SA1
                rest = ((SA_k - Sabs_k) * (1.0 + 4.0 * _U_ROUND)
                        + (k + 8.0) * _U_ROUND * (Sabs_k + abs(base)))
                err = tail + rest
                if err > EPS_FAST * (abs(B) - err) and rest <= 0.5 * EPS_FAST * abs(B):
                    # deep tails: sharper remainder (Eq. S3'), monotone Hermite region
                    geo, lam = _series_tail_monotone(k, ar, rk / ar, U[i, _UA], U[j, _UA],
                                                     U[i, _ULAM], U[j, _ULAM], QE[i, K + k],
                                                     QE[j, K + k], U[i, _UEE], U[j, _UEE])
                    if geo < tail:
                        if lam != lam_c:       # Cramér part from min Λ on (cached per Λ)
                            lam_c = lam
                            cram = _cramer_part(ee, U[i, _ULEE] + U[j, _ULEE], ar, lam,
                                                inv1r)
                        if geo + cram < tail:
                            err = geo + cram + rest
                if err <= EPS_FAST * (abs(B) - err):
                    if B != 0.0:
                        c = _series_value(B, U[i, _ULPHI], U[j, _ULPHI], U[i, _UPHI],
                                          U[j, _UPHI], s12, logs12)
                        r = 2
                        cnt[_NROUTES] += k + 1
                    break
                # give up early (performance only; the quadrature is exact): terms still
                # growing at half the budget, or settled with a failing rounding bound
                blk = Sabs_k - sabs_prev
                if k >= K // 2 - 1 and blk >= blk_prev:
                    break
                if rest > EPS_FAST * abs(B) and blk <= 1e-6 * Sabs_k:
                    break
                blk_prev = blk
                sabs_prev = Sabs_k
        if r == 3:
            c = _relu_cov_core(ai, aj, rho, s12, logs12, max(rtol, _RTOL_FALLBACK), gx, gwk, gwg,
                               ws, True, atol)
        out[t] = c
        route[t] = r
        cnt[r] += 1


_M_ROW = 20                       # orders summed for all series pairs of a row at once
_ROW_CHUNK = 2048                 # pairs per chunk of the row pass (its arrays stay in cache)


@numba.njit(cache=True)
def _series_orders(a0, a1, b0, b1, q0, q1, e0, e1, S, S1, SB, SB1, SA, SA1, RK, R2):
    """Orders kk, kk+1 of Eq. S1 for a chunk of pairs (i, j): ``a0, a1 = q_kk(a_i), q_kk+1(a_i)``
    and ``b0, b1`` their table bounds; ``q0, q1, e0, e1`` the same for the units j (contiguous,
    rows of the transposed tables); the sums as in :func:`_cov_pair_list`, one array each
    (separate simple loops: vectorised)."""
    n = S.shape[0]
    for t in range(n):
        p = a0 * q0[t]
        S[t] += RK[t] * p
        SB[t] += RK[t] * abs(p)
    for t in range(n):
        p1 = a1 * q1[t]
        S1[t] += RK[t] * p1
        SB1[t] += RK[t] * abs(p1)
    for t in range(n):
        SA[t] += RK[t] * (b0 * e0[t])
        SA1[t] += RK[t] * (b1 * e1[t])
    for t in range(n):
        RK[t] = RK[t] * R2[t]


@numba.njit(cache=True)
def _series_accept(k, RR, BA, EE, INV, S, S1, SB, SB1, SA, SA1, RK, Bv, OK):
    """The acceptance test S4 with the remainder S3 after the orders ≤ k, for a chunk of pairs
    (the arithmetic of :func:`_cov_pair_list`'s check): ``Bv`` the bracket B, ``OK`` 1 where
    the proven error is below ``EPS_FAST |B|``."""
    n = S.shape[0]
    tk = _SER_TAIL[k]
    ck = (k + 8.0) * _U_ROUND
    for t in range(n):
        rho = RR[t]
        ar = abs(rho)
        tail = EE[t] * RK[t] * tk * INV[t]
        B = BA[t] + (S[t] + rho * S1[t])
        sb = SB[t] + ar * SB1[t]
        sa = SA[t] + ar * SA1[t]
        rest = ((sa - sb) * (1.0 + 4.0 * _U_ROUND) + ck * (sb + abs(BA[t])))
        err = tail + rest
        Bv[t] = B
        OK[t] = 1.0 if err <= EPS_FAST * (abs(B) - err) else 0.0


_C_SLOW = 4                       # code of a pair left to the scalar classification (_route)


@numba.njit(cache=True, error_model="numpy")
def _route_chunk(ai, Pi, lPi, URi, EEi, RHO, S12, A, P, LP, UR, EE_, res, RR, BA, EE, INV, CD):
    """:func:`_route` for a chunk of pairs (i, j) without branches, so that it vectorises.

    ``ai, Pi, lPi, URi, EEi``: unit i's a, Φ(a), log Φ(a), R, K e^{a²/4}; ``A, P, LP, UR, EE_``
    the same for the units j (rows of the transposed unit table, contiguous). Writes per pair
    the code ``CD``: 0 trivial and 1 product (final value in ``res``, same arithmetic as
    :func:`_pair_cheap` / :func:`_product_term`), 2 series (``RR`` = ρ, ``BA``, ``EE``, ``INV``
    set up as in :func:`_series_row`; ``RR`` = 0 for every other code), 3 quadrature, or
    :data:`_C_SLOW` for the rare pairs the scalar route must classify (|ρ| near or at 1, a
    product value near underflow). Returns the number of series pairs."""
    n = RHO.shape[0]
    nser = 0
    for t in range(n):
        rho = min(1.0, max(-1.0, RHO[t]))
        s12 = S12[t]
        aj = A[t]
        ar = abs(rho)
        # f_min of _fmin_and_peak(ai, aj, lo, hi) on [0, ρ] (ρ > 0) or [ρ, 0]
        m1 = abs(ai)
        m2 = abs(aj)
        big = max(m1, m2)
        ustar = min(m1, m2) / (big if big > 0.0 else 1.0)
        ustar = -ustar if ai * aj < 0.0 else ustar
        lo = 0.0 if rho > 0.0 else rho
        hi = rho if rho > 0.0 else 0.0
        u = lo if ustar < lo else hi
        dd = ai - aj * u
        den = (1.0 - u) * (1.0 + u)                 # 0 only at |ρ| = 1 (code _C_SLOW)
        fend = 0.5 * dd * dd / (den if den > 0.0 else 1.0) + 0.5 * aj * aj
        fmin = 0.5 * big * big if (lo <= ustar and ustar <= hi) else fend
        fmin = 0.0 if big == 0.0 else fmin
        p = Pi * P[t]
        pfast = p > 1e-280 and ar > 1e-280 and 1e-280 < s12 and s12 < 1e280 and ar * p > 1e-280
        triv = s12 == 0.0 or rho == 0.0 or ai < -A_LIMIT or aj < -A_LIMIT
        bigpos = ai > A_LIMIT and aj > A_LIMIT and not triv      # X⁺ = X for both: ρ s₁s₂
        slow = rho >= _RHO_ONE or ar >= 1.0
        prod = fmin + lPi + LP[t] >= _P_LOG
        ser = (ar <= RHO_SERIES and m1 <= A_SERIES and m2 <= A_SERIES and s12 > 0.0
               and not (triv or bigpos or slow or prod))
        base = rho * URi * UR[t] if ser else 0.0    # as _route: only for a series candidate
        ser = ser and abs(base) <= _R_MAX * _R_MAX
        code = 2 if ser else 3
        code = (1 if pfast else _C_SLOW) if prod else code
        code = _C_SLOW if slow else code
        code = 0 if (triv or bigpos) else code
        CD[t] = code
        val = rho * s12 if bigpos else 0.0
        res[t] = rho * p * s12 if code == 1 else val
        RR[t] = rho if code == 2 else 0.0
        BA[t] = base if code == 2 else 0.0        # finite for every pair (the vector loops
        EE[t] = EEi * EE_[t] if code == 2 else 0.0  # of the series run over the whole chunk)
        INV[t] = 1.0 / (1.0 - ar) if code == 2 else 0.0
        nser += 1 if code == 2 else 0
    return nser


@numba.njit(cache=True, error_model="numpy")
def _series_values(lphi_i, phi_i, LPHI, PHI, S12, RR, OK, Bv, res, CD):
    """The accepted series values of a chunk (:func:`_series_value`'s direct branch) without
    branches: where ``RR`` ≠ 0, S4 held (``OK``) and B ≠ 0, ``res`` = s_i s_j φ_i φ_j B when
    that product is a normal float; ``CD`` = 2 there, 5 for an accepted value that needs the
    log domain, 6 for a pair S4 did not accept (both left to the caller). Returns the number
    of values written."""
    n = RR.shape[0]
    nacc = 0
    for t in range(n):
        fac = phi_i * PHI[t]
        s12 = S12[t]
        fast = fac > 1e-290 and 1e-280 < s12 and s12 < 1e280 and fac * s12 > 1e-290
        ser = RR[t] != 0.0
        acc = ser and OK[t] != 0.0 and Bv[t] != 0.0
        done = acc and fast
        res[t] = fac * s12 * Bv[t] if done else res[t]
        code = 6 if ser else CD[t]
        code = (2 if fast else 5) if acc else code
        CD[t] = code
        nacc += 1 if done else 0
    return nacc


@numba.njit(cache=True)
def _row_buffers(d):
    """Per-thread work arrays of :func:`_series_row` (one array each, so its loops vectorise)."""
    f = (np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d),
         np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d), np.empty(d),
         np.empty(d), np.empty(d))
    fb = (np.empty(d, dtype=np.int64), np.empty(d, dtype=np.int64), np.empty(d), np.empty(d),
          np.empty(d, dtype=np.int64), np.empty(d), np.empty(d, dtype=np.int64))
    return f, fb, np.empty(d, dtype=np.int64)


@numba.njit(cache=True)
def _series_row(i, U, UT, QE, QT, RHO, S12, res, rtol, gx, gwk, gwg, ws, cnt, buf, atol):
    """Row i of the exact covariance, ``res[t] = Cov[X_i⁺, X_{i+1+t}⁺]`` (theory §8.2, "A row at
    a time").

    Each pair is routed as in :func:`_cov_pair_list` — in vector loops
    (:func:`_route_chunk`, over the transposed unit table ``UT[k, j] = U[j, k]``), the rare
    pairs it leaves open by :func:`_route` itself. The pairs on the series route are summed
    together, :data:`_M_ROW` orders in vector loops over the transposed tables
    ``QT[k, j] = QE[j, k]``, and accepted where S4 holds after those orders (one test); every
    other pair — not accepted there, or bound for the quadrature — goes through
    :func:`_cov_pair_list` from the start. An accepted value carries the same proven bound as
    the per-pair route's (it differs from it only by summing more orders).
    """
    K = K_SERIES
    n = RHO.shape[0]
    j0 = i + 1
    (RR, BA, EE, INV, S, S1, SB, SB1, SA, SA1, RK, R2, Bv, OK), (FI, FJ, FR, FS, FT, Fres,
                                                                 Froute), CD = buf
    nf = 0
    for c0 in range(0, n, _ROW_CHUNK):
        c1 = min(n, c0 + _ROW_CHUNK)
        u0 = j0 + c0
        u1 = j0 + c1
        nser = _route_chunk(U[i, _UA], U[i, _UP], U[i, _ULP], U[i, _UR], U[i, _UEE],
                            RHO[c0:c1], S12[c0:c1], UT[_UA, u0:u1], UT[_UP, u0:u1],
                            UT[_ULP, u0:u1], UT[_UR, u0:u1], UT[_UEE, u0:u1], res[c0:c1],
                            RR[c0:c1], BA[c0:c1], EE[c0:c1], INV[c0:c1], CD[c0:c1])
        n01 = 0
        for t in range(c0, c1):         # counts; the rare pairs (quadrature, scalar route)
            code = CD[t]
            n01 += 1 if code == 1 else 0
            if code < 3:
                continue
            j = j0 + t
            rho = min(1.0, max(-1.0, RHO[t]))
            r = 3
            if code == _C_SLOW:
                c, r = _route(U, i, j, rho, S12[t])
                if r == 2:
                    RR[t] = rho
                    BA[t] = rho * U[i, _UR] * U[j, _UR]
                    EE[t] = U[i, _UEE] * U[j, _UEE]
                    INV[t] = 1.0 / (1.0 - abs(rho))
                    CD[t] = 2
                    nser += 1
                    continue
                if r != 3:
                    res[t] = c
                    cnt[r] += 1
                    CD[t] = 7               # final (counted here)
                    continue
            FT[nf] = t                  # for the per-pair route (the list is built below)
            nf += 1
        cnt[1] += n01
        if nser == 0:
            for t in range(c0, c1):
                cnt[0] += 1 if CD[t] == 0 else 0
            continue
        for t in range(c0, c1):
            S[t] = 0.0
            S1[t] = 0.0
            SB[t] = 0.0
            SB1[t] = 0.0
            SA[t] = 0.0
            SA1[t] = 0.0
            RK[t] = RR[t] * RR[t]
            R2[t] = RR[t] * RR[t]
        for kk in range(0, _M_ROW, 2):
            _series_orders(QE[i, kk], QE[i, kk + 1], QE[i, K + kk], QE[i, K + kk + 1],
                           QT[kk, u0:u1], QT[kk + 1, u0:u1], QT[K + kk, u0:u1],
                           QT[K + kk + 1, u0:u1], S[c0:c1], S1[c0:c1], SB[c0:c1], SB1[c0:c1],
                           SA[c0:c1], SA1[c0:c1], RK[c0:c1], R2[c0:c1])
        _series_accept(_M_ROW - 1, RR[c0:c1], BA[c0:c1], EE[c0:c1], INV[c0:c1], S[c0:c1],
                       S1[c0:c1], SB[c0:c1], SB1[c0:c1], SA[c0:c1], SA1[c0:c1], RK[c0:c1],
                       Bv[c0:c1], OK[c0:c1])
        nacc = _series_values(U[i, _ULPHI], U[i, _UPHI], UT[_ULPHI, u0:u1], UT[_UPHI, u0:u1],
                              S12[c0:c1], RR[c0:c1], OK[c0:c1], Bv[c0:c1], res[c0:c1],
                              CD[c0:c1])
        cnt[2] += nacc
        cnt[_NROUTES] += _M_ROW * nacc
        for t in range(c0, c1):
            code = CD[t]
            cnt[0] += 1 if code == 0 else 0
            if code < 5:
                continue
            j = j0 + t
            if code == 5:               # accepted, value in the log domain
                res[t] = _series_value(Bv[t], U[i, _ULPHI], U[j, _ULPHI], U[i, _UPHI],
                                       U[j, _UPHI], S12[t], U[i, _ULS] + U[j, _ULS])
                cnt[2] += 1
                cnt[_NROUTES] += _M_ROW
            elif code == 6:             # not accepted: the per-pair route from the start
                FT[nf] = t
                nf += 1
    if nf:
        for q in range(nf):             # the pairs left to the per-pair route, as a list
            t = FT[q]
            FI[q] = i
            FJ[q] = j0 + t
            FR[q] = RHO[t]
            FS[q] = S12[t]
        _cov_pair_list(U, QE, FI[:nf], FJ[:nf], FR[:nf], FS[:nf], Fres[:nf], Froute[:nf], rtol,
                       gx, gwk, gwg, ws, cnt, atol)
        for q in range(nf):
            res[FT[q]] = Fres[q]


@numba.njit(cache=True)
def _fast_row(i, U, UT, QE, QT, s, G, out, rtol, gx, gwk, gwg, ws, cnt, RHO, S12, res, buf, sv,
              thr):
    """Upper part of row i: ``out[i, j] = Cov[X_i⁺, X_j⁺]``, j > i (buffers of length d), by
    :func:`_series_row`.

    With ``thr > 0``, pairs with ``sv_i sv_j ≤ thr`` (``sv`` the ReLU outputs' standard
    deviations) are set to 0: by Cauchy–Schwarz their true value is at most ``thr`` in
    modulus (the network pass's negligible-pair floor, :func:`relu_moments`)."""
    d = U.shape[0]
    n = d - 1 - i
    si = s[i]
    lim = thr / sv[i] if thr > 0.0 and sv[i] > 0.0 else (np.inf if thr > 0.0 else -1.0)
    for t in range(n):
        j = i + 1 + t
        g = G[i, j]
        s12 = si * s[j]
        if g == 0.0 or s12 == 0.0 or sv[j] <= lim:
            RHO[t] = 0.0
            S12[t] = 0.0
        else:
            RHO[t] = g / s12
            S12[t] = s12
    _series_row(i, U, UT, QE, QT, RHO[:n], S12[:n], res[:n], rtol, gx, gwk, gwg, ws, cnt, buf,
                _QUAD_ATOL * thr)
    for t in range(n):
        out[i, i + 1 + t] = res[t]


@numba.njit(cache=True)
def _unit_tables(mu, s, mnv):
    d = mu.shape[0]
    U = np.empty((d, _NU))
    QE = np.empty((d, 2 * K_SERIES))
    _unit_prep(mu, s, mnv, U, QE)
    return U, QE


@numba.njit(cache=True)
def relu_cov_pairs_kernel(mu, s, G, out, mnv, rtol, gx, gwk, gwg, sv, thr):
    """Exact ReLU covariance of every pair i < j of a d-dim Gaussian (theory §8.2).

    ``out[i, j] = Cov[X_i⁺, X_j⁺]`` for ``i < j`` (the upper triangle; the lower triangle and
    the diagonal are not touched — :func:`relu_moments` mirrors) from ``mu`` (d,), ``s`` (d,)
    (standard deviations, ``sqrt(diag G)``), the upper triangle of ``G`` (d, d) and ``mnv``
    (d, 3) from :func:`unit_mnv`; each pair takes the cheapest exact route (ρ = 1 formula,
    product, Mehler series, adaptive quadrature), a row at a time (:func:`_series_row`).
    ``out`` may be ``G`` itself (in place: row i of the upper triangle is read before it is
    written). ``sv`` (d,) and
    ``thr``: with ``thr > 0`` a pair with ``sv_i sv_j ≤ thr`` is set to 0 (``sv``: standard
    deviations of the ReLU outputs; Cauchy–Schwarz bounds such a covariance by ``thr``);
    ``thr = 0`` computes every pair. Returns the number of pairs per route
    (:data:`PATH_NAMES`; pairs set to 0 count as trivial) followed by the total number of
    series terms.
    """
    d = mu.shape[0]
    U, QE = _unit_tables(mu, s, mnv)
    QT = np.ascontiguousarray(QE.T)
    UT = np.ascontiguousarray(U.T)
    cnt = np.zeros(_NROUTES + 1, dtype=np.int64)
    ws = np.empty(_WS_SIZE)
    RHO = np.empty(d)
    S12 = np.empty(d)
    res = np.empty(d)
    buf = _row_buffers(d)
    for i in range(d):
        _fast_row(i, U, UT, QE, QT, s, G, out, rtol, gx, gwk, gwg, ws, cnt, RHO, S12, res, buf, sv,
                  thr)
    return cnt


@numba.njit(cache=True, parallel=True)
def relu_cov_pairs_kernel_par(mu, s, G, out, mnv, rtol, gx, gwk, gwg, sv, thr):
    """Parallel :func:`relu_cov_pairs_kernel`: row blocks ``b, b + nb, b + 2nb, …`` per task.

    Striding spreads long and short rows of the triangle, and units of every channel, evenly
    over the tasks (route costs differ between channels).

    Every entry is computed by the same scalar code, so the result equals the serial kernel
    bit for bit whatever the number of threads.
    """
    d = mu.shape[0]
    U, QE = _unit_tables(mu, s, mnv)
    QT = np.ascontiguousarray(QE.T)
    UT = np.ascontiguousarray(U.T)
    nb = min(d, _PAR_BLOCKS)
    cnts = np.zeros((nb, _NROUTES + 1), dtype=np.int64)
    for b in numba.prange(nb):          # block b: rows b, b + nb, ... (balanced by striding)
        ws = np.empty(_WS_SIZE)
        RHO = np.empty(d)
        S12 = np.empty(d)
        res = np.empty(d)
        buf = _row_buffers(d)
        for i in range(b, d, nb):
            _fast_row(i, U, UT, QE, QT, s, G, out, rtol, gx, gwk, gwg, ws, cnts[b], RHO, S12, res,
                      buf, sv, thr)
    cnt = np.zeros(_NROUTES + 1, dtype=np.int64)
    for k in range(nb):
        for r in range(_NROUTES + 1):
            cnt[r] += cnts[k, r]
    return cnt


@numba.njit(cache=True)
def _relu_cov_vec_fast(mu1, s1, mu2, s2, mnv, rho, rtol, gx, gwk, gwg, out, route):
    """Elementwise exact covariance (unit i of x₁ with unit i of x₂) by :func:`_cov_pair_list`."""
    n = out.shape[0]
    U, QE = _unit_tables(np.concatenate((mu1, mu2)), np.concatenate((s1, s2)), mnv)
    I = np.arange(n)
    J = np.arange(n, 2 * n)
    S12 = s1 * s2
    cnt = np.zeros(_NROUTES + 1, dtype=np.int64)
    _cov_pair_list(U, QE, I, J, rho, S12, out, route, rtol, gx, gwk, gwg, np.empty(_WS_SIZE),
                   cnt, 0.0)


@numba.njit(cache=True)
def _bvn_vec(h, k, rho, rtol, gx, gwk, gwg, out):
    """Φ₂(h, k; ρ) elementwise by Plackett's integral (theory §8.2)."""
    ws = np.empty(_WS_SIZE)
    for i in range(out.shape[0]):
        r = min(1.0, max(-1.0, rho[i]))
        base = _ndtr_scalar(h[i]) * _ndtr_scalar(k[i])
        if r == 0.0:
            out[i] = base
            continue
        th = math.asin(r)
        if r > 0.0:
            ulo, uhi, tlo, thi = 0.0, r, 0.0, th
        else:
            ulo, uhi, tlo, thi = r, 0.0, th, 0.0
        fmin, upk = _fmin_and_peak(h[i], k[i], ulo, uhi)
        sc = math.exp(-fmin)
        if sc == 0.0:
            out[i] = base
            continue
        val = _adaptive(1, h[i], k[i], r, fmin, tlo, math.asin(upk), thi, rtol, gx, gwk, gwg, ws,
                      0.0, 0.0)
        out[i] = base + (sc * val * _INV_2PI if r > 0.0 else -sc * val * _INV_2PI)


def _flat(*arrays):
    arrs = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64) for a in arrays])
    return arrs[0].shape, [np.ascontiguousarray(a).ravel() for a in arrs]


def unit_mnv(mu, s):
    """Per-unit ``(m(a), m(−a), v(a))`` (d, 3) of the standardised ReLU (theory §8.1, Prop. 4).

    ``m(a) = E[(a + Z)⁺]``, ``m(−a) = E[(a + Z)⁻]``, ``v(a) = V[(a + Z)⁺]`` with ``a = μ/s``
    (0 where s = 0), from :func:`relu_mean_var`; used by the ρ = 1 route of the covariance.
    """
    mu = np.asarray(mu, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    pos = s > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.where(pos, mu / np.where(pos, s, 1.0), 0.0)
    a = np.clip(a, -2.0 * A_LIMIT, 2.0 * A_LIMIT)
    m, v = relu_mean_var(a, np.ones_like(a))
    n, _ = relu_mean_var(-a, np.ones_like(a))
    return np.ascontiguousarray(np.stack([m, n, v], axis=1))


def relu_cov_exact(mu1, s1, mu2, s2, rho, *, rtol=RTOL_QUAD, method="auto", return_route=False):
    r"""Exact ``Cov[X₁⁺, X₂⁺]`` of two rectified jointly Gaussian variables (theory §8.2).

    Corrects the first-order rule of Eq. (28) (D15). With ``a_k = mu_k/s_k``::

        Cov = s₁s₂ [ρ Φ(a₁)Φ(a₂) + (1/2π) ∫_0^{arcsin ρ} (ρ − sin t)
                     exp(−(a₁ − a₂ sin t)²/(2cos²t) − a₂²/2) dt],

    integrated by adaptive Gauss–Kronrod quadrature (see the module docstring). Valid for
    ρ ∈ [−1, 1] (values outside are clipped); ``s = 0`` gives 0 (oracle O5); ρ = 1 with
    identical inputs gives the Prop. 4 variance (oracle O4).

    Parameters
    ----------
    mu1, s1, mu2, s2, rho : array_like
        Means, standard deviations (>= 0) and correlation; broadcast together.
    rtol : float
        Relative tolerance of the quadrature.
    method : {"auto", "quad"}
        ``"auto"`` (default): per pair the cheapest exact route whose error bound holds
        (product, Mehler series, quadrature; theory §8.2 "Fast evaluation"); ``"quad"``: the
        adaptive quadrature for every pair (the reference route).
    return_route : bool
        Also return the route taken per element (0 trivial, 1 product, 2 series,
        3 quadrature; :data:`PATH_NAMES`).

    Returns
    -------
    ndarray of the broadcast shape (and the int64 routes if ``return_route``).
    """
    shape, (m1, a1, m2, a2, r) = _flat(mu1, s1, mu2, s2, rho)
    if not (np.all(np.isfinite(m1)) and np.all(np.isfinite(m2)) and np.all(np.isfinite(r))
            and np.all(np.isfinite(a1)) and np.all(np.isfinite(a2))):
        raise DataError("ReLU covariance: non-finite mean, standard deviation or correlation")
    if np.any(a1 < 0) or np.any(a2 < 0):
        raise DataError("ReLU covariance: negative standard deviation")
    out = np.empty(m1.shape[0])
    route = np.full(m1.shape[0], 3, dtype=np.int64)
    if method == "auto":
        for c0 in range(0, m1.shape[0], _VEC_CHUNK):     # bounded per-unit tables
            sl = slice(c0, c0 + _VEC_CHUNK)
            mnv = unit_mnv(np.concatenate((m1[sl], m2[sl])), np.concatenate((a1[sl], a2[sl])))
            _relu_cov_vec_fast(m1[sl], a1[sl], m2[sl], a2[sl], mnv, r[sl], float(rtol), _GK_X,
                               _GK_WK, _GK_WG, out[sl], route[sl])
    elif method == "quad":
        _relu_cov_vec(m1, a1, m2, a2, r, float(rtol), _GK_X, _GK_WK, _GK_WG, out)
    else:
        raise DataError(f"ReLU covariance method must be 'auto' or 'quad', got {method!r}")
    if return_route:
        return out.reshape(shape), route.reshape(shape)
    return out.reshape(shape)


def relu_cov_taylor(mu1, mu2, cov12):
    r"""First-order (Taylor) ReLU covariance, Eq. (28) with ``f'(μ) = 1[μ > 0]`` (theory §8.3).

    ``Cov ≈ 1[μ₁ > 0] 1[μ₂ > 0] Γ₁₂``. Rejected by Monte-Carlo (theory §8.3) and, combined with
    the exact Prop. 4 diagonal, possibly non-PSD (D15); kept for comparison with the paper.
    """
    mu1, mu2, cov12 = np.broadcast_arrays(*[np.asarray(a, dtype=np.float64)
                                            for a in (mu1, mu2, cov12)])
    return np.where((mu1 > 0) & (mu2 > 0), cov12, 0.0)


def bvn_cdf(h, k, rho, *, rtol=RTOL_QUAD):
    r"""Bivariate standard normal cdf ``Φ₂(h, k; ρ) = P(Z₁ ≤ h, Z₂ ≤ k)`` (theory §8.2).

    Plackett's integral ``Φ(h)Φ(k) + (1/2π) ∫_0^{arcsin ρ} exp(−(h − k sin t)²/(2cos²t) − k²/2) dt``
    with the same adaptive quadrature as :func:`relu_cov_exact`. Absolute accuracy ~1e-16; for
    ρ < 0 in the joint lower tail the two terms cancel (relative accuracy is not guaranteed
    there). Oracle O6: ``Φ₂(0, 0; ρ) = 1/4 + arcsin(ρ)/(2π)``.
    """
    shape, (hh, kk, rr) = _flat(h, k, rho)
    out = np.empty(hh.shape[0])
    _bvn_vec(hh, kk, rr, float(rtol), _GK_X, _GK_WK, _GK_WG, out)
    return out.reshape(shape)


# ====================================================================== matrix form
@numba.njit(cache=True, parallel=True)
def _taylor_upper(G, pos, out):
    """Eq. (28) on the upper triangle: ``out[i, j] = G[i, j] 1[μ_i > 0] 1[μ_j > 0]``, j > i
    (``pos`` the indicator; ``out`` may be ``G``). Rows t and d−1−t per task."""
    d = G.shape[0]
    for t in numba.prange((d + 1) // 2):
        for side in range(2):
            i = paired_row(t, side, d)
            if i < 0:
                break
            pi = pos[i]
            for j in range(i + 1, d):
                out[i, j] = G[i, j] * pi * pos[j]


NEGLIGIBLE = 2.0 ** -53
"""Negligible-pair floor of the network pass (unit roundoff): an exact-ReLU pair whose
Cauchy–Schwarz bound ``sqrt(Var X_i⁺ Var X_j⁺)`` is below this fraction of the layer's largest
ReLU-output variance is set to 0 — an absolute error below the rounding of that variance."""


def relu_moments(mu, gamma, mode="exact", *, out=None, parallel=None, negligible=0.0,
                 symmetric=True):
    r"""Mean vector and covariance matrix of ``ReLU(X)``, ``X ~ N(mu, gamma)`` (theory §8).

    Diagonal: Proposition 4 (:func:`relu_mean_var`, theory §8.1). Off-diagonal:

    - ``mode="exact"`` (default): the exact bivariate covariance of every pair (theory §8.2;
      each pair by the cheapest exact route with a proven error bound — ρ = 1 formula,
      product, Mehler series, adaptive quadrature — theory §8.2 "Fast evaluation";
      corrects Eq. (28), D15); the matrix is PSD;
    - ``mode="taylor"``: Eq. (28), ``1[μ_i > 0] 1[μ_j > 0] Γ_ij`` (theory §8.3).

    Parameters
    ----------
    mu : ndarray (d,)
    gamma : ndarray (d, d) or None
        Covariance (only the upper triangle and the diagonal are read). ``None`` means a
        deterministic input: the output is ``max(mu, 0)`` with covariance ``None``.
    mode : {"exact", "taylor"}
    out : ndarray (d, d), optional
        Where to write the covariance; may be ``gamma`` itself (in place, saving one d×d
        matrix in the network pass).
    parallel : bool, optional
        Use the multi-threaded pair kernel (default: when d >= 256).
    negligible : float
        Exact mode: set to 0 every pair whose bound ``sqrt(Var X_i⁺ Var X_j⁺)`` is at most
        ``negligible × max_k Var X_k⁺`` (its absolute error is below that; relative accuracy
        is then not kept for it); the quadrature of every other pair may also stop once its
        error estimate is below ``_QUAD_ATOL`` (1e-3) times that floor, absolute. 0 (default):
        every pair to the accuracy contract above. The network pass uses :data:`NEGLIGIBLE`
        (deep negative tails, where the quadrature route is slowest, contribute nothing above
        rounding).
    symmetric : bool
        Mirror the upper triangle onto the lower one (default). False: only the upper
        triangle and the diagonal of the result are valid (the lower triangle holds whatever
        ``out`` held) — for a consumer that reads nothing else (pooling, theory §15).

    Returns
    -------
    mean : ndarray (d,)
    cov : ndarray (d, d) or None
    """
    mu = np.ascontiguousarray(mu, dtype=np.float64)
    if gamma is None:
        return np.maximum(mu, 0.0), None
    d = mu.shape[0]
    if gamma.shape != (d, d):
        raise DataError(f"ReLU moments: covariance has shape {gamma.shape}, expected ({d}, {d})")
    diag = np.array(np.diagonal(gamma), dtype=np.float64)
    mean, var = relu_mean_var(mu, diag)
    if out is None:
        out = np.empty((d, d))
    if mode == "exact":
        s = np.sqrt(np.maximum(diag, 0.0))
        if parallel is None:
            parallel = d >= 256
        kern = relu_cov_pairs_kernel_par if parallel else relu_cov_pairs_kernel
        if not (negligible >= 0.0):
            raise DataError(f"ReLU moments: negligible must be >= 0, got {negligible!r}")
        sv = np.sqrt(var)
        thr = float(negligible) * float(var.max()) if d else 0.0
        kern(mu, s, gamma, out, unit_mnv(mu, s), RTOL_QUAD, _GK_X, _GK_WK, _GK_WG, sv, thr)
    elif mode == "taylor":
        pos = (mu > 0).astype(np.float64)
        if symmetric and d > 1 and out.flags.c_contiguous:
            # Eq. (28) in the mirror's pass: scale the upper triangle and copy it down
            if out is not gamma:
                out[...] = gamma
            out[np.diag_indices(d)] = var
            return mean, mirror_upper(out, scale=pos)
        _taylor_upper(gamma, pos, out)
    else:
        raise DataError(f"ReLU covariance mode must be 'exact' or 'taylor', got {mode!r}")
    out[np.diag_indices(d)] = var
    if symmetric and d > 1:
        if out.flags.c_contiguous:
            mirror_upper(out)
        else:
            low = np.tril_indices(d, -1)
            out[low] = out.T[low]
    return mean, out
