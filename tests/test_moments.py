"""Analytic moments (refmem.moments) against literal loop oracles (tests/oracles.py, theory §18 T1)
and the closed-form oracles O8–O17, O21, O21b of theory §18.

Expected values are computed here from the spec's equations (loops or closed forms), never
from refmem's own output. λ is read from the mapping (tested in test_mapping.py); conductances
and pair variances are recomputed by the oracles from Eqs. (5)–(6).
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

import oracles as O
from refmem import (AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU,
                    map_network)
from refmem.errors import ConfigError, DataError
from refmem.moments import (BlockDiag, conv_mean, conv_signal_cov, dense_moments,
                            pool_moments, propagate, symmetrize, ul_moments, ul_noise,
                            ur_moments, ur_shared_noise_kernel)
from refmem.relu import relu_moments

RTOL = 1e-12
CONV_EXAMPLES = max(5, settings().max_examples * 3 // 5)    # the 6-index oracle is slow


def close(a, b, rtol=RTOL, what=""):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-300)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale, err_msg=what)


def rand_psd(rng, n, rank=None):
    rank = n if rank is None else rank
    A = rng.normal(size=(n, rank))
    return A @ A.T / max(rank, 1)


def sigma_fn_of(kind, sigma):
    if kind == "const":
        return lambda g: sigma
    return lambda g: sigma * (0.5 + 0.8 * g)         # affine σ(g)


def config_for(kind, sigma, **kw):
    if kind == "const":
        return CrossbarConfig(sigma=sigma, **kw)

    def affine(g):
        return sigma * (0.5 + 0.8 * np.asarray(g))
    return CrossbarConfig(sigma_fn=affine, **kw)


noise_case = st.fixed_dictionaries({
    "design": st.sampled_from(["scalar", "layer", "column"]),
    "gmin": st.floats(0.0, 0.5),
    "span": st.floats(0.2, 2.0),
    "sigma_kind": st.sampled_from(["const", "affine"]),
    "sigma": st.sampled_from([0.0, 0.03, 0.2]),
    "alpha": st.sampled_from([0.0, 0.0, 0.3]),
    "dither": st.booleans(),
    "r": st.floats(0.5, 3.0),
    "seed": st.integers(0, 2**31 - 1),
    "input": st.sampled_from(["det", "cov", "cov_lowrank", "cov_batch"]),
})


def make_cfg(case, **kw):
    extra = dict(bits=3, quant_mode="dither") if case["dither"] else {}
    return config_for(case["sigma_kind"], case["sigma"], design=case["design"],
                      g_min=case["gmin"], g_u=case["gmin"] + case["span"],
                      alpha=case["alpha"], r=case["r"], **extra, **kw)


def make_inputs(case, rng, B, L):
    x = rng.normal(size=(B, L))
    kind = case["input"]
    if kind == "det":
        return x, None, [None] * B
    if kind == "cov":
        C = rand_psd(rng, L) * 0.3
        return x, C, [C] * B
    if kind == "cov_lowrank":
        C = rand_psd(rng, L, rank=1) * 0.3
        return x, C, [C] * B
    Cs = np.stack([rand_psd(rng, L) * 0.3 for _ in range(B)])
    return x, Cs, list(Cs)


# ====================================================================== FC (theory §4)
@given(case=noise_case, L=st.integers(1, 5), J=st.integers(1, 4),
       bias=st.sampled_from(["row", "none", "digital"]))
def test_fc_matches_loop_oracle(case, L, J, bias):
    """Proposition 1 corrected (theory §4) and power (theory §11.1) vs literal loops."""
    rng = np.random.default_rng(case["seed"])
    Wt = rng.normal(size=(J, L))
    b = rng.normal(size=J) if bias != "none" else None
    net = Network([Dense(Wt, b)], (L,))
    mapped = map_network(net, make_cfg(case, bias_on_crossbar=(bias != "digital")))
    ml = mapped.layers[0]
    B = 2
    x, C, covs = make_inputs(case, rng, B, L)
    res = propagate(mapped, x.reshape(B, L), input_cov=C, cov=True)
    W, bb, lam, gmin = ml.W, ml.b, ml.lam, case["gmin"]
    sfn = sigma_fn_of(case["sigma_kind"], case["sigma"])
    dvar = ml.delta ** 2 / 12 if case["dither"] else 0.0
    v = O.pair_variance(W, lam, gmin, sfn, case["alpha"], dvar)
    vb = None
    if bias == "row":
        vb = O.bias_variance(bb, lam, gmin, sfn, case["alpha"], dvar)
    for s in range(B):
        m, c = O.fc_moments(W, bb, v, vb, x[s], covs[s])
        close(res.mean[s], m, what="mean")
        close(res.cov[s], c, what="cov")
        # power (§11.1): conductances from Eqs. (5)-(6), per-device variances, physical r
        gp, gm = O.conductances(W, lam, gmin)
        vp = np.vectorize(lambda g: sfn(g) ** 2)(gp)
        vm = np.vectorize(lambda g: sfn(g) ** 2)(gm)
        gbp = gbm = vbp = vbm = None
        if bias == "row":
            gbp, gbm = O.bias_conductances(bb, lam, gmin)
            vbp = np.array([sfn(g) ** 2 for g in gbp])
            vbm = np.array([sfn(g) ** 2 for g in gbm])
        mem, tp, tn = O.fc_power(gp, gm, gbp, gbm, vp, vm, vbp, vbm, x[s], covs[s], case["r"])
        close([res.power_mem[s, 0], res.power_tia_pos[s, 0], res.power_tia_neg[s, 0]],
              [mem, tp, tn], what="power")
    ref = x @ Wt.T + (0 if b is None else b)
    np.testing.assert_allclose(res.mse, res.var + (res.mean - ref) ** 2, rtol=1e-10,
                               atol=1e-12 * (1 + np.max(ref ** 2)))


# ====================================================================== conv (theory §5, §6)
conv_shape = st.fixed_dictionaries({
    "ci": st.integers(1, 2), "co": st.integers(1, 2), "H": st.integers(1, 4),
    "W": st.integers(1, 4), "k": st.integers(1, 3), "stride": st.integers(1, 2),
    "pad": st.integers(0, 1), "bias": st.sampled_from(["row", "none", "digital"]),
})


def conv_setup(shape, case):
    ci, co, H, W, k, stv, pad = (shape[n] for n in ("ci", "co", "H", "W", "k", "stride", "pad"))
    assume(H + 2 * pad >= k and W + 2 * pad >= k)
    E, F = O.out_side(H, k, stv, pad), O.out_side(W, k, stv, pad)
    assume(co * E * F <= 36)
    rng = np.random.default_rng(case["seed"])
    K = rng.normal(size=(co, ci, k, k))
    b = rng.normal(size=co) if shape["bias"] != "none" else None
    net = Network([Conv2d(K, b, stv, pad)], (ci, H, W))
    return rng, net, K, b


@given(case=noise_case, shape=conv_shape)
@settings(max_examples=CONV_EXAMPLES)
def test_ur_matches_six_index_loops(case, shape):
    """Proposition 2 corrected (theory §5, D8/D9) and Props 7–8 power (theory §11.2) vs literal loops."""
    rng, net, K, b = conv_setup(shape, case)
    mapped = map_network(net, make_cfg(case, mapping="UR",
                                       bias_on_crossbar=shape["bias"] != "digital"))
    ml = mapped.layers[0]
    ci, k = K.shape[1], K.shape[2]
    in_shape = (ci, shape["H"], shape["W"])
    L = int(np.prod(in_shape))
    x, C, covs = make_inputs(case, rng, 2, L)
    res = propagate(mapped, x.reshape((2,) + in_shape), input_cov=C, cov=True)
    lam, gmin = ml.lam, case["gmin"]
    sfn = sigma_fn_of(case["sigma_kind"], case["sigma"])
    dvar = ml.delta ** 2 / 12 if case["dither"] else 0.0
    Wur = ml.W                                             # (C_in k², C_out), quantized if fixed
    Kp = Wur.T.reshape(K.shape)
    v = O.pair_variance(Wur, lam, gmin, sfn, case["alpha"], dvar).T.reshape(K.shape)
    bp = ml.b
    vb = O.bias_variance(bp, lam, gmin, sfn, case["alpha"], dvar) if ml.has_bias_row else None
    gp, gm = O.conductances(Wur, lam, gmin)
    vp = np.vectorize(lambda g: sfn(g) ** 2)(gp)
    vm = np.vectorize(lambda g: sfn(g) ** 2)(gm)
    four = lambda a: a.T.reshape(K.shape)
    gbp = gbm = vbp = vbm = None
    if ml.has_bias_row:
        gbp, gbm = O.bias_conductances(bp, lam, gmin)
        vbp = np.array([sfn(g) ** 2 for g in gbp])
        vbm = np.array([sfn(g) ** 2 for g in gbm])
    for s in range(2):
        m, c = O.ur_moments(Kp, bp, v, vb, shape["stride"], shape["pad"], in_shape, x[s], covs[s])
        close(res.mean[s], m, what="UR mean")
        close(res.cov[s], c, what="UR cov")
        mem, tp, tn = O.ur_power(four(gp), four(gm), gbp, gbm, four(vp), four(vm), vbp, vbm,
                                 shape["stride"], shape["pad"], in_shape, k, x[s], covs[s],
                                 case["r"])
        close([res.power_mem[s, 0], res.power_tia_pos[s, 0], res.power_tia_neg[s, 0]],
              [mem, tp, tn], what="UR power")


@given(case=noise_case, shape=conv_shape)
@settings(max_examples=CONV_EXAMPLES)
def test_ul_matches_explicit_toeplitz_fc_loops(case, shape):
    """UL (theory §6) = FC loops (theory §4, §11.1) with the loop-built Toeplitz matrix; every entry
    (structural zeros included) is a noisy, dissipating pair."""
    rng, net, K, b = conv_setup(shape, case)
    try:
        mapped = map_network(net, make_cfg(case, mapping="UL",
                                           bias_on_crossbar=shape["bias"] != "digital"))
    except ConfigError as e:      # every position reads only padding and there is no bias
        assume("only zero weights" not in str(e))
        raise
    ml = mapped.layers[0]
    in_shape = (K.shape[1], shape["H"], shape["W"])
    L = int(np.prod(in_shape))
    x, C, covs = make_inputs(case, rng, 2, L)
    res = propagate(mapped, x.reshape((2,) + in_shape), input_cov=C, cov=True)
    Kp = ml.W.T.reshape(K.shape)
    T, mask = O.toeplitz(Kp, shape["stride"], shape["pad"], in_shape)
    n_pos = T.shape[1] // K.shape[0]
    bcol = None if ml.b is None else np.repeat(ml.b, n_pos)
    lam, gmin = ml.lam, case["gmin"]
    sfn = sigma_fn_of(case["sigma_kind"], case["sigma"])
    dvar = ml.delta ** 2 / 12 if case["dither"] else 0.0
    v = O.pair_variance(T, lam, gmin, sfn, case["alpha"], dvar, mask=mask)
    vb = O.bias_variance(bcol, lam, gmin, sfn, case["alpha"], dvar) if ml.has_bias_row else None
    gp, gm = O.conductances(T, lam, gmin)
    vp = np.vectorize(lambda g: sfn(g) ** 2)(gp)
    vm = np.vectorize(lambda g: sfn(g) ** 2)(gm)
    gbp = gbm = vbp = vbm = None
    if ml.has_bias_row:
        gbp, gbm = O.bias_conductances(bcol, lam, gmin)
        vbp = np.array([sfn(g) ** 2 for g in gbp])
        vbm = np.array([sfn(g) ** 2 for g in gbm])
    for s in range(2):
        m, c = O.fc_moments(T, bcol, v, vb, x[s], covs[s])
        close(res.mean[s], m, what="UL mean")
        close(res.cov[s], c, what="UL cov")
        mem, tp, tn = O.fc_power(gp, gm, gbp, gbm, vp, vm, vbp, vbm, x[s], covs[s], case["r"])
        close([res.power_mem[s, 0], res.power_tia_pos[s, 0], res.power_tia_neg[s, 0]],
              [mem, tp, tn], what="UL power")


@pytest.mark.parametrize("design", ["scalar", "column"])
@pytest.mark.parametrize("dither", [False, True])
def test_ul_tap_form_equals_explicit_toeplitz_blocks(design, dither):
    """UL noise and power from the tap form (structural zeros in closed form) equal the sums
    over explicit Toeplitz column blocks, whole or streamed (theory §6, §11)."""
    from refmem.moments import ul_noise_taps
    from refmem.power import ul_power
    rng = np.random.default_rng(5)
    net = Network([Conv2d(rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), 2, 1)], (2, 5, 6))
    extra = dict(bits=3, quant_mode="dither") if dither else {}
    cfg = config_for("affine", 0.05, mapping="UL", g_min=0.1, design=design, r=1.5,
                     alpha=0.2, **extra)
    ml = map_network(net, cfg).layers[0]
    mu = rng.normal(size=60)
    tb = ml.ul_taps()
    for G in (None, rand_psd(rng, 60) * 0.1):
        whole = [ml.block()]
        streamed = [ml.block(np.arange(c0, min(ml.n_cols, c0 + 7)))
                    for c0 in range(0, ml.n_cols, 7)]
        want = ul_noise(whole, mu, G, ml.n_cols)
        close(ul_noise(streamed, mu, G, ml.n_cols), want)
        close(ul_noise_taps(tb, mu, G), want)
        pw = ul_power(ml, mu, G, 1.5, whole)
        for other in (ul_power(ml, mu, G, 1.5, streamed), ul_power(ml, mu, G, 1.5, tb),
                      ul_power(ml, mu, G, 1.5)):
            close([other.mem, other.tia_pos, other.tia_neg], [pw.mem, pw.tia_pos, pw.tia_neg])
    # built once per mapped layer; a pickled layer (sent to a worker) rebuilds the same form
    assert ml.ul_taps() is tb
    state = ml.__getstate__()                   # what pickle sends (this σ model is local)
    assert "_ul_taps" not in state and "_ul_taps" in ml.__dict__
    again = object.__new__(type(ml))
    again.__dict__.update(state)
    tb2 = again.ul_taps()
    for k in ("W", "gp", "gm", "vp", "vm", "v", "tap"):
        np.testing.assert_array_equal(getattr(tb2, k), getattr(tb, k))
    np.testing.assert_array_equal(tb2.z.v, tb.z.v)


# ====================================================================== pooling, ReLU-Taylor
@given(seed=st.integers(0, 2**31 - 1), C=st.integers(1, 2), H=st.integers(2, 5),
       W=st.integers(2, 5), kappa=st.integers(1, 3), det=st.booleans())
def test_pool_matches_loop_oracle(seed, C, H, W, kappa, det):
    """Proposition 3 corrected (theory §7, D13): E = Aμ, Cov = AΓAᵀ incl. cross-channel entries."""
    assume(H >= kappa and W >= kappa)
    rng = np.random.default_rng(seed)
    L = C * H * W
    mu = rng.normal(size=L)
    G = None if det else rand_psd(rng, L)
    m, c = pool_moments(mu, None if G is None else G.copy(), (C, H, W), kappa)
    mo, co = O.avgpool_moments(mu, G, (C, H, W), kappa)
    close(m, mo)
    if det:
        assert c is None
    else:
        close(c, co)


@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 6))
def test_relu_taylor_matches_loop_oracle(seed, d):
    """Eq. (28) with f'(μ) = 1[μ > 0] (theory §8.3) and the Prop. 4 diagonal."""
    rng = np.random.default_rng(seed)
    G = rand_psd(rng, d) + 0.1 * np.eye(d)
    mu = rng.normal(size=d)
    m, c = relu_moments(mu, G, "taylor")
    mo, co = O.relu_taylor_moments(mu, G)
    np.testing.assert_allclose(m, mo, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(c, co, rtol=1e-10, atol=1e-14)


def test_building_blocks_compose_to_propagate():
    """The network pass equals the public building blocks composed by hand (T2)."""
    rng = np.random.default_rng(11)
    net = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), 1, 1), ReLU(),
                   AvgPool2d(2), Flatten(), Dense(rng.normal(size=(3, 8)), rng.normal(size=3)),
                   ReLU(), Dense(rng.normal(size=(2, 3)), None)], (1, 4, 4))
    x = rng.normal(size=(1, 1, 4, 4))
    for mapping in ("UR", "UL"):
        mapped = map_network(net, CrossbarConfig(sigma=0.1, mapping=mapping, g_min=0.05))
        res = propagate(mapped, x, cov=True)
        L0, L1, L2 = mapped.layers
        b0 = L0.block()
        mu = x[0].ravel()
        if mapping == "UR":
            mu, G = ur_moments(L0.W, L0.b, b0.v, b0.vb, L0.idx, mu, None)
        else:
            noise = ul_noise([b0], mu, None, L0.n_cols)
            mu, G = ul_moments(L0.W, L0.b, L0.idx, noise, mu, None)
        mu, G = relu_moments(mu, G)
        mu, G = pool_moments(mu, G, (2, 4, 4), 2)
        b1 = L1.block()
        mu, G = dense_moments(b1.W, b1.b, b1.v, b1.vb, mu, G)
        mu, G = relu_moments(mu, G)
        b2 = L2.block()
        mu, G = dense_moments(b2.W, b2.b, b2.v, b2.vb, mu, G)
        close(res.mean[0], mu)
        close(res.cov[0], G)


