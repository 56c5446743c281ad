"""refmem.stats.CentralMoments: exact block merges of centred moments (theory §19.2).

Oracles: numpy/scipy statistics of the whole concatenated sample, a loop restatement of the
mixed fourth moments, and closed forms for Gaussian samples (Var s² = 2σ⁴/n, SE of the
skewness √(6/n), of the excess kurtosis √(24/n)) with bands derived from the sample size.
"""

import io

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings, strategies as st

from refmem.stats import CentralMoments
from zstats import assert_within, zstar


def accumulate(x, sizes, **kw):
    acc = CentralMoments(x.shape[1:], **kw)
    i = 0
    for s in sizes:
        acc.add(x[i:i + s])
        i += s
    assert i == x.shape[0]
    return acc


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
       shift=st.sampled_from([0.0, 3.0, -1e3]), seed=st.integers(0, 2**32 - 1))
def test_merged_blocks_equal_the_whole_sample(sizes, shift, seed):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    x = shift + rng.gamma(2.0, 1.0, size=(n, 2, 3)) * rng.choice([-1, 1], size=(1, 2, 3))
    acc = accumulate(x, sizes, order=6, cov=True)
    assert acc.n == n
    np.testing.assert_allclose(acc.mean, x.mean(0), rtol=1e-12, atol=1e-12 * abs(shift))
    # rounding of the deviations is ~eps |shift|; M_k inherits k |e|^(k-1) times that
    dev = np.abs(x - x.mean(0)).max() + 1.0
    for k in range(2, 7):
        np.testing.assert_allclose(acc.central(k), scipy.stats.moment(x, k, axis=0), rtol=1e-9,
                                   atol=1e-14 * (1 + abs(shift)) * k * dev ** (k - 1))
    if n >= 2:
        np.testing.assert_allclose(acc.var(), x.var(0, ddof=1), rtol=1e-10)
        np.testing.assert_allclose(acc.skewness(), scipy.stats.skew(x, axis=0), rtol=1e-8,
                                   atol=1e-10)
        e = x - x.mean(0)
        # SEs of (co)variances cancel to 0 for tiny n (n = 2: μ4 = μ2² exactly): compare them
        # with an absolute floor at the rounding level of the squared scale
        floor = 1e-6 * float(np.max(x.var(0)))
        for b in range(2):
            np.testing.assert_allclose(acc.covariance()[b], np.cov(x[:, b].T), rtol=1e-10,
                                       atol=1e-12)
            # loop restatement of E[e_i² e_j²] − c_ij²
            for i in range(3):
                for j in range(3):
                    c = np.mean(e[:, b, i] * e[:, b, j])
                    v = np.mean(e[:, b, i] ** 2 * e[:, b, j] ** 2) - c * c
                    assert acc.covariance_se()[b, i, j] == pytest.approx(
                        np.sqrt(max(v, 0) / n), rel=1e-8, abs=floor)
        np.testing.assert_allclose(np.diagonal(acc.covariance_se(), axis1=-2, axis2=-1),
                                   acc.var_se(), rtol=1e-9, atol=floor)
        d2 = x * x
        np.testing.assert_allclose(acc.mean_square(), d2.mean(0), rtol=1e-10)
        np.testing.assert_allclose(acc.mean_square_se(), d2.std(0, ddof=1) / np.sqrt(n),
                                   rtol=1e-6, atol=floor * (1 + shift**2))


@pytest.mark.parametrize("bias, sigma", [(1e6, 1.0), (0.3, 1e-8), (-2.5e-3, 1e-12)])
def test_large_bias_variance_and_se_closed_forms(bias, sigma):
    """|bias|/sd ≥ 1e6: the variance and its SE agree with σ² and σ²√(2/n) (Gaussian closed
    forms), and with the statistics of the same draws without the bias."""
    assert abs(bias) / sigma >= 1e6
    n = 16 * 256
    z = np.random.default_rng(7).standard_normal((n, 3))
    acc = accumulate(bias + sigma * z, [256] * 16, order=4)
    ref = accumulate(sigma * z, [256] * 16, order=4)
    # path agreement: only the rounding of bias + σz (relative 2⁻⁵³ |bias|/σ) separates them
    tol = 64 * np.finfo(float).eps * abs(bias) / sigma
    np.testing.assert_allclose(acc.var(), ref.var(), rtol=tol)
    np.testing.assert_allclose(acc.var_se(), ref.var_se(), rtol=tol)
    # closed forms: E s² = σ²; the SE of s² is σ²√(2/n) for a Gaussian; its estimate has a
    # relative sd of √(56/n)/4 (influence function of μ4 − μ2², a Gaussian sample)
    assert_within(acc.var(), sigma**2, acc.var_se(), m=2 * 3, what="variance")
    rel = zstar(2 * 3) * np.sqrt(56 / n) / 4
    np.testing.assert_allclose(acc.var_se(), sigma**2 * np.sqrt(2 / n), rtol=rel)
    assert_within(acc.mean_square(), bias**2 + sigma**2, acc.mean_square_se(), m=3,
                  atol_scale=bias**2, what="mean square")
    np.testing.assert_allclose(acc.mean_square_se(), 2 * abs(bias) * sigma / np.sqrt(n),
                               rtol=rel)


def test_gaussian_skewness_and_kurtosis_with_their_ses():
    n = 40000
    x = 1e4 + 1e-3 * np.random.default_rng(3).standard_normal((n, 2))
    acc = accumulate(x, [1000] * 40, order=8)
    assert_within(acc.skewness(), 0.0, acc.skewness_se(), m=4, what="skewness")
    assert_within(acc.kurtosis(), 0.0, acc.kurtosis_se(), m=4, what="kurtosis")
    # closed forms under normality, with a 15 % allowance for the estimated higher moments
    np.testing.assert_allclose(acc.skewness_se(), np.sqrt(6 / n), rtol=0.15)
    np.testing.assert_allclose(acc.kurtosis_se(), np.sqrt(24 / n), rtol=0.15)
    # a skewed law: exponential has skewness 2 and excess kurtosis 6
    y = np.random.default_rng(4).exponential(size=(n, 1))
    ea = accumulate(y, [1000] * 40, order=8)
    assert_within(ea.skewness(), 2.0, ea.skewness_se(), m=2, what="exp skewness")
    assert_within(ea.kurtosis(), 6.0, ea.kurtosis_se(), m=2, what="exp kurtosis")


def test_state_round_trip_and_determinism():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(100, 2, 3))
    a = accumulate(x, [30, 30, 40], order=4, cov=True)
    buf = io.BytesIO()
    np.savez(buf, **a.state("y_"))
    buf.seek(0)
    b = CentralMoments((2, 3), order=4, cov=True)
    with np.load(buf) as z:
        b.load("y_", z)
    b.add(x[:10])
    a.add(x[:10])
    for k in ("mean", "M", "S11", "S21", "S22"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    c = CentralMoments((2, 4), order=4, cov=True)
    with pytest.raises(ValueError):
        buf.seek(0)
        with np.load(buf) as z:
            c.load("y_", z)


def test_orders_too_low_and_bad_shapes():
    acc = accumulate(np.arange(10.0)[:, None], [10], order=4)
    for f in (acc.skewness_se, acc.kurtosis_se, acc.covariance):
        with pytest.raises(ValueError):
            f()
    with pytest.raises(ValueError):
        acc.add(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        CentralMoments((), cov=True)
    with pytest.raises(ValueError):
        CentralMoments((2,), order=1)
    one = accumulate(np.ones((1, 2)), [1], order=2)
    with pytest.raises(ValueError):
        one.var()
