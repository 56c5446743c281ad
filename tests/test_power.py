"""Expected power (theory §11, refmem.power via refmem.moments.propagate): closed-form oracles
O18/O18b of theory §18 and structural properties. The loop restatements of Props 5–8 are checked
in test_moments.py (FC, UR, UL oracles); expected values here are closed forms computed in the
test from Eqs. (5)–(6) and the input moments.
"""

import numpy as np
import pytest

from refmem import AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU, map_network
from refmem.layers import im2col_index
from refmem.moments import propagate
from refmem.power import layer_power


def rand_psd(rng, n):
    A = rng.normal(size=(n, n))
    return A @ A.T / n


def fc_case(rng, L=5, J=3):
    Wt = rng.normal(size=(J, L))
    b = rng.normal(size=J)
    return Network([Dense(Wt, b)], (L,)), Wt.T, b


def conv_case(rng, stride=1, pad=1):
    K = rng.normal(size=(2, 2, 3, 3))
    b = rng.normal(size=2)
    return Network([Conv2d(K, b, stride, pad)], (2, 4, 5)), K, b


@pytest.mark.parametrize("design", ["scalar", "column"])
def test_O18_fc_pair_power_closed_form_and_sigma_free(design):
    """O18: E P_pair = (λ|w| + 2 g_min)(μ² + Γ_ii), bias pair (λ|b| + 2 g_min)·1; σ-independent."""
    rng = np.random.default_rng(0)
    net, W, b = fc_case(rng)
    x = rng.normal(size=(1, 5))
    C = rand_psd(rng, 5) * 0.4
    q = x[0] ** 2 + np.diag(C)
    gmin = 0.15
    out = []
    for sigma in (0.0, 0.3):
        m = map_network(net, CrossbarConfig(sigma=sigma, g_min=gmin, design=design, r=1.9))
        lam = m.layers[0].lam
        res = propagate(m, x, input_cov=C)
        want = np.sum((lam * np.abs(W) + 2 * gmin) * q[:, None]) + np.sum(lam * np.abs(b) + 2 * gmin)
        np.testing.assert_allclose(res.power_mem[0, 0], want, rtol=1e-12)
        out.append(res.power_mem[0, 0])
    assert out[0] == out[1]


def test_O18b_fc_tia_noise_adds_r_sigma2():
    """O18b: constant σ adds exactly r σ² (Σ_i q_i + x_b²) per TIA and column (per-device σ²)."""
    rng = np.random.default_rng(1)
    net, W, b = fc_case(rng, L=4, J=3)
    x = rng.normal(size=(2, 4))
    C = rand_psd(rng, 4) * 0.2
    r, sigma = 2.3, 0.17
    p0 = propagate(map_network(net, CrossbarConfig(sigma=0.0, g_min=0.1, r=r)), x, input_cov=C)
    p1 = propagate(map_network(net, CrossbarConfig(sigma=sigma, g_min=0.1, r=r)), x, input_cov=C)
    q = x ** 2 + np.diag(C)
    add = r * sigma ** 2 * (q.sum(axis=1) + 1.0) * 3
    np.testing.assert_allclose(p1.power_tia_pos[:, 0] - p0.power_tia_pos[:, 0], add, rtol=1e-10)
    np.testing.assert_allclose(p1.power_tia_neg[:, 0] - p0.power_tia_neg[:, 0], add, rtol=1e-10)


def test_fc_tia_closed_form_noiseless():
    """Prop. 6 corrected (D19): P_TIA± = r Σ_j ((g±ᵀμ + g^b±)² + g±ᵀΓg±), g± with the g_min offset."""
    rng = np.random.default_rng(2)
    net, W, b = fc_case(rng)
    x = rng.normal(size=(1, 5))
    C = rand_psd(rng, 5)
    gmin, r = 0.2, 2.0
    m = map_network(net, CrossbarConfig(g_min=gmin, r=r, design="column"))
    lam = m.layers[0].lam
    res = propagate(m, x, input_cov=C)
    for sgn, got in ((1, res.power_tia_pos[0, 0]), (-1, res.power_tia_neg[0, 0])):
        g = lam * np.maximum(sgn * W, 0) + gmin
        gb = lam * np.maximum(sgn * b, 0) + gmin
        EI = x[0] @ g + gb
        VI = np.einsum("ij,ik,kj->j", g, C, g)
        np.testing.assert_allclose(got, r * np.sum(EI ** 2 + VI), rtol=1e-12)


