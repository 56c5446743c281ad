"""The factor closure (theory §20, refmem.moments.factor) against independent oracles.

- the split (Eq. F1) keeps the mean and covariance exactly and removes the top eigenmode
  (explicit loops over the components, numpy's full eigendecomposition);
- the recombination (Eq. F2) against E[XXᵀ] − mmᵀ written as loops;
- no split = the Gaussian pass, bit for bit;
- a rank-one noise source: the pass is Gauss–Hermite quadrature of the exact expectation,
  checked against the noiseless network run at the quadrature nodes (Network.forward, no
  moment code), and it converges to the exact expectation (fine trapezoid) where the
  Gaussian closure does not;
- one hidden ReLU (where the Gaussian closure is exact, theory §20): the factor pass
  converges to it;
- Monte-Carlo on a narrow deep UR CNN where the Gaussian closure is > 3 SE low: the factor
  closure is within the Monte-Carlo error and closer;
- bad options raise ConfigError.
"""

import math
import pathlib

import numpy as np
import pytest

from refmem import (AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU,
                    map_network)
from nets import deep_cnn
from refmem.errors import ConfigError
from refmem.montecarlo import monte_carlo
from refmem.moments.factor import (FactorClosure, factor_split, mixture_mean_var,
                                   mixture_moments)
from refmem.propagate import propagate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _psd(rng, d, r=None):
    A = rng.normal(size=(d, r or d))
    return A @ A.T


@pytest.mark.parametrize("K", [2, 3, 5])
def test_split_keeps_mean_and_covariance(K):
    rng = np.random.default_rng(K)
    d = 6
    G = _psd(rng, d)
    mu = rng.normal(size=d)
    comps = factor_split(0.7, mu, G, K)
    assert len(comps) == K
    m = np.zeros(d)
    S = np.zeros((d, d))
    wsum = 0.0
    for w, mk, Gk in comps:
        wsum += w
        for i in range(d):
            m[i] += w * mk[i]
            for j in range(d):
                S[i, j] += w * (Gk[i, j] + mk[i] * mk[j])
    assert wsum == pytest.approx(0.7, rel=1e-14)
    np.testing.assert_allclose(m / wsum, mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(S / wsum - np.outer(mu, mu), G, rtol=1e-11, atol=1e-11)
    # the removed mode is the top eigenmode: the conditional spectrum is Γ's without λ₁
    ev = np.linalg.eigvalsh(G)
    np.testing.assert_allclose(np.linalg.eigvalsh(comps[0][2]), np.r_[0.0, ev[:-1]],
                               atol=1e-10 * ev[-1])
    # odd moment along the mode vanishes (symmetric rule), means on one line through μ
    b = comps[-1][1] - mu
    assert np.linalg.matrix_rank(np.array([mk - mu for _, mk, _ in comps]), tol=1e-9) == 1
    third = sum(w * ((mk - mu) @ b) ** 3 for w, mk, _ in comps)
    assert abs(third) < 1e-12 * np.dot(b, b) ** 3


def test_split_of_deterministic_or_zero_component():
    mu = np.arange(3.0)
    assert factor_split(1.0, mu, None, 3) == [(1.0, mu, None)]
    (w, m, G), = factor_split(0.5, mu, np.zeros((3, 3)), 3)
    assert w == 0.5 and np.all(G == 0)


def test_mixture_moments_loop():
    rng = np.random.default_rng(3)
    d, n = 4, 5
    W = rng.uniform(0.1, 1, n)
    W /= W.sum()
    M = rng.normal(size=(n, d))
    Gs = [_psd(rng, d) for _ in range(n)]
    Gs[2] = None                                   # a deterministic component
    m, C = mixture_moments(W, M, Gs)
    E1 = np.zeros(d)
    E2 = np.zeros((d, d))
    for k in range(n):
        for i in range(d):
            E1[i] += W[k] * M[k, i]
            for j in range(d):
                g = 0.0 if Gs[k] is None else Gs[k][i, j]
                E2[i, j] += W[k] * (g + M[k, i] * M[k, j])
    np.testing.assert_allclose(m, E1, rtol=1e-13)
    np.testing.assert_allclose(C, E2 - np.outer(E1, E1), rtol=1e-11, atol=1e-12)
    mv, v = mixture_mean_var(W, M, [np.zeros(d) if G is None else np.diag(G) for G in Gs])
    np.testing.assert_allclose(mv, m, rtol=1e-14)
    np.testing.assert_allclose(v, np.diag(C), rtol=1e-11)


def small_cnn(rng):
    return Network([
        Conv2d(rng.normal(size=(3, 1, 3, 3)) / 2, rng.normal(size=3) * 0.1, 1, 1), ReLU(),
        Conv2d(rng.normal(size=(3, 3, 3, 3)) / 3, rng.normal(size=3) * 0.1, 1, 1), ReLU(),
        AvgPool2d(2), Flatten(),
        Dense(rng.normal(size=(4, 27)) / 3, rng.normal(size=4) * 0.1), ReLU(),
        Dense(rng.normal(size=(2, 4)) / 2, None)], (1, 6, 6))


def test_no_split_equals_gaussian_pass_bitwise():
    rng = np.random.default_rng(1)
    net = small_cnn(rng)
    x = rng.uniform(0, 1, size=(2, 1, 6, 6))
    m = map_network(net, CrossbarConfig(sigma=0.1, mapping="UR", g_min=0.05))
    a = propagate(m, x, cov=True, per_layer=True)
    b = propagate(m, x, cov=True, per_layer=True, factor=FactorClosure((), 3))
    for k in ("mean", "var", "mse", "cov", "power_layers", "power_mem"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def _rank_one_net(w0, rng):
    """1×1 UR conv 1 → 1 channel without bias device: one device pair for every position."""
    return Network([
        Conv2d(np.array([[[[w0]]]]), None, 1, 0), ReLU(),
        Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2) * 0.3, 1, 1), ReLU(),
        Flatten(), Dense(rng.normal(size=(2, 32)) / 3, rng.normal(size=2) * 0.1)], (1, 4, 4))