# ====================================================================== closed forms (theory §18)
def small_cnn(rng, mapping_bias=True):
    return Network([Conv2d(rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), 2, 1), ReLU(),
                    AvgPool2d(1), Flatten(),
                    Dense(rng.normal(size=(4, 12)), rng.normal(size=4)), ReLU(),
                    Dense(rng.normal(size=(2, 4)), rng.normal(size=2))], (2, 4, 4))


@pytest.mark.parametrize("mapping", ["UR", "UL"])
@pytest.mark.parametrize("relu_cov", ["exact", "taylor"])
def test_O8_O9_sigma_zero_is_the_deterministic_forward(mapping, relu_cov):
    """O8/O9: σ = 0, deterministic input → μ = reliable output, Γ = 0, MSE = 0 (any r, g_min)."""
    rng = np.random.default_rng(3)
    net = small_cnn(rng)
    x = rng.normal(size=(3, 2, 4, 4))
    mapped = map_network(net, CrossbarConfig(sigma=0.0, mapping=mapping, g_min=0.3, r=2.5,
                                             relu_cov=relu_cov))
    res = propagate(mapped, x, cov=True, per_layer=True)
    ref = net.forward(x)
    np.testing.assert_allclose(res.mean, ref, rtol=1e-12, atol=1e-12)
    assert np.all(res.var == 0) and np.all(res.cov == 0) and np.all(res.mse < 1e-24)
    for pos, g in enumerate(res.groups().values()):
        np.testing.assert_allclose(g["mean"], net.forward(x, upto=pos + 1), rtol=1e-12,
                                   atol=1e-12)
    # O8 per layer with a random (non-zero) input covariance: linear layers give WᵀΓW exactly
    L = 32
    C = rand_psd(rng, L) * 0.2
    lin = Network([Dense(rng.normal(size=(5, L)), rng.normal(size=5))], (L,))
    r = propagate(map_network(lin, CrossbarConfig(sigma=0.0, g_min=0.2)), rng.normal(size=(1, L)),
                  input_cov=C, cov=True)
    Wm = lin.layers[0].weight.T
    close(r.cov[0], Wm.T @ C @ Wm)


