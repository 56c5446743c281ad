"""scripts/reproduce_seed000.py: its cells against independent paths, and its --quick outputs.

- the paper-protocol Monte-Carlo (perturbed weights, forward pass) agrees with the package's
  device-level simulator ``refmem.monte_carlo`` in the α model (same law, theory §13);
- at α = 0 every repeat is the clean network and the prediction is exact (zero covariance);
- the exactly quantized cell equals the quantizer applied by hand (theory §14 grid);
- the log–log fit recovers a known power law;
- ``--quick`` writes the result set, summary and figures (slow: about a minute).
"""

import importlib.util
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from refmem import CrossbarConfig, load_model, map_network, monte_carlo
from refmem.quantize import quant_step, quantize

ROOT = Path(__file__).resolve().parents[1]
MODEL = str(ROOT / "data" / "models" / "mnist5k_mlp_784-50-10.h5")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("reproduce_seed000",
                                                  ROOT / "scripts" / "reproduce_seed000.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_seed000"] = mod       # the worker processes unpickle its functions
    spec.loader.exec_module(mod)
    return mod


def params(**kw):
    p = dict(dataset="mnist5k", model=MODEL, layers=(0,), alpha=0.0, repeats=3, n_analytic=20,
             n_points=256)
    p.update(kw)
    return p


def test_alpha_zero_is_the_clean_network_and_the_prediction_is_exact(script):
    net = load_model(MODEL)
    x, y = script.test_split("mnist5k")
    clean_hit = np.argmax(net.forward(x), 1) == y
    r = script.noise_cell(params(alpha=0.0), np.random.SeedSequence(0))
    assert np.all(r["acc"] == clean_hit.mean()) and np.all(r["mse"] == 0)
    sub = script.stratified_subset(y, 20)
    assert np.array_equal(np.bincount(y[sub]), np.full(10, 2))
    assert np.array_equal(r["pred"], clean_hit[sub].astype(float)) and r["pred_bound"] == 0


def test_paper_protocol_mc_agrees_with_the_device_level_simulator(script):
    # same law (theory §13: α noise = crossbar with σ(g) = α g, g_min = 0); compare the
    # accuracy on 200 images: ours from 60 repeats, the package's from 128 realizations
    alpha, layers = 1.0, (0, 1)
    net = load_model(MODEL)
    x, y = script.test_split("mnist5k")
    x, y = x[:200], y[:200]
    rng = np.random.default_rng(3)
    acc = np.array([np.mean(np.argmax(script.perturbed(net, layers, alpha, rng).forward(x), 1) == y)
                    for _ in range(60)])
    mc = monte_carlo(map_network(net, CrossbarConfig(alpha=alpha)), x, 128, 4, labels=y)
    se = np.hypot(acc.std(ddof=1) / np.sqrt(acc.size), mc.accuracy_se)
    assert abs(acc.mean() - mc.accuracy) <= 4 * se
    clean = np.mean(np.argmax(net.forward(x), 1) == y)
    assert acc.mean() < clean - 0.1       # the noise matters at this α


def test_quant_cell_equals_the_quantizer_by_hand(script):
    net = load_model(MODEL)
    x, y = script.test_split("mnist5k")
    r = script.quant_cell(dict(dataset="mnist5k", model=MODEL, layers=(1,), bits=3, n_analytic=0,
                               n_points=256), np.random.SeedSequence(0))
    L0, L1 = net.layers[0], net.layers[2]
    A = np.vstack([L1.weight.T, L1.bias[None, :]])
    d = quant_step(np.abs(A).max(), 3)
    h = np.maximum(x @ L0.weight.T + L0.bias, 0)
    out = h @ quantize(L1.weight, d, 3).T + quantize(L1.bias, d, 3)
    assert r["acc_fixed"] == np.mean(np.argmax(out, 1) == y)
    np.testing.assert_allclose(r["mse_fixed"], ((out - net.forward(x)) ** 2).mean(), rtol=1e-10)


def test_loglog_fit_and_alpha_at(script):
    alphas = np.geomspace(0.01, 10, 16)
    acc = np.clip(0.5 * alphas ** -0.7, 0.0, 0.95)
    fit = script.loglog_fit(alphas, acc, 0.95)
    assert abs(fit["slope"] + 0.7) < 1e-12 and abs(fit["r2"] - 1) < 1e-12
    assert fit["range"][0] > 0.01 and fit["range"][1] <= 10
    a = script.alpha_at(alphas, acc, 0.3)
    assert abs(a - (0.3 / 0.5) ** (-1 / 0.7)) / a < 0.05
    assert script.alpha_at(alphas, np.ones(16), 0.5) == float("inf")
    loss = 0.02 * alphas ** 1.3
    e = script.excess_error_fit(alphas, 0.95 - loss, np.full(16, 1e-4), 0.95)
    assert abs(e["slope"] - 1.3) < 1e-12 and e["n"] >= 3


@pytest.mark.slow
def test_quick_run_outputs(script, tmp_path):
    assert script.main(["--quick", "--out", str(tmp_path), "--no-progress", "--workers", "2"]) == 0
    with h5py.File(tmp_path / "seed000.h5") as f:
        g = f["noise/mnist5k/784-50-10/first"]
        assert g["axes/alpha"].shape == (5,)
        assert g["mc/accuracy_repeats"].shape == (5, 10)
        assert g["analytic/accuracy"].shape == (5, 20)
        assert np.all(np.diff(g["mc/accuracy_mean"][()]) <= 0.02)     # falls with α
        assert set(f["noise/mnist5k"]) == {"784-50-10", "784-100-10", "784-50-50-10",
                                           "784-100-100-10"}
        assert set(f["noise/mnist5k/784-50-50-10"]) == {"first", "second", "third", "all"}
        q = f["quant/mnist5k/784-100-10/all"]
        assert list(q["axes/bits"][()]) == [2, 3, 4, 8]
        assert "aware" in f
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["noise"]["mnist5k/784-50-10/all"]["acc_mean"][-1] < 0.5
    for name in ("fig2_mnist5k_regular.png", "fig2_mnist5k_loglog.png", "fig3_mnist5k_regular.png",
                 "fig4_quant.png", "fig5_quant.png", "fig_pred_vs_mc.png", "fig_aware.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    # a rerun finds every cell on disk and recomputes nothing
    cells = sorted((tmp_path / "grid" / "cells").iterdir())
    mt = [c.stat().st_mtime_ns for c in cells]
    assert script.main(["--quick", "--out", str(tmp_path), "--no-progress", "--workers", "1"]) == 0
    assert [c.stat().st_mtime_ns for c in cells] == mt
