"""The result schema end to end: sweeps (σ, α, g_u), targets, relative MSE, one crossbar
numbering, printed summaries with units and ± SE."""

from __future__ import annotations

import itertools
import json

import h5py
import numpy as np
import pytest

from refmem import (BatchNorm, CrossbarConfig, Dense, Dropout, Network, ReLU, map_network,
                    save_model)
from refmem.cli import main
from refmem.io import read_result
from refmem.moments import propagate
from refmem.montecarlo import monte_carlo
from refmem.results import Sweep, crossbar_index_of_layers, layer_table


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(5)
    net = Network([Dense(rng.normal(size=(6, 4)) / 2, rng.normal(size=6)), ReLU(),
                   Dense(rng.normal(size=(3, 6)) / 2, rng.normal(size=3))], (4,))
    save_model(net, tmp_path / "mlp.h5")
    x = rng.uniform(0, 1, size=(5, 4))
    np.save(tmp_path / "x.npy", x)
    t = net.forward(x) + rng.normal(size=(5, 3))
    np.save(tmp_path / "t.npy", t)
    np.save(tmp_path / "y.npy", np.array([0, 1, 2, 0, 1]))
    return tmp_path, net, x, t


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------- numbering
def test_layer_table_one_numbering():
    rng = np.random.default_rng(0)
    n = 3
    bn = BatchNorm(np.ones(n), np.zeros(n), np.zeros(n), np.ones(n))
    net = Network([Dense(rng.normal(size=(n, 2)), None), bn, ReLU(), Dropout(0.5),
                   Dense(rng.normal(size=(2, n)), None)], (2,))
    t = layer_table(net)
    assert [r["type"] for r in t] == ["dense", "relu", "dense"]
    assert [r["crossbar_index"] for r in t] == [0, None, 1]
    assert [r["source_layers"] for r in t] == [[0, 1], [2, 3], [4]]
    assert t[0]["source_names"] == ["00 dense", "01 batchnorm"]
    assert crossbar_index_of_layers(net) == [0, 0, None, None, 1]
    # the fused network the rest of refmem uses has the same crossbar layers
    fused = net.fused()
    assert fused.crossbar_positions() == [r["fused_index"] for r in t
                                          if r["crossbar_index"] is not None]


def test_info_shows_the_index_noisy_layers_uses(files, capsys):
    d, net, x, _ = files
    code, out, _ = run(["info", d / "mlp.h5"], capsys)
    assert code == 0
    rows = [l.split() for l in out.splitlines() if l.split() and l.split()[0].isdigit()]
    xb = {r[2]: r[1] for r in rows if r[1].isdigit()}
    assert rows[2][:3] == ["2", "1", "dense"]          # model layer 2 is crossbar layer 1
    code, out, _ = run(["info", d / "mlp.h5", "--json"], capsys)
    assert [l["crossbar_index"] for l in json.loads(out)["layers"]] == [0, None, 1]
    # --noisy-layers 1 (as shown by info) = noise in model layer 2 only
    code, _, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "--sigma", "0.1",
                        "--noisy-layers", xb["dense"] if False else "1", "-q",
                        "-o", d / "a.h5"], capsys)
    assert code == 0, err
    res = propagate(map_network(net, CrossbarConfig(sigma=0.1, noisy_layers=(1,))), x)
    np.testing.assert_allclose(read_result(d / "a.h5")["mse"][0], res.mse, rtol=1e-12)


# ---------------------------------------------------------------------- sweeps
def test_moments_sweep_is_the_product_of_sigma_alpha_gu(files, capsys):
    d, net, x, _ = files
    code, _, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "--sigma", "0,0.1",
                        "--alpha", "0,0.2", "--gu-sweep", "1,2,3", "-q", "-o", d / "s.h5"],
                       capsys)
    assert code == 0, err
    r = read_result(d / "s.h5")
    P = 2 * 2 * 3
    assert r["mse"].shape == (P, 5, 3) and r["mse_batch"].shape == (P,)
    assert r.attrs["sweep_order"] == ["g_u", "alpha", "sigma"]
    assert r.attrs["sweep_shape"] == [3, 2, 2]
    assert r.attrs["swept"] == ["g_u", "alpha", "sigma"]
    pts = list(itertools.product([1, 2, 3], [0, 0.2], [0, 0.1]))
    np.testing.assert_array_equal(r["axes/g_u"], [p[0] for p in pts])
    np.testing.assert_array_equal(r["axes/alpha"], [p[1] for p in pts])
    np.testing.assert_array_equal(r["axes/sigma"], [p[2] for p in pts])
    assert len(r.attrs["configs"]) == P
    for i, (g, a, s) in enumerate(pts):       # each point equals a single run (oracle: propagate)
        res = propagate(map_network(net, CrossbarConfig(sigma=s, alpha=a, g_u=g)), x)
        np.testing.assert_allclose(r["mse"][i], res.mse, rtol=1e-12, atol=0)
        np.testing.assert_allclose(r["mse_batch"][i], res.mse.mean(), rtol=1e-12)
        assert r.attrs["configs"][i]["g_u"] == g
    # the file is the sweep reshaped: P = (g_u, alpha, sigma)
    grid = r["mse_batch"].reshape(r.attrs["sweep_shape"])
    assert np.all(np.diff(grid, axis=2) >= 0)          # more σ, more MSE
    assert grid[0, 0, 0] < 1e-20                       # no noise: rounding only


