"""Accuracy predicted from Gaussian output moments (theory §21) against independent oracles.

Oracles: closed forms (K = 2 is Φ of a ratio; exchangeable outputs give 1/K; zero covariance
gives the argmax indicator with numpy's tie rule; a rank-one Σ reduces to an interval of one
normal variable, found here by an explicit loop), scipy's ``multivariate_normal.cdf`` (Genz's
randomized QMC, seeded), and the device-level Monte-Carlo accuracy of the shipped MLP.
"""

import math

import numpy as np
import pytest
from scipy.special import ndtr
from scipy.stats import multivariate_normal

from refmem import CrossbarConfig, load_model, map_network, monte_carlo
from refmem.accuracy import difference_moments, predicted_accuracy
from refmem.datasets import shipped_path
from refmem.errors import DataError
from refmem.moments import propagate


def random_spd(rng, B, K, scale=1.0):
    A = rng.normal(size=(B, K, K)) * scale
    return A @ np.swapaxes(A, 1, 2) / K


def test_two_classes_is_phi_of_a_ratio():
    rng = np.random.default_rng(0)
    B = 50
    mu = rng.normal(size=(B, 2))
    S = random_spd(rng, B, 2)
    y = rng.integers(0, 2, B)
    r = predicted_accuracy(mu, S, y)
    b, o = np.arange(B), 1 - y
    want = ndtr((mu[b, y] - mu[b, o]) / np.sqrt(S[b, y, y] + S[b, o, o] - 2 * S[b, y, o]))
    np.testing.assert_allclose(r.per_input, want, rtol=1e-12, atol=1e-300)
    assert r.error_bound == 0.0 and np.all(r.per_input_error == 0) and r.n_points == 0


