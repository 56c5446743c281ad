"""The device-level Monte-Carlo simulator against closed forms (theory §18) with bands derived
from the sample size (theory §19), plus its reproducibility contract.

Every expected value here is computed in the test from the spec's closed forms, never taken
from the simulator.
"""

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refmem import Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU, AvgPool2d, map_network
from refmem.errors import ConfigError, DataError
from refmem.montecarlo import monte_carlo, mc_sample_count
from zstats import assert_within


def dense_net(rng, L=4, J=3, bias=True, scale=1.0):
    W = rng.normal(size=(J, L)) * scale
    b = rng.normal(size=J) * scale if bias else None
    return Network([Dense(W, b)], (L,)), W, b


def small_cnn(rng, stride=1, padding=1):
    side = (4 + 2 * padding - 3) // stride + 1
    n_feat = 2 * (side // 2) ** 2
    return Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), stride, padding),
                    ReLU(), AvgPool2d(2), Flatten(),
                    Dense(rng.normal(size=(3, n_feat)), rng.normal(size=3))], (1, 4, 4))


# ---------------------------------------------------------------------- exactness at σ = 0
@pytest.mark.parametrize("mapping", ["UR", "UL"])
def test_sigma_zero_equals_deterministic_forward(mapping):
    rng = np.random.default_rng(1)
    net = small_cnn(rng)
    x = rng.uniform(0, 1, size=(3, 1, 4, 4))
    mapped = map_network(net, CrossbarConfig(sigma=0.0, mapping=mapping, g_min=0.1, r=2.0))
    res = monte_carlo(mapped, x, n=5, seed=0)
    ref = net.forward(x)
    np.testing.assert_allclose(res.mean, ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(res.reference, ref, rtol=0, atol=0)
    assert np.all(res.var < 1e-24) and np.all(res.mse < 1e-24)


def test_fixed_quantization_runs_the_programmed_network():
    rng = np.random.default_rng(2)
    net, W, b = dense_net(rng, 5, 3)
    x = rng.uniform(0, 1, size=(4, 5))
    mapped = map_network(net, CrossbarConfig(bits=3))
    res = monte_carlo(mapped, x, n=3, seed=0)
    # independent statement of theory §14: Δ = max|[W; b]| / 3, q = Δ round(a/Δ)
    delta = max(np.abs(W).max(), np.abs(b).max()) / 3
    q = lambda a: delta * np.clip(np.round(a / delta), -3, 3)
    prog = x @ q(W).T + q(b)
    np.testing.assert_allclose(res.mean, prog, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(res.mse, (prog - x @ W.T - b) ** 2, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------- single dense layer
@pytest.mark.parametrize("design", ["scalar", "layer", "column"])
def test_dense_variance_closed_form(design):
    """Theory §4 / O10: Var Z_j = 2σ²/λ_j² (1 + ‖x‖²), Cov_jj' = 0, mean W^T x + b (r cancels)."""
    rng = np.random.default_rng(3)
    net, W, b = dense_net(rng, 6, 4)
    x = rng.uniform(-1, 1, size=(2, 6))
    sigma, gmin, gu = 0.08, 0.2, 1.3
    cfg = CrossbarConfig(sigma=sigma, g_min=gmin, g_u=gu, design=design, r=1.7)
    res = monte_carlo(map_network(net, cfg), x, n=20000, seed=11, cov=True)
    wu_col = np.maximum(np.abs(W).max(axis=1), np.abs(b))          # per output j
    wu = {"scalar": np.full(4, wu_col.max()), "layer": np.full(4, wu_col.max()),
          "column": wu_col}[design]
    lam = (gu - gmin) / wu
    var = 2 * sigma**2 / lam**2 * (1 + (x**2).sum(1))[:, None]
    cov = np.zeros((2, 4, 4))
    cov[:, np.arange(4), np.arange(4)] = var
    assert_within(res.mean, x @ W.T + b, res.mean_se, what="mean")
    assert_within(res.cov, cov, res.cov_se, m=2 * 10, what="covariance")
    np.testing.assert_allclose(res.var, np.diagonal(res.cov, axis1=1, axis2=2), rtol=1e-10)
    # MSE = var + bias²; the bias is zero here, so MSE ≈ var within its own band
    assert_within(res.mse, var, res.mse_se, what="mse")


def test_zero_weights_are_still_noisy():
    """O11: W = 0, only a bias: variance 2σ²/λ² (1 + Σ x²)."""
    W = np.zeros((2, 3))
    b = np.array([0.5, -1.0])
    net = Network([Dense(W, b)], (3,))
    x = np.array([[0.3, -2.0, 1.0]])
    res = monte_carlo(map_network(net, CrossbarConfig(sigma=0.1, g_u=2.0)), x, n=20000, seed=5)
    lam = 2.0 / 1.0
    assert_within(res.var, 2 * 0.01 / lam**2 * (1 + (x**2).sum()), res.var_se, what="var")


def test_digital_bias_has_no_noise_and_no_power():
    b = np.array([0.5, -1.0])
    net = Network([Dense(np.array([[1.0, 0, 0], [0, 1.0, 0]]), b)], (3,))
    x = np.array([[0.0, 0.0, 0.0]])
    cfg = CrossbarConfig(sigma=0.1, bias_on_crossbar=False)
    res = monte_carlo(map_network(net, cfg), x, n=50, seed=5)
    np.testing.assert_allclose(res.mean, [[0.5, -1.0]], rtol=1e-14)
    assert np.all(res.var == 0) and np.all(res.power == 0)


def test_alpha_noise_closed_form():
    """O21b: multiplicative (1+αN)w on weights and bias: Var Z_j = α²(b_j² + Σ W_ij² x_i²)."""
    rng = np.random.default_rng(4)
    net, W, b = dense_net(rng, 5, 3)
    x = rng.uniform(0, 1, size=(2, 5))
    res = monte_carlo(map_network(net, CrossbarConfig(alpha=0.3)), x, n=20000, seed=2)
    var = 0.09 * (b**2 + (x**2) @ (W**2).T)
    assert_within(res.var, var, res.var_se, what="alpha var")
    assert_within(res.mean, x @ W.T + b, res.mean_se, what="alpha mean")


def test_dither_quantization_is_the_delta2_over_12_model():
    """Theory §14: subtractive dither ⇒ error exactly U(±Δ/2): Var = Δ²/12 (1 + ‖x‖²)."""
    rng = np.random.default_rng(5)
    net, W, b = dense_net(rng, 5, 3)
    x = rng.uniform(0, 1, size=(2, 5))
    res = monte_carlo(map_network(net, CrossbarConfig(bits=3, quant_mode="dither")), x,
                      n=20000, seed=3)
    delta = max(np.abs(W).max(), np.abs(b).max()) / 3
    var = delta**2 / 12 * (1 + (x**2).sum(1))[:, None] * np.ones(3)
    assert_within(res.var, var, res.var_se, what="dither var")
    assert_within(res.mean, x @ W.T + b, res.mean_se, what="dither mean")


def test_sigma_table_pair_variance():
    """Theory §3.2: pair variance σ²(g⁺) + σ²(g⁻) with σ(g) by linear interpolation."""
    rng = np.random.default_rng(6)
    net, W, b = dense_net(rng, 3, 2)
    x = np.array([[0.0, 0.0, 0.0]])                 # only the bias row is driven
    g_tab = np.array([0.1, 0.6, 1.1])
    s_tab = np.array([0.02, 0.05, 0.2])
    cfg = CrossbarConfig(sigma_table=(g_tab, s_tab), g_min=0.1, g_u=1.1, design="column")
    res = monte_carlo(map_network(net, cfg), x, n=20000, seed=4)
    wu = np.maximum(np.abs(W).max(axis=1), np.abs(b))
    lam = 1.0 / wu
    gp = lam * np.maximum(b, 0) + 0.1
    gm = lam * np.maximum(-b, 0) + 0.1
    var = (np.interp(gp, g_tab, s_tab) ** 2 + np.interp(gm, g_tab, s_tab) ** 2) / lam**2
    assert_within(res.var, var[None], res.var_se, what="sigma(g) var")


def test_clipping_leaves_the_gaussian_model():
    """With g_min = 0, a zero weight's devices sit at g = 0; clipped, each is max(σε, 0), so
    the pair difference has variance 2σ²(1/2 − 1/(2π)) per unit drive (closed form); the
    undriven first pair (x_0 = 0) contributes nothing. λ = 1 (w^u = 1, g_u = 1)."""
    net = Network([Dense(np.array([[1.0, 0.0]]), None)], (2,))
    x = np.array([[0.0, 1.0]])
    cfg = CrossbarConfig(sigma=0.1, g_u=1.0, clip_negative=True)
    res = monte_carlo(map_network(net, cfg), x, n=40000, seed=9)
    v1 = 0.01 * (0.5 - 1 / (2 * math.pi))
    assert_within(res.var, 2 * v1, res.var_se, what="clipped var")
    assert_within(res.mean, 0.0, res.mean_se, what="clipped mean")
    unclipped = monte_carlo(map_network(net, cfg.with_(clip_negative=False)), x, n=40000, seed=9)
    assert_within(unclipped.var, 2 * 0.01, unclipped.var_se, what="unclipped var")


def test_noise_only_in_selected_layers():
    """Seed 000's placements: noise on the last layer only ⇒ Var = 2σ²/λ²(1 + ‖h‖²), h the
    clean first layer's output; on the first only ⇒ propagate through the (linear) second."""
    rng = np.random.default_rng(7)
    W1, b1 = rng.normal(size=(3, 4)), rng.normal(size=3)
    W2, b2 = rng.normal(size=(2, 3)), rng.normal(size=2)
    net = Network([Dense(W1, b1), Dense(W2, b2)], (4,))
    x = rng.uniform(0, 1, size=(1, 4))
    h = x @ W1.T + b1
    sigma = 0.1
    cfg = CrossbarConfig(sigma=sigma, design="layer", noisy_layers="last")
    mapped = map_network(net, cfg)
    lam2 = mapped.layers[1].lam[0]
    res = monte_carlo(mapped, x, n=20000, seed=1)
    assert_within(res.var, 2 * sigma**2 / lam2**2 * (1 + (h**2).sum()) * np.ones((1, 2)),
                  res.var_se, what="last only")
    mapped = map_network(net, cfg.with_(noisy_layers=("first",)))
    lam1 = mapped.layers[0].lam[0]
    res = monte_carlo(mapped, x, n=20000, seed=1, cov=True)
    g1 = 2 * sigma**2 / lam1**2 * (1 + (x**2).sum()) * np.eye(3)
    assert_within(res.cov[0], W2 @ g1 @ W2.T, res.cov_se[0], m=3, what="first only")


def test_gaussian_input_covariance():
    """Random input x + N(0, C) through a noiseless layer: Cov = W C Wᵀ (PyTorch layout)."""
    rng = np.random.default_rng(8)
    net, W, b = dense_net(rng, 4, 3)
    A = rng.normal(size=(4, 4))
    C = A @ A.T / 4
    x = rng.normal(size=(1, 4))
    res = monte_carlo(map_network(net, CrossbarConfig(sigma=0.0)), x, n=20000, seed=6,
                      input_cov=C, cov=True)
    assert_within(res.cov[0], W @ C @ W.T, res.cov_se[0], m=6, what="input cov")
    assert_within(res.mean, x @ W.T + b, res.mean_se, what="input cov mean")


# ---------------------------------------------------------------------- conv mappings
def test_ur_shares_devices_across_positions():
    """O16: UR with deterministic input: same-channel outputs are correlated by
    2σ²/λ²(1 + Σ_a x_ι(p,a) x_ι(p',a)); different channels are not."""
    rng = np.random.default_rng(9)
    K = rng.normal(size=(2, 1, 2, 2))
    bias = rng.normal(size=2)
    net = Network([Conv2d(K, bias, 1, 0)], (1, 3, 3))
    x = rng.uniform(0, 1, size=(1, 1, 3, 3))
    sigma = 0.1
    mapped = map_network(net, CrossbarConfig(sigma=sigma, design="column"))
    lam = mapped.layers[0].lam
    res = monte_carlo(mapped, x, n=20000, seed=12, cov=True)
    # patches by explicit loops: position p = (oh, ow), tap a = (u, v)
    P = np.array([[x[0, 0, oh + u, ow + v] for u in range(2) for v in range(2)]
                  for oh in range(2) for ow in range(2)])
    cov = np.zeros((8, 8))
    for c in range(2):
        blk = 2 * sigma**2 / lam[c] ** 2 * (1 + P @ P.T)
        cov[c * 4:(c + 1) * 4, c * 4:(c + 1) * 4] = blk
    assert_within(res.cov[0], cov, res.cov_se[0], m=36, what="UR shared devices")


def test_ul_structural_zeros_are_noisy():
    """O15 / theory §6: UL noise variance is 2σ²/λ²(1 + Σ_n x_n²) over ALL inputs, the same for
    every output of a channel (layer design so λ is common), outputs uncorrelated."""
    rng = np.random.default_rng(10)
    K = rng.normal(size=(1, 1, 2, 2))
    net = Network([Conv2d(K, np.array([0.3]), 1, 0)], (1, 3, 3))
    x = rng.uniform(0, 1, size=(1, 1, 3, 3))
    sigma = 0.1
    mapped = map_network(net, CrossbarConfig(sigma=sigma, mapping="UL", design="layer"))
    lam = mapped.layers[0].lam[0]
    res = monte_carlo(mapped, x, n=20000, seed=13, cov=True)
    cov = 2 * sigma**2 / lam**2 * (1 + (x**2).sum()) * np.eye(4)
    assert_within(res.cov[0], cov, res.cov_se[0], m=10, what="UL")


def test_ul_streaming_equals_in_memory(monkeypatch):
    """A UL layer streamed over column blocks draws the same devices (same stream order)."""
    import refmem.montecarlo as mc

    rng = np.random.default_rng(11)
    net = small_cnn(rng)
    x = rng.uniform(0, 1, size=(2, 1, 4, 4))
    mapped = map_network(net, CrossbarConfig(sigma=0.05, mapping="UL", alpha=0.1, bits=4,
                                             quant_mode="dither"))
    a = monte_carlo(mapped, x, n=40, seed=3)
    monkeypatch.setattr(mc, "_CACHE_LIMIT", 0)
    monkeypatch.setattr(mc, "_MEM_BUDGET", 8 * 6 * 17 * 5)     # 5 columns per block
    b = monte_carlo(mapped, x, n=40, seed=3)
    for k in ("mean", "var", "mse", "power_mem", "power_tia_pos", "power_tia_neg"):
        np.testing.assert_allclose(getattr(b, k), getattr(a, k), rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------- power
def test_power_closed_forms_fc():
    """O18/O18b, theory §11.1 with deterministic input: E P_mem = Σ(λ|w|+2g_min)x² + bias pairs;
    E P_TIA± = r Σ_j[(Σ_i g±_ij x_i + g^b±_j)² + σ²(Σ x² + 1)]."""
    rng = np.random.default_rng(12)
    net, W, b = dense_net(rng, 4, 3)
    x = rng.uniform(-1, 1, size=(2, 4))
    sigma, gmin, r = 0.1, 0.2, 2.5
    cfg = CrossbarConfig(sigma=sigma, g_min=gmin, g_u=1.2, design="layer", r=r)
    res = monte_carlo(map_network(net, cfg), x, n=20000, seed=21)
    wu = max(np.abs(W).max(), np.abs(b).max())
    lam = (1.2 - gmin) / wu
    A = np.vstack([W.T, b])                       # rows incl. bias, (5, 3)
    xa = np.hstack([x, np.ones((2, 1))])          # bias row driven by 1
    gp = lam * np.maximum(A, 0) + gmin
    gm = lam * np.maximum(-A, 0) + gmin
    mem = (xa**2) @ (gp + gm).sum(1)
    tp = r * (((xa @ gp) ** 2).sum(1) + 3 * sigma**2 * (xa**2).sum(1))
    tm = r * (((xa @ gm) ** 2).sum(1) + 3 * sigma**2 * (xa**2).sum(1))
    np.testing.assert_allclose(res.power_mem[:, 0], mem, rtol=0.02)     # sanity scale
    assert_within(res.power_mem[:, 0], mem, res.power_mem_se[:, 0], m=6, what="mem")
    assert_within(res.power_tia_pos[:, 0], tp, res.power_tia_pos_se[:, 0], m=6, what="tia+")
    assert_within(res.power_tia_neg[:, 0], tm, res.power_tia_neg_se[:, 0], m=6, what="tia-")
    assert_within(res.power, mem + tp + tm, res.power_se, m=6, what="total")
    np.testing.assert_allclose(res.power_layers[:, 0], res.power, rtol=1e-12)


def test_power_closed_forms_ur():
    """Theory §11.2 with deterministic input, pad 1: taps are driven by the tap-shifted input at
    every position (zeros in the padding); bias pairs count n_pos times."""
    rng = np.random.default_rng(13)
    K = rng.normal(size=(2, 1, 3, 3))
    bias = rng.normal(size=2)
    net = Network([Conv2d(K, bias, 1, 1)], (1, 3, 3))
    x = rng.uniform(0, 1, size=(1, 1, 3, 3))
    sigma, gmin, r = 0.05, 0.1, 1.5
    cfg = CrossbarConfig(sigma=sigma, g_min=gmin, design="column", r=r)
    mapped = map_network(net, cfg)
    lam = mapped.layers[0].lam
    res = monte_carlo(mapped, x, n=20000, seed=22)
    xp = np.pad(x[0, 0], 1)
    mem = tp = tm = 0.0
    for co in range(2):
        w = np.append(K[co, 0].ravel(), bias[co])
        gp = lam[co] * np.maximum(w, 0) + gmin
        gm = lam[co] * np.maximum(-w, 0) + gmin
        for oh in range(3):
            for ow in range(3):
                patch = np.append(xp[oh:oh + 3, ow:ow + 3].ravel(), 1.0)
                mem += ((gp + gm) * patch**2).sum()
                tp += r * ((gp @ patch) ** 2 + sigma**2 * (patch**2).sum())
                tm += r * ((gm @ patch) ** 2 + sigma**2 * (patch**2).sum())
    assert_within(res.power_mem[0, 0], mem, res.power_mem_se[0, 0], m=3, what="UR mem")
    assert_within(res.power_tia_pos[0, 0], tp, res.power_tia_pos_se[0, 0], m=3, what="UR tia+")
    assert_within(res.power_tia_neg[0, 0], tm, res.power_tia_neg_se[0, 0], m=3, what="UR tia-")


# ---------------------------------------------------------------------- accuracy, sweeps
def test_accuracy_at_sigma_zero_is_the_deterministic_accuracy():
    rng = np.random.default_rng(14)
    net, W, b = dense_net(rng, 5, 4)
    x = rng.normal(size=(30, 5))
    y = rng.integers(0, 4, size=30)
    res = monte_carlo(map_network(net, CrossbarConfig()), x, n=4, seed=0, labels=y)
    assert res.accuracy == np.mean(np.argmax(x @ W.T + b, axis=1) == y)
    assert res.accuracy_se == 0.0
    noisy = monte_carlo(map_network(net, CrossbarConfig(sigma=0.5)), x, n=200, seed=0, labels=y)
    assert 0 <= noisy.accuracy <= 1 and noisy.accuracy_se > 0
    np.testing.assert_allclose(noisy.mse_overall, noisy.mse.mean(), rtol=1e-12)
    assert 0 < noisy.mse_overall_se < noisy.mse_overall


# ---------------------------------------------------------------------- reproducibility
@given(chunk=st.integers(1, 40), block=st.sampled_from([7, 16, 256]))
def test_chunk_size_does_not_change_results(chunk, block):
    rng = np.random.default_rng(15)
    net = small_cnn(rng, stride=2)
    x = rng.uniform(0, 1, size=(2, 1, 4, 4))
    mapped = map_network(net, CrossbarConfig(sigma=0.05, alpha=0.05, bits=4, quant_mode="dither"))
    y = np.array([0, 2])
    a = monte_carlo(mapped, x, n=45, seed=7, block=block, cov=True, labels=y)
    b = monte_carlo(mapped, x, n=45, seed=7, block=block, cov=True, labels=y, chunk=chunk)
    for k, v in a.datasets().items():
        assert np.array_equal(v, b.datasets()[k]), k


def test_seed_reproducibility_and_prefix_property():
    rng = np.random.default_rng(16)
    net, _, _ = dense_net(rng, 4, 3)
    x = rng.uniform(size=(2, 4))
    mapped = map_network(net, CrossbarConfig(sigma=0.1))
    a = monte_carlo(mapped, x, n=300, seed=42, input_cov=np.eye(4) * 0.01)
    b = monte_carlo(mapped, x, n=300, seed=42, input_cov=np.eye(4) * 0.01)
    c = monte_carlo(mapped, x, n=300, seed=43, input_cov=np.eye(4) * 0.01)
    assert all(np.array_equal(v, b.datasets()[k]) for k, v in a.datasets().items())
    assert not np.array_equal(a.mean, c.mean)
    # the first block's realizations do not depend on n
    d1 = monte_carlo(mapped, x, n=16, seed=42, block=16)
    d2 = monte_carlo(mapped, x, n=48, seed=42, block=16)
    d3 = monte_carlo(mapped, x, n=16, seed=42, block=16, chunk=5)
    assert np.array_equal(d1.mean, d3.mean)
    assert not np.array_equal(d1.mean, d2.mean)


# ---------------------------------------------------------------------- helpers and errors
def test_sample_count_eq46():
    """O19: z = 1.96, s/x̄ = 1, p = 0.01 → n = 38416 (theory §10, p a fraction, ceiling)."""
    assert mc_sample_count(2.0, 2.0, 0.01, z=1.96) == 38416
    assert mc_sample_count(1.0, 0.5, 0.1, z=2.0) == 100
    assert mc_sample_count(1.0, 1.0, 0.01) == math.ceil((1.959963984540054 / 0.01) ** 2)
    with pytest.raises(ConfigError):
        mc_sample_count(1.0, 1.0, 0.0)


def test_bad_arguments():
    rng = np.random.default_rng(17)
    net, _, _ = dense_net(rng, 3, 2)
    mapped = map_network(net, CrossbarConfig(sigma=0.1))
    x = np.zeros((2, 3))
    with pytest.raises(ConfigError):
        monte_carlo(mapped, x, n=1, seed=0)
    with pytest.raises(ConfigError):
        monte_carlo(mapped, x, n=10, seed=-1)
    with pytest.raises(DataError, match="symmetric"):
        monte_carlo(mapped, x, n=10, seed=0, input_cov=np.array([[1, 0.5, 0], [0, 1, 0], [0, 0, 1.]]))
    with pytest.raises(DataError, match="semi-definite"):
        monte_carlo(mapped, x, n=10, seed=0, input_cov=-np.eye(3))
    with pytest.raises(DataError, match="shape"):
        monte_carlo(mapped, x, n=10, seed=0, input_cov=np.eye(2))
    with pytest.raises(DataError):
        monte_carlo(mapped, np.zeros((2, 4)), n=10, seed=0)
    with pytest.raises(DataError, match="labels"):
        monte_carlo(mapped, x, n=10, seed=0, labels=np.array([0]))


def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch):
    """A run killed after some seed blocks resumes from its checkpoint to exactly the result of
    an uninterrupted run; a checkpoint of another run is refused."""
    import refmem.montecarlo as mc

    rng = np.random.default_rng(18)
    net = small_cnn(rng)
    x = rng.uniform(0, 1, size=(2, 1, 4, 4))
    y = np.array([1, 0])
    mapped = map_network(net, CrossbarConfig(sigma=0.05, mapping="UR"))
    full = monte_carlo(mapped, x, n=100, seed=5, block=16, cov=True, labels=y)

    ck = tmp_path / "run.ckpt.npz"
    real = mc._draw_inputs
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mc, "_draw_inputs", dying)
    with pytest.raises(KeyboardInterrupt):
        monte_carlo(mapped, x, n=100, seed=5, block=16, cov=True, labels=y, checkpoint=ck)
    assert ck.exists()
    with np.load(ck) as z:
        assert int(z["next_block"]) == 3
    monkeypatch.setattr(mc, "_draw_inputs", real)
    with pytest.raises(ConfigError, match="different run"):
        monte_carlo(mapped, x, n=100, seed=6, block=16, cov=True, labels=y, checkpoint=ck)
    resumed = monte_carlo(mapped, x, n=100, seed=5, block=16, cov=True, labels=y, checkpoint=ck)
    assert not ck.exists()
    for k, v in full.datasets().items():
        assert np.array_equal(v, resumed.datasets()[k]), k


def test_sigma_sweep_matches_single_runs_and_scales():
    """A sweep equals separate runs; with common random numbers and a deterministic input the
    output deviation of a linear layer scales exactly with σ."""
    from refmem.montecarlo import sigma_sweep

    rng = np.random.default_rng(19)
    net, _, _ = dense_net(rng, 4, 2)
    x = rng.uniform(size=(3, 4))
    cfg = CrossbarConfig(design="layer")
    sweep = sigma_sweep(net, cfg, [0.01, 0.02], x, n=50, seed=4)
    single = monte_carlo(map_network(net, cfg.with_(sigma=0.02)), x, n=50, seed=4)
    assert np.array_equal(sweep[1][1].var, single.var)
    np.testing.assert_allclose(sweep[1][1].var, 4 * sweep[0][1].var, rtol=1e-9)


@pytest.mark.parametrize("sigma", [1e-8, 1e-9])
def test_variance_and_its_se_survive_a_huge_quantization_bias(sigma):
    """Issue 10 regression: 2-bit fixed quantization (bias ~0.1–1) with σ ≤ 1e-8 (|bias|/sd ≥ 1e6) — the variance and its SE agree with the closed forms Var Z_j = 2σ²/λ² (1 + ‖x‖²)
    (theory §4, design "layer", λ = (g_u − g_min)/max|[W; b]|) and SE(s²) = Var √(2/n) (Gaussian
    output), where raw power sums gave an SE of 0 or 27× the variance."""
    rng = np.random.default_rng(21)
    net, W, b = dense_net(rng, 5, 3)
    x = rng.uniform(0, 1, size=(2, 5))
    gmin, gu = 0.2, 1.3
    cfg = CrossbarConfig(sigma=sigma, bits=2, g_min=gmin, g_u=gu, design="layer")
    n = 4096
    res = monte_carlo(map_network(net, cfg), x, n=n, seed=3)
    lam = (gu - gmin) / max(np.abs(W).max(), np.abs(b).max())
    var = 2 * sigma**2 / lam**2 * (1 + (x**2).sum(1))[:, None] * np.ones(3)
    bias = res.mean - res.reference
    assert np.all(np.abs(bias) / np.sqrt(var) >= 1e6)
    assert_within(res.var, var, res.var_se, m=2 * 6, what="variance")
    # the SE estimate itself has relative sd √(56/n)/4 for a Gaussian output
    rel = 4.5 * np.sqrt(56 / n) / 4
    np.testing.assert_allclose(res.var_se, var * np.sqrt(2 / n), rtol=rel)
    np.testing.assert_allclose(res.mse, bias**2 + res.var * (n - 1) / n, rtol=1e-12)


@pytest.mark.parametrize("die_at", [2, 3, 6])
def test_resumes_from_every_completed_block(tmp_path, monkeypatch, die_at):
    """Issue 10 item 6: the checkpoint is written after every completed seed block, so a run
    interrupted in block k resumes from block k (no time threshold), bit-identically."""
    import refmem.montecarlo as mc

    rng = np.random.default_rng(22)
    net, _, _ = dense_net(rng, 4, 3)
    x = rng.uniform(size=(2, 4))
    mapped = map_network(net, CrossbarConfig(sigma=0.1))
    full = monte_carlo(mapped, x, n=7 * 8, seed=9, block=8, cov=True, chunk=8)
    ck = tmp_path / "c.npz"
    real = mc._draw_inputs
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(mc, "_draw_inputs", dying)
    with pytest.raises(KeyboardInterrupt):
        monte_carlo(mapped, x, n=7 * 8, seed=9, block=8, cov=True, chunk=8, checkpoint=ck)
    with np.load(ck) as z:
        assert int(z["next_block"]) == die_at - 1
    monkeypatch.setattr(mc, "_draw_inputs", real)
    resumed = monte_carlo(mapped, x, n=7 * 8, seed=9, block=8, cov=True, checkpoint=ck)
    for k, v in full.datasets().items():
        assert np.array_equal(v, resumed.datasets()[k]), k
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_checkpoint_write_failure_leaves_no_temporary(tmp_path, monkeypatch):
    """A full disk while checkpointing is a one-line DataError; the temporary is removed and
    the previous checkpoint is untouched."""
    import errno

    import refmem.montecarlo as mc

    rng = np.random.default_rng(23)
    net, _, _ = dense_net(rng, 3, 2)
    mapped = map_network(net, CrossbarConfig(sigma=0.1))
    x = rng.uniform(size=(1, 3))
    ck = tmp_path / "c.npz"
    real = np.savez
    calls = {"n": 0}

    def full_disk(f, **state):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, **state)

    monkeypatch.setattr(mc.np, "savez", full_disk)
    with pytest.raises(DataError, match="No space left"):
        monte_carlo(mapped, x, n=40, seed=1, block=8, checkpoint=ck)
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
    with np.load(ck) as z:
        assert int(z["next_block"]) == 1


def test_overflow_stops_at_the_first_block_and_leaves_no_checkpoint(tmp_path):
    rng = np.random.default_rng(24)
    net, _, _ = dense_net(rng, 3, 2)
    mapped = map_network(net, CrossbarConfig(sigma=0.1))
    ck = tmp_path / "c.npz"
    with np.errstate(all="ignore"), pytest.raises(DataError, match="overflowed"):
        monte_carlo(mapped, np.full((2, 3), 1e300), n=64, seed=0, block=8, checkpoint=ck)
    assert list(tmp_path.iterdir()) == []
