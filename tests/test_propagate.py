"""The fast analytic pass (refmem.propagate) against today's frozen pass (issue 15, point 5).

``oracles.legacy_propagate`` is the round-1 implementation copied verbatim into the tests (it
is not imported from refmem). The fast pass — block-diagonal covariances after a
deterministic input, released inputs, im2col + GEMM double convolutions on the upper
triangle, the fused ReLU → pooling step — must give the same output mean, variance,
covariance, MSE and power to rtol 1e-10 with an absolute floor of 1e-14 × the quantity's
scale. Also: the fused step equals its composition, the two layouts agree, Taylor's negative
variances are zeroed with one warning, and the per-layer progress bar counts layers.
"""

import importlib.util
import pathlib
import warnings

import numpy as np
import pytest

import oracles as O
from refmem import (AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU,
                    load_model, map_network)
from refmem.errors import ConfigError, DataError
from refmem.moments import (BlockDiag, TaylorNotPSDWarning, pool_moments, relu_layer_moments,
                            relu_pool_moments)
from refmem.propagate import propagate

ROOT = pathlib.Path(__file__).resolve().parents[1]
RTOL, FLOOR = 1e-10, 1e-14
KEYS = ("mean", "var", "mse", "power", "power_layers", "power_mem", "power_tia_pos",
        "power_tia_neg")


def same(new, old, keys=KEYS, what=""):
    for k in keys:
        a, b = np.asarray(getattr(new, k)), np.asarray(getattr(old, k))
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=FLOOR * scale, err_msg=f"{what} {k}")


def small_cnn(rng, c_in=2, side=8):
    return Network([
        Conv2d(rng.normal(size=(4, c_in, 3, 3)) * 0.5, rng.normal(size=4) * 0.1, 1, 1), ReLU(),
        Conv2d(rng.normal(size=(5, 4, 3, 3)) * 0.3, rng.normal(size=5) * 0.1, 1, 1), ReLU(),
        AvgPool2d(2),
        Conv2d(rng.normal(size=(3, 5, 3, 3)) * 0.3, None, 2, 0), ReLU(), Flatten(),
        Dense(rng.normal(size=(4, 3)) * 0.5, rng.normal(size=4)), ReLU(),
        Dense(rng.normal(size=(2, 4)), None)], (c_in, side, side))


@pytest.mark.parametrize("mapping", ["UR", "UL"])
@pytest.mark.parametrize("mode", ["exact", "taylor"])
@pytest.mark.parametrize("inputs", ["det", "cov"])
def test_fast_pass_equals_legacy_on_test_nets(mapping, mode, inputs):
    rng = np.random.default_rng(11)
    net = small_cnn(rng)
    x = rng.uniform(0, 1, size=(2, 2, 8, 8))
    C = None
    if inputs == "cov":
        A = rng.normal(size=(128, 20)) * 0.05
        C = A @ A.T
    cfg = CrossbarConfig(sigma=0.05, g_min=0.05, mapping=mapping, relu_cov=mode,
                         design="column", alpha=0.1, bits=4, quant_mode="dither")
    mapped = map_network(net, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaylorNotPSDWarning)
        new = propagate(mapped, x, input_cov=C, cov=True)
    old = O.legacy_propagate(mapped, x, input_cov=C, cov=True)
    same(new, old, KEYS + ("cov",), f"{mapping} {mode} {inputs}")
    dense = propagate(mapped, x, input_cov=C, cov=True, layout="dense", fuse_relu_pool=False)
    same(dense, old, KEYS + ("cov",), "dense layout")


def test_fast_pass_equals_legacy_mlp_and_per_layer():
    net = load_model(ROOT / "data" / "models" / "mnist5k_mlp_784-50-50-10.h5")
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=(2,) + tuple(net.input_shape))
    mapped = map_network(net, CrossbarConfig(sigma=0.02, g_min=0.01))
    new = propagate(mapped, x, per_layer=True)
    old = O.legacy_propagate(mapped, x, per_layer=True)
    same(new, old)
    for pos in old.per_layer:
        for k in ("mean", "var"):
            np.testing.assert_allclose(new.per_layer[pos][k], old.per_layer[pos][k],
                                       rtol=RTOL, atol=FLOOR * np.abs(old.per_layer[pos][k]).max())