def test_ur_power_closed_forms_with_padding_and_stride():
    """Props 7–8 corrected (D21–D23): tap-shifted inputs with q = 0 in the padding, bias pairs
    × n_pos; O18b per position: σ adds r σ² (Σ_a q_ι(p,a) + 1) per TIA, channel and position."""
    rng = np.random.default_rng(3)
    for stride, pad in ((1, 1), (2, 1), (1, 0)):
        net, K, b = conv_case(rng, stride, pad)
        x = rng.normal(size=(1, 2, 4, 5))
        C = rand_psd(rng, 40) * 0.3
        q = x[0].ravel() ** 2 + np.diag(C)
        idx = im2col_index((2, 4, 5), 3, stride, pad)
        qp = np.where(idx >= 0, np.concatenate([q, [0]])[idx], 0.0)      # (n_pos, taps)
        n_pos = idx.shape[0]
        gmin, r, sigma = 0.1, 1.6, 0.12
        m0 = map_network(net, CrossbarConfig(g_min=gmin, r=r, design="column"))
        m1 = map_network(net, CrossbarConfig(sigma=sigma, g_min=gmin, r=r, design="column"))
        lam = m0.layers[0].lam
        Wur = K.reshape(2, -1).T
        p0 = propagate(m0, x, input_cov=C)
        p1 = propagate(m1, x, input_cov=C)
        want_mem = (np.sum((lam * np.abs(Wur) + 2 * gmin) * qp.sum(axis=0)[:, None])
                    + n_pos * np.sum(lam * np.abs(b) + 2 * gmin))
        np.testing.assert_allclose(p0.power_mem[0, 0], want_mem, rtol=1e-12)
        assert p1.power_mem[0, 0] == p0.power_mem[0, 0]
        add = r * sigma ** 2 * (qp.sum() + n_pos) * 2          # 2 channels
        np.testing.assert_allclose(p1.power_tia_pos[0, 0] - p0.power_tia_pos[0, 0], add, rtol=1e-10)
        np.testing.assert_allclose(p1.power_tia_neg[0, 0] - p0.power_tia_neg[0, 0], add, rtol=1e-10)


def test_ul_structural_zeros_dissipate():
    """Theory §6/§11.1: every Toeplitz entry is a pair; structural zeros dissipate 2 g_min q_n."""
    rng = np.random.default_rng(4)
    net, K, b = conv_case(rng)
    x = rng.normal(size=(1, 2, 4, 5))
    C = rand_psd(rng, 40) * 0.3
    q = x[0].ravel() ** 2 + np.diag(C)
    gmin = 0.25
    m = map_network(net, CrossbarConfig(g_min=gmin, mapping="UL", design="layer"))
    lam = m.layers[0].lam[0]
    T = net.layers[0].toeplitz((2, 4, 5))
    res = propagate(m, x, input_cov=C)
    want = np.sum((lam * np.abs(T) + 2 * gmin) * q[:, None]) + T.shape[1] * np.sum(
        lam * np.abs(b) + 2 * gmin) / 2
    np.testing.assert_allclose(res.power_mem[0, 0], want, rtol=1e-12)
    # TIA: the full-column conductance vector g± = λ w± + g_min 1 (all L rows)
    for sgn, got in ((1, res.power_tia_pos[0, 0]), (-1, res.power_tia_neg[0, 0])):
        g = lam * np.maximum(sgn * T, 0) + gmin
        gb = np.repeat(lam * np.maximum(sgn * b, 0) + gmin, T.shape[1] // 2)
        EI = x[0].ravel() @ g + gb
        VI = np.einsum("ij,ik,kj->j", g, C, g)
        np.testing.assert_allclose(got, np.sum(EI ** 2 + VI), rtol=1e-12)


def test_r_scales_tia_only_and_alpha_dither_do_not_enter_power():
    """r multiplies TIA power only (theory §3.3, §11); α (§13) and dither (§14) never enter power;
    moments do not depend on r."""
    rng = np.random.default_rng(5)
    net = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), 1, 1), ReLU(),
                   AvgPool2d(2), Flatten(), Dense(rng.normal(size=(3, 8)), rng.normal(size=3))],
                  (1, 4, 4))
    x = rng.normal(size=(2, 1, 4, 4))
    base = CrossbarConfig(sigma=0.05, g_min=0.1)
    a = propagate(map_network(net, base), x)
    b2 = propagate(map_network(net, base.with_(r=3.0)), x)
    np.testing.assert_allclose(b2.power_tia_pos, 3.0 * a.power_tia_pos, rtol=1e-12)
    np.testing.assert_allclose(b2.power_tia_neg, 3.0 * a.power_tia_neg, rtol=1e-12)
    np.testing.assert_array_equal(b2.power_mem, a.power_mem)
    np.testing.assert_array_equal(b2.mean, a.mean)
    np.testing.assert_array_equal(b2.var, a.var)
    c = propagate(map_network(net, base.with_(alpha=0.4)), x)
    np.testing.assert_allclose(c.power_layers[:, 0], a.power_layers[:, 0], rtol=1e-12)
    d = propagate(map_network(net, base.with_(bits=6, quant_mode="dither")), x)
    np.testing.assert_allclose(d.power_layers[:, 0], a.power_layers[:, 0], rtol=1e-12)
    assert np.all(c.var > a.var)


