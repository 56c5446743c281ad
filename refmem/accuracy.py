r"""Classification accuracy predicted from the analytic output moments (theory §21).

Accuracy is not a moment: for an input ``x`` with label ``y`` it is the probability that the
noisy network's largest output is the one of class ``y``. Under the Gaussian closure of the
analytic pass (theory §20, theory §19.7: the outputs are treated as jointly Gaussian,
``Z ~ N(μ, Σ)`` with the moments of :func:`refmem.moments.propagate`),

.. math::

    P(\arg\max_k Z_k = y) = P(D_k > 0\ \ \forall k \ne y),\qquad D_k = Z_y - Z_k ,

a :math:`(K-1)`-dimensional Gaussian orthant probability of the differences
:math:`D \sim N(m, C)`, :math:`m_k = μ_y - μ_k`,
:math:`C_{kl} = Σ_{yy} - Σ_{yk} - Σ_{yl} + Σ_{kl}`.

Method (Genz's separation of variables with randomized lattice QMC)
--------------------------------------------------------------------
1. **Pivoted Cholesky with Genz–Bretz ordering** of ``C`` per input, vectorised over the
   batch: at step ``j`` the remaining difference with the smallest conditional probability
   (given the truncated means of the earlier ones) goes next, among those whose conditional
   variance is at least ``1e-6`` of the largest (tiny pivots would amplify rounding). Rows whose conditional
   variance is below ``1e-10 · max_k C_kk`` are not pivoted: they are *linear constraints* on
   the earlier variables (exactly deterministic rows, rank-deficient ``C``). ``r`` = rank.
2. **Separation of variables.** With ``D = m + L w``, ``w ~ N(0, I_r)``, the probability is
   ``E[∏_{j<r-1} q_j(w_{<j}) · P_last(w_{<r-1})]`` where ``q_j = Φ(-lo_j)`` is the
   conditional probability of row ``j`` and ``w_j = -Φ⁻¹(u_j q_j)`` is drawn from its
   truncated law. The **last** variable is integrated exactly: the pivot row and every
   constraint row are linear in ``w_{r-1}``, so they cut an interval whose normal probability
   is closed-form. Hence rank ≤ 1 (``K = 2``, zero covariance, a rank-one ``Σ``) is exact and
   only ``r − 1`` dimensions are sampled.
3. **Randomized rank-1 lattice.** The ``u`` are the points ``frac(i z + s)`` of a Richtmyer
   lattice (``z_j = frac(√p_j)``, ``p_j`` the ``j``-th prime), tent-transformed
   (``u ↦ 1 − |2u − 1|``), with ``R`` random shifts ``s`` drawn from a seeded
   :class:`numpy.random.Generator`. The points and shifts are **common to all inputs** of the
   batch, so the whole batch is one vectorised computation.
4. **Error bound.** Each shift gives an unbiased estimate; the ``R`` estimates are i.i.d.
   The stated bound is ``t_{0.995, R-1} · s_R / √R`` (a 99 % confidence half-width of the
   integration error), per input and — from the ``R`` per-shift *batch means*, so the
   correlation through the common points is accounted for — for the batch mean. It bounds
   the integration error only, **not** the Gaussian closure (theory §20, §21).

Ties: a difference with zero variance and zero mean (e.g. σ = 0 and two equal logits) is
decided like :func:`numpy.argmax`, which returns the first maximal index: class ``y`` wins the
tie against ``k`` iff ``y < k``. Degenerate cases (zero variance, σ = 0, singular Σ of rank
one) are therefore exact and agree with a Monte-Carlo count of ``argmax``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri
from scipy.stats import t as student_t

from .errors import DataError

__all__ = ["predicted_accuracy", "PredictedAccuracy", "difference_moments"]

_PRIMES = np.array([2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71,
                    73, 79, 83, 89, 97, 101, 103, 107, 109, 113, 127], dtype=np.float64)
_REL_TOL = 1e-10        # conditional variance below this × max_k C_kk: a constraint row
_PIVOT_RATIO = 1e-6    # pivots are chosen among rows with ≥ this × the largest conditional variance
_TINY_P = 1e-300        # lower clamp of u q before Φ⁻¹ (a point on the lattice boundary)
CONFIDENCE = 0.99       # the error bound is a two-sided 99 % half-width


@dataclass
class PredictedAccuracy:
    """Accuracy predicted from Gaussian output moments (theory §21).

    Attributes
    ----------
    per_input : ndarray (B,)
        ``P(argmax Z = label)`` per input.
    mean : float
        Mean of ``per_input`` over the batch (the predicted accuracy).
    error_bound : float
        99 % half-width of the integration error of ``mean`` (0 when every input is exact).
        Does not include the Gaussian closure.
    per_input_error : ndarray (B,)
        The same bound per input (0 for exact inputs).
    rank : ndarray (B,) of int
        Rank of the difference covariance used (inputs of rank ≤ 1 are exact).
    n_points : int
        Integration points per input (shifts × points per shift; 0 if all were exact).
    n_shifts : int
    seed : int
    """

    per_input: np.ndarray
    mean: float
    error_bound: float
    per_input_error: np.ndarray
    rank: np.ndarray
    n_points: int
    n_shifts: int
    seed: int


def _check_inputs(mean, cov, labels):
    mean = np.asarray(mean, dtype=np.float64)
    if mean.ndim != 2 or mean.shape[1] < 1:
        raise DataError(f"mean must have shape (B, K), got {mean.shape}")
    B, K = mean.shape
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape == (B, K):
        if np.any(cov < 0):
            raise DataError("variances must be >= 0")
        cov = cov[:, :, None] * np.eye(K)
    elif cov.shape != (B, K, K):
        raise DataError(f"cov must have shape (B, K, K) = {(B, K, K)} or variances (B, K), "
                        f"got {cov.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise DataError("mean and cov must be finite")
    scale = np.maximum(np.abs(np.diagonal(cov, axis1=1, axis2=2)).max(axis=1), 1e-300)
    asym = np.abs(cov - np.swapaxes(cov, 1, 2)).max(axis=(1, 2)) if B else np.zeros(0)
    if np.any(asym > 1e-8 * scale):
        raise DataError("cov must be symmetric")
    if B and K > 1:
        lam_min = np.linalg.eigvalsh(0.5 * (cov + np.swapaxes(cov, 1, 2)))[:, 0]
        if np.any(lam_min < -1e-8 * scale):
            raise DataError("cov must be positive semi-definite")
    labels = np.asarray(labels)
    if labels.shape != (B,):
        raise DataError(f"labels must have shape ({B},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataError("labels must be integers")
        labels = labels.astype(np.int64)
    if np.any(labels < 0) or np.any(labels >= K):
        raise DataError(f"labels must lie in 0..{K - 1}")
    return mean, cov, labels.astype(np.int64)


def difference_moments(mean, cov, labels):
    """Moments of ``D_k = Z_y − Z_k`` (k ≠ y, in increasing k) and the tie rule.

    Returns ``m`` (B, K−1), ``C`` (B, K−1, K−1) and ``tie_wins`` (B, K−1): True where class
    ``y`` wins an exact tie against ``k`` (``y < k``, the :func:`numpy.argmax` convention).
    """
    mean, cov, labels = _check_inputs(mean, cov, labels)
    B, K = mean.shape
    others = np.array([[k for k in range(K) if k != y] for y in range(K)], dtype=np.int64)
    oth = others[labels] if K > 1 else np.zeros((B, 0), dtype=np.int64)   # (B, K-1)
    bi = np.arange(B)[:, None]
    m = mean[bi[:, 0], labels][:, None] - mean[bi, oth]
    s_yy = cov[np.arange(B), labels, labels][:, None, None]
    s_yk = cov[bi, labels[:, None], oth]                                   # (B, K-1)
    s_kl = cov[bi[:, :, None], oth[:, :, None], oth[:, None, :]]
    C = s_yy - s_yk[:, :, None] - s_yk[:, None, :] + s_kl
    C = 0.5 * (C + np.swapaxes(C, 1, 2))
    return m, C, labels[:, None] < oth


def _take_rows(a, idx):
    """``a[b, idx[b]]`` for a (B, d[, …]) array and per-input indices (B,)."""
    return a[np.arange(a.shape[0]), idx]


def _pivoted_factor(m, C, tie):
    """Batched pivoted Cholesky with Genz–Bretz ordering (step 1 of the module docstring).

    Returns ``a`` (lower limits −m, permuted), ``L`` (B, d, d) with the pivot rows first and
    the constraint rows after them, ``rank`` (B,) and the permuted ``tie`` flags.
    """
    B, d = m.shape
    a = -m.copy()
    C = C.copy()
    tie = tie.copy()
    L = np.zeros((B, d, d))
    ybar = np.zeros((B, d))
    rank = np.zeros(B, dtype=np.int64)
    active = np.ones(B, dtype=bool)
    tol = _REL_TOL * np.diagonal(C, axis1=1, axis2=2).max(axis=1, initial=0.0)
    ar = np.arange(B)
    for j in range(d):
        sub = L[:, j:, :j]                                          # (B, d-j, j)
        s2 = np.diagonal(C, axis1=1, axis2=2)[:, j:] - np.einsum("bil,bil->bi", sub, sub)
        shift = np.einsum("bil,bl->bi", sub, ybar[:, :j])
        ok = s2 > tol[:, None]
        s = np.sqrt(np.where(ok, s2, 1.0))
        # Genz–Bretz choice among the rows whose conditional variance is not tiny next to
        # the largest one (a tiny pivot would amplify rounding errors in the later rows)
        big = ok & (s2 >= _PIVOT_RATIO * s2.max(axis=1, initial=0.0)[:, None])
        prob = np.where(big, ndtr((shift - a[:, j:]) / s), np.inf)
        k = j + np.argmin(prob, axis=1)
        active &= ok.any(axis=1)
        if not active.any():
            break
        # swap j <-> k (rows and columns of C; rows of L, a, tie) for the active inputs
        sel = ar[active]
        kk = k[active]
        for arr in (a, tie):
            tmp = arr[sel, j].copy()
            arr[sel, j] = arr[sel, kk]
            arr[sel, kk] = tmp
        tmp = L[sel, j, :].copy()
        L[sel, j, :] = L[sel, kk, :]
        L[sel, kk, :] = tmp
        tmp = C[sel, j, :].copy()
        C[sel, j, :] = C[sel, kk, :]
        C[sel, kk, :] = tmp
        tmp = C[sel, :, j].copy()
        C[sel, :, j] = C[sel, :, kk]
        C[sel, :, kk] = tmp
        # column j of L
        Lj = L[sel, j, :j]
        piv = np.sqrt(C[sel, j, j] - np.einsum("bl,bl->b", Lj, Lj))
        L[sel, j, j] = piv
        rest = (C[sel, j + 1:, j] - np.einsum("bil,bl->bi", L[sel, j + 1:, :j], Lj)) / piv[:, None]
        L[sel, j + 1:, j] = rest
        lo = (a[sel, j] - np.einsum("bl,bl->b", Lj, ybar[sel, :j])) / piv
        q = ndtr(-lo)
        # truncated-normal mean E[w | w > lo] = φ(lo)/Φ(−lo) (lo for an underflowing tail)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            tm = np.exp(-0.5 * lo * lo) / np.sqrt(2 * np.pi) / q
        ybar[sel, j] = np.where(np.isfinite(tm) & (q > 0), tm, np.maximum(lo, 0.0))
        rank[sel] += 1
    return a, L, rank, tie


def _interval_prob(lo, hi):
    """``P(lo < w < hi)`` for ``w ~ N(0, 1)`` without cancellation in the upper tail."""
    upper = lo > 0
    p = np.where(upper, ndtr(-lo) - ndtr(-hi), ndtr(hi) - ndtr(lo))
    return np.maximum(p, 0.0)


def _last_step(a, L, tie, rank, wsum, j, rows):
    """Exact integral over the last pivot variable ``w_j`` (j = rank − 1; j = −1: no pivot).

    ``wsum`` (b, d, n) holds ``Σ_{l<j} L_il w_l`` for every row; constraint rows are the rows
    ``i ≥ rank``. Returns the conditional probability (b, n).
    """
    d = a.shape[1]
    n = wsum.shape[2]
    lo = np.full((len(rows), n), -np.inf)
    hi = np.full((len(rows), n), np.inf)
    ind = np.ones((len(rows), n), dtype=bool)
    rhs = a[rows][:, :, None] - wsum                    # (b, d, n): need coef · w_j > rhs
    coef = L[rows, :, j] if j >= 0 else np.zeros((len(rows), d))
    r = rank[rows]
    for i in range(d):
        # the pivot row j and the constraint rows i >= rank (all rows when rank = 0)
        use = (i == r - 1) | (i >= r)
        if not use.any():
            continue
        c = coef[:, i][:, None]
        x = rhs[:, i, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = x / c
        pos = use[:, None] & (c > 0)
        neg = use[:, None] & (c < 0)
        zer = use[:, None] & (c == 0)
        lo = np.where(pos, np.maximum(lo, bound), lo)
        hi = np.where(neg, np.minimum(hi, bound), hi)
        t = tie[rows, i][:, None]
        ind &= ~zer | (x < 0) | ((x == 0) & t)
    p = _interval_prob(lo, np.maximum(hi, lo))
    if j < 0:
        p = np.ones_like(p)
    return np.where(ind, p, 0.0)


def predicted_accuracy(mean, cov, labels, *, seed=0, n_points=4096, n_shifts=16):
    r"""Per-input ``P(argmax Z = label)`` for ``Z ~ N(mean, cov)`` (theory §21).

    Parameters
    ----------
    mean : array (B, K)
        Output means (``MomentsResult.mean``).
    cov : array (B, K, K), or (B, K) variances
        Output covariances (``MomentsResult.cov``, from ``propagate(..., cov=True)``);
        a (B, K) array is read as independent outputs with these variances.
    labels : int array (B,)
        True classes.
    seed : int
        Seed of the random lattice shifts (same seed ⇒ bit-identical result).
    n_points : int
        Integration points per input, split over ``n_shifts`` shifts (rounded down to a
        multiple of ``n_shifts``).
    n_shifts : int
        Independent random shifts (≥ 2) behind the error bound.

    Returns
    -------
    PredictedAccuracy
        ``per_input``, ``mean``, ``error_bound`` (99 % bound of the integration error of the
        mean; the Gaussian closure is not included) and per-input details.
    """
    m, C, tie = difference_moments(mean, cov, labels)
    n_shifts = int(n_shifts)
    if n_shifts < 2:
        raise DataError("n_shifts must be >= 2 (the error bound needs replicates)")
    per_shift = int(n_points) // n_shifts
    if per_shift < 1:
        raise DataError(f"n_points must be >= n_shifts = {n_shifts}")
    if int(seed) < 0:
        raise DataError("seed must be a non-negative integer")
    B, d = m.shape
    if d == 0:
        ones = np.ones(B)
        return PredictedAccuracy(ones, float(ones.mean()) if B else float("nan"), 0.0,
                                 np.zeros(B), np.zeros(B, dtype=np.int64), 0, n_shifts, int(seed))
    a, L, rank, tie = _pivoted_factor(m, C, tie)

    est = np.zeros((n_shifts, B))
    exact = rank <= 1
    if exact.any():
        rows = np.flatnonzero(exact)
        j = rank[rows] - 1
        p = np.empty(len(rows))
        for jj in (-1, 0):
            sel = j == jj
            if sel.any():
                r_sel = rows[sel]
                p[sel] = _last_step(a, L, tie, rank, np.zeros((len(r_sel), d, 1)), jj, r_sel)[:, 0]
        est[:, rows] = p[None, :]
    rows = np.flatnonzero(~exact)
    dims = int(rank[rows].max()) - 1 if rows.size else 0
    if rows.size:
        rng = np.random.default_rng(int(seed))
        shifts = rng.random((n_shifts, dims))
        z = np.sqrt(_PRIMES[:dims]) % 1.0
        base = (np.arange(per_shift)[:, None] * z[None, :]) % 1.0          # (n, dims)
        Lr, ar_, rk = L[rows], a[rows], rank[rows]
        for s in range(n_shifts):
            u = (base + shifts[s]) % 1.0
            u = 1.0 - np.abs(2.0 * u - 1.0)                                 # tent transform
            f = np.ones((rows.size, per_shift))
            wsum = np.zeros((rows.size, d, per_shift))                      # Σ_{l<j} L_il w_l
            for j in range(dims + 1):
                last = rk - 1 == j
                if last.any():
                    f[last] *= _last_step(a, L, tie, rank, wsum[last], j, rows[last])
                mid = rk - 1 > j
                if not mid.any():
                    continue
                lo = (ar_[mid, j][:, None] - wsum[mid, j, :]) / Lr[mid, j, j][:, None]
                q = ndtr(-lo)
                f[mid] *= q
                w = -ndtri(np.maximum(u[None, :, j] * q, _TINY_P))
                wsum[mid] += Lr[mid, :, j][:, :, None] * w[:, None, :]
            est[s, rows] = f.mean(axis=1)
    per_input = est.mean(axis=0)
    tq = float(student_t.ppf(0.5 + CONFIDENCE / 2, n_shifts - 1))
    per_err = tq * est.std(axis=0, ddof=1) / np.sqrt(n_shifts)
    per_err[exact] = 0.0
    err_mean = tq * est.mean(axis=1).std(ddof=1) / np.sqrt(n_shifts) if B else 0.0
    n_used = per_shift * n_shifts if rows.size else 0
    return PredictedAccuracy(per_input=per_input, mean=float(per_input.mean()) if B else float("nan"),
                             error_bound=float(err_mean), per_input_error=per_err, rank=rank,
                             n_points=n_used, n_shifts=n_shifts, seed=int(seed))