def test_O10_fc_deterministic_input():
    """O10: Cov = diag(2σ²/λ² (1 + ‖x‖²)) with zero off-diagonals; r does not enter (theory §3.3)."""
    rng = np.random.default_rng(4)
    L, J, sigma = 6, 4, 0.07
    net = Network([Dense(rng.normal(size=(J, L)), rng.normal(size=J))], (L,))
    x = rng.normal(size=(2, L))
    for r in (1.0, 3.0):
        mapped = map_network(net, CrossbarConfig(sigma=sigma, design="column", g_min=0.2, r=r))
        lam = mapped.layers[0].lam
        res = propagate(mapped, x, cov=True)
        for s in range(2):
            want = np.diag(2 * sigma ** 2 / lam ** 2 * (1 + x[s] @ x[s]))
            close(res.cov[s], want)
            assert np.all(res.cov[s][~np.eye(J, dtype=bool)] == 0)


def test_O11_zero_weights_are_noisy():
    """O11: W = 0, only the bias non-zero → mean b, variance 2σ²/λ² (1 + Σ q_i)."""
    rng = np.random.default_rng(5)
    L, J, sigma = 5, 3, 0.1
    b = rng.normal(size=J)
    net = Network([Dense(np.zeros((J, L)), b)], (L,))
    x = rng.normal(size=(1, L))
    C = rand_psd(rng, L) * 0.5
    mapped = map_network(net, CrossbarConfig(sigma=sigma, design="layer", g_min=0.1, g_u=1.3))
    lam = mapped.layers[0].lam
    res = propagate(mapped, x, input_cov=C, cov=True)
    close(res.mean[0], b)
    q = x[0] ** 2 + np.diag(C)
    close(res.cov[0], np.diag(2 * sigma ** 2 / lam ** 2 * (1 + q.sum())))


def test_O13_ur_k1_is_pixelwise_fc_with_shared_devices():
    """O13: UR, k = 1, pad 0: Cov = Σ_{c,c'} w w' Γ_(c,p),(c',p') + δ 2σ²/λ² (1 + Σ_c Q_(c,p),(c,p'))."""
    rng = np.random.default_rng(6)
    Ci, Co, H, W, sigma = 2, 2, 2, 3, 0.1
    K = rng.normal(size=(Co, Ci, 1, 1))
    b = rng.normal(size=Co)
    net = Network([Conv2d(K, b, 1, 0)], (Ci, H, W))
    mapped = map_network(net, CrossbarConfig(sigma=sigma, design="column", g_min=0.0))
    lam = mapped.layers[0].lam
    L = Ci * H * W
    mu = rng.normal(size=L)
    G = rand_psd(rng, L)
    Q = G + np.outer(mu, mu)
    res = propagate(mapped, mu.reshape(1, Ci, H, W), input_cov=G, cov=True)
    P = H * W
    want = np.zeros((Co * P, Co * P))
    for co in range(Co):
        for p in range(P):
            for co2 in range(Co):
                for p2 in range(P):
                    s = sum(K[co, c, 0, 0] * K[co2, c2, 0, 0] * G[c * P + p, c2 * P + p2]
                            for c in range(Ci) for c2 in range(Ci))
                    if co == co2:
                        s += 2 * sigma ** 2 / lam[co] ** 2 * (
                            1 + sum(Q[c * P + p, c * P + p2] for c in range(Ci)))
                    want[co * P + p, co2 * P + p2] = s
    close(res.cov[0], want)


