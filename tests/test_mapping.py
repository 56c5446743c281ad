"""Crossbar mapping invariants (theory §3, oracle O23), designs, λ/g_u options, quantization grid."""

import re

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refmem import (AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU,
                    map_network)
from refmem.errors import ConfigError
from refmem.quantize import quant_step, quantize


def small_cnn(rng, bias=True):
    return Network([
        Conv2d(rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3) if bias else None, 1, 1),
        ReLU(), AvgPool2d(2), Flatten(),
        Dense(rng.normal(size=(4, 12)), rng.normal(size=4)),
    ], (2, 4, 4))


cfg_case = st.tuples(
    st.sampled_from(["scalar", "layer", "column"]),
    st.sampled_from(["UR", "UL"]),
    st.floats(0.0, 0.5),            # g_min
    st.floats(0.1, 3.0),            # g_u - g_min
    st.integers(0, 2**31 - 1),
)


@given(cfg_case)
def test_mapping_invariants(case):
    design, mapping, gmin, span, seed = case
    rng = np.random.default_rng(seed)
    net = small_cnn(rng)
    cfg = CrossbarConfig(design=design, mapping=mapping, g_min=gmin, g_u=gmin + span, r=1.7)
    m = map_network(net, cfg)
    for L in m.layers:
        blk = L.block()
        # O23: g+ - g- = λ W exactly (g_min cancels), for weights and bias row
        np.testing.assert_allclose(blk.gp - blk.gm, blk.W * blk.lam, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(blk.gbp - blk.gbm, blk.b * blk.lam, rtol=1e-12, atol=1e-12)
        # every device in [g_min, g_u]
        assert L.check_conductances()
        assert blk.gp.min() >= gmin - 1e-12 and blk.gm.min() >= gmin - 1e-12
        # the largest |w| in each scope reaches g_u (bias row included in w^u, D3)
        lam_wu = L.lam * L.w_u
        np.testing.assert_allclose(lam_wu, L.g_u - gmin, rtol=1e-12)
        # λ constant within a column: one value per FC output / UR channel / UL column (D2)
        assert L.lam.shape == (L.n_cols,)
        # a noiseless crossbar divided by λ gives W^T x + b (O23, with r undone digitally)
        x = rng.normal(size=(3, L.n_rows))
        Ip = x @ blk.gp + blk.gbp
        Im = x @ blk.gm + blk.gbm
        z = (cfg.r * (Ip - Im)) / (cfg.r * blk.lam)
        np.testing.assert_allclose(z, x @ blk.W + blk.b, rtol=1e-10, atol=1e-10)


def test_design_scopes_and_ul_columns():
    rng = np.random.default_rng(3)
    net = small_cnn(rng)
    f = net.fused()
    K, b = f.layers[0].weight, f.layers[0].bias
    Wd, bd = f.layers[4].weight, f.layers[4].bias
    all_max = max(np.abs(K).max(), np.abs(b).max(), np.abs(Wd).max(), np.abs(bd).max())
    m = map_network(net, CrossbarConfig(design="scalar", g_u=2.0))
    assert all(np.all(L.w_u == all_max) for L in m.layers)
    m = map_network(net, CrossbarConfig(design="layer", g_u=(1.0, 3.0)))
    assert np.all(m.layers[0].w_u == max(np.abs(K).max(), np.abs(b).max()))
    np.testing.assert_allclose(m.layers[1].lam, 3.0 / max(np.abs(Wd).max(), np.abs(bd).max()))
    m = map_network(net, CrossbarConfig(design="column", mapping="UR"))
    want = np.maximum(np.abs(K).reshape(3, -1).max(1), np.abs(b))
    np.testing.assert_allclose(m.layers[0].w_u, want)
    np.testing.assert_allclose(m.layers[1].w_u, np.maximum(np.abs(Wd).max(1), np.abs(bd)))
    # UL column design: max over the taps present in each column (c_o, p), plus |b_co|
    m = map_network(net, CrossbarConfig(design="column", mapping="UL"))
    L = m.layers[0]
    assert L.n_cols == 3 * 16
    T = f.layers[0].toeplitz((2, 4, 4))
    for col in range(L.n_cols):
        co = col // 16
        assert L.w_u[col] == max(np.abs(T[:, col]).max(), abs(b[co]))
    # a corner position sees fewer taps than an interior one
    assert L.w_u[0] <= L.w_u[5]


def test_lam_option_and_gu_errors():
    rng = np.random.default_rng(4)
    net = small_cnn(rng)
    m = map_network(net, CrossbarConfig(lam=2.0, g_min=0.1, design="layer"))
    for L in m.layers:
        np.testing.assert_allclose(L.lam, 2.0)
        np.testing.assert_allclose(L.g_u, 0.1 + 2.0 * L.w_u)
    with pytest.raises(ConfigError, match="above g_max"):
        map_network(net, CrossbarConfig(lam=100.0, g_max=1.0))
    with pytest.raises(ConfigError, match="outside"):
        CrossbarConfig(g_u=0.1, g_min=0.1)
    with pytest.raises(ConfigError, match="outside"):
        CrossbarConfig(g_u=2.0, g_max=1.5)
    with pytest.raises(ConfigError, match="crossbar layers"):
        map_network(net, CrossbarConfig(g_u=(1.0, 2.0, 3.0)))
    with pytest.raises(ConfigError, match="columns"):
        map_network(net, CrossbarConfig(g_u={0: [1.0, 2.0], 1: 1.0}, design="column"))
    with pytest.raises(ConfigError, match="no entry"):
        map_network(net, CrossbarConfig(g_u={0: 1.0}, design="column"))


def test_noise_switch_keeps_crossbar_and_sets_sigma_zero():
    rng = np.random.default_rng(5)
    net = small_cnn(rng)
    cfg = CrossbarConfig(sigma=0.1, alpha=0.2, g_min=0.05, noisy_layers=("last",))
    m = map_network(net, cfg)
    first, last = m.layers
    assert not first.noisy and last.noisy
    b0 = first.block()
    assert np.all(b0.v == 0) and np.all(b0.vb == 0)
    assert np.all(b0.gp >= 0.05)                      # still mapped: same conductances/power
    b1 = last.block()
    # constant σ: pair variance 2σ²/λ² plus α² w² (theory §3.2, §13)
    np.testing.assert_allclose(b1.v, 2 * 0.01 / b1.lam**2 + 0.04 * b1.W**2, rtol=1e-13)
    np.testing.assert_allclose(b1.vb, 2 * 0.01 / b1.lam**2 + 0.04 * b1.b**2, rtol=1e-13)


def test_sigma_table_interpolates_and_rejects_out_of_range():
    rng = np.random.default_rng(6)
    net = small_cnn(rng)
    table = (np.array([0.0, 1.0, 2.0]), np.array([0.01, 0.03, 0.02]))
    m = map_network(net, CrossbarConfig(sigma_table=table, g_u=2.0))
    blk = m.layers[1].block()
    g = blk.gp
    s = np.where(g <= 1.0, 0.01 + 0.02 * g, 0.03 - 0.01 * (g - 1.0))
    np.testing.assert_allclose(blk.vp, s**2, rtol=1e-12)
    with pytest.raises(ConfigError, match="sigma table covers"):
        map_network(net, CrossbarConfig(sigma_table=table, g_u=2.5)).layers[0].block()



@pytest.mark.parametrize("design", ["scalar", "layer", "column"])
def test_sigma_table_range_error_names_the_full_range_before_computing(design):
    """Issue 10 item 6: the error comes from map_network (before any computation) and names
    the whole range [g_min, g_u] of g⁺ and g⁻ — with layer/column w^u the largest |w| of a
    layer sits exactly at g_u (Eqs. (5)–(6)), the smallest device at g_min."""
    rng = np.random.default_rng(7)
    net = small_cnn(rng)
    gmin, gu = 0.3, 1.7
    ok = (np.array([gmin, gu]), np.array([0.01, 0.02]))
    map_network(net, CrossbarConfig(sigma_table=ok, g_u=gu, g_min=gmin, design=design))
    for table in [(np.array([gmin, gu - 0.05]), np.array([0.01, 0.02])),
                  (np.array([gmin + 0.05, gu]), np.array([0.01, 0.02]))]:
        with pytest.raises(ConfigError, match=re.escape(f"[{gmin:g}, {gu:g}]")) as e:
            map_network(net, CrossbarConfig(sigma_table=table, g_u=gu, g_min=gmin,
                                            design=design))
        assert "g+ and g-" in str(e.value)
    # a noiseless layer needs no coverage: only layer 1 noisy, its own range is checked
    mapped = map_network(net, CrossbarConfig(sigma_table=ok, g_u=gu, g_min=gmin, design=design,
                                             noisy_layers="1"))
    assert mapped.layers[1].noisy and not mapped.layers[0].noisy


def test_quantization_grid_oracles():
    # O22: max-abs weight exactly representable; k=2 ternary; k=8, max|A|=1 -> Δ = 1/127
    assert quant_step(1.0, 8) == 1 / 127
    a = np.array([-0.9, -0.2, 0.0, 0.1, 0.49, 0.9])
    d = quant_step(0.9, 2)
    q = quantize(a, d, 2)
    assert set(np.unique(q)) <= {-d, 0.0, d}
    assert q[0] == -0.9 and q[-1] == 0.9
    rng = np.random.default_rng(7)
    A = rng.normal(size=200)
    for k in range(2, 9):
        dk = quant_step(np.abs(A).max(), k)
        err = quantize(A, dk, k) - A
        assert np.abs(err).max() <= dk / 2 + 1e-15
        assert abs(err[np.argmax(np.abs(A))]) == 0.0


def test_fixed_quantization_programs_qW_and_reference_stays_unquantized():
    rng = np.random.default_rng(8)
    net = small_cnn(rng)
    m = map_network(net, CrossbarConfig(bits=(3, None), design="column"))
    L0, L1 = m.layers
    grid = L0.delta * np.arange(-3, 4)
    assert np.all(np.isin(np.round(L0.W / L0.delta), np.arange(-3, 4)))
    assert np.all(np.isin(L0.W, grid))
    np.testing.assert_array_equal(L1.W, L1.W_ref)
    # column w^u computed on the quantized weights
    np.testing.assert_allclose(L0.w_u, np.maximum(np.abs(L0.W).max(0), np.abs(L0.b)))
    x = rng.normal(size=(2, 2, 4, 4))
    assert not np.allclose(m.programmed_forward(x), m.reference(x))
    np.testing.assert_allclose(m.reference(x), net.forward(x), rtol=0, atol=0)
    md = map_network(net, CrossbarConfig(bits=3, quant_mode="dither"))
    blk = md.layers[0].block()
    np.testing.assert_allclose(blk.v, md.layers[0].delta**2 / 12, rtol=1e-14)  # σ = 0: Δ²/12 only
    np.testing.assert_array_equal(md.layers[0].W, md.layers[0].W_ref)


def test_layer_without_bias_has_no_bias_row():
    rng = np.random.default_rng(9)
    net = small_cnn(rng, bias=False)
    m = map_network(net, CrossbarConfig(sigma=0.1))
    L0 = m.layers[0]
    assert not L0.has_bias_row
    blk = L0.block()
    assert blk.gbp is None and blk.vb is None
