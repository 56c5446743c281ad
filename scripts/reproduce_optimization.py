#!/usr/bin/env python
"""Kern et al.'s optimization figures (Figs 7-9) regenerated with refmem.optimize (theory §22).

    python scripts/reproduce_optimization.py fig7 [--quick] [--workers N] [--naval DATA.txt]
    python scripts/reproduce_optimization.py fig8 [--quick] [--sets 100] [--images 10] ...
    python scripts/reproduce_optimization.py fig9 [--quick] [--constraints ...] ...

Every figure is resumable: each constraint (Figs 7, 9) or each random g_u set (Fig. 8) is one
file under ``--out`` (default ``reproduction/optimization``), written atomically when done, and
an optimization in flight keeps its archive checkpoint, so rerunning the same command
continues where it stopped. The figure HDF5 + PNG are rebuilt from the finished pieces.
See docs/reproduction_optimization.md for what ran, the numbers and the paper's beside them.

Fig. 7 (regression): the shipped diabetes net ``data/models/diabetes_mlp_10-50-1.h5`` (naval
when ``--naval`` names its data file and ``--naval-model`` its network), a 128-sample
evaluation batch drawn (seeded) from the training split, MSE against the targets, device
std σ = 0.1 (the paper's "noise variance σ² = 0.01" read as σ² = 0.01, spec D1), g_min = 0,
g_max = 1000, population 100; minimized power and reached MSE for the scalar, layer and column
designs over a range of bounds ν (multiples of the noiseless batch MSE).

Fig. 8 (classification): the width/8 13-conv CNN on Fashion-MNIST padded to 32×32 (standing
in for CIFAR-10): random column-wise g_u sets, Monte-Carlo accuracy on a test subset against
the analytic max-MSE on a class-balanced evaluation batch; Spearman rank correlation.

Fig. 9: scalar (bisection) vs layer-wise (KKT baseline + a small GA) optimization on a small
class-balanced evaluation batch for several bounds, checked on a larger batch; Monte-Carlo
accuracy and analytic power on the test subset; the power saving of layer-wise at equal
accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refmem.config import CrossbarConfig  # noqa: E402
from refmem.datasets import apply_preprocessing, load_split  # noqa: E402
from refmem.executor import Executor, run_grid  # noqa: E402
from refmem.io import write_result  # noqa: E402
from refmem.mapping import map_network  # noqa: E402
from refmem.modelfile import load_model  # noqa: E402
from refmem.moments import propagate  # noqa: E402
from refmem.optimize import (Evaluator, Problem, evaluate_task, convert_genome,  # noqa: E402
                             evaluate, kkt_apply, kkt_linearize, optimize, run_ga, solve_scalar,
                             write_optimization)

DIABETES_MODEL = ROOT / "data" / "models" / "diabetes_mlp_10-50-1.h5"
CNN_MODEL = ROOT / "data" / "models" / "fashion-mnist_cnn13_w8.h5"
DESIGNS = ("scalar", "layer", "column")
KIND = "reproduce_optimization"          # the kind of fig7.h5, fig8.h5 and the Fig. 9 files


def _log(*a):
    print(*a, file=sys.stderr, flush=True)


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# ============================================================================ Fig. 7
def fig7_data(naval=None, seed=0, batch=128):
    """Evaluation batch (from the training split), its targets, the test split, the model."""
    if naval and not naval[1]:
        raise SystemExit("naval: give --naval-model too (no naval network is shipped)")
    name = "diabetes" if not naval else "naval"
    model = load_model(DIABETES_MODEL if not naval else naval[1])
    root = None if not naval else naval[0]
    xtr, ytr, _ = load_split(name, "train", root=root, seed=0)
    xte, yte, _ = load_split(name, "test", root=root, seed=0)
    x_train, _ = apply_preprocessing("standardize", xtr, xtr)
    x_test, _ = apply_preprocessing("standardize", xte, xtr)
    idx = np.sort(np.random.default_rng(seed).permutation(x_train.shape[0])[:batch])
    return model, x_train[idx], ytr[idx], x_test, yte, idx


def run_fig7(args):
    out = Path(args.out) / "fig7"
    out.mkdir(parents=True, exist_ok=True)
    naval = (args.naval, args.naval_model) if args.naval else None
    model, x, y, x_test, y_test, idx = fig7_data(naval, seed=args.seed)
    model_path = str(DIABETES_MODEL if not naval else naval[1])
    cfg = CrossbarConfig(sigma=0.1, g_min=0.0, g_max=args.gmax)
    floor = float(np.mean((model.forward(x) - y.reshape(len(y), -1)) ** 2))
    factors = [1.05, 1.2, 2.0] if args.quick else [1.02, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0]
    pop, gens = (20, 3) if args.quick else (args.population, args.generations)
    _log(f"fig7: batch {len(idx)} training rows, noiseless MSE {floor:.6g}; bounds ν = "
         f"{factors} × that; population {pop}, {gens} generations per GA stage")
    rows = []
    with Executor(workers=args.workers) as ex:
        for i, f in enumerate(factors):
            nu = f * floor
            path = out / (f"nu{i:02d}_{f:g}" + ("_quick" if args.quick else "") + ".h5")
            if not path.exists():
                t0 = time.time()
                prob = Problem(model, cfg, x, nu, targets=y, against="targets")
                res = optimize(prob, "column", population=pop, generations=gens, seed=args.seed,
                               map_fn=ex.map, checkpoint=path.with_suffix(".ckpt.h5"),
                               progress=not args.quiet, log=_log)
                attrs = {"config": cfg.with_(design="column",
                                             g_u=prob.gu_value("column", res.g_u)),
                         "command": _command(args), "factor": f, "floor": floor,
                         "seconds": time.time() - t0, "batch_indices": idx.tolist(),
                         "population": pop, "generations": gens, "seed": args.seed,
                         "n_passes": res.n_passes}
                write_optimization(path, res, attrs, inputs={"model": model_path})
                path.with_suffix(".ckpt.h5").unlink(missing_ok=True)
            rows.append(_fig7_row(path, model, cfg, x_test, y_test))
            r = rows[-1]
            _log(f"  ν = {r['nu']:.6g}: power scalar {r['power'][0]:.6g}, layer {r['power'][1]:.6g}"
                 f" ({r['method'][1]}), column {r['power'][2]:.6g} ({r['method'][2]})")
    _fig7_collect(out, rows, floor, factors, _command(args), force=args.force)


def _fig7_row(path, model, cfg, x_test, y_test):
    import h5py

    with h5py.File(path, "r") as f:
        r = {"nu": float(f.attrs["max_mse"]), "power": [], "mse": [], "method": [], "feasible": [],
             "g_u": {}, "ga_power": [], "kkt_power": [], "test_mse": []}
        for d in DESIGNS:
            b = f[f"best/{d}"]
            g = b["g_u"][()]
            r["g_u"][d] = g
            r["power"].append(float(_opt_ds(b, "power_batch")[()]))
            r["mse"].append(float(_opt_ds(b, "constraint_value")[()]))
            r["feasible"].append(bool(b["feasible"][()]))
            kinds = [k.decode() for k in f[f"archive/{d}/kind"][()]]
            a = {"power": _opt_ds(f[f"archive/{d}"], "power_batch")[()],
                 "feasible": f[f"archive/{d}/feasible"][()]}
            row_kind = kinds[int(np.flatnonzero(np.all(f[f"archive/{d}/g_u"][()] == g, axis=1))[0])]
            r["method"].append(row_kind)
            for kind, key in (("ga", "ga_power"), ("kkt", "kkt_power")):
                m = np.array([k == kind for k in kinds]) & a["feasible"]
                r[key].append(float(a["power"][m].min()) if m.any() else math.nan)
            prob = Problem(model, cfg, x_test, 1.0, targets=y_test, against="targets")
            r["test_mse"].append(evaluate(prob, d, g).mse)
    return r


def _opt_ds(group, name):
    """Dataset ``name`` of an optimize result group; files written before the rename to the
    schema's names call constraint_value ``mse`` and power_batch ``power``."""
    old = {"constraint_value": "mse", "power_batch": "power"}[name]
    return group[name] if name in group else group[old]


