#!/usr/bin/env python
"""Analytic moments vs device-level Monte-Carlo, side by side, for one model and input batch.

Two comparisons (theory §19):

1. **Exact stage** — the first crossbar layer (and the ReLU right after it, if any) with a
   deterministic input: its outputs are exactly Gaussian given Gaussian devices, so the
   analytic mean and variance are exact and are z-tested against Monte-Carlo
   (``z = (MC − analytic)/SE``, Bonferroni threshold ``z*`` for all compared entries,
   family-wise α = 1e-4). The stage is simulated as a truncated network mapped with the same
   λ (scalar/layer designs: the same ``lam``; column design: the same per-column ``g_u``).
2. **Whole network** — output MSE (analytic, which carries the Gaussian-assumption bias A6,
   vs MC ± SE) as a relative error, and expected power per crossbar layer with z-scores.

Example::

    python scripts/compare_analytic_mc.py model.h5 --input X.npy --sigma 0.05 -n 20000 --limit 4
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from refmem.cli import add_crossbar_options, config_from_args, load_npy
from refmem.layers import ReLU
from refmem.mapping import map_network
from refmem.modelfile import load_model
from refmem.moments import propagate
from refmem.montecarlo import monte_carlo
from refmem.network import Network
from scipy.special import ndtr, ndtri


def zstar(m, alpha=1e-4):
    return float(ndtri(1.0 - alpha / (2.0 * max(int(m), 1))))


def first_stage(mapped):
    """Truncated network (first crossbar layer [+ ReLU]) mapped with the same scale λ."""
    ml = mapped.layers[0]
    fused = mapped.fused
    end = ml.position + 1
    if end < len(fused.layers) and isinstance(fused.layers[end], ReLU):
        end += 1
    sub = Network(fused.layers[:end], fused.input_shape)
    cfg = mapped.config
    kw = dict(bits=ml.bits, noisy_layers="all")
    if cfg.design == "column":
        kw.update(g_u={0: ml.g_u.copy()}, lam=None)
    else:
        kw.update(lam=float(ml.lam[0]), design="layer")
    if not ml.noisy:
        kw.update(sigma=0.0, alpha=0.0, sigma_fn=None, sigma_table=None)
    sub_mapped = map_network(sub, cfg.with_(**kw))
    np.testing.assert_allclose(sub_mapped.layers[0].lam, ml.lam, rtol=1e-12)
    return sub_mapped, [l.type for l in fused.layers[:end]]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL.h5")
    p.add_argument("--input", required=True, metavar="X.npy", help="inputs (B, *input_shape)")
    p.add_argument("--input-cov", metavar="C.npy", help="input covariance (L, L) or (B, L, L)")
    p.add_argument("--limit", type=int, default=None, help="use only the first LIMIT inputs")
    p.add_argument("-n", type=int, default=20000, help="Monte-Carlo realizations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--relu-cov", choices=["exact", "taylor"], default=None)
    add_crossbar_options(p)
    args = p.parse_args(argv)

    net = load_model(args.model)
    x = net.check_input(load_npy(args.input))
    if args.limit:
        x = x[:args.limit]
    cov = None
    if args.input_cov:
        cov = load_npy(args.input_cov, "input covariance").astype(np.float64)
        if cov.ndim == 3 and args.limit:
            cov = cov[:args.limit]
    cfg = config_from_args(args)
    mapped = map_network(net, cfg)
    print(f"model {args.model}: {len(x)} inputs, config {cfg.to_json()}")

    # ---- 1. exact stage
    if cov is None:
        sub, types = first_stage(mapped)
        an = propagate(sub, x, per_layer=True)
        mc = monte_carlo(sub, x, args.n, args.seed)
        # a ReLU output that is rarely positive has too few non-zero samples for its sample
        # SE to mean anything: keep entries with at least 100 expected positive samples
        keep = np.ones(an.mean.shape, dtype=bool)
        if types[-1] == "relu":
            pre = an.per_layer[len(types) - 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                a = pre["mean"] / np.sqrt(pre["var"])
            keep = args.n * ndtr(np.nan_to_num(a, nan=0.0, posinf=50, neginf=-50)) >= 100
        m = 2 * int(keep.sum())
        zs = zstar(m)
        with np.errstate(divide="ignore", invalid="ignore"):
            zm = np.where(keep & (mc.mean_se > 0), (mc.mean - an.mean) / mc.mean_se, 0.0)
            zv = np.where(keep & (mc.var_se > 0), (mc.var - an.var) / mc.var_se, 0.0)
        print(f"\nexact stage ({' -> '.join(types)}), n = {args.n}: {an.mean.shape[1]} outputs "
              f"per input, Bonferroni z* = {zs:.2f} (m = {m}); {int((~keep).sum())} entries "
              f"with < 100 expected positive samples skipped")
        print(f"{'input':>5} {'max|z| mean':>12} {'max|z| var':>11} {'mean var (an)':>14} "
              f"{'mean var (MC)':>14}")
        for b in range(len(x)):
            print(f"{b:>5} {np.abs(zm[b]).max():>12.2f} {np.abs(zv[b]).max():>11.2f} "
                  f"{an.var[b].mean():>14.6g} {mc.var[b].mean():>14.6g}")
        ok = max(np.abs(zm).max(), np.abs(zv).max()) <= zs
        print("exact stage:", "PASS" if ok else "FAIL", f"(max |z| = "
              f"{max(np.abs(zm).max(), np.abs(zv).max()):.2f})")
    else:
        print("\n(random input: no exact stage is compared)")

    # ---- 2. whole network
    an = propagate(mapped, x, input_cov=cov)
    mc = monte_carlo(mapped, x, args.n, args.seed, input_cov=cov)
    print(f"\nnetwork output MSE (analytic carries the Gaussian-assumption bias A6), n = {args.n}")
    print(f"{'input':>5} {'analytic':>12} {'MC':>12} {'± SE':>10} {'rel. err':>9}")
    mc_mse_b = mc.mse.mean(axis=1)
    se_b = mc.mse_se.mean(axis=1)           # conservative SE of the output average
    for b in range(len(x)):
        a = an.mse_per_input[b]
        rel = (a - mc_mse_b[b]) / mc_mse_b[b] if mc_mse_b[b] else 0.0
        print(f"{b:>5} {a:>12.6g} {mc_mse_b[b]:>12.6g} {se_b[b]:>10.2g} {rel:>+9.2%}")
    a_all = float(an.mse.mean())
    print(f"{'all':>5} {a_all:>12.6g} {mc.mse_batch:>12.6g} {mc.mse_batch_se:>10.2g} "
          f"{(a_all - mc.mse_batch) / mc.mse_batch if mc.mse_batch else 0:>+9.2%}")

    print("\nexpected power per crossbar layer (z = (MC − analytic)/SE; exact for layer 0 with a "
          "deterministic input, later layers inherit A6)")
    print(f"{'layer':>5} {'term':>8} {'analytic':>12} {'MC':>12} {'max|z|':>7}")
    for k in range(mapped.n_crossbar):
        for t, name in (("power_mem", "mem"), ("power_tia_pos", "TIA+"), ("power_tia_neg", "TIA-")):
            a = getattr(an, t)[:, k]
            e = getattr(mc, t)[:, k]
            se = getattr(mc, t + "_se")[:, k]
            z = np.max(np.abs(np.where(se > 0, (e - a) / np.where(se > 0, se, 1), 0.0)))
            print(f"{k:>5} {name:>8} {a.mean():>12.6g} {e.mean():>12.6g} {z:>7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