def test_layer_power_api_and_corollary_totals():
    """layer_power returns the Corollary 1/2 total of its terms; propagate's totals add layers."""
    rng = np.random.default_rng(6)
    net, W, b = fc_case(rng)
    m = map_network(net, CrossbarConfig(sigma=0.1, g_min=0.05, r=1.3))
    mu = rng.normal(size=5)
    p = layer_power(m.layers[0], mu, None)
    assert p.total == p.mem + p.tia_pos + p.tia_neg
    res = propagate(m, mu[None])
    np.testing.assert_allclose([res.power_mem[0, 0], res.power_tia_pos[0, 0],
                                res.power_tia_neg[0, 0]], [p.mem, p.tia_pos, p.tia_neg],
                               rtol=1e-14)
    np.testing.assert_allclose(res.power, res.power_layers.sum(axis=1), rtol=1e-14)


def test_direct_power_functions_match_the_network_pass():
    """fc_power (theory §11.1), ur_power (§11.2) and ul_power (§6/§11.1, column blocks) called
    directly on a layer's input moments equal the powers reported by propagate."""
    from refmem.power import fc_power, ul_power, ur_power
    rng = np.random.default_rng(7)
    net = Network([Conv2d(rng.normal(size=(2, 1, 3, 3)), rng.normal(size=2), 1, 1), Flatten(),
                   Dense(rng.normal(size=(3, 32)), rng.normal(size=3))], (1, 4, 4))
    x = rng.normal(size=(1, 1, 4, 4))
    C = rand_psd(rng, 16) * 0.2
    for mapping in ("UR", "UL"):
        m = map_network(net, CrossbarConfig(sigma=0.1, g_min=0.1, r=1.4, mapping=mapping))
        res = propagate(m, x, input_cov=C, per_layer=True, cov=True)
        L0, L1 = m.layers
        mu = x[0].ravel()
        if mapping == "UR":
            p0 = ur_power(L0.block(), L0.idx, mu, C, 1.4)
        else:
            blocks = [L0.block(np.arange(c, min(c + 5, L0.n_cols))) for c in range(0, L0.n_cols, 5)]
            p0 = ul_power(L0, mu, C, 1.4, blocks)
        np.testing.assert_allclose([p0.mem, p0.tia_pos, p0.tia_neg],
                                   [res.power_mem[0, 0], res.power_tia_pos[0, 0],
                                    res.power_tia_neg[0, 0]], rtol=1e-12)
        # layer 1's input moments: the conv output (flatten is the identity)
        r0 = propagate(map_network(Network(net.layers[:1], (1, 4, 4)), m.config.with_(
            design="layer", lam=float(L0.lam[0]))), x, input_cov=C, cov=True)
        p1 = fc_power(L1.block(), r0.mean[0], r0.cov[0], 1.4)
        np.testing.assert_allclose([p1.mem, p1.tia_pos, p1.tia_neg],
                                   [res.power_mem[0, 1], res.power_tia_pos[0, 1],
                                    res.power_tia_neg[0, 1]], rtol=1e-10)


def test_patch_gram_sums_the_patch_quadratic_forms():
    """Σ_p gᵀ Γ_p g = gᵀ S g with S = patch_gram (dense and block-diagonal Γ, padding, stride)."""
    from refmem.moments import BlockDiag
    from refmem.power import patch_gram, patch_quadforms
    rng = np.random.default_rng(21)
    idx = im2col_index((2, 5, 4), 3, 2, 1)
    A = rng.normal(size=(40, 40))
    G = A @ A.T
    g = rng.uniform(size=(idx.shape[1], 3))
    want = patch_quadforms(G, idx, g).sum(axis=0)
    np.testing.assert_allclose(np.einsum("ac,ab,bc->c", g, patch_gram(G, idx), g), want,
                               rtol=1e-12)
    bd = BlockDiag(np.stack([(lambda B: B @ B.T)(rng.normal(size=(20, 20))) for _ in range(2)]))
    np.testing.assert_allclose(patch_gram(bd, idx), patch_gram(bd.to_dense(), idx), rtol=1e-13)