def test_O14_one_pixel_k1_ur_equals_ul_equals_fc():
    """O14: 1×1 image, k = 1: UR = UL = FC (moments and power)."""
    rng = np.random.default_rng(7)
    Ci, Co = 3, 2
    K = rng.normal(size=(Co, Ci, 1, 1))
    b = rng.normal(size=Co)
    x = rng.normal(size=(1, Ci))
    C = rand_psd(rng, Ci)
    cfg = CrossbarConfig(sigma=0.1, g_min=0.2, r=1.7)
    out = []
    for mapping in ("UR", "UL"):
        net = Network([Conv2d(K, b, 1, 0)], (Ci, 1, 1))
        out.append(propagate(map_network(net, cfg.with_(mapping=mapping)),
                             x.reshape(1, Ci, 1, 1), input_cov=C, cov=True))
    fc = Network([Dense(K.reshape(Co, Ci), b)], (Ci,))
    out.append(propagate(map_network(fc, cfg), x, input_cov=C, cov=True))
    for o in out[1:]:
        close(o.mean, out[0].mean)
        close(o.cov, out[0].cov)
        close(o.power_layers, out[0].power_layers)
        close(o.power_tia_pos, out[0].power_tia_pos)


def test_O15_ul_noise_identical_within_a_channel():
    """O15: UL, constant σ: noise variance 2σ²/λ² (1 + Σ_{n=1}^{L} q_n) for every output of a
    channel (sum over ALL inputs, D12); no noise covariance between outputs."""
    rng = np.random.default_rng(8)
    net = Network([Conv2d(rng.normal(size=(2, 2, 3, 3)), rng.normal(size=2), 1, 1)], (2, 4, 4))
    sigma = 0.1
    x = rng.normal(size=(1, 2, 4, 4))
    C = rand_psd(rng, 32) * 0.3
    noisy = map_network(net, CrossbarConfig(sigma=sigma, mapping="UL", design="layer"))
    clean = map_network(net, CrossbarConfig(sigma=0.0, mapping="UL", design="layer"))
    rn = propagate(noisy, x, input_cov=C, cov=True)
    rc = propagate(clean, x, input_cov=C, cov=True)
    lam = noisy.layers[0].lam
    q = x[0].ravel() ** 2 + np.diag(C)
    close(rn.cov[0] - rc.cov[0], np.diag(2 * sigma ** 2 / lam ** 2 * (1 + q.sum())), rtol=1e-10)


def test_O16_ur_deterministic_input_correlates_a_channel():
    """O16: UR, deterministic x: Cov[(c,p),(c',p')] = δ_cc' 2σ²/λ² (1 + Σ_a x_ι(p,a) x_ι(p',a))."""
    rng = np.random.default_rng(9)
    Co, Ci, k, stv, pad, H = 2, 2, 3, 1, 1, 3
    net = Network([Conv2d(rng.normal(size=(Co, Ci, k, k)), rng.normal(size=Co), stv, pad)],
                  (Ci, H, H))
    sigma = 0.05
    mapped = map_network(net, CrossbarConfig(sigma=sigma, design="column", g_min=0.1))
    lam = mapped.layers[0].lam
    x = rng.normal(size=(1, Ci, H, H))
    res = propagate(mapped, x, cov=True)
    xf = x.ravel()
    E = O.out_side(H, k, stv, pad)
    pos = [(oh, ow) for oh in range(E) for ow in range(E)]
    want = np.zeros((Co * len(pos),) * 2)
    for co in range(Co):
        for n, (oh, ow) in enumerate(pos):
            for n2, (oh2, ow2) in enumerate(pos):
                s = 0.0
                for c in range(Ci):
                    for u in range(k):
                        for v in range(k):
                            i = O.iota((Ci, H, H), k, stv, pad, oh, ow, c, u, v)
                            i2 = O.iota((Ci, H, H), k, stv, pad, oh2, ow2, c, u, v)
                            if i is not None and i2 is not None:
                                s += xf[i] * xf[i2]
                want[co * len(pos) + n, co * len(pos) + n2] = 2 * sigma ** 2 / lam[co] ** 2 * (1 + s)
    close(res.cov[0], want)


def test_O17_avgpool_of_constant():
    """O17: pooling a constant map gives the constant; Γ = c11ᵀ → c11ᵀ."""
    C, H, W, k = 2, 4, 6, 2
    L = C * H * W
    m, G = pool_moments(np.full(L, 1.7), np.full((L, L), 0.3), (C, H, W), k)
    np.testing.assert_allclose(m, 1.7, rtol=1e-15)
    np.testing.assert_allclose(G, 0.3, rtol=1e-15)


def test_O21_O21b_multiplicative_noise():
    """O21: α = 0 is deterministic. O21b: single layer, deterministic x:
    V Z_j = α² (b_j² + Σ_i W_ij² x_i²) (theory §13; exactly the crossbar model with g_min = 0,
    σ(g) = αg, where λ cancels)."""
    rng = np.random.default_rng(10)
    L, J = 5, 3
    Wt = rng.normal(size=(J, L))
    b = rng.normal(size=J)
    net = Network([Dense(Wt, b)], (L,))
    x = rng.normal(size=(2, L))
    r0 = propagate(map_network(net, CrossbarConfig(alpha=0.0)), x, cov=True)
    assert np.all(r0.cov == 0)
    alpha = 0.3
    r1 = propagate(map_network(net, CrossbarConfig(alpha=alpha)), x, cov=True)
    want = alpha ** 2 * (b ** 2 + (x ** 2) @ (Wt.T ** 2))
    close(r1.var, want)
    for s in range(2):
        assert np.all(r1.cov[s][~np.eye(J, dtype=bool)] == 0)
    # the crossbar equivalence: g_min = 0, σ(g) = α g
    r2 = propagate(map_network(net, CrossbarConfig(sigma_fn=lambda g: alpha * np.asarray(g),
                                                   design="column")), x, cov=True)
    close(r2.var, want)
    # α does not enter power (theory §11 / §13)
    close(r1.power, r0.power)


def test_noisy_layers_and_clean_layers_are_still_crossbars():
    """A layer with noise off has σ = α = 0 in its moments but keeps its power (theory §11)."""
    rng = np.random.default_rng(12)
    net = Network([Dense(rng.normal(size=(4, 3)), rng.normal(size=4)), ReLU(),
                   Dense(rng.normal(size=(2, 4)), rng.normal(size=2))], (3,))
    x = rng.normal(size=(2, 3))
    cfg = CrossbarConfig(sigma=0.1, alpha=0.2, g_min=0.1, r=2.0)
    last = propagate(map_network(net, cfg.with_(noisy_layers=("last",))), x)
    none = propagate(map_network(net, cfg.with_(sigma=0.0, alpha=0.0)), x)
    allr = propagate(map_network(net, cfg), x)
    close(last.power_layers[:, 0], none.power_layers[:, 0])       # layer 0 clean: σ-free power
    assert np.all(allr.power_tia_pos[:, 0] > none.power_tia_pos[:, 0])
    # only the last layer noisy: its output variance is exactly its own noise term (O21b-like)
    h = np.maximum(x @ net.layers[0].weight.T + net.layers[0].bias, 0)
    ml = map_network(net, cfg).layers[1]
    blk = ml.block()
    close(last.var, (h ** 2) @ blk.v + blk.vb)


