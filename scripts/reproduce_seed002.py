#!/usr/bin/env python
"""Reproduce Kern et al. (MemSE) Figs. 4 and 5 with refmem, and measure the ReLU closure bias.

Usage::

    python scripts/reproduce_seed002.py --quick -o OUT        # ≈ 3 min on 2 cores
    python scripts/reproduce_seed002.py -o OUT [--fig 4,5,5full] [--images 10] [-n 512]

Writes ``OUT/seed002.h5`` (one group per figure and configuration) and ``OUT/fig4.png``,
``OUT/fig5_w8.png``, ``OUT/closure_w8.png`` (``OUT/fig5_w1.png`` with ``5full``, and
``OUT/closure_w1.png`` with ``--full-layer-stats``), and prints the tables of
``docs/reproduction_seed002.md``.

- **Fig. 4** — the shipped diabetes regression net (``data/models/diabetes_mlp_10-50-1.h5``) on
  its 88 test inputs (split seed 0, train-split standardisation): MSE against the noiseless
  output and against the ground truth vs σ for several g_u (scalar design, g_min = 0); theory
  line (``refmem.moments.propagate``) and plain Monte-Carlo points with 95 % CI
  (``refmem.montecarlo.monte_carlo``).
- **Fig. 5** — the shipped 13-conv CNNs trained on Fashion-MNIST (``data/models/fashion-mnist_
  cnn13_w8.h5``, ``…_w1.h5``) on test images of ``data/fashion_mnist_test100.npz`` (one per
  class, rows ``[::10]``), λ = 1 (the paper's choice), UR and UL: analytic MSE with the exact and
  the Taylor (Eq. (28)) ReLU covariance, the unbiased control-variate Monte-Carlo MSE with its
  95 % CI (``refmem.validate``, theory §23), accuracy predicted from the analytic moments
  (``refmem.accuracy.predicted_accuracy``, theory §21) beside the Monte-Carlo accuracy.
- **Closure bias** (theory §20) — per crossbar layer of the CNNs (width/8 UR and UL; full width
  UR with ``--full-layer-stats``): relative error of the analytic summed squared deviation from the noiseless activations
  against Monte-Carlo, with the Monte-Carlo skewness and excess kurtosis of the pre-activation
  deviations.

Every n, image count and seed is stored in the HDF5 attributes and printed. Each finished
Fig. 5 setting is appended to ``OUT/fig5_rows.jsonl``; a rerun with the same options resumes
from it (settings already there are read back, not recomputed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refmem import CrossbarConfig, map_network  # noqa: E402
from refmem.datasets import apply_preprocessing, load_split  # noqa: E402
from refmem.io import write_result  # noqa: E402
from refmem.modelfile import load_model  # noqa: E402
from refmem.moments import propagate  # noqa: E402
from refmem.montecarlo import monte_carlo  # noqa: E402
from refmem.validate import layer_closure_table, validate  # noqa: E402

MODELS = REPO / "data" / "models"


def log(*a):
    print(*a, flush=True)


# ---------------------------------------------------------------------- Fig. 4
def diabetes_test():
    net = load_model(MODELS / "diabetes_mlp_10-50-1.h5")
    seed = int(net.attrs.get("split_seed", 0))
    xtr, _, _ = load_split("diabetes", "train", seed=seed)
    xte, yte, _ = load_split("diabetes", "test", seed=seed)
    x, _ = apply_preprocessing("standardize", xte, xtr)
    return net, x, np.asarray(yte, dtype=np.float64).reshape(len(yte), -1)


def fig4(sigmas, gus, n, seed):
    net, x, t = diabetes_test()
    rows = []
    for gu in gus:
        for s in sigmas:
            mapped = map_network(net, CrossbarConfig(sigma=s, g_u=gu, design="scalar"))
            an = propagate(mapped, x)
            mc = monte_carlo(mapped, x, n, seed)
            ref = an.reference
            an_t = (an.var + (an.mean - t) ** 2).mean()
            # E(y − t)² = E(y − z)² + 2 (z − t) E(y − z) + (z − t)², z the noiseless output
            d = mc.mean - ref
            mc_t = (mc.mse + 2 * (ref - t) * d + (ref - t) ** 2).mean()
            # conservative SE of the batch mean (draws are shared by all inputs, so the
            # per-input errors are correlated; the mean of the SEs bounds the SE of the mean)
            mc_t_se = np.sqrt(mc.mse_se ** 2 + (2 * (ref - t) * mc.mean_se) ** 2).mean()
            rows.append((gu, s, float(an.mse.mean()), mc.mse_overall, mc.mse_overall_se,
                         float(an_t), float(mc_t), float(mc_t_se)))
            r = rows[-1]
            log(f"fig4 g_u={gu:g} sigma={s:g}: analytic {r[2]:.5g}, MC {r[3]:.5g} ± {1.96 * r[4]:.2g}"
                f" ({100 * (r[2] / r[3] - 1):+.2f} %); vs truth analytic {r[5]:.5g}, MC {r[6]:.5g}")
    a = np.array(rows)
    clean = float(((ref - t) ** 2).mean())
    return {"g_u": a[:, 0], "sigma": a[:, 1], "mse_analytic": a[:, 2], "mse_mc": a[:, 3],
            "mse_mc_se": a[:, 4], "mse_targets_analytic": a[:, 5], "mse_targets_mc": a[:, 6],
            "mse_targets_mc_se": a[:, 7], "mse_targets_noiseless": np.float64(clean)}, \
        dict(n=n, seed=seed, n_inputs=x.shape[0])


def plot_fig4(d, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for gu in np.unique(d["g_u"]):
        k = d["g_u"] == gu
        s = d["sigma"][k]
        for ax, an, mc, se in ((axes[0], "mse_analytic", "mse_mc", "mse_mc_se"),
                               (axes[1], "mse_targets_analytic", "mse_targets_mc",
                                "mse_targets_mc_se")):
            line, = ax.plot(s, d[an][k], "-", label=f"theory g_u={gu:g}")
            ax.errorbar(s, d[mc][k], yerr=1.96 * d[se][k], fmt="o", color=line.get_color(),
                        ms=4, capsize=2, label=f"MC g_u={gu:g}")
    axes[1].axhline(d["mse_targets_noiseless"], color="k", ls=":", label="noiseless network")
    for ax, title in zip(axes, ("(a) MSE vs noiseless output", "(b) MSE vs ground truth")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("σ")
        ax.set_ylabel("MSE")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------- Fig. 5
def fashion_images(n_images):
    z = np.load(REPO / "data" / "fashion_mnist_test100.npz")
    step = 10
    idx = np.arange(0, 100, step)[:n_images]
    x, _ = apply_preprocessing("pixels/255-pad32", z["images"][idx])
    return x, z["labels"][idx].astype(np.int64), z["index"][idx]


def predicted(an, labels):
    try:
        from refmem.accuracy import predicted_accuracy
    except ImportError:                                  # pragma: no cover - before the merge
        return np.nan
    return float(predicted_accuracy(an.mean, an.cov, labels, seed=0).mean)


def finished_rows(rows_file):
    """Rows (and their closure summaries) a previous run of this script appended to
    ``rows_file``, keyed by ``(width, mapping, sigma, n, n_images, seed)``: ``fig5`` skips
    those settings, so an interrupted run resumes where it stopped."""
    done = {}
    if rows_file is None or not Path(rows_file).exists():
        return done
    last = None
    for line in Path(rows_file).read_text().splitlines():
        try:
            r = json.loads(line)
        except ValueError:                         # a line cut short by the interruption
            continue
        if "closure" in r:
            if last is not None and r["closure"] == [last[0], last[1], last[2]]:
                done[last] = (done[last][0], {int(p): v for p, v in r["layers"].items()})
            continue
        if "seed" not in r:
            continue
        last = (r["width"], r["mapping"], r["sigma"], r["n"], r["n_images"], r["seed"])
        done[last] = (r, None)
    return done


def taylor_mse(net, cfg, x):
    """Batch-mean output MSE under the paper's Taylor ReLU rule (Eq. (28)); negative input
    variances are zeroed with a warning (MemSE's behaviour, issue 13 item 5)."""
    return float(propagate(map_network(net, cfg.with_(relu_cov="taylor")), x).mse_mean.mean())


def fig5(width, mappings, sigmas, n_images, n, seed, *, taylor=True, layer_stats=False,
         mc_sigmas=None, rows_file=None, pilot=64, finished_only=False):
    net = load_model(MODELS / f"fashion-mnist_cnn13_{width}.h5")
    x, labels, index = fashion_images(n_images)
    out = {}
    closure = {}
    done = finished_rows(rows_file)
    for mp in mappings:
        rows = []
        for s in sigmas:
            cfg = CrossbarConfig(sigma=s, mapping=mp, lam=1.0)
            key = (width, mp, s, n, int(x.shape[0]), seed)
            if key in done and (layer_stats is False or done[key][1] is not None
                                or (mc_sigmas is not None and s not in mc_sigmas)):
                row, tab = done[key]
                row = {k: v for k, v in row.items()
                       if k not in ("width", "mapping", "n", "n_images", "seed")}
                if taylor and not np.isfinite(row.get("mse_taylor", np.nan)):
                    row["mse_taylor"] = taylor_mse(net, cfg, x)
                rows.append(row)
                if tab is not None:
                    closure[(mp, s)] = tab
                log(f"fig5 {width} {mp} sigma={s:g}: resumed from {rows_file}")
                continue
            if finished_only:
                log(f"fig5 {width} {mp} sigma={s:g}: not in {rows_file}, left out")
                continue
            mapped = map_network(net, cfg)
            t0 = time.perf_counter()
            an = propagate(mapped, x, cov=True, per_layer=layer_stats)
            t_an = time.perf_counter() - t0
            acc_pred = predicted(an, labels)
            tay = taylor_mse(net, cfg, x) if taylor else np.nan
            row = dict(sigma=s, mse_analytic=float(an.mse_mean.mean()), mse_taylor=tay,
                       accuracy_predicted=acc_pred, time_analytic=t_an)
            if mc_sigmas is None or s in mc_sigmas:
                res = validate(mapped, x, seed=seed, n=n, labels=labels, analytic=an,
                               layer_stats=layer_stats, pilot=pilot)
                b = res.batch
                row.update(mse_unbiased=b["mse_unbiased"], mse_unbiased_se=b["mse_unbiased_se"],
                           mse_mc=b["mse_mc"], mse_mc_se=b["mse_mc_se"], bias_rel=b["bias_rel"],
                           bias_rel_se=b["bias_rel_se"],
                           variance_reduction=b["variance_reduction"],
                           efficiency_gain=b["efficiency_gain"], accuracy_mc=res.accuracy,
                           accuracy_mc_se=res.accuracy_se,
                           bias_rel_min=float(np.nanmin(res.per_input["bias_rel"])),
                           bias_rel_max=float(np.nanmax(res.per_input["bias_rel"])))
                if layer_stats:
                    closure[(mp, s)] = layer_closure_table(res, an)
            rows.append(row)
            if rows_file is not None:                # partial results survive an interruption
                with open(rows_file, "a") as f:
                    f.write(json.dumps(dict(row, width=width, mapping=mp, n=n, seed=seed,
                                            n_images=int(x.shape[0]))) + "\n")
                if layer_stats and (mp, s) in closure:
                    tab = closure[(mp, s)]
                    with open(rows_file, "a") as f:
                        f.write(json.dumps({"closure": [width, mp, s], "layers": {
                            str(p): {k: float(np.nanmean(v[k])) for k in
                                     ("rel_err", "rel_err_se", "skew_mean", "skew_max",
                                      "exkurt_mean")} for p, v in tab.items()}}) + "\n")
            log(f"fig5 {width} {mp} sigma={s:g}: analytic {row['mse_analytic']:.5g} (taylor "
                f"{tay:.5g}), "
                + (f"MC(CV) {row['mse_unbiased']:.5g} ± {1.96 * row['mse_unbiased_se']:.2g}, "
                   f"bias {100 * row['bias_rel']:+.2f} ± {196 * row['bias_rel_se']:.2f} %, "
                   f"VR {row['variance_reduction']:.3g}, gain {row['efficiency_gain']:.3g}, "
                   f"acc MC {row['accuracy_mc']:.3f} pred {acc_pred:.3f}"
                   if "mse_unbiased" in row else "no MC")
                + f" [analytic {t_an:.0f} s]")
        if not rows:
            continue
        keys = sorted({k for r in rows for k in r})
        out[mp] = {k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64) for k in keys}
    meta = dict(width=width, n=n, seed=seed, n_images=int(x.shape[0]),
                t10k_index=[int(i) for i in index], lam=1.0)
    return out, closure, meta