def test_rank_one_source_is_gauss_hermite_quadrature():
    rng = np.random.default_rng(7)
    w0, sigma = 0.8, 0.3
    net = _rank_one_net(w0, np.random.default_rng(8))
    x = rng.normal(size=(1, 1, 4, 4))
    cfg = CrossbarConfig(sigma=sigma, lam=1.0, mapping="UR", noisy_layers="first",
                         bias_on_crossbar=False)
    mapped = map_network(net, cfg)
    ref = net.forward(x)[0]
    sd = math.sqrt(2.0) * sigma                 # pair variance 2σ²/λ² in weight units (§3.2)

    def sq_err(delta):
        n2 = _rank_one_net(w0 + delta, np.random.default_rng(8))
        return np.mean((n2.forward(x)[0] - ref) ** 2)

    for K in (3, 8):
        got = propagate(mapped, x, factor=FactorClosure((0,), K)).mse.mean()
        z, w = np.polynomial.hermite_e.hermegauss(K)
        want = sum(wk * sq_err(sd * zk) for zk, wk in zip(z, w)) / w.sum()
        assert got == pytest.approx(want, rel=1e-9, abs=1e-13)
    # the limit is the exact expectation (fine trapezoid over ±9 sd); Gaussian closure is off
    t = np.linspace(-9, 9, 20001)
    f = np.array([sq_err(sd * ti) for ti in t]) * np.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    exact = float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(t)))
    fac = propagate(mapped, x, factor=FactorClosure((0,), 40)).mse.mean()
    gau = propagate(mapped, x).mse.mean()
    assert fac == pytest.approx(exact, rel=2e-3)
    assert abs(gau / exact - 1) > 10 * abs(fac / exact - 1)


