"""refmem.optimize: Eq. (45) and the reference GA (theory §12, §22).

Oracles: the closed-form scalar optimum of a single FC layer (theory §12 / O20, re-derived here
from the analytic pass), a fine grid optimum for a 2-layer net, the closed form of the
linearised KKT problem and scipy's SLSQP on it, loop restatements of the four MSE aggregates,
bit-identical seeded runs (also after an interruption and on a Dask LocalCluster).
"""

import math

import h5py
import numpy as np
import pytest

from refmem.cli import main
from refmem.config import CrossbarConfig
from refmem.layers import Dense, ReLU
from refmem.mapping import map_network
from refmem.modelfile import save_model
from refmem.moments import propagate
from refmem.network import Network
from refmem.errors import ConfigError, DataError
from refmem.optimize import (Evaluator, Problem, convert_genome, deb_order, evaluate,
                             kkt_allocate, kkt_apply, kkt_linearize, kkt_step, optimize,
                             run_ga, solve_scalar)


# ---------------------------------------------------------------------- fixtures
def single_fc(seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(3, 5))
    b = rng.normal(size=3)
    net = Network([Dense(W, b)], (5,))
    x = np.abs(rng.normal(size=(1, 5)))                 # deterministic, x >= 0
    wu = max(np.abs(W).max(), np.abs(b).max())
    return net, x, wu


def two_layer(seed=3):
    """Dense-ReLU-Dense whose layers have very different w^u (layer-wise design pays off)."""
    rng = np.random.default_rng(seed)
    W0 = rng.normal(size=(6, 4)) * 0.3
    b0 = np.abs(rng.normal(size=6)) * 0.3
    W1 = rng.normal(size=(2, 6)) * 3.0
    b1 = rng.normal(size=2)
    net = Network([Dense(W0, b0), ReLU(), Dense(W1, b1)], (4,))
    x = np.abs(rng.normal(size=(3, 4)))
    return net, x


GMAX, NU = 60.0, 3e-2     # two_layer(): feasible for every design, layer-wise clearly cheaper


# ---------------------------------------------------------------------- (a) closed form
def test_closed_form_scalar_optimum_single_fc():
    """g* = g_min + w^u sqrt(2σ²(1+‖x‖²)/ν): verified on the analytic MSE, then reached."""
    net, x, wu = single_fc()
    sig, nu, gmin = 0.1, 1e-3, 0.1
    cfg = CrossbarConfig(sigma=sig, g_min=gmin, g_max=50.0)
    gstar = gmin + wu * math.sqrt(2 * sig**2 * (1 + np.sum(x**2)) / nu)
    # the closed form against the analytic pass: MSE(g*) = ν, MSE falls and power rises in g
    res = propagate(map_network(net, cfg.with_(g_u=gstar)), x)
    assert res.mse.mean() == pytest.approx(nu, rel=1e-12)
    grid = np.linspace(gmin + 0.5, 50.0, 40)
    runs = [propagate(map_network(net, cfg.with_(g_u=g)), x) for g in grid]
    assert np.all(np.diff([r.mse.mean() for r in runs]) < 0)
    assert np.all(np.diff([r.power.mean() for r in runs]) > 0)

    p = Problem(net, cfg, x, nu)
    row = solve_scalar(Evaluator(p))
    assert row["feasible"] and row["g_u"][0] == pytest.approx(gstar, rel=1e-8)
    # the GA alone, started far above the optimum (init 2 g*), lands within 0.1 %
    r = optimize(p, "scalar", population=30, generations=40, seed=1, init_gu=2 * gstar)
    assert r.method == "ga" and r.feasible and r.mse <= nu
    assert abs(r.g_u[0] - gstar) / gstar < 1e-3


# ---------------------------------------------------------------------- (b) grid optimum
def _grid_best(p, g0s, g1s):
    best = (math.inf, None)
    for a in g0s:
        for b in g1s:
            e = evaluate(p, "layer", [a, b])
            if e.feasible and e.power < best[0]:
                best = (e.power, (a, b))
    return best