def closure_datasets(closure, net):
    """Group datasets of the per-layer closure table (crossbar-layer pre-activations)."""
    fused = net.fused()
    xb = fused.crossbar_positions()
    groups = {}
    for (mp, s), tab in closure.items():
        g = {"position": np.array(xb)}
        for key in ("rel_err", "rel_err_se", "skew_mean", "skew_max", "exkurt_mean"):
            g[key] = np.array([np.nanmean(tab[p][key]) for p in xb])
        # the ReLU outputs (after each conv block's ReLU)
        relus = [p + 1 for p in xb if p + 1 in tab]
        g["relu_position"] = np.array(relus)
        g["relu_rel_err"] = np.array([np.nanmean(tab[p]["rel_err"]) for p in relus])
        groups[f"closure/{mp}/sigma_{s:g}"] = g
    return groups


def plot_fig5(res, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax2 = ax.twinx()
    for mp, d in res.items():
        s = d["sigma"]
        line, = ax.plot(s, d["mse_analytic"], "-", label=f"{mp} analytic (exact)")
        c = line.get_color()
        if np.any(np.isfinite(d["mse_taylor"])):
            ax.plot(s, d["mse_taylor"], "--", color=c, label=f"{mp} analytic (Taylor)")
        if "mse_unbiased" in d:
            ax.errorbar(s, d["mse_unbiased"], yerr=1.96 * d["mse_unbiased_se"], fmt="o",
                        color=c, ms=4, capsize=2, label=f"{mp} MC (95 % CI)")
            ax2.errorbar(s, d["accuracy_mc"], yerr=1.96 * d["accuracy_mc_se"], fmt="s",
                         color=c, mfc="none", ms=4, capsize=2)
        ax2.plot(s, d["accuracy_predicted"], ":", color=c)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("σ")
    ax.set_ylabel("MSE (outputs vs noiseless network)")
    ax2.set_ylabel("accuracy (squares MC, dotted predicted)")
    ax2.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_closure(groups, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, g in sorted(groups.items()):
        label = name.split("/", 1)[1]
        axes[0].errorbar(np.arange(len(g["rel_err"])), 100 * g["rel_err"],
                         yerr=196 * g["rel_err_se"], marker="o", ms=3, capsize=2, label=label)
        axes[1].plot(np.arange(len(g["skew_mean"])), g["skew_mean"], "o-", ms=3, label=label)
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xlabel("crossbar layer (pre-activation)")
    axes[0].set_ylabel("analytic / MC − 1 of Σ E(h − h⁰)²  [%]")
    axes[1].set_xlabel("crossbar layer (pre-activation)")
    axes[1].set_ylabel("mean skewness of h − h⁰ (MC)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------- output
_AN, _MC = "theory §9, Eq. (7)", "theory §19"
# last name component → (units, description, equation); y is the network output's unit,
# g the conductance unit (docs/result_format.md)
SEED002_META = {
    # Fig. 4 (the diabetes MLP, one entry per (g_u, σ) point)
    "g_u": ("g", "conductance unit g_u of each Fig. 4 point (scalar design, g_min = 0)",
            "theory §3"),
    "sigma": ("g", "device noise standard deviation σ of each point", "theory §2"),
    "mse_analytic": ("y^2", "analytic MSE against the noiseless output (exact ReLU covariance), "
                     "mean over the inputs and outputs", _AN),
    "mse_mc": ("y^2", "plain Monte-Carlo MSE against the noiseless output, mean over the "
               "inputs and outputs (Fig. 5: NaN where no Monte-Carlo ran)", _MC),
    "mse_mc_se": ("y^2", "Monte-Carlo standard error of mse_mc", "theory §19.2"),
    "mse_targets_analytic": ("y^2", "analytic MSE against the ground-truth targets, "
                             "var + (mean - t)^2 averaged over the inputs", "theory §9"),
    "mse_targets_mc": ("y^2", "Monte-Carlo MSE against the targets from the sampled moments, "
                       "E(y-z)^2 + 2(z-t)E(y-z) + (z-t)^2 averaged over the inputs", _MC),
    "mse_targets_mc_se": ("y^2", "upper bound of the standard error of mse_targets_mc (mean "
                          "over the inputs of the per-input standard errors)", "theory §19.2"),
    "mse_targets_noiseless": ("y^2", "MSE of the noiseless network against the targets (the "
                              "floor of Fig. 4b)", "theory §9"),
    # Fig. 5 (the 13-conv CNN, one entry per σ)
    "mse_taylor": ("y^2", "analytic MSE with the first-order Taylor ReLU covariance (NaN when "
                   "skipped or when the Taylor rule is refused)", "theory §8.3, Eq. (28)"),
    "accuracy_predicted": ("1", "accuracy predicted from the analytic output moments, mean "
                           "over the images", "theory §21"),
    "time_analytic": ("s", "wall time of the analytic pass (covariance and per-layer moments)",
                      ""),
    "mse_unbiased": ("y^2", "control-variate Monte-Carlo MSE (unbiased), mean over the images "
                     "(NaN where no Monte-Carlo ran)", "theory §23"),
    "mse_unbiased_se": ("y^2", "standard error of mse_unbiased", "theory §23"),
    "bias_rel": ("1", "mse_analytic / mse_unbiased - 1 over the batch: the closure bias",
                 "theory §20, §23"),
    "bias_rel_se": ("1", "standard error of bias_rel (delta method)", "theory §23"),
    "bias_rel_min": ("1", "smallest per-image bias_rel", "theory §20, §23"),
    "bias_rel_max": ("1", "largest per-image bias_rel", "theory §20, §23"),
    "variance_reduction": ("1", "plain Monte-Carlo variance per realization / control-variate "
                           "variance per realization, same draws", "theory §23.2"),
    "efficiency_gain": ("1", "variance_reduction x (plain wall time / control-variate wall "
                        "time, pilot and closed form included)", "theory §23.2"),
    "accuracy_mc": ("1", "Monte-Carlo accuracy, mean over the draws and images", _MC),
    "accuracy_mc_se": ("1", "standard error of accuracy_mc", "theory §19.2"),
    # closure groups (per crossbar layer of the width/8 CNN)
    "position": ("1", "fused-layer index of each crossbar layer (its pre-activation output)",
                 ""),
    "rel_err": ("1", "analytic / Monte-Carlo - 1 of the summed squared deviation from the "
                "noiseless activations, mean over the images (NaN where the Monte-Carlo sum "
                "is zero)", "theory §20"),
    "rel_err_se": ("1", "standard error of rel_err", "theory §20, §19.2"),
    "skew_mean": ("1", "mean over units of the Monte-Carlo skewness of the pre-activation "
                  "deviation h - h0, mean over the images", "theory §20"),
    "skew_max": ("1", "largest absolute Monte-Carlo skewness of h - h0 over the units, mean "
                 "over the images", "theory §20"),
    "exkurt_mean": ("1", "mean over units of the Monte-Carlo excess kurtosis of h - h0, mean "
                    "over the images", "theory §20"),
    "relu_position": ("1", "fused-layer index of the ReLU after each crossbar layer", ""),
    "relu_rel_err": ("1", "rel_err at the ReLU outputs", "theory §20"),
}


def _described(name, value):
    units, desc, eq = SEED002_META[name.rsplit("/", 1)[-1]]
    return (np.asarray(value), {"units": units, "description": desc, "equation": eq})


def write_seed002(path, datasets, groups, attrs, inputs=(), force=False):
    """Write the result set (``kind = "reproduce_seed002"``) through
    :func:`refmem.io.write_result`: every dataset described by :data:`SEED002_META`. NaN is
    allowed in the Fig. 5 and closure tables (not computed / refused); Fig. 4 must be finite."""
    ds = {k: _described(k, v) for k, v in datasets.items()}
    gs = {g: {k: _described(k, v) for k, v in d.items()} for g, d in groups.items()}
    nan_ok = [k for k in ds if k.startswith("fig5")]
    nan_ok += [f"{g}/{k}" for g, d in gs.items() for k in d]
    return write_result(path, "reproduce_seed002", ds, attrs=attrs, groups=gs, inputs=inputs,
                        allow_nonfinite=nan_ok, force=force)


# ---------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-o", "--output", default="seed002_out", type=Path)
    p.add_argument("--quick", action="store_true",
                   help="diabetes + width/8 CNN, 2 σ, 2 images, small n (≈ 3 min)")
    p.add_argument("--fig", default="4,5", help="4, 5 (width/8), 5full (full width); comma-separated")
    p.add_argument("--images", type=int, default=10, help="Fashion-MNIST images (one per class)")
    p.add_argument("-n", type=int, default=512, help="Monte-Carlo draws per σ for Fig. 5 (each "
                   "with its mirrored draw)")
    p.add_argument("--n4", type=int, default=2000, help="Monte-Carlo draws per point of Fig. 4")
    p.add_argument("--sigmas", default="0.005,0.01,0.02,0.05", help="σ of Fig. 5")
    p.add_argument("--full-n", type=int, default=200, help="MC draws of the full-width CNN")
    p.add_argument("--full-ul-sigma", type=float, default=0.01,
                   help="the one σ of the full-width UL Monte-Carlo")
    p.add_argument("--full-layer-stats", action="store_true",
                   help="also the per-layer closure table of the full-width UR run (its "
                   "analytic pass then records every layer: no fused ReLU-pooling step)")
    p.add_argument("--full-ul-n", type=int, default=16,
                   help="MC draws of the full-width UL Monte-Carlo (one realization draws "
                   "≈ 1e9 devices)")
    p.add_argument("--seed", type=int, default=2002)
    p.add_argument("--mappings", default="UR,UL", help="conv mappings of Fig. 5 (width/8)")
    p.add_argument("--no-taylor", action="store_true", help="skip the Taylor-rule analytic pass")
    p.add_argument("--finished-only", action="store_true",
                   help="write the result set from the settings already in OUT/fig5_rows.jsonl "
                   "and compute nothing new for Fig. 5 (those not there are left out)")
    p.add_argument("--force", action="store_true",
                   help="replace OUT/seed002.h5 even if it is not a result of this script")
    args = p.parse_args(argv)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    from refmem.errors import RefmemError
    from refmem.io import check_output                 # the result file, before any work
    try:
        check_output(out / "seed002.h5", "reproduce_seed002", force=args.force)
    except RefmemError as exc:
        print(f"reproduce_seed002: error: {exc}", file=sys.stderr)
        return 2
    figs = set(args.fig.split(","))
    sig5 = [float(s) for s in args.sigmas.split(",")]
    sig4 = list(np.geomspace(0.002, 0.05, 6))
    gus = [1.0, 3.0, 10.0]
    n4, n5, images = args.n4, args.n, args.images
    rows_file = out / "fig5_rows.jsonl"
    if args.quick:
        figs = {"4", "5"}
        sig4, gus, n4 = [0.005, 0.02], [1.0, 10.0], 256
        sig5, n5, images = [0.005, 0.02], 128, 2
    datasets, groups, attrs = {}, {}, {}
    t_start = time.perf_counter()
    if "4" in figs:
        d4, m4 = fig4(sig4, gus, n4, args.seed)
        plot_fig4(d4, out / "fig4.png")
        for k, v in d4.items():
            datasets[f"fig4/{k}"] = v
        attrs["fig4"] = json.dumps(m4)
    if "5" in figs:
        res, closure, m5 = fig5("w8", args.mappings.split(","), sig5, images, n5, args.seed,
                                layer_stats=True, taylor=not args.no_taylor,
                                rows_file=rows_file, finished_only=args.finished_only)
        plot_fig5(res, out / "fig5_w8.png", f"13-conv CNN width/8, {m5['n_images']} images, "
                  f"n = {n5} (+ mirrors)")
        for mp, d in res.items():
            for k, v in d.items():
                datasets[f"fig5_w8/{mp}/{k}"] = v
        cg = closure_datasets(closure, load_model(MODELS / "fashion-mnist_cnn13_w8.h5"))
        groups.update({f"fig5_w8/{k}": v for k, v in cg.items()})
        plot_closure(cg, out / "closure_w8.png")
        attrs["fig5_w8"] = json.dumps(m5)
    if "5full" in figs:
        res, closure_w1, m5f = fig5("w1", ["UR"], sig5, images, args.full_n, args.seed,
                                    taylor=not args.no_taylor,
                                    layer_stats=args.full_layer_stats, rows_file=rows_file,
                                    finished_only=args.finished_only)
        resl, _, _ = fig5("w1", ["UL"], sig5, images, args.full_ul_n, args.seed,
                          taylor=not args.no_taylor, mc_sigmas=[args.full_ul_sigma],
                          rows_file=rows_file, pilot=8, finished_only=args.finished_only)
        m5f.update(n_ul=args.full_ul_n, pilot_ul=8, sigma_ul_mc=args.full_ul_sigma)
        res.update(resl)
        plot_fig5(res, out / "fig5_w1.png", f"13-conv CNN full width, {m5f['n_images']} images")
        for mp, d in res.items():
            for k, v in d.items():
                datasets[f"fig5_w1/{mp}/{k}"] = v
        if closure_w1:
            cg = closure_datasets(closure_w1, load_model(MODELS / "fashion-mnist_cnn13_w1.h5"))
            groups.update({f"fig5_w1/{k}": v for k, v in cg.items()})
            plot_closure(cg, out / "closure_w1.png")
        attrs["fig5_w1"] = json.dumps(m5f)
    a = {"command": " ".join(["scripts/reproduce_seed002.py"]
                             + list(sys.argv[1:] if argv is None else argv)),
         "quick": bool(args.quick), "seconds": round(time.perf_counter() - t_start, 1), **attrs}
    used = {"model_fig4": "diabetes_mlp_10-50-1.h5", "model_fig5_w8": "fashion-mnist_cnn13_w8.h5",
            "model_fig5_w1": "fashion-mnist_cnn13_w1.h5"}
    inputs = {role: str(MODELS / name) for role, name in used.items()
              if any(k.startswith(role[6:] + "/") for k in datasets)}
    write_seed002(out / "seed002.h5", datasets, groups, a, inputs, force=args.force)
    log(f"wrote {out / 'seed002.h5'} in {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