@pytest.mark.parametrize("mode", ["exact", "taylor"])
@pytest.mark.parametrize("kind", ["dense", "blocks", "diag"])
def test_relu_pool_fused_equals_composition(mode, kind):
    rng = np.random.default_rng(4)
    C, H, W = 3, 4, 6
    L = C * H * W
    mu = rng.normal(size=L)
    if kind == "dense":
        A = rng.normal(size=(L, L))
        G = A @ A.T / L
        mk = G.copy
    elif kind == "blocks":
        bl = np.stack([(lambda A: A @ A.T / 24)(rng.normal(size=(24, 24))) for _ in range(C)])
        mk = lambda: BlockDiag(bl.copy())                       # noqa: E731
    else:
        d = rng.uniform(0.1, 1, size=L)
        mk = lambda: BlockDiag.from_variances(d, C)             # noqa: E731
    m1, g1, _ = relu_layer_moments(mu, [mk()], mode)
    want_m, want_g = pool_moments(m1, g1, (C, H, W), 2)
    got_m, got_g, _ = relu_pool_moments(mu, [mk()], (C, H, W), 2, mode)
    dense = lambda g: g.to_dense() if isinstance(g, BlockDiag) else g   # noqa: E731
    np.testing.assert_allclose(got_m, want_m, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(dense(got_g), dense(want_g), rtol=1e-13, atol=1e-15)
    # and the block layout equals the dense one (ReLU keeps zero cross-block covariance)
    g_dense = dense(mk())
    m2, g2, _ = relu_pool_moments(mu, [g_dense], (C, H, W), 2, mode)
    np.testing.assert_allclose(dense(got_g), g2, rtol=1e-12, atol=1e-15)


def _d15_net():
    """ReLU → Dense(1, −1) → ReLU on the D15 example (μ = (.5, .5), ρ = .999)."""
    net = Network([ReLU(), Dense(np.array([[1.0, -1.0]]), None), ReLU(),
                   Dense(np.array([[1.0]]), None)], (2,))
    x = np.array([[0.5, 0.5]])
    C = np.array([[1.0, 0.999], [0.999, 1.0]])
    return net, x, C


def test_taylor_negative_variance_zeroed_with_one_warning():
    net, x, C = _d15_net()
    mapped = map_network(net, CrossbarConfig(sigma=0.0, relu_cov="taylor"))
    with pytest.warns(TaylorNotPSDWarning) as rec:
        res = propagate(mapped, np.vstack([x, x]), input_cov=C)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "2 negative variance(s)" in msg and "1 ReLU layer(s)" in msg
    # the D15 value: w = (1, −1) on Prop.-4 diagonal + Taylor off-diagonal
    from refmem.relu import relu_mean_var
    _, v = relu_mean_var(0.5, 1.0)
    assert f"{2 * v - 2 * 0.999:.3g}" in msg
    # after clipping the second ReLU sees variance 0: a deterministic rectification
    assert np.all(res.var == 0.0)
    # the legacy pass stopped here
    with pytest.raises(DataError):
        O.legacy_propagate(mapped, x, input_cov=C)
    # exact mode: PSD, no warning
    mapped_e = map_network(net, CrossbarConfig(sigma=0.0, relu_cov="exact"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        propagate(mapped_e, x, input_cov=C)


def test_progress_counts_layers(capsys):
    rng = np.random.default_rng(2)
    net = small_cnn(rng)
    mapped = map_network(net, CrossbarConfig(sigma=0.05))
    propagate(mapped, rng.uniform(size=(2, 2, 8, 8)), progress=True)
    err = capsys.readouterr().err
    n = 2 * len(mapped.fused.layers)
    assert f"{n}/{n}" in err and "layer" in err


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_analytic",
                                                  ROOT / "scripts" / "bench_analytic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
@pytest.mark.parametrize("name", ["w8", "w1"])
@pytest.mark.parametrize("mapping", ["UR", "UL"])
def test_fast_pass_equals_legacy_on_shipped_cnns(name, mapping):
    net = load_model(ROOT / "data" / "models" / f"fashion-mnist_cnn13_{name}.h5")
    x = np.random.default_rng(0).uniform(0, 1, size=(1,) + tuple(net.input_shape))
    mapped = map_network(net, CrossbarConfig(sigma=0.01, g_min=0.0, mapping=mapping))
    same(propagate(mapped, x), O.legacy_propagate(mapped, x), what=f"{name} {mapping}")


@pytest.mark.slow
def test_fast_pass_equals_legacy_on_he_cnn13_full_width():
    bench = _bench_module()
    net = bench.he_cnn13()
    x = bench.bench_input(net, 1)
    mapped = map_network(net, CrossbarConfig(sigma=0.01, g_min=0.0, mapping="UR"))
    same(propagate(mapped, x), O.legacy_propagate(mapped, x), what="he cnn13 UR")


class _SerialExecutor:
    """The executor protocol (``.map``, ``.workers``) run in this process."""
    workers = 3

    def map(self, fn, items):
        return [fn(it) for it in items]


@pytest.mark.parametrize("per_input_cov", [False, True])
def test_executor_split_equals_serial(per_input_cov):
    rng = np.random.default_rng(8)
    net = small_cnn(rng)
    x = rng.uniform(0, 1, size=(5, 2, 8, 8))
    C = None
    if per_input_cov:
        A = rng.normal(size=(5, 128, 6)) * 0.05
        C = np.einsum("bij,bkj->bik", A, A)
    mapped = map_network(net, CrossbarConfig(sigma=0.05, mapping="UR"))
    serial = propagate(mapped, x, input_cov=C, cov=True, per_layer=True)
    split = propagate(mapped, x, input_cov=C, cov=True, per_layer=True,
                      executor=_SerialExecutor())
    # equal up to rounding (a worker runs BLAS on one thread, which sums in another order)
    same(split, serial, KEYS + ("cov",), "executor")
    for pos in serial.per_layer:
        np.testing.assert_allclose(split.per_layer[pos]["var"], serial.per_layer[pos]["var"],
                                   rtol=1e-12, atol=1e-300)


def test_a_workspace_kept_across_calls_changes_no_number():
    """propagate(work=W) twice: bit-identical to a call with its own workspace, and the second
    call maps no new memory (every large buffer reused)."""
    from refmem.moments.workspace import Workspace
    rng = np.random.default_rng(12)
    net = small_cnn(rng)
    x = rng.uniform(0, 1, size=(2, 2, 8, 8))
    mapped = map_network(net, CrossbarConfig(sigma=0.05, g_min=0.05, mapping="UR"))
    ref = propagate(mapped, x, cov=True)
    w = Workspace(min_bytes=8 * 1024)
    for _ in range(2):
        got = propagate(mapped, x, cov=True, work=w)
        for k in ("mean", "var", "mse", "power", "cov"):
            np.testing.assert_array_equal(getattr(got, k), getattr(ref, k))
        if _ == 0:
            mapped_bytes = w.allocated
    assert mapped_bytes > 0 and w.allocated == mapped_bytes
    with pytest.raises(ConfigError):
        propagate(mapped, x, work="big")