def _grid_optimum(p, n, levels=3):
    """Grid search in (g_0, g_1), zooming ``levels`` times onto ±2 cells of the best point."""
    lo0 = lo1 = p.g_min + 1e-3
    hi0 = hi1 = p.g_max
    best = math.inf
    for _ in range(levels):
        g0s, g1s = np.linspace(lo0, hi0, n), np.linspace(lo1, hi1, n)
        pw, (a, b) = _grid_best(p, g0s, g1s)
        best = min(best, pw)
        s0, s1 = g0s[1] - g0s[0], g1s[1] - g1s[0]
        lo0, hi0 = max(p.g_min + 1e-3, a - 2 * s0), min(p.g_max, a + 2 * s0)
        lo1, hi1 = max(p.g_min + 1e-3, b - 2 * s1), min(p.g_max, b + 2 * s1)
    return best


def _layer_ga(p, population, generations):
    ev = Evaluator(p)
    scal = solve_scalar(ev)
    start = convert_genome(p, scal["g_u"], "scalar", "layer")
    run_ga(ev, "layer", start, population=population, generations=generations, seed=4,
           warm_starts=[start])
    rows = [r for r in ev.archive.rows["layer"] if r["feasible"]]
    best = min(rows, key=lambda r: r["power"])
    return best, scal


def test_layer_ga_matches_grid_optimum():
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    grid_power = _grid_optimum(p, 25)
    best, scal = _layer_ga(p, 40, 60)
    assert best["power"] < 0.97 * scal["power"]            # the layer design matters here
    assert abs(best["power"] - grid_power) / grid_power < 0.01


@pytest.mark.slow
def test_layer_ga_matches_fine_grid_optimum_150():
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    grid_power = _grid_optimum(p, 150, levels=2)
    best, _ = _layer_ga(p, 100, 40)
    assert abs(best["power"] - grid_power) / grid_power < 0.01


# ---------------------------------------------------------------------- (c) determinism
def _archive_equal(a, b):
    for d in ("scalar", "layer", "column"):
        x, y = a.arrays(d), b.arrays(d)
        assert x.keys() == y.keys()
        for k in x:
            assert np.array_equal(x[k], y[k]), (d, k)


def test_seeded_runs_are_bit_identical():
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    r1 = optimize(p, "column", population=8, generations=3, seed=7)
    r2 = optimize(p, "column", population=8, generations=3, seed=7)
    _archive_equal(r1.archive, r2.archive)
    assert np.array_equal(r1.g_u, r2.g_u) and r1.power == r2.power
    r3 = optimize(p, "column", population=8, generations=3, seed=8)
    assert not np.array_equal(r3.archive.arrays("column")["g_u"], r1.archive.arrays("column")["g_u"])


class _Interrupt(Exception):
    pass


def test_resume_from_archive_is_bit_identical(tmp_path):
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    n_calls = []
    ref = optimize(p, "layer", population=10, generations=5, seed=2,
                   map_fn=lambda fn, items: n_calls.append(1) or [fn(i) for i in items])
    calls = {"n": 0}

    def dying_map(fn, items):               # killed after 3 of the 5 GA generations
        calls["n"] += 1
        if calls["n"] > len(n_calls) - 2:
            raise _Interrupt()
        return [fn(i) for i in items]

    ck = tmp_path / "ck.h5"
    with pytest.raises(_Interrupt):
        optimize(p, "layer", population=10, generations=5, seed=2, map_fn=dying_map, checkpoint=ck)
    assert ck.exists()
    again = optimize(p, "layer", population=10, generations=5, seed=2, checkpoint=ck)
    _archive_equal(ref.archive, again.archive)
    assert again.n_passes < ref.n_passes
    # a checkpoint of another problem is refused
    other = Problem(net, CrossbarConfig(sigma=0.06, g_max=GMAX), x, NU)
    with pytest.raises(DataError, match="different optimization problem"):
        optimize(other, "layer", population=10, generations=2, checkpoint=ck)