def _fig7_collect(out, rows, floor, factors, command=None, force=False):
    plt = _plt()
    nu = np.array([r["nu"] for r in rows])
    P = np.array([r["power"] for r in rows])
    M = np.array([r["mse"] for r in rows])
    T = np.array([r["test_mse"] for r in rows])
    write_fig7(out.parent / "fig7.h5", rows, {
        "figure": "Kern et al. Fig. 7", "designs": list(DESIGNS), "floor": floor,
        "factors": list(factors), "command": command}, force=force)
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for j, d in enumerate(DESIGNS):
        ax[0].plot(nu, P[:, j], "o-", label=d)
        ax[1].plot(nu, M[:, j], "o-", label=f"{d} (batch)")
        ax[1].plot(nu, T[:, j], "x:", label=f"{d} (test split)")
    ax[0].set_yscale("log")
    ax[0].set_xlabel("bound ν on mse_targets_batch")
    ax[0].set_ylabel("minimized power per inference")
    ax[1].plot(nu, nu, "k--", lw=1, label="ν")
    ax[1].set_xlabel("bound ν")
    ax[1].set_ylabel("MSE against the targets")
    for a in ax:
        a.legend(fontsize=7)
    fig.suptitle("Fig. 7 (diabetes MLP 10-50-1, σ = 0.1, g_max = 1000, 128-sample batch)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out.parent / "fig7.png", dpi=120)
    plt.close(fig)
    _log(f"wrote {out.parent / 'fig7.h5'} and fig7.png")


# ============================================================================ CNN data
def cnn_data(n_eval_per_class, n_test, seed=0, model_path=CNN_MODEL):
    """Class-balanced evaluation batch (first images of each class) and a test subset."""
    model = load_model(model_path)
    x_raw, y, _ = load_split("fashion-mnist", "test")
    order = []
    for c in range(10):
        order.extend(np.flatnonzero(y == c)[:n_eval_per_class].tolist())
    ev_idx = np.array(sorted(order))
    rest = np.setdiff1d(np.arange(len(y)), ev_idx)
    te_idx = np.sort(np.random.default_rng(seed).permutation(rest)[:n_test])
    x_ev, _ = apply_preprocessing("pixels/255-pad32", x_raw[ev_idx])
    x_te, _ = apply_preprocessing("pixels/255-pad32", x_raw[te_idx])
    return model, x_ev, y[ev_idx], x_te, y[te_idx], ev_idx, te_idx


def _mc_accuracy(model, cfg, x, labels, n, seed):
    from refmem.montecarlo import monte_carlo

    r = monte_carlo(map_network(model, cfg), x, n=n, seed=seed, labels=labels)
    return float(r.accuracy), float(r.accuracy_se)


# ============================================================================ Fig. 8
def _fig8_cell(params, ss):
    """One random column-wise g_u set: analytic max-MSE on the batch, MC accuracy on the test."""
    rng = np.random.default_rng(ss)
    model = load_model(params["model"])
    cfg = CrossbarConfig(**params["config"])
    x_ev, x_te, y_te = params["x_ev"], params["x_te"], params["y_te"]
    prob = Problem(model, cfg, x_ev, 1.0, aggregate="max")
    n_genes = prob.genome_size("column")
    level = math.exp(rng.uniform(math.log(params["lam_lo"]), math.log(params["lam_hi"])))
    lam = level * np.exp(rng.normal(0.0, params["jitter"], n_genes))
    g = prob.clip(cfg.g_min + lam * prob.group_wu("column"))
    e = evaluate(prob, "column", g)
    gu = prob.gu_value("column", g)
    acc, se = _mc_accuracy(model, cfg.with_(design="column", g_u=gu), x_te, y_te,
                           params["mc_n"], int(rng.integers(2**31)))
    return {"g_u": g, "mse_batch_max": e.mse, "power": e.power, "accuracy": acc,
            "accuracy_se": se, "level": level}


def run_fig8(args):
    from scipy.stats import spearmanr

    n_img0 = 2 if args.quick else args.images
    tag = (f"img{n_img0}_mc{args.mc_images}x{args.mc_n}_sigma{args.sigma:g}_{args.mapping}"
           f"_lam{args.lam_lo:g}-{args.lam_hi:g}_gmax{args.gmax:g}")
    out = Path(args.out) / "fig8" / tag          # one grid directory per setting
    n_sets = 12 if args.quick else args.sets
    per_class = max(1, (2 if args.quick else args.images) // 10)
    n_img = 2 if args.quick else args.images
    model, x_ev, y_ev, x_te, y_te, ev_idx, te_idx = cnn_data(per_class, args.mc_images,
                                                             seed=args.seed, model_path=args.cnn_model)
    x_ev = x_ev[:n_img]
    cfg = dict(sigma=args.sigma, g_min=0.0, g_max=args.gmax, mapping=args.mapping)
    params = {"model": str(args.cnn_model), "config": cfg, "x_ev": x_ev, "x_te": x_te, "y_te": y_te, "lam_lo": args.lam_lo,
              "lam_hi": args.lam_hi, "jitter": 0.5, "mc_n": args.mc_n}
    cells = {f"set{i:04d}": params for i in range(n_sets)}
    _log(f"fig8: {n_sets} column-wise sets, max-MSE on {len(x_ev)} images, MC accuracy on "
         f"{len(x_te)} test images × {args.mc_n} realizations")
    with Executor(workers=args.workers) as ex:
        res = run_grid(_fig8_cell, cells, out, executor=ex, seed=args.seed, progress=not args.quiet)
    mse = np.array([float(r["mse_batch_max"]) for r in res.values()])
    acc = np.array([float(r["accuracy"]) for r in res.values()])
    se = np.array([float(r["accuracy_se"]) for r in res.values()])
    rho = spearmanr(mse, acc)
    write_fig8(Path(args.out) / "fig8.h5", mse, acc, se,
               {"figure": "Kern et al. Fig. 8", "spearman": float(rho.statistic),
                "spearman_p": float(rho.pvalue), "n_sets": n_sets,
                "eval_indices": ev_idx[:len(x_ev)].tolist(), "mc_images": len(x_te),
                "mc_n": args.mc_n, "crossbar": json.dumps(cfg), "command": _command(args)},
               inputs={"model": str(args.cnn_model)}, force=args.force)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.errorbar(mse, acc, yerr=se, fmt="o", ms=3)
    ax.set_xscale("log")
    ax.set_xlabel("analytic mse_batch_max")
    ax.set_ylabel("Monte-Carlo accuracy")
    ax.set_title(f"Fig. 8 (width/8 CNN, Fashion-MNIST): Spearman ρ = {rho.statistic:.3f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(Path(args.out) / "fig8.png", dpi=120)
    plt.close(fig)
    _log(f"fig8: Spearman ρ = {rho.statistic:.4f} (p = {rho.pvalue:.2g}) over {n_sets} sets")


# ============================================================================ Fig. 9
def _fig9_paths(out, bounds, tag):
    return {nu: out / f"nu{nu:g}_{tag}.h5" for nu in bounds}


def run_fig9(args):
    """Scalar vs layer-wise optimization of the CNN for several bounds (see the module doc).

    Per bound ν on ``mse_batch`` (evaluation batch ``--fig9-per-class`` images per class):
    the scalar design by bisection; the layer design by the Lagrange/KKT allocation of one
    linear model (:func:`refmem.optimize.kkt_linearize` at the scalar solution of the middle
    bound; its coefficients do not depend on ν), rescaled to meet ν exactly, then a small GA
    warm-started from it and from the scalar solution. Both solutions are then checked:
    Monte-Carlo accuracy on the test subset (the same seed for both designs: common random
    numbers), MSE and power on the larger balanced check batch.
    """
    out = Path(args.out) / "fig9"
    out.mkdir(parents=True, exist_ok=True)
    per_class = 1 if args.quick else args.fig9_per_class
    model, x_ev, y_ev, x_te, y_te, ev_idx, te_idx = cnn_data(per_class, args.mc_images,
                                                             seed=args.seed, model_path=args.cnn_model)
    if args.quick:
        x_ev, ev_idx = x_ev[:2], ev_idx[:2]
    cfg = CrossbarConfig(sigma=args.sigma, g_min=0.0, g_max=args.gmax, mapping=args.mapping)
    bounds = sorted(float(v) for v in args.constraints.split(","))
    if args.quick:
        bounds = bounds[:1]
    nu_ref = bounds[len(bounds) // 2]
    pop, gens = (6, 2) if args.quick else (args.fig9_population, args.fig9_generations)
    n_check = 0 if args.quick else args.check_images
    x_check = None
    if n_check:
        _, x_check, _, _, _, _, _ = cnn_data(max(1, n_check // 10), 1, seed=args.seed,
                                             model_path=args.cnn_model)
    mut = "spec" if args.mutation_rel is None else f"{args.mutation_rel:g}"
    tag = (f"img{len(x_ev)}_pop{pop}x{gens}_mut{mut}_ref{nu_ref:g}_sigma{args.sigma:g}_"
           f"{args.mapping}_gmax{args.gmax:g}")
    paths = _fig9_paths(out, bounds, tag)
    noiseless = float(np.mean(np.argmax(model.forward(x_te), axis=1) == y_te))
    if not all(p.exists() for p in paths.values()):
        _fig9_optimize(args, model, cfg, x_ev, x_te, y_te, x_check, bounds, nu_ref, pop, gens,
                       paths, ev_idx, noiseless)
    for p in paths.values():                     # every bound done: the checkpoints go
        p.with_suffix(".ckpt.h5").unlink(missing_ok=True)
    _fig9_collect(args, paths, noiseless, len(x_ev), pop, gens, nu_ref)


def _fig9_optimize(args, model, cfg, x_ev, x_te, y_te, x_check, bounds, nu_ref, pop, gens,
                   paths, ev_idx, noiseless):
    t0 = time.time()
    with Executor(workers=args.workers) as ex:
        evs, scal = {}, {}
        for nu in bounds:                        # 1. the scalar design of every bound
            prob = Problem(model, cfg, x_ev, nu)
            evs[nu] = Evaluator(prob, map_fn=ex.map, checkpoint=paths[nu].with_suffix(".ckpt.h5"))
            if paths[nu].exists() and nu != nu_ref:
                continue
            scal[nu] = solve_scalar(evs[nu], rtol=args.bisect_rtol, max_evals=args.max_bisect)
            evs[nu].save()
            _log(f"  ν = {nu:g}: scalar g_u {scal[nu]['g_u'][0]:.6g}, power "
                 f"{scal[nu]['power']:.6g} ({evs[nu].n_passes} passes, {time.time() - t0:.0f} s)")
        ev_ref = evs[nu_ref]                     # 2. one linear model, at ν_ref's scalar point
        start_ref = convert_genome(ev_ref.problem, scal[nu_ref]["g_u"], "scalar", "layer")
        lin = kkt_linearize(ev_ref, "layer", start_ref)
        ev_ref.save()
        _log(f"  linearized at ν = {nu_ref:g} ({ev_ref.n_passes} passes so far there, "
             f"{time.time() - t0:.0f} s): s = {np.array2string(lin['s'], precision=3)}")
        for nu in bounds:                        # 3. per bound: KKT, GA, checks
            if paths[nu].exists():
                continue
            t1 = time.time()
            ev, prob = evs[nu], evs[nu].problem
            base, info = kkt_apply(ev, "layer", lin, rtol=args.bisect_rtol)
            ev.save()
            start = convert_genome(prob, scal[nu]["g_u"], "scalar", "layer")
            ev.one("layer", start, "warm-start")
            m0 = (None if args.mutation_rel is None
                  else args.mutation_rel * (base["g_u"] - prob.g_min))
            run_ga(ev, "layer", base["g_u"], population=pop, generations=gens, seed=args.seed,
                   warm_starts=[base["g_u"], start], mutation_std=m0)
            rl = [r for r in ev.archive.rows["layer"] if r["kind"] in ("ga", "kkt", "warm-start")]
            best = min([r for r in rl if r["feasible"]] or rl,
                       key=lambda r: (r["power"] if r["feasible"] else r["mse"]))
            ga_f = [r["power"] for r in rl if r["kind"] == "ga" and r["feasible"]]
            sols = {"scalar": scal[nu], "layer": best}
            checks = {}
            if x_check is not None:                # the bound checked on the larger batch
                chk = Problem(model, cfg, x_check, nu)
                checks = dict(zip(sols, ex.map(evaluate_task, [(chk, d, r["g_u"])
                                                                for d, r in sols.items()])))
            ds = {}
            for d, r in sols.items():
                c = cfg.with_(design=d, g_u=prob.gu_value(d, r["g_u"]))
                acc, se = _mc_accuracy(model, c, x_te, y_te, args.mc_n, args.seed)
                ds[f"{d}/g_u"] = r["g_u"]
                ds[f"{d}/mse_batch"] = np.float64(r["mse"])
                ds[f"{d}/power_batch"] = np.float64(r["power"])
                ds[f"{d}/accuracy"] = np.float64(acc)
                ds[f"{d}/accuracy_se"] = np.float64(se)
                ds[f"{d}/method"] = np.bytes_(r["kind"])
                if args.power_images:
                    ds[f"{d}/power_test"] = np.float64(float(propagate(
                        map_network(model, c), x_te[:args.power_images]).power.mean()))
                if d in checks:
                    ds[f"{d}/mse_batch_check"] = np.float64(checks[d].mse)
                    ds[f"{d}/power_check"] = np.float64(checks[d].power)
            ds["layer/power_kkt"] = np.float64(base["power"])
            ds["layer/power_ga"] = np.float64(min(ga_f) if ga_f else math.nan)
            write_fig9_point(paths[nu], ds, {
                "config": cfg, "max_mse": nu, "seconds": time.time() - t1,
                "n_passes": ev.n_passes, "population": pop, "generations": gens,
                "linearized_at": nu_ref, "eval_indices": ev_idx.tolist(),
                "mc_images": len(x_te), "mc_n": args.mc_n, "noiseless_accuracy": noiseless,
                "mutation_rel": -1.0 if args.mutation_rel is None else args.mutation_rel,
                "check_images": 0 if x_check is None else len(x_check),
                "command": _command(args)}, inputs={"model": str(args.cnn_model)},
                force=args.force)
            _log(f"  ν = {nu:g} done in {time.time() - t1:.0f} s: scalar power "
                 f"{ds['scalar/power_batch']:.6g} acc {ds['scalar/accuracy']:.4f}; layer power "
                 f"{ds['layer/power_batch']:.6g} ({best['kind']}) acc {ds['layer/accuracy']:.4f}")


def _interp_power(acc, power, target):
    """log-power at ``target`` accuracy, linear in accuracy between the bracketing bounds."""
    o = np.argsort(acc)
    a, lp = np.asarray(acc)[o], np.log(np.asarray(power)[o])
    if not a[0] <= target <= a[-1]:
        return math.nan
    return float(np.exp(np.interp(target, a, lp)))


def _fig9_collect(args, paths, noiseless, n_img, pop, gens, nu_ref):
    import h5py

    bounds = sorted(paths)
    keys = ("accuracy", "accuracy_se", "power_batch", "mse_batch", "power_check",
            "mse_batch_check")
    R = {d: {k: [] for k in keys} for d in ("scalar", "layer")}
    for nu in bounds:
        with h5py.File(paths[nu], "r") as f:
            for d in R:
                for k in keys:
                    R[d][k].append(float(f[f"{d}/{k}"][()]) if f"{d}/{k}" in f else math.nan)
    P = "power_check" if np.all(np.isfinite(R["scalar"]["power_check"])) else "power_batch"
    targets = [0.90, noiseless - 0.005, noiseless - 0.01, noiseless - 0.02]
    saving = []
    for t in targets:
        ps = _interp_power(R["scalar"]["accuracy"], R["scalar"][P], t)
        pl = _interp_power(R["layer"]["accuracy"], R["layer"][P], t)
        saving.append(1.0 - pl / ps)
    ds = {"axes/max_mse": np.array(bounds)}
    for k in keys:
        ds[k] = np.array([R["scalar"][k], R["layer"][k]]).T
    ds["saving_at_accuracy"] = np.array(saving)
    ds["target_accuracy"] = np.array(targets)
    write_fig9(Path(args.out) / "fig9.h5", ds, {
        "figure": "Kern et al. Fig. 9", "designs": ["scalar", "layer"],
        "noiseless_accuracy": noiseless, "eval_images": n_img, "population": pop,
        "generations": gens, "linearized_at": nu_ref, "power_used": P,
        "files": [p.name for p in paths.values()], "command": _command(args)},
        inputs={"model": str(args.cnn_model)}, force=args.force)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for d in ("scalar", "layer"):
        ax.errorbar(R[d][P], R[d]["accuracy"], yerr=R[d]["accuracy_se"], fmt="o-", ms=4,
                    capsize=2, label=f"{d} g_u")
        for nu, x, y in zip(bounds, R[d][P], R[d]["accuracy"]):
            if d == "scalar":
                ax.annotate(f"ν={nu:g}", (x, y), fontsize=7, xytext=(3, -9),
                            textcoords="offset points")
    ax.axhline(noiseless, color="k", lw=0.8, ls="--", label="noiseless")
    ax.set_xscale("log")
    ax.set_xlabel("mean power per inference" + (" (check batch)" if P == "power_check"
                                                 else " (evaluation batch)"))
    ax.set_ylabel("Monte-Carlo accuracy (test subset)")
    ax.set_title(f"Fig. 9 (width/8 CNN, Fashion-MNIST, {n_img}-image evaluation batch)",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(args.out) / "fig9.png", dpi=120)
    plt.close(fig)
    for i, nu in enumerate(bounds):
        _log(f"  ν = {nu:g}: " + "; ".join(
            f"{d} acc {R[d]['accuracy'][i]:.4f} ± {R[d]['accuracy_se'][i]:.4f} power "
            f"{R[d][P][i]:.6g}" for d in R))
    _log("  saving of layer-wise at equal accuracy: " + ", ".join(
        f"{t:.4f}: {s:.3%}" for t, s in zip(targets, saving)))


# ============================================================================ output
_Y2, _PW = "y^2", "g*x^2"          # units of docs/result_format.md
# name → (units, description, equation)
FIG7_META = {
    "axes/max_mse": (_Y2, "bound ν on mse_targets_batch of each row (a multiple of the "
                     "noiseless batch MSE)", "theory §12, Eq. (45)"),
    "power": (_PW, "minimized expected read power per inference, mean over the evaluation "
              "batch (bound ν, design scalar/layer/column)", "theory §11, §22"),
    "mse_targets_batch": (_Y2, "MSE against the targets reached by that solution, mean over the "
                          "evaluation batch (ν, design)", "theory §9, Eq. (45)"),
    "mse_targets_test": (_Y2, "the same solution's MSE against the targets on the test split "
                         "(ν, design)", "theory §9"),
    "power_ga": (_PW, "lowest power of a feasible GA individual (ν, design; NaN: none "
                 "feasible)", "theory §12, §22.4"),
    "power_kkt": (_PW, "lowest power of a feasible Lagrange/KKT baseline point (ν, design; "
                  "NaN: none feasible)", "theory §22.3"),
    "method": ("1", "how the returned solution was produced (ga, kkt, warm-start, …) (ν, "
               "design)", "theory §22"),
    "feasible": ("1", "the solution satisfies its bound ν (ν, design)", "Eq. (45)"),
}
FIG8_META = {
    "mse_batch_max": (_Y2, "analytic MSE maximised over the inputs of the class-balanced "
                      "evaluation batch, per random column-wise g_u set", "theory §9, Eq. (7)"),
    "accuracy": ("1", "Monte-Carlo accuracy on the test subset, per g_u set", "theory §19"),
    "accuracy_se": ("1", "standard error of accuracy", "theory §19.2"),
}
FIG9_META = {
    "g_u": ("g", "genome of the design's solution (scalar: one g_u; layer: one per crossbar "
            "layer)", "theory §3, §12"),
    "mse_batch": (_Y2, "the constrained mse_batch of the solution on the evaluation batch",
                  "theory §9, Eq. (45)"),
    "power_batch": (_PW, "expected read power per inference of the solution, mean over the "
                    "evaluation batch", "theory §11"),
    "accuracy": ("1", "Monte-Carlo accuracy of the solution on the test subset", "theory §19"),
    "accuracy_se": ("1", "standard error of accuracy", "theory §19.2"),
    "power_test": (_PW, "analytic expected read power per inference of the solution, mean "
                   "over the first --power-images test images", "theory §11"),
    "method": ("1", "how the solution was produced (bisection, ga, kkt, warm-start)",
               "theory §22"),
    "mse_batch_check": (_Y2, "the solution's mse_batch on the larger class-balanced check "
                        "batch", "theory §9"),
    "power_check": (_PW, "analytic expected read power per inference of the solution, mean "
                    "over the larger class-balanced check batch", "theory §11"),
    "power_kkt": (_PW, "power of the Lagrange/KKT allocation rescaled to meet the bound "
                  "(evaluation batch)", "theory §22.3"),
    "power_ga": (_PW, "lowest power of a feasible GA individual (evaluation batch; NaN: none "
                 "feasible)", "theory §12, §22.4"),
}
FIG9_SUMMARY_META = {
    "axes/max_mse": (_Y2, "bound ν on mse_batch (mean over the evaluation batch, against the "
                     "noiseless network) of each row", "theory §12, Eq. (45)"),
    "accuracy": ("1", "Monte-Carlo accuracy on the test subset (ν, design scalar/layer)",
                 "theory §19"),
    "accuracy_se": ("1", "standard error of accuracy (ν, design)", "theory §19.2"),
    "power_batch": (_PW, "power of the solution, mean over the evaluation batch (ν, design)",
                    "theory §11"),
    "mse_batch": (_Y2, "the constrained mse_batch reached on the evaluation batch (ν, design)",
                  "theory §9, Eq. (45)"),
    "power_check": (_PW, "power of the solution, mean over the check batch (ν, design)",
                    "theory §11"),
    "mse_batch_check": (_Y2, "mse_batch of the solution on the check batch (ν, design)",
                        "theory §9"),
    "target_accuracy": ("1", "accuracies at which the designs' powers are compared", ""),
    "saving_at_accuracy": ("1", "1 − P_layer/P_scalar at each target accuracy, log-power "
                           "interpolated linearly in accuracy between bounds (NaN: outside "
                           "the range of either design)", "theory §22"),
}


def _described(table, values):
    return {k: (np.asarray(v), dict(zip(("units", "description", "equation"),
                                        table[k.rsplit("/", 1)[-1] if k not in table else k])))
            for k, v in values.items()}


def _command(args):
    return " ".join(["scripts/reproduce_optimization.py"] + list(getattr(args, "argv", None)
                                                                 or sys.argv[1:]))


def write_fig7(path, rows, attrs, inputs=(), force=False):
    """``fig7.h5`` (kind :data:`KIND`) from the per-bound rows of :func:`_fig7_row`."""
    ds = {"axes/max_mse": [r["nu"] for r in rows], "power": [r["power"] for r in rows],
          "mse_targets_batch": [r["mse"] for r in rows],
          "mse_targets_test": [r["test_mse"] for r in rows],
          "power_ga": [r["ga_power"] for r in rows], "power_kkt": [r["kkt_power"] for r in rows],
          "method": np.array([[m.encode() for m in r["method"]] for r in rows]),
          "feasible": np.array([r["feasible"] for r in rows], dtype=bool)}
    return write_result(path, KIND, _described(FIG7_META, ds), attrs=attrs, inputs=inputs,
                        allow_nonfinite=("power_ga", "power_kkt"), force=force)


def write_fig8(path, mse, acc, se, attrs, inputs=(), force=False):
    """``fig8.h5`` (kind :data:`KIND`): one entry per random g_u set."""
    ds = {"mse_batch_max": mse, "accuracy": acc, "accuracy_se": se}
    return write_result(path, KIND, _described(FIG8_META, ds), attrs=attrs, inputs=inputs,
                        force=force)


def write_fig9_point(path, ds, attrs, inputs=(), force=False):
    """One Fig. 9 bound (kind :data:`KIND`): ``DESIGN/NAME`` datasets of :data:`FIG9_META`."""
    return write_result(path, KIND, _described(FIG9_META, ds), attrs=attrs, inputs=inputs,
                        allow_nonfinite=[k for k in ds if k.endswith((
                            "/mse_batch", "/power_batch", "/power_ga", "/power_kkt"))],
                        force=force)


def write_fig9(path, ds, attrs, inputs=(), force=False):
    """``fig9.h5`` (kind :data:`KIND`): one row per bound, columns scalar, layer."""
    return write_result(path, KIND, _described(FIG9_SUMMARY_META, ds), attrs=attrs,
                        inputs=inputs, allow_nonfinite=list(ds), force=force)


# ============================================================================ CLI
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("figure", choices=["fig7", "fig8", "fig9", "all"])
    p.add_argument("--out", default=str(ROOT / "reproduction" / "optimization"))
    p.add_argument("--quick", action="store_true", help="tiny budgets (a smoke run)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--population", type=int, default=100)
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--gmax", type=float, default=None,
                   help="g_max (default: 1000 for Fig. 7, 10 for Figs 8-9)")
    p.add_argument("--naval", metavar="DATA.txt", help="Fig. 7 on the naval set (needs --naval-model)")
    p.add_argument("--naval-model", metavar="MODEL.h5")
    p.add_argument("--cnn-model", default=str(CNN_MODEL), help="Figs 8-9 network "
                   "(default: the shipped width/8 13-conv CNN)")
    p.add_argument("--sigma", type=float, default=0.01, help="device std for Figs 8-9")
    p.add_argument("--mapping", default="UR", choices=["UR", "UL"])
    p.add_argument("--sets", type=int, default=100, help="Fig. 8 random g_u sets")
    p.add_argument("--images", type=int, default=10, help="Fig. 8 evaluation images (balanced)")
    p.add_argument("--mc-images", type=int, default=1000)
    p.add_argument("--mc-n", type=int, default=4)
    p.add_argument("--lam-lo", type=float, default=0.1, help="Fig. 8: smallest λ level")
    p.add_argument("--lam-hi", type=float, default=2.0, help="Fig. 8: largest λ level")
    p.add_argument("--constraints", default="0.1,0.3,1", help="Fig. 9 bounds on mse_batch")
    p.add_argument("--max-bisect", type=int, default=15)
    p.add_argument("--bisect-rtol", type=float, default=1e-4,
                   help="Fig. 9: relative tolerance of the scalar and KKT-rescaling solves")
    p.add_argument("--fig9-per-class", type=int, default=2,
                   help="Fig. 9 evaluation batch: images per class")
    p.add_argument("--fig9-population", type=int, default=12)
    p.add_argument("--fig9-generations", type=int, default=3)
    p.add_argument("--mutation-rel", type=float, default=None,
                   help="Fig. 9 GA mutation std as a fraction of the KKT genes (default: the "
                   "spec's 0.1 (g_max - g_min))")
    p.add_argument("--check-images", type=int, default=100,
                   help="Fig. 9: balanced batch on which the solutions' MSE is checked (0: skip)")
    p.add_argument("--power-images", type=int, default=0,
                   help="Fig. 9: also the power on this many test images (0: the check "
                   "batch's power only)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("--force", action="store_true",
                   help="replace fig7.h5, fig8.h5 and the Fig. 9 files even if they are not "
                   "results of this script")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    figs = ["fig7", "fig8", "fig9"] if args.figure == "all" else [args.figure]
    from refmem.errors import RefmemError
    from refmem.io import check_output                 # the figure files, before any work
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        for f in figs:
            if f in ("fig7", "fig8", "fig9"):
                check_output(Path(args.out) / f"{f}.h5", KIND, force=args.force)
    except (RefmemError, OSError) as exc:
        print(f"reproduce_optimization: error: {exc}", file=sys.stderr)
        return 2
    gmax = args.gmax
    for f in figs:
        args.gmax = gmax if gmax is not None else (1000.0 if f == "fig7" else 10.0)
        {"fig7": run_fig7, "fig8": run_fig8, "fig9": run_fig9}[f](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