def test_sweep_option_conflicts(files, capsys):
    d, *_ = files
    (d / "t.csv").write_text("g,sigma\n0,0.1\n10,0.2\n")
    for extra, msg in ((["--gu-sweep", "1,2", "--gu", "1"], "--gu-sweep excludes"),
                       (["--gu-sweep", "1,2", "--lam", "1"], "--gu-sweep excludes"),
                       (["--sigma", "0.3", "--sigma-table", d / "t.csv"], "exclude each other"),
                       (["--alpha", "x"], "--alpha must be a number")):
        code, _, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "-o", d / "o.h5",
                            *extra], capsys)
        assert code == 2 and msg in err and err.count("\n") == 1, err
    assert not (d / "o.h5").exists()
    # the table alone: recorded, and no σ axis that the run did not use
    code, _, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "-q",
                        "--sigma-table", d / "t.csv", "-o", d / "o.h5"], capsys)
    assert code == 0, err
    r = read_result(d / "o.h5")
    assert "axes/sigma" not in r and r.attrs["config"]["sigma_table"] == [[0, 10], [0.1, 0.2]]
    assert r.attrs["sigma_table"] == str(d / "t.csv") and r.attrs["sigma_table_sha256"]


# ---------------------------------------------------------------------- targets, mse_rel
def test_targets_and_relative_mse(files, capsys):
    d, net, x, t = files
    code, _, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "--targets",
                        d / "t.npy", "--sigma", "0.2", "-q", "-o", d / "a.h5"], capsys)
    assert code == 0, err
    r = read_result(d / "a.h5")
    res = propagate(map_network(net, CrossbarConfig(sigma=0.2)), x)
    e = res.mean - t
    np.testing.assert_allclose(r["mse_targets"][0], res.var + e * e, rtol=1e-12)
    np.testing.assert_allclose(r["mse_targets_per_input"][0], (res.var + e * e).mean(1))
    np.testing.assert_allclose(r["mse_targets_batch_max"][0], (res.var + e * e).mean(1).max())
    ref2 = (net.forward(x) ** 2).mean(1)
    np.testing.assert_allclose(r["mse_rel"][0], res.mse.mean(1) / ref2, rtol=1e-12)
    assert r.meta["mse_rel"]["units"] == "1"
    code, _, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "--targets",
                        d / "y.npy", "-o", d / "b.h5"], capsys)
    assert code == 2 and "targets have shape (5,), expected (5, 3)" in err


def test_mc_targets_agree_with_the_analytic_value(files):
    d, net, x, t = files
    cfg = CrossbarConfig(sigma=0.3)
    mapped = map_network(net, cfg)
    an = propagate(mapped, x)
    an.targets = t
    mc = monte_carlo(mapped, x, 4000, seed=11)
    mc.targets = t
    z = (mc.mse_targets - an.mse_targets) / mc.mse_targets_se
    assert np.max(np.abs(z)) < 4.5                     # an upper-bound SE: |z| is smaller still
    assert np.all(mc.mse_targets_se >= 0)
    # the sample identity: mean over realizations of (y − t)² = biased var + (mean − t)²
    np.testing.assert_allclose(mc.mse_targets - mc.mse,
                               (mc.mean - t) ** 2 - (mc.mean - mc.reference) ** 2, rtol=1e-9,
                               atol=1e-12)


def test_warning_when_noise_exceeds_signal(files, capsys):
    d, *_ = files
    code, out, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "--sigma",
                          "0.001,30", "-o", d / "w.h5"], capsys)
    assert code == 0
    warn = [l for l in err.splitlines() if l.startswith("refmem: warning: relative MSE")]
    assert len(warn) == 1 and "σ=30 g" in warn[0]
    body = [l for l in out.splitlines() if l.startswith("σ=")]
    assert len(body) == 2 and all(" y²" in l and "g·x²" in l and "relative MSE" in l
                                  for l in body)
    assert out.splitlines()[0].startswith("units:")


def test_mc_summary_has_standard_errors(files, capsys):
    d, *_ = files
    code, out, err = run(["mc", d / "mlp.h5", "--input", d / "x.npy", "--labels", d / "y.npy",
                          "--sigma", "0.05", "-n", "64", "--seed", "2", "-o", d / "m.h5"],
                         capsys)
    assert code == 0, err
    line = [l for l in out.splitlines() if l.startswith("σ=")][0]
    assert line.count("±") >= 4 and "accuracy" in line