# ---------------------------------------------------------------------- (d) infeasible
def test_infeasible_bound_returns_closest_point_flagged():
    net, x = two_layer()
    y = net.forward(x) + 1.0                       # the σ-free error against y is 1.0 per output
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=3.0), x, 0.5, targets=y, against="targets")
    r = optimize(p, "scalar", population=6, generations=2, seed=0)
    assert not r.feasible and "mse_targets_batch" in r.message and "0.5" in r.message
    assert r.g_u[0] == p.g_max                      # MSE falls with g_u: g_max is the closest
    all_mse = r.archive.arrays("scalar")["constraint_value"]
    assert r.mse == all_mse.min() and r.mse > 1.0
    rl = optimize(p, "layer", population=6, generations=2, seed=0)
    assert not rl.feasible and np.all(rl.g_u == p.g_max)     # the layer box's closest corner
    assert 1.0 < rl.mse <= r.mse


# ---------------------------------------------------------------------- pieces
def test_constraint_aggregates_loop_restatement():
    net, x = two_layer()
    rng = np.random.default_rng(5)
    y = net.forward(x) + rng.normal(size=(3, 2))
    cfg = CrossbarConfig(sigma=0.05, g_max=3.0)
    g = [1.3, 0.7]
    res = propagate(map_network(net, cfg.with_(design="layer", g_u=tuple(g))), x)
    ref = net.forward(x)
    for against, z in (("reference", ref), ("targets", y)):
        per_input = [np.mean([res.var[b, j] + (res.mean[b, j] - z[b, j]) ** 2 for j in range(2)])
                     for b in range(3)]
        for agg, want in (("mean", sum(per_input) / 3), ("max", max(per_input))):
            p = Problem(net, cfg, x, 1.0, targets=y, against=against, aggregate=agg)
            e = evaluate(p, "layer", g)
            assert e.mse == pytest.approx(want, rel=1e-12)
            assert e.power == pytest.approx(res.power.mean(), rel=1e-12)
    names = {(a, g): Problem(net, cfg, x, 1.0, targets=y, against=a, aggregate=g).constraint_name
             for a in ("reference", "targets") for g in ("mean", "max")}
    assert names == {("reference", "mean"): "mse_batch", ("reference", "max"): "mse_batch_max",
                     ("targets", "mean"): "mse_targets_batch",
                     ("targets", "max"): "mse_targets_batch_max"}


def test_same_lambda_same_mse_and_power_across_designs():
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=3.0), x, 1.0)
    e_s = evaluate(p, "scalar", [1.7])
    g_l = convert_genome(p, [1.7], "scalar", "layer")
    g_c = convert_genome(p, g_l, "layer", "column")
    assert g_l.size == 2 and g_c.size == 8
    for d, g in (("layer", g_l), ("column", g_c)):
        e = evaluate(p, d, g)
        assert e.mse == pytest.approx(e_s.mse, rel=1e-12)
        assert e.power == pytest.approx(e_s.power, rel=1e-12)


def test_kept_workspace_changes_no_evaluation():
    """The optimizer's per-process workspace (kept across passes) gives every evaluation bit
    for bit as a fresh pass does, whatever the order of the genomes; released, it is rebuilt."""
    from refmem import optimize as O
    from refmem import AvgPool2d, Conv2d, Flatten
    rng = np.random.default_rng(0)
    net = Network([Conv2d(rng.normal(size=(8, 1, 3, 3)) / 2, rng.normal(size=8) * 0.1, 1, 1),
                   ReLU(),
                   Conv2d(rng.normal(size=(8, 8, 3, 3)) / 6, rng.normal(size=8) * 0.1, 1, 1),
                   ReLU(), AvgPool2d(2), Flatten(),
                   Dense(rng.normal(size=(3, 512)) / 20, rng.normal(size=3) * 0.1)], (1, 16, 16))
    x = rng.uniform(0, 1, size=(2,) + tuple(net.input_shape))   # conv 2: a 2048² (32 MB) Γ
    p = Problem(net, CrossbarConfig(sigma=0.02, g_max=3.0), x, 1.0)
    genomes = [[2.5], [0.7], [1.9], [0.7]]
    fresh = [evaluate(p, "scalar", g) for g in genomes]
    O.release_process_workspace()
    kept = [O.evaluate_task((p, "scalar", np.array(g))) for g in genomes]
    assert O.process_workspace() is O.process_workspace()
    assert O.process_workspace().allocated > 0
    for a, b in zip(fresh, kept):
        assert (a.mse, a.power, a.feasible) == (b.mse, b.power, b.feasible)
        np.testing.assert_array_equal(a.power_layers, b.power_layers)
    O.release_process_workspace()
    assert not O._WORKSPACE


