"""Control-variate validation (refmem.validate, theory §23).

Oracles: (1) the closed-form tangent variance by the adjoint against the forward covariance
recursion (two computational paths) and against the per-draw tangent errors sampled by the
simulator (z-test); (2) the fixed-mask closed form against its sampled control variate;
(3) the control-variate MSE against an *independent* plain Monte-Carlo (different seed,
``refmem.montecarlo.monte_carlo``) by a z-test, at a σ where the analytic closure is off by
several standard errors (asserted, so an estimator that returned the analytic value would
fail); (4) the main draws are those of ``monte_carlo`` (same seed, no mirrors); (5) seeds and
budgets are reproducible; (6) the CLI writes every dataset and refuses bad arguments.
"""

import math

import h5py
import numpy as np
import pytest

from refmem import CrossbarConfig, Dense, Network, ReLU, map_network
from refmem.cli import main
from nets import deep_cnn
from refmem.errors import ConfigError
from refmem.montecarlo import monte_carlo
from refmem.validate import (_simulate, tangent_moments, tangent_variance, validate)

Z = 4.0          # two-sided z threshold (p ≈ 6e-5 per check); seeds are fixed


def mlp(rng):
    return Network([Dense(rng.normal(size=(6, 5)) / 2, rng.normal(size=6) * 0.1), ReLU(),
                    Dense(rng.normal(size=(3, 6)) / 2, rng.normal(size=3) * 0.1)], (5,))


def _setup(kind, mapping="UR", sigma=0.05, seed=0, B=3, **cfg):
    rng = np.random.default_rng(seed)
    if kind == "cnn":
        net = deep_cnn(rng)
        x = rng.uniform(0, 1, size=(B, 1, 6, 6))
    else:
        net = mlp(rng)
        x = rng.normal(size=(B, 5))
    mapped = map_network(net, CrossbarConfig(sigma=sigma, mapping=mapping, g_min=0.05, **cfg))
    return mapped, x


@pytest.mark.parametrize("kind,mapping", [("cnn", "UR"), ("cnn", "UL"), ("mlp", "UR")])
def test_adjoint_equals_forward_recursion(kind, mapping):
    mapped, x = _setup(kind, mapping, alpha=0.1)
    y0, var = tangent_variance(mapped, x)
    y0f, cov = tangent_moments(mapped, x)
    np.testing.assert_allclose(y0, mapped.programmed_forward(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y0f, y0, rtol=1e-12, atol=1e-12)
    diag = np.diagonal(cov, axis1=1, axis2=2)
    assert np.all(diag > 0)
    np.testing.assert_allclose(var, diag, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kind,mapping,fixed", [("cnn", "UR", False), ("cnn", "UL", False),
                                                ("mlp", "UR", False), ("cnn", "UR", True),
                                                ("cnn", "UL", True)])
def test_closed_form_against_sampled_control(kind, mapping, fixed):
    """E C (closed form) against the mean of the sampled control C (no mirrors), z-test."""
    mapped, x = _setup(kind, mapping, sigma=0.1)
    ref = mapped.reference(x)
    if fixed:
        y0, cov = tangent_moments(mapped, x, fixed_mask=True)
        var = np.diagonal(cov, axis1=1, axis2=2)
    else:
        y0, var = tangent_variance(mapped, x)
    EC = ((y0 - ref) ** 2 + var).mean(-1)
    n = 4000
    out = _simulate(mapped, x, n, 11, pilot=False, block=256, chunk=None, tangent=None,
                    labels=None, layer_stats=False, antithetic=False, fixed_mask=fixed)
    C = out["C"][0]
    z = (C.mean(0) - EC) / (C.std(0, ddof=1) / math.sqrt(n))
    assert np.all(np.abs(z) < Z), z
    # the control is not the true error: at this σ the two means differ visibly somewhere
    Y = out["Y"][0]
    assert np.max(np.abs(Y.mean(0) - C.mean(0)) / (Y - C).std(0, ddof=1) * math.sqrt(n)) > Z


@pytest.mark.parametrize("mapping,biased", [("UR", True), ("UL", False)])
def test_unbiased_against_independent_plain_mc(mapping, biased):
    """σ large enough that the analytic closure is off by several SE; the CV estimate is not."""
    mapped, x = _setup("cnn", mapping, sigma=0.15, B=2)
    res = validate(mapped, x, seed=5, n=2048, pilot=64)
    mc = monte_carlo(mapped, x, 8192, seed=77)
    b = res.batch
    z = (b["mse_unbiased"] - mc.mse_overall) / math.hypot(b["mse_unbiased_se"], mc.mse_overall_se)
    assert abs(z) < Z, z
    # UR: the closure bias is real here (the test could tell the analytic value from the
    # truth); on this small UL net the closure is unbiased within the SE (issue 13's scratch)
    if biased:
        assert abs(b["bias_rel"]) > 3 * b["bias_rel_se"], (b["bias_rel"], b["bias_rel_se"])
    # per input too (no bias requirement)
    zi = (res.per_input["mse_unbiased"] - mc.mse.mean(1)) / np.hypot(
        res.per_input["mse_unbiased_se"], mc.mse_se.mean(1))
    assert np.all(np.abs(zi) < Z + 1), zi