# ====================================================================== API and errors
def test_result_api_and_datasets():
    rng = np.random.default_rng(13)
    net = small_cnn(rng)
    mapped = map_network(net, CrossbarConfig(sigma=0.05))
    x = rng.normal(size=(2, 2, 4, 4))
    res = propagate(mapped, x, per_layer=True)
    d = res.datasets()
    assert set(d) == {"mean", "var", "mse", "reference", "bias", "power", "power_layers",
                      "power_mem", "power_tia_pos", "power_tia_neg", "mse_per_input",
                      "mse_max_per_input", "mse_batch", "mse_batch_max", "mse_rel",
                      "mse_rel_batch"}
    assert d["mean"].shape == (2, 2) and d["power_layers"].shape == (2, 3)
    assert res.cov is None
    close(res.bias, res.mean - res.reference)
    close(res.mse_per_input, res.mse.mean(axis=1))
    close(res.mse_max_per_input, res.mse.max(axis=1))
    close(res.mse_batch, res.mse.mean())
    close(res.mse_batch_max, res.mse.mean(axis=1).max())
    close(res.mse_rel, res.mse.mean(axis=1) / (res.reference ** 2).mean(axis=1))
    close(res.power, res.power_mem.sum(1) + res.power_tia_pos.sum(1) + res.power_tia_neg.sum(1))
    g = res.groups()
    assert list(g) == [f"layers/{i:02d}" for i in range(len(mapped.fused.layers))]
    assert g["layers/00"]["mean"].shape == (2, 3 * 2 * 2)
    np.testing.assert_array_equal(g["layers/06"]["var"], res.var)
    assert "cov" in propagate(mapped, x, cov=True).datasets()
    assert propagate(mapped, x).groups() == {}


def test_bad_input_covariance_is_a_one_line_error():
    rng = np.random.default_rng(14)
    net = Network([Dense(rng.normal(size=(2, 3)), None)], (3,))
    mapped = map_network(net, CrossbarConfig(sigma=0.1))
    x = rng.normal(size=(2, 3))
    bad = {
        "shape": np.eye(4),
        "NaN": np.full((3, 3), np.nan),
        "symmetric": np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]),
        "semi-definite": np.array([[1.0, 2, 0], [2, 1, 0], [0, 0, 1]]),
        "numeric": np.array([["a"] * 3] * 3),
    }
    for word, C in bad.items():
        with pytest.raises(DataError, match=word) as e:
            propagate(mapped, x, input_cov=C)
        assert "\n" not in str(e.value)
    with pytest.raises(DataError):
        propagate(mapped, rng.normal(size=(2, 4)))
    # (B, L, L) is accepted, and a zero covariance equals a deterministic input
    r1 = propagate(mapped, x, input_cov=np.zeros((2, 3, 3)), cov=True)
    r2 = propagate(mapped, x, cov=True)
    np.testing.assert_array_equal(r1.cov, r2.cov)


@pytest.mark.kernel
def test_ur_noise_kernel_jit_equals_python():
    """The Numba UR shared-device kernel equals its plain-Python statement (style G3)."""
    rng = np.random.default_rng(15)
    from refmem.layers import im2col_index
    idx = im2col_index((2, 3, 3), 2, 1, 1)
    L = 18
    mu = rng.normal(size=L)
    G = rand_psd(rng, L)
    v = rng.uniform(0.1, 1, size=(idx.shape[1], 3))
    vb = rng.uniform(size=3)
    a = np.empty((3, idx.shape[0], idx.shape[0]))
    ur_shared_noise_kernel(mu, G[None], L, True, idx, v, vb, a)
    py = getattr(ur_shared_noise_kernel, "py_func", ur_shared_noise_kernel)
    p = np.empty_like(a)
    py(mu, G[None], L, True, idx, v, vb, p)
    np.testing.assert_allclose(a, p, rtol=1e-13, atol=1e-15)
    # a block-diagonal Γ (two channel blocks of 9) equals its dense matrix
    Gb = np.stack([rand_psd(rng, 9), rand_psd(rng, 9)])
    bd = np.empty_like(a)
    ur_shared_noise_kernel(mu, Gb, 9, True, idx, v, vb, bd)
    dn = np.empty_like(a)
    ur_shared_noise_kernel(mu, BlockDiag(Gb).to_dense()[None], L, True, idx, v, vb, dn)
    np.testing.assert_allclose(bd, dn, rtol=1e-13, atol=1e-15)
    # against the 6-index oracle's noise term (Γ part and μμᵀ part)
    K0 = np.zeros((3, 2, 2, 2))
    _, c = O.ur_moments(K0, None, v.T.reshape(3, 2, 2, 2), vb, 1, 1, (2, 3, 3), mu, G)
    n = idx.shape[0]
    for co in range(3):
        close(a[co], c[co * n:(co + 1) * n, co * n:(co + 1) * n])


@pytest.fixture(params=["direct", "gemm"])
def conv_path(request, monkeypatch):
    """Force :func:`refmem.moments.conv_rows` onto its direct (run) kernel or its GEMM paths."""
    import refmem.moments.conv as conv_mod
    monkeypatch.setattr(conv_mod, "_DIRECT_MAX_WORK", 10**9 if request.param == "direct" else 0)
    return request.param


@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), (2, 1, 3), (1, 0, 2), (1, 2, 3), (3, 1, 2)])
def test_conv_signal_cov_paths_equal_dense_toeplitz(stride, pad, k, conv_path):
    """The streamed double convolution (direct run kernel, or im2col + GEMM; upper triangle
    mirrored) equals W_ULᵀ Γ W_UL with the explicit Toeplitz matrix, chunked or not (im2col
    chunks, blocks of Uᵀ), for a dense Γ, a released Γ and a block-diagonal Γ (channel
    blocks, and diagonal blocks)."""
    rng = np.random.default_rng(16)
    conv = Conv2d(rng.normal(size=(3, 2, k, k)), None, stride, pad)
    in_shape = (2, 5, 4)
    T = conv.toeplitz(in_shape)
    G = rand_psd(rng, 40)
    want = T.T @ G @ T
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    close(conv_signal_cov(Wur, idx, G, chunk_bytes=1), want)
    close(conv_signal_cov(Wur, idx, G), want)
    for ut in (1, 8 * 3 * 40 * 5):            # Uᵀ one position at a time, and 5 at a time
        close(conv_signal_cov(Wur, idx, G, ut_bytes=ut), want)
    box = [G.copy()]
    got = conv_signal_cov(Wur, idx, box, chunk_bytes=8 * 20 * 7)
    assert box == []                              # released
    close(got, want)
    np.testing.assert_array_equal(got, got.T)     # mirrored: exactly symmetric
    blocks = np.stack([rand_psd(rng, 20), rand_psd(rng, 20)])
    bd = BlockDiag(blocks)
    Gd = bd.to_dense()
    close(conv_signal_cov(Wur, idx, bd, chunk_bytes=8 * 20 * 3), T.T @ Gd @ T)
    close(conv_signal_cov(Wur, idx, bd, ut_bytes=8 * 3 * 40 * 3), T.T @ Gd @ T)
    dg = BlockDiag.from_variances(rng.uniform(size=40), 2)
    close(conv_signal_cov(Wur, idx, dg), T.T @ dg.to_dense() @ T)
    close(conv_mean(Wur, None, idx, np.ones(40)), T.T @ np.ones(40))


@pytest.mark.kernel
@pytest.mark.parametrize("c_out", [3, 9, 13])
def test_conv_rows_paths_equal_explicit_toeplitz(c_out, conv_path):
    """conv_rows: direct Numba path (runs, four channels at a time plus a remainder) and GEMM
    path, whole and chunked, upper triangle (every channel offset) — all equal to the explicit
    Toeplitz product."""
    from refmem.moments import conv_rows
    rng = np.random.default_rng(18)
    conv = Conv2d(rng.normal(size=(c_out, 2, 3, 3)), None, 1, 1)
    in_shape = (2, 4, 3)
    T = conv.toeplitz(in_shape)
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    J = T.shape[1]
    X = rng.normal(size=(24, 10))
    close(conv_rows(X.T.copy(), Wur, idx, chunk_bytes=8 * 12 * 18 * 5), X.T @ T)
    close(conv_rows(X.T.copy(), Wur, idx), X.T @ T)
    A = rng.normal(size=(24, 24))
    G = A @ A.T
    want = T.T @ G @ T
    U = G @ T
    got = np.full((J, J), np.nan)
    conv_rows(U.T.copy(), Wur, idx, upper=True, out=got, chunk_bytes=8 * 12 * 18 * 7)
    iu = np.triu_indices(J)
    close(got[iu], want[iu])