def test_deb_order():
    mse = [0.5, 0.1, 0.2, 0.05, np.inf, 0.01]
    power = [1.0, 3.0, 2.0, 9.0, 0.0, 5.0]
    feas = [False, True, True, True, False, True]
    # feasible by power (2:2.0, 1:3.0, 5:5.0, 3:9.0), then infeasible by MSE (0:0.5, 4:inf)
    assert list(deb_order(mse, power, feas)) == [2, 1, 5, 3, 0, 4]


def test_kkt_allocate_closed_form_and_slsqp():
    from scipy.optimize import minimize

    rng = np.random.default_rng(1)
    s, beta = rng.uniform(0.1, 2, 5), rng.uniform(0.5, 3, 5)
    R = 0.7
    lam, ok = kkt_allocate(s, beta, np.zeros(5), np.zeros(5), R, np.full(5, 1e6))
    want = (s / beta) ** (1 / 3) * math.sqrt(np.sum(s ** (1 / 3) * beta ** (2 / 3)) / R)
    assert ok and np.allclose(lam, want, rtol=1e-9)
    # general case (γ, d > 0, a box) against SLSQP on the same problem
    gamma, d = rng.uniform(0, 0.5, 5), rng.uniform(0, 0.2, 5)
    lmax = np.full(5, 6.0)
    lam, ok = kkt_allocate(s, beta, gamma, d, R, lmax)
    f = lambda l: np.sum(beta * l + gamma * l**2 + d / l**2)
    con = {"type": "ineq", "fun": lambda l: R - np.sum(s / l**2)}
    sol = minimize(f, np.full(5, 5.0), bounds=[(0.05, 6.0)] * 5, constraints=[con],
                   method="SLSQP", options={"ftol": 1e-14, "maxiter": 500})
    assert ok and np.sum(s / lam**2) <= R * (1 + 1e-9)
    assert f(lam) <= sol.fun * (1 + 1e-7)
    assert f(lam) == pytest.approx(sol.fun, rel=1e-5)
    # infeasible even at λmax
    lam, ok = kkt_allocate(s, beta, gamma, d, 1e-6, lmax)
    assert not ok and np.array_equal(lam, lmax)


def test_kkt_baseline_beats_scalar_and_meets_bound():
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    r = optimize(p, "layer", population=6, generations=2, seed=0)
    base = r.stages["layer"]["baseline"]["row"]
    scal = r.stages["layer"]["warm_starts"]["previous"]
    e_scal = evaluate(p, "layer", scal)
    assert base["feasible"] and base["mse"] <= p.max_mse
    assert base["mse"] == pytest.approx(p.max_mse, rel=1e-6)
    assert base["power"] < e_scal.power
    assert r.power <= base["power"] and r.feasible


