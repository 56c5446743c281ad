"""Analytic moments and power (refmem.moments) against the device-level Monte-Carlo simulator
(refmem.montecarlo), one proposition at a time (theory §19).

Exact stages (linear layers with any input law, ReLU of a Gaussian vector, power) are z-tested
entry by entry: ``|MC − theory| ≤ z* SE + 1e-12·scale`` with the Bonferroni threshold
``z* = Φ⁻¹(1 − α/(2m))``, family-wise α = 1e-4, m the number of simultaneous entries
(theory §19.2–19.3; ``tests/zstats.py``). Linear-layer tests use correlated **non-Gaussian**
inputs ``X = μ + L(U − 1)``, U i.i.d. Exp(1) (theory §19.8). σ is chosen so that device noise is
at least 10 % of the output variance (asserted). Whole networks (approximate: the Gaussian
assumption A6 at every ReLU) are compared with a relative tolerance, not a z-test (§19.7).

The default suite uses n ≈ 1e5 realizations per test; the ``slow`` variants re-run the same
checks with n = 2e5 (theory §19.4) and under other seeds.
"""

import numpy as np
import pytest
from scipy.special import ndtr

from refmem import (AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU,
                    map_network)
from refmem.moments import propagate
from refmem.montecarlo import monte_carlo
from zstats import assert_within, max_z, zstar

N_LIGHT = 100_000
N_HEAVY = 200_000


def exp_sampler(x_flat, Lfac):
    """Correlated non-Gaussian inputs: X = x + Lfac (U − 1), U ~ Exp(1) i.i.d.; Cov = Lfac Lfacᵀ."""
    B, L = x_flat.shape

    def sample(rng, m):
        U = rng.exponential(size=(m, B, L)) - 1.0
        return x_flat[None] + U @ Lfac.T
    return sample


def check_moments(an, mc, what, cov=True, keep=None):
    """z-test the means and every upper-triangular covariance entry (or the variances).

    ``keep`` (B, J) bool: entries to test (default all). A ReLU output that is positive in
    too few realizations has a meaningless sample SE (0 or a handful of hits); such entries
    are excluded by the callers via :func:`enough_positive`.
    """
    B, J = an.mean.shape
    keep = np.ones((B, J), dtype=bool) if keep is None else keep
    scale = float(np.max(np.abs(an.mean))) + 1.0
    assert_within(mc.mean[keep], an.mean[keep], mc.mean_se[keep], m=int(keep.sum()),
                  atol_scale=scale, what=f"{what} mean")
    if cov:
        iu = np.triu_indices(J)
        k2 = keep[:, iu[0]] & keep[:, iu[1]]
        est, th, se = (a[:, iu[0], iu[1]][k2] for a in (mc.cov, an.cov, mc.cov_se))
        assert_within(est, th, se, m=est.size, atol_scale=float(np.max(np.abs(th))) + 1e-300,
                      what=f"{what} covariance")
    else:
        assert_within(mc.var, an.var, mc.var_se, m=B * J, atol_scale=float(np.max(an.var)),
                      what=f"{what} variance")