@pytest.mark.kernel
@pytest.mark.parametrize("c_out,in_shape,pad", [(5, (2, 8, 9), 1), (4, (3, 12, 10), 0),
                                                (7, (1, 6, 12), 2), (1, (2, 9, 9), 1)])
def test_conv_rows_plane_kernel_equals_explicit_toeplitz(c_out, in_shape, pad):
    """conv_rows with the layer geometry (the 3×3 stride-1 plane kernel: padded-width plane,
    three taps and four channels a pass, a channel remainder) equals the explicit Toeplitz
    product, whole and upper triangle at every row offset; a geometry that does not match the
    index map, or another kernel size, falls back to the general paths (same numbers)."""
    from refmem.moments import conv_rows
    from refmem.moments.conv import _PLANE_MIN_POS, _plane_geometry
    rng = np.random.default_rng(c_out + pad)
    conv = Conv2d(rng.normal(size=(c_out, in_shape[0], 3, 3)), None, 1, pad)
    T = conv.toeplitz(in_shape)
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    geo = (in_shape, 3, 1, pad)
    assert idx.shape[0] >= _PLANE_MIN_POS and _plane_geometry(idx, geo) is not None
    L, J = T.shape
    X = rng.normal(size=(L, 11))
    close(conv_rows(X.T.copy(), Wur, idx, geometry=geo), X.T @ T)
    A = rng.normal(size=(L, L))
    G = A @ A.T
    want = T.T @ G @ T
    U = (G @ T).T.copy()
    iu = np.triu_indices(J)
    got = np.full((J, J), np.nan)
    for r0 in range(0, J, 17):                  # row blocks at every channel offset
        conv_rows(U[r0:r0 + 17], Wur, idx, upper=True, row0=r0, out=got[r0:r0 + 17],
                  geometry=geo)
    close(got[iu], want[iu])
    wrong = ((in_shape[0], in_shape[1] + 1, in_shape[2]), 3, 1, pad)
    assert _plane_geometry(idx, wrong) is None and _plane_geometry(idx, (in_shape, 3, 2, pad)) is None
    close(conv_rows(X.T.copy(), Wur, idx, geometry=wrong), X.T @ T)
    # ``rows``: only the listed rows are convolved, in place (plane kernel and the other
    # paths), whole rows and upper triangle; every other row is left untouched
    sel = np.sort(rng.choice(J, size=J // 3, replace=False))
    for g in (geo, wrong):
        got = np.full((J, J), np.nan)
        conv_rows(U, Wur, idx, out=got, rows=sel, geometry=g)
        close(got[sel], want[sel])
        assert np.isnan(np.delete(got, sel, axis=0)).all()
        got = np.full((J, J), np.nan)
        conv_rows(U[5:40], Wur, idx, upper=True, row0=5, out=got[5:40], rows=sel[sel < 35],
                  geometry=g)
        for r in sel[sel < 35]:
            c_lo = (5 + r) // idx.shape[0] * idx.shape[0]
            close(got[5 + r, c_lo:], want[5 + r, c_lo:])
        assert np.isnan(np.delete(got, 5 + sel[sel < 35], axis=0)).all()


@pytest.mark.parametrize("in_shape,k,stride,pad", [((3, 7, 6), 3, 1, 1), ((2, 8, 8), 3, 2, 1),
                                                   ((4, 5, 5), 2, 1, 0), ((1, 4, 9), 5, 1, 2),
                                                   ((2, 1, 1), 3, 1, 1)])
def test_tap_runs_cover_the_index_map_exactly(in_shape, k, stride, pad):
    """Every (position, tap) read of ι is in exactly one run, with consecutive inputs; padded
    reads are in none; runs are grouped by tap as ``ptr`` says."""
    from refmem.layers import im2col_index
    from refmem.moments.conv import tap_runs
    idx = im2col_index(in_shape, k, stride, pad)
    runs, ptr = tap_runs(idx)
    rebuilt = np.full(idx.shape, -1)
    for a, p0, i0, n in runs:
        assert n >= 1 and (rebuilt[p0:p0 + n, a] == -1).all()
        rebuilt[p0:p0 + n, a] = i0 + np.arange(n)
    np.testing.assert_array_equal(rebuilt, idx)
    for a in range(idx.shape[1]):
        assert (runs[ptr[a]:ptr[a + 1], 0] == a).all()


def test_symmetrize_blockwise():
    rng = np.random.default_rng(17)
    A = rng.normal(size=(7, 7))
    want = 0.5 * (A + A.T)
    np.testing.assert_allclose(symmetrize(A.copy(), block=3), want, rtol=0, atol=1e-15)


# ====================================================================== pass machinery
@pytest.mark.kernel
@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (3, 0, 2)])
def test_conv_cols_equals_explicit_toeplitz(stride, pad, k):
    """conv_cols (the first pass, row gather + one GEMM per position) is W_ULᵀ X with the
    explicit Toeplitz matrix; written into a column strip of a larger matrix it fills every
    entry of the strip (padded-only positions included) and nothing outside it."""
    from refmem.moments import conv_cols
    rng = np.random.default_rng(21)
    conv = Conv2d(rng.normal(size=(5, 2, k, k)), None, stride, pad)
    in_shape = (2, 4, 5)
    T = conv.toeplitz(in_shape)
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    X = rng.normal(size=(40, 7))
    close(conv_cols(X, Wur, idx), T.T @ X)
    big = np.full((T.shape[1], 12), np.nan)
    conv_cols(X, Wur, idx, out=big[:, 3:10])
    close(big[:, 3:10], T.T @ X)
    assert np.isnan(big[:, :3]).all() and np.isnan(big[:, 10:]).all()
    only_pad = np.full_like(idx, -1)             # a block no tap reads: zeros
    np.testing.assert_array_equal(conv_cols(X, Wur, only_pad), 0.0)


def _taylor_like(rng, L, frac=0.5):
    """A covariance as the Taylor ReLU leaves it (Eq. (28)): the rows and columns of the
    inactive units zero off the diagonal, a positive diagonal everywhere."""
    G = rand_psd(rng, L)
    act = rng.uniform(size=L) > frac
    G = G * act[:, None] * act[None, :]
    G[np.diag_indices(L)] = rng.uniform(0.5, 2.0, size=L)
    return G, act


@pytest.mark.kernel
@pytest.mark.parametrize("stride,pad,k", [(1, 1, 3), (2, 1, 3), (1, 2, 3), (3, 0, 2)])
def test_conv_cols_diag_rows_is_the_same_product(stride, pad, k):
    """conv_cols with ``diag_rows`` (rows zero off the diagonal read as their diagonal entry
    alone) is W_ULᵀ X with the explicit Toeplitz matrix, for none, some and all rows flagged,
    into a column strip too; diagonal_rows finds exactly the planted rows."""
    from refmem.moments import conv_cols
    from refmem.symmetric import diagonal_rows
    rng = np.random.default_rng(22 + k)
    conv = Conv2d(rng.normal(size=(5, 2, k, k)), None, stride, pad)
    in_shape = (2, 4, 5)
    T = conv.toeplitz(in_shape)
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    for frac in (0.0, 0.5, 1.0):
        X, act = _taylor_like(rng, 40, frac)
        flags = diagonal_rows(X)
        np.testing.assert_array_equal(flags, ~act)
        close(conv_cols(X, Wur, idx, diag_rows=flags), T.T @ X)
        big = np.full((T.shape[1], 44), np.nan)
        conv_cols(X, Wur, idx, out=big[:, 2:42], diag_rows=flags)
        close(big[:, 2:42], T.T @ X)
        assert np.isnan(big[:, :2]).all() and np.isnan(big[:, 42:]).all()
    with pytest.raises(ValueError):
        conv_cols(X[:, :7], Wur, idx, diag_rows=flags)