def test_kkt_linearization_is_shared_across_bounds():
    """One linear model (kkt_linearize under bound ν₁) applied to bound ν₂ (kkt_apply) is the
    same point as kkt_step under ν₂ from the same genome: the coefficients do not depend on ν,
    and the final rescaling meets ν₂ exactly."""
    net, x = two_layer()
    cfg = CrossbarConfig(sigma=0.05, g_max=GMAX)
    at = np.array([5.0, 20.0])
    ev1 = Evaluator(Problem(net, cfg, x, NU))
    lin = kkt_linearize(ev1, "layer", at)
    assert lin["linearization_ok"]
    for nu2 in (0.5 * NU, 2 * NU):
        ev2 = Evaluator(Problem(net, cfg, x, nu2))
        row_a, info_a = kkt_apply(ev2, "layer", lin)
        row_b, info_b = kkt_step(Evaluator(Problem(net, cfg, x, nu2)), "layer", at)
        for k in ("s", "beta", "gamma", "d", "model_g_u"):
            np.testing.assert_array_equal(info_a[k], info_b[k])
        np.testing.assert_array_equal(row_a["g_u"], row_b["g_u"])
        assert row_a["feasible"] and row_a["mse"] == pytest.approx(nu2, rel=1e-6)
        # the probes were paid once, under ν₁: ev2 computed the rescaling passes only
        assert ev1.n_passes == 1 + 2 * 2
        assert {r["kind"] for r in ev2.archive.rows["layer"]} == {"kkt"}


def _sigma_fails_high(g):
    if np.max(g) > 30.0:
        raise ValueError("device model undefined above 30")
    return np.full(np.shape(g), 0.05)


def test_failed_evaluations_are_infeasible_not_fatal():
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma_fn=_sigma_fails_high, g_max=GMAX), x, NU)
    r = optimize(p, "layer", population=12, generations=4, seed=3)
    a = r.archive.arrays("layer")
    failed = np.array([e.decode().startswith("ValueError") for e in a["error"]])
    assert failed.any() and not a["feasible"][failed].any()
    assert np.all(np.isinf(a["constraint_value"][failed]))
    assert r.feasible and np.max(r.g_u) <= 30.0


def test_problem_validation():
    net, x = two_layer()
    with pytest.raises(ConfigError, match="finite g_max"):
        Problem(net, CrossbarConfig(sigma=0.05), x, 1.0)
    with pytest.raises(ConfigError, match="max_mse"):
        Problem(net, CrossbarConfig(sigma=0.05, g_max=1.0), x, -1.0)
    with pytest.raises(DataError, match="targets"):
        Problem(net, CrossbarConfig(sigma=0.05, g_max=1.0), x, 1.0, against="targets")
    with pytest.raises(DataError, match="shape"):
        Problem(net, CrossbarConfig(sigma=0.05, g_max=1.0), x, 1.0, targets=np.zeros((3, 5)))


# ---------------------------------------------------------------------- executor
def test_dask_localcluster_same_result_as_local():
    distributed = pytest.importorskip("dask.distributed")
    from refmem.executor import Executor

    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    local = optimize(p, "layer", population=6, generations=2, seed=9)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        with Executor(scheduler=cluster.scheduler_address) as ex:
            remote = optimize(p, "layer", population=6, generations=2, seed=9, map_fn=ex.map)
    _archive_equal(local.archive, remote.archive)
    assert np.array_equal(local.g_u, remote.g_u)