def test_small_sigma_variance_reduction_is_large():
    mapped, x = _setup("cnn", "UR", sigma=0.005, B=2)
    res = validate(mapped, x, seed=2, n=512)
    assert res.batch["variance_reduction"] > 20
    assert np.all(res.per_input["corr"] > 0.95)


def test_main_draws_are_monte_carlo_draws():
    mapped, x = _setup("cnn", "UR", sigma=0.05, B=2)
    res = validate(mapped, x, seed=9, n=300, antithetic=False)
    mc = monte_carlo(mapped, x, 300, seed=9)
    assert res.batch["mse_mc"] == pytest.approx(mc.mse_overall, rel=1e-12)
    np.testing.assert_allclose(res.per_input["mse_mc"], mc.mse.mean(1), rtol=1e-12)


def test_seed_reproducible_and_budget_rounds_to_blocks():
    mapped, x = _setup("mlp", "UR", sigma=0.05)
    a = validate(mapped, x, seed=4, n=256)
    b = validate(mapped, x, seed=4, n=256)
    for k in ("mse_unbiased", "mse_unbiased_se", "beta", "mse_mc"):
        np.testing.assert_array_equal(a.per_input[k], b.per_input[k])
    c = validate(mapped, x, seed=4, budget=0.5, block=64)
    assert c.n % 64 == 0 and c.n >= 64 and c.budget == 0.5
    d = validate(mapped, x, seed=4, n=c.n, block=64)
    np.testing.assert_array_equal(c.per_input["mse_unbiased"], d.per_input["mse_unbiased"])


def test_bad_arguments():
    mapped, x = _setup("mlp", "UR")
    with pytest.raises(ConfigError):
        validate(mapped, x, seed=0)
    with pytest.raises(ConfigError):
        validate(mapped, x, seed=0, n=10, budget=1.0)
    with pytest.raises(ConfigError):
        validate(mapped, x, seed=0, n=10, pilot=2)
    with pytest.raises(ConfigError):
        validate(mapped, x, seed=0, n=10, control="quadratic")
    clipped = map_network(mapped.network, mapped.config.with_(clip_negative=True))
    with pytest.raises(ConfigError):
        validate(clipped, x, seed=0, n=10)


def test_cli_validate(tmp_path, capsys):
    rng = np.random.default_rng(3)
    from refmem.modelfile import save_model
    net = mlp(rng)
    model = tmp_path / "m.h5"
    save_model(net, model)
    xin = tmp_path / "x.npy"
    np.save(xin, rng.normal(size=(4, 5)))
    out = tmp_path / "v.h5"
    rc = main(["validate", str(model), "--input", str(xin), "--sigma", "0.05", "--gmin", "0.05",
               "-n", "128", "--seed", "1", "-o", str(out), "-q"])
    assert rc == 0
    with h5py.File(out) as f:
        for k in ("mse_analytic", "mse_unbiased", "mse_unbiased_se", "bias_rel",
                  "variance_reduction", "efficiency_gain"):
            assert f[k].shape == (4,)
            assert np.isfinite(f[k + "_batch"][()])
            assert "description" in f[k].attrs and "units" in f[k].attrs
        assert f.attrs["n"] == 128 and f.attrs["seed"] == 1
    rc = main(["validate", str(model), "--input", str(xin), "--sigma", "0.05", "--seed", "1",
               "-n", "1", "-o", str(tmp_path / "bad.h5")])
    assert rc == 2
    assert "refmem: error:" in capsys.readouterr().err
    assert not (tmp_path / "bad.h5").exists()


@pytest.mark.slow
def test_reproduce_seed002_quick_outputs(tmp_path):
    """``scripts/reproduce_seed002.py --quick`` writes every figure and dataset (not timed)."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_seed002.py"
    spec = importlib.util.spec_from_file_location("reproduce_seed002", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "-o", str(tmp_path)]) == 0
    for png in ("fig4.png", "fig5_w8.png", "closure_w8.png"):
        assert (tmp_path / png).stat().st_size > 1000
    with h5py.File(tmp_path / "seed002.h5") as f:
        a = f["fig4/mse_analytic"][()]
        m, se = f["fig4/mse_mc"][()], f["fig4/mse_mc_se"][()]
        assert a.shape == (4,) and np.all(np.isfinite(a))
        # the diabetes MLP: theory within 10 % of Monte-Carlo (issue 13: −2.8 … +0.2 %)
        assert np.all(np.abs(a / m - 1) < 0.10 + 4 * se / m)
        for mp in ("UR", "UL"):
            g = f[f"fig5_w8/{mp}"]
            assert g["sigma"].shape == (2,)
            for k in ("mse_analytic", "mse_unbiased", "mse_unbiased_se", "accuracy_mc",
                      "accuracy_predicted", "efficiency_gain"):
                assert np.all(np.isfinite(g[k][()])), (mp, k)
            assert np.all(g["mse_analytic"][1] > g["mse_analytic"][0])
        assert "fig5_w8/closure/UR/sigma_0.02" in f