@pytest.mark.kernel
def test_diagonal_rows_flags_only_exact_zeros():
    """A row is flagged iff every off-diagonal entry is exactly 0 (a tiny value, a NaN or an
    entry in the last column keep it unflagged; the diagonal entry does not matter)."""
    from refmem.symmetric import diagonal_rows
    A = np.zeros((6, 6))
    A[np.diag_indices(6)] = [1.0, 0.0, np.nan, 2.0, 3.0, 4.0]
    A[3, 5] = 1e-300
    A[4, 0] = np.nan
    A[5, 5] = 7.0
    A[0, 5] = -0.0
    np.testing.assert_array_equal(diagonal_rows(A), [True, True, True, False, False, True])
    with pytest.raises(ValueError):
        diagonal_rows(np.zeros((2, 3)))


@pytest.mark.parametrize("in_shape,stride", [((2, 8, 8), 1), ((2, 5, 4), 1), ((3, 9, 8), 2)])
@pytest.mark.parametrize("ut", [None, 8 * 3 * 128 * 7])
def test_conv_signal_cov_rows_keeps_what_taylor_reads(in_shape, stride, ut):
    """conv_signal_cov(rows=...) equals W_ULᵀ Γ W_UL on every entry between flagged units and
    on the whole diagonal, is finite elsewhere (plane kernel on the flagged rows only; the
    GEMM path of small or strided maps computes every row); ur_moments(active_only=True)
    followed by the Taylor ReLU gives the moments of the full computation."""
    from refmem.moments.conv import _plane_geometry
    rng = np.random.default_rng(23 + stride)
    conv = Conv2d(rng.normal(size=(3, in_shape[0], 3, 3)), rng.normal(size=3), stride, 1)
    T = conv.toeplitz(in_shape)
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    geo = (in_shape, 3, stride, 1)
    L, J = T.shape
    G = rand_psd(rng, L)
    want = T.T @ G @ T
    rows = rng.uniform(size=J) > 0.4
    kw = {} if ut is None else {"ut_bytes": ut}
    for symmetric in (True, False):
        got = conv_signal_cov(Wur, idx, G.copy(), geometry=geo, rows=rows, symmetric=symmetric,
                              **kw)
        assert np.isfinite(np.triu(got)).all()
        keep = np.triu(rows[:, None] & rows[None, :]) | np.eye(J, dtype=bool)
        close(got[keep], want[keep])
        if symmetric:
            close(got[keep.T], want[keep.T])
    if _plane_geometry(idx, geo) is not None:      # the skipped rows really were skipped
        got = conv_signal_cov(Wur, idx, G.copy(), geometry=geo, rows=rows, symmetric=False)
        off = np.triu(~rows[:, None] & np.ones((J, J), dtype=bool), 1)
        assert (got[off] == 0).all()
    with pytest.raises(ValueError):
        conv_signal_cov(Wur, idx, G.copy(), rows=rows[:-1])
    # the Taylor ReLU reads nothing else: same moments as from the full covariance
    mu = rng.normal(size=L)
    v = rng.uniform(0.01, 0.1, size=Wur.shape)
    m0, c0 = ur_moments(Wur, conv.bias, v, None, idx, mu, G.copy(), geometry=geo)
    m1, c1 = ur_moments(Wur, conv.bias, v, None, idx, mu, G.copy(), geometry=geo,
                        symmetric=False, active_only=True)
    np.testing.assert_array_equal(m1, m0)
    r0 = relu_moments(m0, c0, "taylor")
    r1 = relu_moments(m1, c1, "taylor")
    close(r1[0], r0[0])
    close(r1[1], r0[1])
    noise = rng.uniform(size=J)
    m0, c0 = ul_moments(Wur, conv.bias, idx, noise, mu, G.copy(), geometry=geo)
    m1, c1 = ul_moments(Wur, conv.bias, idx, noise, mu, G.copy(), geometry=geo,
                        active_only=True)
    close(relu_moments(m1, c1, "taylor")[1], relu_moments(m0, c0, "taylor")[1])


@pytest.mark.kernel
@pytest.mark.parametrize("n", [1, 2, 3, 8, 9])
def test_paired_row_deals_every_row_once(n):
    """paired_row: over the (n + 1) // 2 tasks the rows t and n−1−t cover 0 … n−1 exactly
    once, each task's upper-triangle work (n − r a row) is n + 1 (or the middle row's alone),
    and side 1 of the middle task of an odd n is −1."""
    from refmem.symmetric import paired_row
    seen = []
    for t in range((n + 1) // 2):
        rows = [paired_row(t, side, n) for side in range(2)]
        if rows[1] < 0:
            assert n % 2 == 1 and t == n // 2 and rows[0] == t
            rows = rows[:1]
        else:
            assert sum(n - r for r in rows) == n + 1
        seen += rows
    assert sorted(seen) == list(range(n))


@pytest.mark.kernel
@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 130, 200])
def test_mirror_upper_copies_the_upper_triangle(n):
    """mirror_upper: the lower triangle becomes the transposed upper one, bit for bit, the
    upper triangle and the diagonal are untouched (tile edges at 64 included)."""
    from refmem.symmetric import mirror_upper
    rng = np.random.default_rng(n)
    A = rng.normal(size=(n, n))
    want = np.triu(A) + np.triu(A, 1).T
    got = mirror_upper(A.copy())
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError):
        mirror_upper(np.zeros((3, 4)))
    # with a scale: D A D above the diagonal (same product order), then mirrored
    d = rng.normal(size=n)
    up = np.triu((A * d[:, None]) * d[None, :], 1)
    want = up + up.T + np.diag(np.diag(A))
    np.testing.assert_array_equal(mirror_upper(A.copy(), scale=d), want)
    with pytest.raises(ValueError):
        mirror_upper(np.zeros((3, 3)), scale=np.ones(2))


@pytest.mark.kernel
@pytest.mark.parametrize("n,s", [(6, 3), (130, 65), (200, 100), (64, 1), (128, 128)])
def test_mirror_diagonal_blocks_touches_only_the_blocks(n, s):
    """mirror_diagonal_blocks: inside each s×s diagonal block the lower triangle becomes the
    transposed upper one, bit for bit; every other entry is left as it was."""
    from refmem.symmetric import mirror_diagonal_blocks
    rng = np.random.default_rng(n + s)
    A = rng.normal(size=(n, n))
    want = A.copy()
    for b in range(0, n, s):
        blk = A[b:b + s, b:b + s]
        want[b:b + s, b:b + s] = np.triu(blk) + np.triu(blk, 1).T
    np.testing.assert_array_equal(mirror_diagonal_blocks(A.copy(), s), want)
    with pytest.raises(ValueError):
        mirror_diagonal_blocks(np.zeros((6, 6)), 4)