# ---------------------------------------------------------------------- CLI
def test_cli_optimize_writes_solution_archive_and_png(tmp_path, capsys):
    net, x = two_layer()
    save_model(net, tmp_path / "m.h5")
    np.save(tmp_path / "X.npy", x)
    out = tmp_path / "opt.h5"
    rc = main(["optimize", str(tmp_path / "m.h5"), "--input", str(tmp_path / "X.npy"),
               "--max-mse", str(NU), "--design", "layer", "--sigma", "0.05", "--gmax", str(GMAX),
               "--population", "6", "--generations", "2", "--workers", "1", "-q", "-o", str(out)])
    assert rc == 0
    with h5py.File(out) as f:
        g = f["g_u"][()]
        assert g.shape == (2,)
        assert f.attrs["design"] == "layer" and f.attrs["method"] in ("ga", "kkt", "warm-start")
        assert bool(f.attrs["feasible"]) and f.attrs["constraint_value"] <= NU
        assert f.attrs["mse"] == f.attrs["constraint_value"]       # the root name
        assert f.attrs["constraint"] == "mse_batch"
        assert "archive/layer/g_u" in f and "generations/layer/best_power" in f
        assert "baseline/layer/g_u" in f and "config" in f.attrs
        # the archive's constrained quantity is constraint_value (described by the schema), not
        # the schema's per-output mse
        assert "archive/layer/mse" not in f and "archive/layer/power" not in f
        cv = f["archive/layer/constraint_value"]
        assert "'constraint'" in cv.attrs["description"] and cv.attrs["units"] == "y^2"
        assert f["archive/layer/power_batch"].attrs["description"] == "mean over inputs of power"
        assert f["best/layer/constraint_value"][()] == f.attrs["constraint_value"]
        assert f["baseline/layer/kkt_sensitivity"].shape == (2,)
        e = evaluate(Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU), "layer", g)
        assert e.power == pytest.approx(f.attrs["power"], rel=1e-12)
    assert (tmp_path / "opt.png").exists()
    assert not (tmp_path / "opt.h5.opt-checkpoint.h5").exists()
    # --gmax missing: one-line error, exit 2, no file
    out2 = tmp_path / "bad.h5"
    rc = main(["optimize", str(tmp_path / "m.h5"), "--input", str(tmp_path / "X.npy"),
               "--max-mse", "1", "--sigma", "0.05", "-q", "-o", str(out2)])
    err = capsys.readouterr().err
    assert rc == 2 and "refmem: error:" in err and "--gmax" in err and not out2.exists()


def test_checkpoint_with_the_old_dataset_names_still_loads(tmp_path):
    """Checkpoints written before the rename (mse, power, power_layers) resume unchanged."""
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    ev = Evaluator(p, checkpoint=tmp_path / "new.h5")
    solve_scalar(ev, rtol=1e-3)
    ev.save()
    old = {"constraint_value": "mse", "power_batch": "power", "power_layers_batch": "power_layers"}
    with h5py.File(tmp_path / "new.h5") as f, h5py.File(tmp_path / "old.h5", "w") as g:
        g.attrs.update(dict(f.attrs))
        for k, v in f["scalar"].items():
            g.create_dataset(f"scalar/{old.get(k, k)}", data=v[()])
    assert "scalar/mse" in h5py.File(tmp_path / "old.h5")
    ev2 = Evaluator(p, checkpoint=tmp_path / "old.h5")
    assert ev2.resumed_entries == len(ev.archive) > 3
    for a, b in zip(ev.archive.rows["scalar"], ev2.archive.rows["scalar"]):
        assert a["mse"] == b["mse"] and a["power"] == b["power"] and a["kind"] == b["kind"]
        np.testing.assert_array_equal(a["power_layers"], b["power_layers"])


def test_zero_init_and_mutation_std_keep_the_population_on_the_warm_start():
    """σ_init = 0 and m₀ = 0: BLX blends of identical parents are that parent (one archive entry)."""
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma=0.05, g_max=GMAX), x, NU)
    ev = Evaluator(p)
    start = np.array([5.0, 9.0])
    rec = run_ga(ev, "layer", start, population=7, generations=3, seed=0, init_std=0.0,
                 mutation_std=0.0)
    assert len(ev.archive.rows["layer"]) == 1
    assert np.all(rec["best_g_u"] == start)
    with pytest.raises(ConfigError, match="mutation_std"):
        run_ga(ev, "layer", start, population=7, generations=1, mutation_std=-1.0)


def _sigma_always_fails(g):
    raise ValueError("no device model")


def test_all_evaluations_failing_is_reported():
    net, x = two_layer()
    p = Problem(net, CrossbarConfig(sigma_fn=_sigma_always_fails, g_max=GMAX), x, NU)
    r = optimize(p, "scalar", population=4, generations=2, seed=0)
    assert not r.feasible and "every evaluation" in r.message and "no device model" in r.message
