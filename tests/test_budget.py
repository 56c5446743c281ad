"""refmem budget: the per-layer error budget against independent runs of the analytic pass and
against Monte-Carlo; the CLI's file, figure, table and errors."""

from __future__ import annotations

import numpy as np
import pytest

from refmem import CrossbarConfig, Dense, Network, ReLU, map_network, save_model
from refmem.budget import error_budget
from refmem.cli import main
from refmem.errors import ConfigError
from refmem.io import file_kind, read_result
from refmem.moments import propagate


def _net(rng, relu=True):
    layers = [Dense(rng.normal(size=(5, 4)) / 2, rng.normal(size=5))]
    if relu:
        layers.append(ReLU())
    layers += [Dense(rng.normal(size=(4, 5)) / 2, rng.normal(size=4)), ReLU(),
               Dense(rng.normal(size=(2, 4)) / 2, rng.normal(size=2))]
    return Network(layers, (4,))


def test_budget_equals_independent_runs():
    rng = np.random.default_rng(3)
    net = _net(rng)
    x = rng.uniform(0, 1, size=(6, 4))
    cfg = CrossbarConfig(sigma=0.05, alpha=0.02, design="layer", g_u=2.0)
    b = error_budget(net, cfg, x)
    n = 3
    assert list(b.crossbar_index) == [0, 1, 2] and b.layer_types == ["dense"] * 3
    assert b.layer_names[1] == "02 dense"
    for i in range(n):
        alone = propagate(map_network(net, cfg.with_(noisy_layers=(i,))), x)
        rest = propagate(map_network(net, cfg.with_(noisy_layers=tuple(j for j in range(n)
                                                                        if j != i))), x)
        assert b.mse_alone[i] == pytest.approx(alone.mse.mean(), rel=1e-12)
        assert b.mse_all_but[i] == pytest.approx(rest.mse.mean(), rel=1e-12)
    full = propagate(map_network(net, cfg), x)
    assert b.mse_all == pytest.approx(full.mse.mean(), rel=1e-12)
    np.testing.assert_allclose(b.power_layer, full.power_layers.mean(axis=0), rtol=1e-12)
    # every layer's noise adds error: alone < all, all but < all
    assert np.all(b.mse_alone < b.mse_all) and np.all(b.mse_all_but < b.mse_all)


def test_single_layer_budget_and_linear_additivity():
    rng = np.random.default_rng(4)
    one = Network([Dense(rng.normal(size=(3, 4)), rng.normal(size=3))], (4,))
    x = rng.uniform(0, 1, size=(5, 4))
    b = error_budget(one, CrossbarConfig(sigma=0.1), x)
    assert b.mse_all_but[0] < 1e-25 and b.mse_alone[0] == b.mse_all > 0
    # a linear two-layer network with digital biases: the second layer's device noise sees the
    # first layer's noise only through E[h²]; the interaction term is σ₂²·Σ Var(h) per pair
    lin = _net(rng, relu=False)
    lin = Network([lin.layers[0], lin.layers[1]], (4,))
    cfg = CrossbarConfig(sigma=0.1, bias_on_crossbar=False)
    b = error_budget(lin, cfg, x)
    inter = b.mse_all - b.mse_alone.sum()
    var_h = propagate(map_network(Network([lin.layers[0]], (4,)), cfg), x).var   # (B, 5)
    v2 = map_network(lin, cfg).layers[1].block().v                             # (5, 4) per weight
    expected = float(np.mean(var_h @ v2))       # Σ_i Var(h_i) v_ij, mean over inputs, outputs
    assert inter == pytest.approx(expected, rel=1e-10)
    assert b.mse_all_but[0] == pytest.approx(b.mse_alone[1], rel=1e-12)


def test_budget_monte_carlo_agrees():
    rng = np.random.default_rng(5)
    net = _net(rng, relu=False)
    net = Network([net.layers[0], net.layers[1]], (4,))
    x = rng.uniform(0, 1, size=(3, 4))
    b = error_budget(net, CrossbarConfig(sigma=0.1), x, mc_n=3000, seed=7)
    for k in ("mse_alone", "mse_all_but"):
        z = (b.mc[k] - getattr(b, k)) / b.mc[k + "_se"]
        assert np.all(np.abs(z) < 4.5), (k, z)
    assert abs(b.mc["mse_all"] - b.mse_all) < 4.5 * b.mc["mse_all_se"]


def test_budget_rejects_conflicting_options():
    rng = np.random.default_rng(6)
    net = _net(rng)
    x = rng.uniform(size=(2, 4))
    with pytest.raises(ConfigError, match="noisy layers"):
        error_budget(net, CrossbarConfig(sigma=0.1, noisy_layers=(0,)), x)
    with pytest.raises(ConfigError, match="both"):
        error_budget(net, CrossbarConfig(sigma=0.1), x, mc_n=10)


def test_budget_cli(tmp_path, capsys):
    rng = np.random.default_rng(7)
    net = _net(rng)
    save_model(net, tmp_path / "m.h5")
    np.save(tmp_path / "x.npy", rng.uniform(size=(4, 4)))
    argv = ["budget", str(tmp_path / "m.h5"), "--input", str(tmp_path / "x.npy"), "--sigma",
            "0.05", "--mc", "64", "--seed", "1", "--workers", "1", "-o", str(tmp_path / "b.h5")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = [l for l in out.splitlines() if l.split() and l.split()[0] in ("0", "1", "2", "all")]
    assert len(rows) == 4 and all("±" in r for r in rows)
    r = read_result(tmp_path / "b.h5")
    assert r.kind == "budget"
    assert r["mse_alone"].shape == (1, 3) and r["mse_all"].shape == (1,)
    assert r["mc/mse_alone_se"].shape == (1, 3)
    assert r.meta["mse_alone"]["units"] == "y^2"
    assert r.attrs["fused_layers"][1]["crossbar_index"] is None
    assert file_kind(tmp_path / "b.png") == "budget-figure"
    assert main(argv) == 0                      # same kind: replaced
    capsys.readouterr()
    bad = argv[:-2] + ["--noisy-layers", "0", "-o", str(tmp_path / "c.h5")]
    assert main(bad) == 2 and "noisy layers" in capsys.readouterr().err
    bad = ["budget", str(tmp_path / "m.h5"), "--input", str(tmp_path / "x.npy"), "--mc", "5",
           "-o", str(tmp_path / "d.h5")]
    assert main(bad) == 2 and "--seed" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.h5", "b.png", "m.h5", "x.npy"]


def test_budget_parallel_equals_serial():
    from refmem.executor import Executor
    rng = np.random.default_rng(8)
    net = _net(rng)
    x = rng.uniform(size=(3, 4))
    cfg = CrossbarConfig(sigma=0.05)
    serial = error_budget(net, cfg, x, mc_n=16, seed=3)
    with Executor(workers=2) as ex:
        par = error_budget(net, cfg, x, mc_n=16, seed=3, map_fn=ex.map)
    for k in ("mse_alone", "mse_all_but", "power_layer"):
        np.testing.assert_array_equal(getattr(serial, k), getattr(par, k))
    for k, v in serial.mc.items():
        np.testing.assert_array_equal(v, par.mc[k])