def test_one_hidden_layer_converges_to_exact_gaussian_pass():
    """After the first noisy layer the ReLU input is Gaussian: both closures are exact there."""
    rng = np.random.default_rng(4)
    net = Network([
        Conv2d(rng.normal(size=(2, 1, 3, 3)) / 2, rng.normal(size=2) * 0.1, 1, 1), ReLU(),
        Flatten(), Dense(rng.normal(size=(3, 72)) / 4, rng.normal(size=3) * 0.1)], (1, 6, 6))
    x = rng.uniform(0, 1, size=(2, 1, 6, 6))
    m = map_network(net, CrossbarConfig(sigma=0.2, mapping="UR", g_min=0.05))
    g = propagate(m, x, cov=True)
    errs = []
    for K in (10, 40):
        f = propagate(m, x, cov=True, factor=FactorClosure((0,), K))
        errs.append((np.max(np.abs(f.cov - g.cov)) / np.max(np.abs(g.cov)),
                     np.max(np.abs(f.mean - g.mean)) / np.max(np.abs(g.mean))))
        # power before the split is the same computation
        np.testing.assert_allclose(f.power_layers[:, 0], g.power_layers[:, 0], rtol=1e-13)
    # units almost entirely in the split mode make the conditional ReLU nearly a kink, so the
    # rule converges algebraically, not geometrically (measured: 5.6e-4 at K = 10, 2.4e-6 at 40)
    assert errs[1][0] < 1e-5 and errs[1][0] < errs[0][0] / 10
    assert errs[1][1] < 1e-5 and errs[1][1] < errs[0][1] / 10


def test_closer_to_monte_carlo_on_narrow_deep_ur_cnn():
    """σ = 0.15, narrow 3-conv UR net: the Gaussian closure is > 3 SE low; the factor closure
    (split after crossbar layer 1) is within 2 SE of Monte-Carlo and at most half as far."""
    rng = np.random.default_rng(0)
    net = deep_cnn(rng)
    x = rng.uniform(0, 1, size=(2, 1, 6, 6))
    m = map_network(net, CrossbarConfig(sigma=0.15, mapping="UR", g_min=0.05))
    mc = monte_carlo(m, x, 8192, seed=77)
    g = propagate(m, x).mse.mean()
    f = propagate(m, x, factor=FactorClosure((1, 2), 5)).mse.mean()
    se = mc.mse_overall_se
    assert (g - mc.mse_overall) / se < -3
    assert abs(f - mc.mse_overall) / se < 2
    assert abs(f - mc.mse_overall) < 0.5 * abs(g - mc.mse_overall)


def test_bad_factor_options():
    rng = np.random.default_rng(1)
    m = map_network(small_cnn(rng), CrossbarConfig(sigma=0.1))
    x = np.ones((1, 1, 6, 6))
    for bad in (dict(nodes=1), dict(nodes=41), dict(nodes=2.5), dict(nodes=True),
                dict(layers=("a",)), dict(layers=3)):
        with pytest.raises(ConfigError):
            FactorClosure(**bad)
    for layers in ((4,), (-5,), (3,)):               # out of range; last layer has no ReLU
        with pytest.raises(ConfigError):
            propagate(m, x, factor=FactorClosure(layers, 3))
    with pytest.raises(ConfigError):
        propagate(m, x, factor=FactorClosure((0, 1, 2), 40))   # 40³ components
    with pytest.raises(ConfigError):
        propagate(m, x, factor=((0,), 3))


def test_cli_factor_options_run_the_factor_pass(tmp_path):
    """`refmem moments --factor-layers 0 --factor-nodes 3` writes what propagate(...,
    factor=FactorClosure((0,), 3)) computes, and records the options."""
    import h5py
    from refmem import load_model
    from refmem.cli import main
    model = ROOT / "data" / "models" / "mnist5k_mlp_784-50-50-10.h5"
    x = np.random.default_rng(0).uniform(0, 1, size=(2, 784))
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "f.h5"
    assert main(["moments", str(model), "--input", str(tmp_path / "x.npy"), "--sigma", "0.05",
                 "--factor-layers", "0", "--factor-nodes", "3", "-q", "-o", str(out)]) == 0
    want = propagate(map_network(load_model(model), CrossbarConfig(sigma=0.05)), x,
                     factor=FactorClosure((0,), 3))
    with h5py.File(out) as f:
        np.testing.assert_allclose(f["mse"][0], want.mse, rtol=1e-12)
        assert f.attrs["factor_nodes"] == 3 and "0" in str(f.attrs["factor_layers"])