@pytest.mark.parametrize("K", [3, 5, 10])
@pytest.mark.parametrize("rho", [0.0, 0.5])
def test_exchangeable_equal_mean_outputs_give_one_over_k(K, rho):
    S = (1 - rho) * np.eye(K) + rho * np.ones((K, K))
    y = np.array([0, K // 2, K - 1])
    r = predicted_accuracy(np.full((3, K), 0.3), np.broadcast_to(S, (3, K, K)), y, seed=1)
    assert np.all(np.abs(r.per_input - 1 / K) <= r.per_input_error)
    assert abs(r.mean - 1 / K) <= r.error_bound
    assert r.error_bound < 1e-3


def test_zero_covariance_is_the_argmax_indicator_with_numpys_tie_rule():
    rng = np.random.default_rng(2)
    mu = rng.integers(0, 3, size=(200, 4)).astype(float)     # many exact ties
    y = rng.integers(0, 4, 200)
    want = (np.argmax(mu, axis=1) == y).astype(float)
    for cov in (np.zeros((200, 4, 4)), np.zeros((200, 4))):
        r = predicted_accuracy(mu, cov, y)
        assert np.array_equal(r.per_input, want)
        assert r.error_bound == 0.0 and np.all(r.rank == 0)


def test_zero_variance_outputs_beside_random_ones():
    # output 0 is N(0, 1); outputs 1 and 2 are deterministic. With label 1, D_2 = Z_1 − Z_2 is
    # deterministic (a constraint row, ties by numpy's rule) and D_0 = 1 − Z_0 is random.
    S = np.zeros((5, 3, 3))
    S[:, 0, 0] = 1.0
    mu = np.array([[0, 1, 0.5], [0, 1, 1], [0, 1, 1], [0, 1, 2], [0, 1, -50]], dtype=float)
    y = np.array([1, 1, 2, 1, 0])
    r = predicted_accuracy(mu, S, y)
    want = [ndtr(1.0), ndtr(1.0), 0.0, 0.0, ndtr(-1.0)]
    np.testing.assert_allclose(r.per_input, want, rtol=1e-13, atol=0)
    assert np.all(r.rank == 1) and r.error_bound == 0.0


def rank_one_oracle(mu, v, y):
    """P(argmax(mu + v t) = y), t ~ N(0, 1): the interval of t where class y is strictly
    largest (ties of measure zero), built by an explicit loop over the other classes."""
    lo, hi = -math.inf, math.inf
    for k in range(len(mu)):
        if k == y:
            continue
        c, d = v[y] - v[k], mu[k] - mu[y]               # need c t > d
        if c > 0:
            lo = max(lo, d / c)
        elif c < 0:
            hi = min(hi, d / c)
        elif not (d < 0 or (d == 0 and y < k)):
            return 0.0
    if hi <= lo:
        return 0.0
    return float(ndtr(hi) - ndtr(lo))


def test_singular_rank_one_covariance_is_exact():
    rng = np.random.default_rng(3)
    for _ in range(20):
        K = int(rng.integers(3, 8))
        mu, v = rng.normal(size=K), rng.normal(size=K)
        for y in range(K):
            r = predicted_accuracy(mu[None], np.outer(v, v)[None], np.array([y]))
            assert r.rank[0] == 1 and r.error_bound == 0.0
            assert abs(r.per_input[0] - rank_one_oracle(mu, v, y)) < 1e-12


def scipy_orthant(m, C, seed):
    return multivariate_normal.cdf(np.zeros(len(m)), mean=-m, cov=C, abseps=1e-6, releps=1e-6,
                                   maxpts=200_000 * len(m), rng=np.random.default_rng(seed))


@pytest.mark.parametrize("K", [3, 4, 6, 10])
def test_agrees_with_scipy_multivariate_normal_cdf(K):
    rng = np.random.default_rng(10 + K)
    B = 8
    mu = rng.normal(size=(B, K)) * 1.5
    S = random_spd(rng, B, K, scale=1.0)
    y = rng.integers(0, K, B)
    r = predicted_accuracy(mu, S, y, n_points=2**14)
    m, C, _ = difference_moments(mu, S, y)
    want = np.array([scipy_orthant(m[b], C[b], b) for b in range(B)])
    # the 99 % bound of our integration error, doubled, plus scipy's own requested tolerance
    assert np.all(np.abs(r.per_input - want) <= 2 * r.per_input_error + 1e-5)
    assert abs(r.mean - want.mean()) <= 2 * r.error_bound + 1e-5


def test_singular_covariance_agrees_with_direct_sampling():
    # rank-3 output covariance in K = 6: the differences are singular (three constraint rows).
    # Oracle: Z = μ + A ε sampled directly (2e5 draws), argmax counted; band z* SE, z* = 4.5
    # (family-wise 1e-4 over the 6 inputs, theory §19.3).
    rng = np.random.default_rng(5)
    K, B, n = 6, 6, 200_000
    A = rng.normal(size=(B, K, 3))
    S = A @ np.swapaxes(A, 1, 2)
    mu = rng.normal(size=(B, K))
    y = rng.integers(0, K, B)
    r = predicted_accuracy(mu, S, y, n_points=2**14)
    assert np.all(r.rank == 3)
    for b in range(B):
        Z = mu[b] + rng.normal(size=(n, 3)) @ A[b].T
        hit = np.argmax(Z, axis=1) == y[b]
        p, se = hit.mean(), hit.std(ddof=1) / math.sqrt(n)
        assert abs(r.per_input[b] - p) <= 4.5 * se + r.per_input_error[b]


def test_seeded_and_reproducible():
    rng = np.random.default_rng(6)
    mu, S, y = rng.normal(size=(30, 5)), random_spd(rng, 30, 5), rng.integers(0, 5, 30)
    a = predicted_accuracy(mu, S, y, seed=4)
    b = predicted_accuracy(mu, S, y, seed=4)
    c = predicted_accuracy(mu, S, y, seed=5)
    assert np.array_equal(a.per_input, b.per_input) and a.error_bound == b.error_bound
    assert not np.array_equal(a.per_input, c.per_input)
    assert abs(a.mean - c.mean) <= a.error_bound + c.error_bound


@pytest.mark.parametrize("args, match", [
    ((np.zeros(3), np.zeros((3, 3)), [0]), "mean must have shape"),
    ((np.zeros((1, 3)), np.zeros((1, 2, 2)), [0]), "cov must have shape"),
    ((np.zeros((1, 3)), np.zeros((1, 3, 3)), [3]), "labels must lie"),
    ((np.zeros((1, 3)), np.zeros((1, 3, 3)), [0.5]), "integers"),
    ((np.full((1, 3), np.nan), np.zeros((1, 3, 3)), [0]), "finite"),
    ((np.zeros((1, 2)), np.array([[[1.0, 2.0], [2.0, 1.0]]]), [0]), "semi-definite"),
    ((np.zeros((1, 2)), np.array([[[1.0, 0.5], [0.0, 1.0]]]), [0]), "symmetric"),
    ((np.zeros((1, 2)), -np.ones((1, 2)), [0]), ">= 0"),
])
def test_bad_input_is_a_data_error(args, match):
    with pytest.raises(DataError, match=match):
        predicted_accuracy(*args)


# ------------------------------------------------------------------ against Monte-Carlo
# Allowance for the Gaussian closure (theory §20, theory §19.7): the analytic outputs are the
# exact first two moments, but the true output law after a ReLU layer is not Gaussian.
# Measured on 300 test images with n = 400 (seed 1): predicted − MC = −0.14 pp (σ = 0.05),
# +0.01 pp (α = 0.2), −0.06 pp (σ = 0.1), +0.10 pp (α = 0.5). The allowance is 0.5 pp,
# about 3× the largest of these; the MC error is covered separately by z* SE (z* = 3.9,
# family-wise 1e-4 for one comparison, theory §19.3).
CLOSURE_ALLOWANCE = 0.005
Z_STAR = 3.9


@pytest.mark.parametrize("cfg", [
    CrossbarConfig(sigma=0.05, design="layer", g_u=1.0),
    CrossbarConfig(alpha=0.2),
], ids=["sigma0.05-layer-gu1", "alpha0.2"])
def test_agrees_with_monte_carlo_accuracy_of_the_shipped_mlp(cfg):
    from refmem.demo import _load_test_images
    net = load_model(shipped_path("models/mnist5k_mlp_784-100-10.h5"))
    x, y = _load_test_images(200, 0)
    mapped = map_network(net, cfg)
    an = propagate(mapped, x, cov=True)
    pred = predicted_accuracy(an.mean, an.cov, y, n_points=1024)
    mc = monte_carlo(mapped, x, 256, 7, labels=y)
    assert mc.accuracy_se <= 0.005
    clean = np.mean(np.argmax(net.forward(x), axis=1) == y)
    assert mc.accuracy < clean - 0.005          # the noise matters at this level
    gap = abs(pred.mean - mc.accuracy)
    assert gap <= Z_STAR * mc.accuracy_se + pred.error_bound + CLOSURE_ALLOWANCE


def test_demo_draws_predicted_accuracy(tmp_path):
    import h5py
    from refmem.demo import run_demo
    out = run_demo(tmp_path, sigmas=(0.0, 0.05), n_images=60, n_mc=64, progress=False,
                   log=lambda *a: None)
    # σ = 0: zero covariance, so the prediction is the noiseless accuracy exactly
    assert out["an_acc"][0] == out["reference_accuracy"] and out["an_acc_err"][0] == 0.0
    gap = abs(out["an_acc"][1] - out["mc_acc"][1])
    assert gap <= Z_STAR * out["mc_acc_se"][1] + out["an_acc_err"][1] + CLOSURE_ALLOWANCE
    with h5py.File(tmp_path / "demo.h5") as f:
        assert np.array_equal(f["analytic/accuracy_mean"][()], out["an_acc"])
        assert f["analytic/accuracy"].shape == (2, 60)