def test_moments_labels_predicted_accuracy(files, capsys):
    pytest.importorskip("refmem.accuracy")
    d, net, x, _ = files
    code, out, err = run(["moments", d / "mlp.h5", "--input", d / "x.npy", "--labels",
                          d / "y.npy", "--sigma", "0,0.1", "-q", "-o", d / "acc.h5"], capsys)
    assert code == 0, err
    r = read_result(d / "acc.h5")
    assert r["accuracy"].shape == (2, 5) and r["accuracy_mean"].shape == (2,)
    y = np.load(d / "y.npy")
    np.testing.assert_allclose(r["accuracy"][0], np.argmax(net.forward(x), 1) == y, atol=1e-6)
    assert "cov" not in r                                 # computed for the accuracy, not stored


def test_sweep_object_matches_the_file(files):
    d, net, x, _ = files
    pts = [propagate(map_network(net, CrossbarConfig(sigma=s)), x) for s in (0.0, 0.1)]
    sw = Sweep(pts, {"sigma": np.array([0.0, 0.1])})
    assert sw.mean.shape == (2, 5, 3) and sw.mse_batch.shape == (2,)
    assert sw.reference.shape == (5, 3)
    ds = sw.datasets()
    for name in ("mse_batch", "mse_per_input", "power_layers"):
        np.testing.assert_array_equal(ds[name], getattr(sw, name))
    np.testing.assert_array_equal(ds["axes/sigma"], [0.0, 0.1])


def test_demo_like_groups_carry_units(tmp_path):
    from refmem.io import write_result
    write_result(tmp_path / "g.h5", "demo", {"axes/sigma": np.ones(2)},
                 groups={"analytic": {"mse_batch": np.ones(2)},
                         "montecarlo": {"mse_batch": np.ones(2), "mse_batch_se": np.ones(2)}})
    with h5py.File(tmp_path / "g.h5") as f:
        assert f["montecarlo/mse_batch_se"].attrs["units"] == "y^2"


def test_mc_exact_per_input_se_is_used_when_present(files):
    """monte_carlo keeps a per-input accumulator: its SE is an estimate; without it, a bound."""
    d, net, x, _ = files
    mc = monte_carlo(map_network(net, CrossbarConfig(sigma=0.1)), x, 64, seed=1)
    exact = np.asarray(mc.extra["mse_per_input_se"]).copy()
    np.testing.assert_array_equal(mc.mse_per_input_se, exact)
    assert "mse_per_input_se" not in mc.bound_se_names()
    assert not isinstance(Sweep([mc], {"sigma": np.array([0.1])}).datasets()["mse_per_input_se"],
                          tuple)
    del mc.extra["mse_per_input_se"]                   # a result without the accumulator
    bound = mc.mse_se.mean(axis=-1)                    # Minkowski: SE of a mean <= mean of SEs
    np.testing.assert_array_equal(mc.mse_per_input_se, bound)
    assert np.all(bound >= exact * (1 - 1e-12))
    assert "mse_per_input_se" in mc.bound_se_names()
    assert "upper bound" in Sweep([mc], {"sigma": np.array([0.1])}).datasets()[
        "mse_per_input_se"][1]["description"]


def test_one_plotting_script_reads_moments_and_mc_files(files, capsys):
    """scripts/plot_results.py draws a moments and an mc sweep with the same code path."""
    import runpy
    from pathlib import Path
    d, *_ = files
    for cmd, extra in (("moments", []), ("mc", ["-n", "16", "--seed", "0"])):
        assert main([cmd, str(d / "mlp.h5"), "--input", str(d / "x.npy"), "--sigma",
                     "0.01,0.1", "-q", "-o", str(d / f"{cmd}.h5"), *extra]) == 0
    script = Path(__file__).resolve().parents[1] / "scripts" / "plot_results.py"
    mod = runpy.run_path(str(script))
    xs, ys, se, _, units = mod["series"](d / "moments.h5")
    np.testing.assert_array_equal(xs, [0.01, 0.1])
    assert se is None and units == "y^2"
    xs2, ys2, se2, _, _ = mod["series"](d / "mc.h5")
    np.testing.assert_array_equal(xs2, xs)
    assert se2.shape == (2,) and np.all(se2 > 0)
    assert mod["main"]([str(d / "moments.h5"), str(d / "mc.h5"), "-o", str(d / "p.png")]) == 0
    from refmem.io import file_kind
    assert file_kind(d / "p.png") == "plot"
    capsys.readouterr()
    assert mod["main"]([str(d / "moments.h5"), "--y", "accuracy_mean", "-o",
                        str(d / "q.png")]) == 2
    assert "no dataset 'accuracy_mean'" in capsys.readouterr().err
    assert not (d / "q.png").exists()