@pytest.mark.parametrize("in_shape,k", [((2, 4, 4), 2), ((3, 5, 7), 2), ((1, 6, 6), 3)])
def test_pool_upper_only_reads_the_upper_triangle(in_shape, k):
    """pool_moments(upper_only=True): NaN below the diagonal (an unmirrored ReLU output)
    changes nothing — the result equals pooling the symmetric matrix, bit for bit."""
    rng = np.random.default_rng(7 + k)
    L = int(np.prod(in_shape))
    mu = rng.normal(size=L)
    G = rand_psd(rng, L)
    G = np.triu(G) + np.triu(G, 1).T
    _, want = pool_moments(mu, G.copy(), in_shape, k)
    junk = G.copy()
    junk[np.tril_indices(L, -1)] = np.nan
    _, got = pool_moments(mu, junk, in_shape, k, upper_only=True)
    np.testing.assert_array_equal(got, want)


@pytest.mark.kernel
@pytest.mark.parametrize("in_shape,k", [((2, 4, 4), 2), ((3, 5, 7), 2), ((1, 6, 6), 3),
                                        ((2, 3, 3), 1)])
def test_dense_pool_kernel_equals_loop_oracle(in_shape, k):
    """The dense pooling kernel (one pass over Γ, upper triangle, mirrored) equals the loop
    oracle AΓAᵀ (trailing rows and columns that fill no window dropped), exactly symmetric;
    a Workspace changes nothing."""
    from refmem.moments.workspace import Workspace
    rng = np.random.default_rng(sum(in_shape) + k)
    L = int(np.prod(in_shape))
    mu = rng.normal(size=L)
    G = rand_psd(rng, L)
    mo, co = O.avgpool_moments(mu, G, in_shape, k)
    m, c = pool_moments(mu, G.copy(), in_shape, k)
    close(m, mo)
    close(c, co)
    np.testing.assert_array_equal(c, c.T)
    _, cw = pool_moments(mu, G.copy(), in_shape, k, work=Workspace(min_bytes=0))
    np.testing.assert_array_equal(cw, c)


def test_workspace_reuses_only_free_buffers():
    """Memory is handed out again only once no array refers to it (views included); free
    neighbours merge, a large free piece is split for a small request, sizes below
    ``min_bytes`` bypass the pool, zeros() is zero-filled, nothing handed out overlaps."""
    from refmem.moments.workspace import Workspace
    w = Workspace(min_bytes=800)
    small = w.empty((10,))
    assert w.allocated == 0 and small.shape == (10,)
    a = w.empty((2000,))                    # one region of 2048 elements (page multiple)
    a[...] = 1.0
    b = w.empty((600,))                     # a is alive: a second region
    assert w.allocated == 8 * (2048 + 1024) and not np.shares_memory(a, b)
    view = a[3:5]                           # a view keeps a's memory in use
    del a
    c = w.empty((700,))
    assert w.allocated == 8 * (2048 + 1024 + 1024) and not np.shares_memory(c, view)
    del view
    d = w.zeros((4, 100))                   # fits in the free 2048-region: split, zero-filled
    e = w.empty((1500,))                    # the rest of that region (2048 − 512 = 1536)
    assert w.allocated == 8 * 4096
    np.testing.assert_array_equal(d, 0.0)
    for x, y in [(d, e), (d, b), (d, c), (e, b), (e, c), (b, c)]:
        assert not np.shares_memory(x, y)
    del d, e, b, c
    big = w.empty((2048,))                  # every piece free again: the first region, merged
    assert w.allocated == 8 * 4096 and big.shape == (2048,)
    assert w.reused == 8 * (400 + 1500 + 2048)


def test_workspace_recycle_leaves_only_free_regions_to_the_next():
    """A dropped ``recycle=True`` workspace leaves the regions whose memory nothing refers to
    any more (not one still viewed) to the next recycling workspace, which takes them instead
    of mapping; a plain workspace neither takes nor leaves; release_cache() empties it."""
    from refmem.moments import workspace as WS
    WS.release_cache()
    w = WS.Workspace(min_bytes=800, recycle=True)
    a = w.empty((2000,))                    # region of 2048 elements
    b = w.empty((600,))                     # region of 1024 elements, a view of it survives
    b[...] = 7.0
    vb = b[:3]
    del a, b, w
    assert [len(r) for r in WS._CACHE] == [8 * 2048]
    plain = WS.Workspace(min_bytes=800)
    p = plain.empty((1000,))
    assert plain.recycled == 0 and plain.allocated == 8 * 1024 and len(WS._CACHE) == 1
    w2 = WS.Workspace(min_bytes=800, recycle=True)
    c = w2.empty((1000,))
    c[...] = -1.0
    assert w2.allocated == 0 and w2.recycled == 8 * 2048 and WS._CACHE == []
    assert not np.shares_memory(c, vb) and not np.shares_memory(c, p)
    np.testing.assert_array_equal(vb, 7.0)
    del c, w2
    assert [len(r) for r in WS._CACHE] == [8 * 2048]
    WS.release_cache()
    assert WS._CACHE == []


def test_ur_ul_moments_same_numbers_with_a_workspace():
    """The layer functions give bit-identical results with and without a Workspace, also
    when the workspace's buffers hold stale values from an earlier call."""
    from refmem.moments.workspace import Workspace
    rng = np.random.default_rng(5)
    conv = Conv2d(rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4), 1, 1)
    in_shape = (3, 5, 5)
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    L = 75
    mu = rng.normal(size=L)
    G = rand_psd(rng, L)
    v = rng.uniform(0.01, 0.1, size=Wur.shape)
    vb = rng.uniform(0.01, 0.1, size=4)
    w = Workspace(min_bytes=0)
    for _ in range(2):
        m0, c0 = ur_moments(Wur, conv.bias, v, vb, idx, mu, G.copy())
        m1, c1 = ur_moments(Wur, conv.bias, v, vb, idx, mu, G.copy(), work=w)
        np.testing.assert_array_equal(m1, m0)
        np.testing.assert_array_equal(c1, c0)
        c1[...] = np.nan                    # stale contents must not leak into the next call
        del c1
    noise = rng.uniform(size=4 * 25)
    _, u0 = ul_moments(Wur, conv.bias, idx, noise, mu, G.copy())
    _, u1 = ul_moments(Wur, conv.bias, idx, noise, mu, G.copy(), work=w)
    np.testing.assert_array_equal(u1, u0)
    assert w.reused > 0


def test_upper_only_conv_moments_feed_the_exact_relu_unchanged():
    """``symmetric=False`` leaves the lower triangle unmirrored; the upper triangle and the
    diagonal equal the symmetric result, and the exact ReLU (which reads only those) gives
    bit-identical moments from either (how the network pass uses it)."""
    rng = np.random.default_rng(8)
    conv = Conv2d(rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), 1, 1)
    in_shape = (2, 4, 4)
    Wur, idx = conv.ur_matrix(), conv.index(in_shape)
    mu = rng.normal(size=32)
    G = rand_psd(rng, 32)
    v = rng.uniform(0.01, 0.1, size=Wur.shape)
    m0, c0 = ur_moments(Wur, conv.bias, v, None, idx, mu, G.copy())
    m1, c1 = ur_moments(Wur, conv.bias, v, None, idx, mu, G.copy(), symmetric=False)
    iu = np.triu_indices(c0.shape[0])
    np.testing.assert_array_equal(c1[iu], c0[iu])
    assert not np.array_equal(c1, c0)             # the lower triangle was really skipped
    r0 = relu_moments(m0, c0, "exact")
    r1 = relu_moments(m1, c1, "exact")
    np.testing.assert_array_equal(r1[0], r0[0])
    np.testing.assert_array_equal(r1[1], r0[1])
    noise = rng.uniform(size=48)
    _, u0 = ul_moments(Wur, conv.bias, idx, noise, mu, G.copy())
    _, u1 = ul_moments(Wur, conv.bias, idx, noise, mu, G.copy(), symmetric=False)
    np.testing.assert_array_equal(u1[iu], u0[iu])