def enough_positive(mean, var, n, count=100):
    """ReLU outputs expected to be positive in at least ``count`` of ``n`` realizations."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.nan_to_num(mean / np.sqrt(var), nan=0.0, posinf=50.0, neginf=-50.0)
    return n * ndtr(a) >= count


def check_power(an, mc, what):
    terms = ("power_mem", "power_tia_pos", "power_tia_neg")
    m = sum(getattr(an, t).size for t in terms)
    for t in terms:
        a, e, se = getattr(an, t), getattr(mc, t), getattr(mc, t + "_se")
        assert_within(e, a, se, m=m, atol_scale=float(np.max(np.abs(a))), what=f"{what} {t}")


def noise_share(mapped, x, **kw):
    """Fraction of the analytic output variance due to the crossbar noise (vs σ = α = 0)."""
    clean = map_network(mapped.network, mapped.config.with_(sigma=0.0, alpha=0.0,
                                                            sigma_fn=None, sigma_table=None))
    v1 = propagate(mapped, x, **kw).var.sum()
    v0 = propagate(clean, x, **kw).var.sum()
    return (v1 - v0) / v1


# ====================================================================== linear layers
def dense_setup(seed):
    rng = np.random.default_rng(seed)
    L, J, B = 4, 3, 2
    net = Network([Dense(rng.normal(size=(J, L)), rng.normal(size=J))], (L,))
    x = rng.normal(size=(B, L))
    Lfac = rng.normal(size=(L, L)) * 0.4
    return net, x, Lfac


def _dense(n, seed):
    net, x, Lfac = dense_setup(seed)
    cfg = CrossbarConfig(sigma_fn=lambda g: 0.15 * (0.2 + np.asarray(g)), design="column",
                         g_min=0.2, g_u=1.0, r=1.7)
    mapped = map_network(net, cfg)
    C = Lfac @ Lfac.T
    an = propagate(mapped, x, input_cov=C, cov=True)
    assert noise_share(mapped, x, input_cov=C) >= 0.10
    mc = monte_carlo(mapped, x, n, seed, input_sampler=exp_sampler(x, Lfac), cov=True)
    check_moments(an, mc, "FC (Prop. 1, non-Gaussian input, σ(g), column λ, r=1.7)")
    check_power(an, mc, "FC power (Props 5-6)")


def test_dense_nongaussian_input():
    _dense(N_LIGHT, 101)


def conv_net(rng, stride, pad, pool=False):
    layers = [Conv2d(rng.normal(size=(2, 2, 3, 3)), rng.normal(size=2), stride, pad)]
    if pool:
        layers.append(AvgPool2d(2))
    return Network(layers, (2, 4, 4))


def _conv(n, seed, mapping, stride, pad, pool=False):
    rng = np.random.default_rng(seed)
    net = conv_net(rng, stride, pad, pool)
    B, L = 1, 32
    x = rng.normal(size=(B, 2, 4, 4))
    Lfac = rng.normal(size=(L, L)) * 0.15
    cfg = CrossbarConfig(sigma=0.12, mapping=mapping, design="column", g_min=0.1, r=1.3)
    mapped = map_network(net, cfg)
    C = Lfac @ Lfac.T
    an = propagate(mapped, x, input_cov=C, cov=True)
    assert noise_share(mapped, x, input_cov=C) >= 0.10
    mc = monte_carlo(mapped, x, n, seed, input_sampler=exp_sampler(x.reshape(B, L), Lfac),
                     cov=True)
    what = f"{mapping} conv stride {stride} pad {pad}" + (" + avgpool" if pool else "")
    check_moments(an, mc, what)
    check_power(an, mc, what + " power")
    return an, mc


def test_ur_stride_padding_nongaussian():
    """Prop. 2 corrected (shared devices, same tap at both positions; theory §5)."""
    _conv(N_LIGHT, 202, "UR", 2, 1)


def test_ul_nongaussian():
    """Theory §6: UL = FC with the Toeplitz matrix, noisy structural zeros."""
    _conv(N_LIGHT // 2, 203, "UL", 1, 1)


def test_avgpool_after_conv():
    """Prop. 3 corrected (theory §7): AΓAᵀ incl. cross-channel entries, any input law."""
    _conv(N_LIGHT, 204, "UR", 1, 1, pool=True)


def test_ur_without_shared_term_is_rejected():
    """Evidence (D9/D28): dropping the shared-device covariance between positions fails."""
    rng = np.random.default_rng(205)
    net = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), 1, 1)], (1, 3, 3))
    x = rng.uniform(0.5, 1.5, size=(1, 1, 3, 3))
    mapped = map_network(net, CrossbarConfig(sigma=0.1, design="column"))
    an = propagate(mapped, x, cov=True)
    mc = monte_carlo(mapped, x, N_LIGHT, 205, cov=True)
    fc_style = an.cov.copy()
    off = ~np.eye(18, dtype=bool)
    fc_style[0][off] = 0.0                   # deterministic input: the signal term is zero
    iu = np.triu_indices(18, 1)
    z = max_z(mc.cov[0][iu], fc_style[0][iu], mc.cov_se[0][iu])
    assert z > 2 * zstar(iu[0].size), z
    check_moments(an, mc, "UR deterministic input (O16)")


# ====================================================================== ReLU (Gaussian input)
def relu_setup(seed, d=5):
    rng = np.random.default_rng(seed)
    net = Network([Dense(np.eye(d), np.zeros(d)), ReLU()], (d,))
    A = rng.normal(size=(d, d))
    C = A @ A.T / d + 0.6 * np.ones((d, d))           # strong correlations
    x = rng.normal(size=(2, d)) * np.sqrt(np.diag(C))
    return net, x, C


def _relu(n, seed):
    net, x, C = relu_setup(seed)
    mapped = map_network(net, CrossbarConfig(sigma=0.0))            # noiseless identity
    an = propagate(mapped, x, input_cov=C, cov=True)
    mc = monte_carlo(mapped, x, n, seed, input_cov=C, cov=True)
    keep = enough_positive(x, np.diag(C)[None], n)
    check_moments(an, mc, "ReLU of a Gaussian vector (Prop. 4 + exact §8.2 covariance)",
                  keep=keep)
    # evidence: the Taylor rule of Eq. (28) is rejected (D15)
    tay = propagate(map_network(net, CrossbarConfig(sigma=0.0, relu_cov="taylor")), x,
                    input_cov=C, cov=True)
    iu = np.triu_indices(5, 1)
    z = max_z(mc.cov[:, iu[0], iu[1]], tay.cov[:, iu[0], iu[1]], mc.cov_se[:, iu[0], iu[1]])
    assert z > 2 * zstar(2 * iu[0].size), z


def test_relu_gaussian_mean_var_cov():
    _relu(N_LIGHT, 301)


def _stage1(n, seed, mapping="UR"):
    """O24: deterministic input → conv (Gaussian outputs given Gaussian devices) → ReLU
    (exact covariance) → avgpool: exact, so the full covariance is z-tested."""
    rng = np.random.default_rng(seed)
    net = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)) * 0.5, rng.normal(size=2) * 0.1, 1, 1),
                   ReLU(), AvgPool2d(2), Flatten()], (1, 4, 4))
    x = rng.uniform(0, 1, size=(1, 1, 4, 4))
    mapped = map_network(net, CrossbarConfig(sigma=0.15, mapping=mapping, g_min=0.05))
    an = propagate(mapped, x, cov=True, per_layer=True)
    mc = monte_carlo(mapped, x, n, seed, cov=True)
    pre = an.per_layer[0]                                  # conv outputs (ReLU inputs)
    ok = enough_positive(pre["mean"], pre["var"], n).reshape(1, 2, 2, 2, 2, 2)
    keep = ok.all(axis=(3, 5)).reshape(1, -1)              # every input of the pooling window
    check_moments(an, mc, f"stage 1 {mapping} conv-ReLU-avgpool (O24)", keep=keep)


def test_stage1_conv_relu_pool_exact():
    _stage1(N_LIGHT, 302)


# ====================================================================== noise models, power
def test_sigma_table_and_alpha():
    """σ(g) from a table (theory §4 generalised) and α multiplicative noise (theory §13)."""
    net, x, Lfac = dense_setup(401)
    C = Lfac @ Lfac.T
    table = (np.array([0.0, 0.5, 1.0, 2.0]), np.array([0.05, 0.1, 0.2, 0.3]))
    for cfg, what in ((CrossbarConfig(sigma_table=table, g_min=0.1, r=0.8), "σ(g) table"),
                      (CrossbarConfig(alpha=0.3, sigma=0.02, g_min=0.1, r=2.0), "α = 0.3")):
        mapped = map_network(net, cfg)
        an = propagate(mapped, x, input_cov=C, cov=True)
        assert noise_share(mapped, x, input_cov=C) >= 0.10
        mc = monte_carlo(mapped, x, N_LIGHT, 401, input_sampler=exp_sampler(x, Lfac), cov=True)
        check_moments(an, mc, what)
        check_power(an, mc, what + " power")


def test_power_every_term_ur_ul_fc_gmin_r():
    """Props 5–8 corrected, every term, g_min > 0 and r ≠ 1, UR and UL with padding."""
    rng = np.random.default_rng(402)
    net = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), 1, 1), ReLU(),
                   Flatten(), Dense(rng.normal(size=(3, 32)) * 0.3, rng.normal(size=3))],
                  (1, 4, 4))
    x = rng.uniform(0, 1, size=(2, 1, 4, 4))
    for mapping in ("UR", "UL"):
        mapped = map_network(net, CrossbarConfig(sigma=0.1, mapping=mapping, g_min=0.2, r=2.3))
        an = propagate(mapped, x)
        mc = monte_carlo(mapped, x, N_LIGHT // 2, 402)
        # power needs only the first two moments of each layer's input (theory §11); layer 0
        # sees a deterministic input and layer 1 the ReLU of jointly Gaussian conv outputs
        # (deterministic input, Gaussian devices), whose moments are exact (§8): every term
        # of both layers is exact and z-tested.
        check_power(an, mc, f"{mapping} + FC power")


def test_sigma_zero_is_deterministic_for_both():
    rng = np.random.default_rng(403)
    net = Network([Dense(rng.normal(size=(4, 3)), rng.normal(size=4)), ReLU(),
                   Dense(rng.normal(size=(2, 4)), rng.normal(size=2))], (3,))
    x = rng.normal(size=(3, 3))
    mapped = map_network(net, CrossbarConfig(sigma=0.0, g_min=0.3, r=2.0))
    an = propagate(mapped, x)
    mc = monte_carlo(mapped, x, 3, 0)
    np.testing.assert_allclose(an.mean, net.forward(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mc.mean, an.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mc.power, an.power, rtol=1e-12)      # noiseless: exact power


# ====================================================================== whole networks (§19.7)
def mlp(rng, sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(Dense(rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]),
                            rng.normal(size=sizes[i + 1]) * 0.1))
        if i < len(sizes) - 2:
            layers.append(ReLU())
    return Network(layers, (sizes[0],))


def cnn(rng):
    return Network([Conv2d(rng.normal(size=(4, 1, 3, 3)) / 3, rng.normal(size=4) * 0.1, 1, 1),
                    ReLU(), AvgPool2d(2), Flatten(),
                    Dense(rng.normal(size=(3, 64)) / 8, rng.normal(size=3) * 0.1)], (1, 8, 8))


NETWORKS = {
    "mlp2": (lambda rng: mlp(rng, [8, 6, 3]), (8,)),
    "mlp3": (lambda rng: mlp(rng, [8, 6, 5, 3]), (8,)),
    "cnn": (cnn, (1, 8, 8)),
}


def _network(name, mapping, n, seed, sigma=0.05):
    rng = np.random.default_rng(seed)
    make, shape = NETWORKS[name]
    net = make(rng)
    x = rng.uniform(0, 1, size=(3,) + shape)
    mapped = map_network(net, CrossbarConfig(sigma=sigma, mapping=mapping, g_min=0.05))
    an = propagate(mapped, x)
    mc = monte_carlo(mapped, x, n, seed)
    a, e, se = an.mse.mean(), mc.mse_overall, mc.mse_overall_se
    assert abs(a - e) <= 0.02 * e + 3 * se, (name, mapping, a, e, se)
    check_power(an, mc, f"{name} {mapping} power") if name == "mlp2" else None
    return a, e, se


@pytest.mark.parametrize("name,mapping", [("mlp2", "UR"), ("mlp3", "UR"), ("cnn", "UR"),
                                          ("cnn", "UL")])
def test_network_mse_within_2_percent(name, mapping):
    """Theory §19.7: analytic MSE within 2 % of MC at σ = 0.05 (A6 bias), MC SE included."""
    _network(name, mapping, 8_000 if mapping == "UL" else 20_000, 501)


# ====================================================================== heavy variants
@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_heavy_layer_checks(seed):
    _dense(N_HEAVY, seed)
    _conv(N_HEAVY, seed, "UR", 2, 1)
    _conv(N_HEAVY // 4, seed, "UL", 2, 0)
    _conv(N_HEAVY, seed, "UR", 1, 1, pool=True)
    _relu(N_HEAVY, seed)
    _stage1(N_HEAVY, seed)
    _stage1(N_HEAVY // 4, seed, "UL")


@pytest.mark.slow
@pytest.mark.parametrize("name,mapping", [("mlp2", "UR"), ("mlp3", "UR"), ("cnn", "UR"),
                                          ("cnn", "UL")])
def test_heavy_network_mse(name, mapping):
    _network(name, mapping, 100_000, 502)
