#!/usr/bin/env python
"""Micro-benchmark of the exact ReLU covariance of all pairs (theory §8.2): ns per pair, old vs new.

Realistic pre-activation moments (μ, Γ) are taken from the analytic pass of a shipped
convolutional network (default ``data/models/fashion-mnist_cnn13_w8.h5``; σ = 0.01, λ = 1,
g_min = 0, UR, exact ReLU covariance) on the shipped example image 0 (``data/example_input.npy``,
an MNIST digit, zero-padded to 32×32): every ReLU's input is recorded while the pass runs.
``--subsample N`` keeps N random units of layers wider than N (use it for the full-width
``fashion-mnist_cnn13_w1.h5``, whose first layers have 16384 units).

For each recorded ReLU it reports, in one run, the time per pair of

- ``old``: :func:`refmem.relu.relu_cov_pairs_quad_kernel` (adaptive Gauss–Kronrod for every pair),
- ``new``: :func:`refmem.relu.relu_cov_pairs_kernel` (ρ = 1 formula, product, Mehler series,
  quadrature fallback — theory §8.2 "Fast evaluation"),

serial and (``--threads``) parallel, CPU and wall time, the fraction of pairs taking each route,
the mean number of series terms, and the largest relative difference new vs old. Not a test:
numbers depend on the machine and its load (CPU time per pair is the steadier figure on a
shared machine).

Usage::

    python scripts/bench_relu.py [--model PATH] [--subsample N] [--layers 0,1,2] [--no-old]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import refmem  # noqa: E402
from refmem import relu as R  # noqa: E402


def capture_relu_inputs(model, subsample, seed=0):
    """(μ, Γ) at the input of every ReLU of one analytic pass (units subsampled if wider)."""
    import refmem.moments as M
    from refmem.datasets import apply_preprocessing

    net = refmem.load_model(model)
    img = np.load(ROOT / "data" / "example_input.npy")[0].reshape(1, 28, 28) * 255.0
    x, _ = apply_preprocessing("pixels/255-pad32", img)
    x = x.reshape((1,) + tuple(net.input_shape))
    cfg = refmem.CrossbarConfig(sigma=0.01, g_min=0.0, mapping="UR", lam=1.0)
    mapped = refmem.map_network(net, cfg)
    rng = np.random.default_rng(seed)
    caps = []
    orig = R.relu_moments

    def recording(mu, gamma, mode="exact", **kw):
        if gamma is not None:
            d = mu.shape[0]
            idx = np.arange(d) if d <= subsample else np.sort(rng.choice(d, subsample, replace=False))
            caps.append((mu[idx].copy(), np.ascontiguousarray(gamma[np.ix_(idx, idx)])))
        return orig(mu, gamma, mode, **kw)

    patched = [m for name, m in list(sys.modules.items())
               if name.startswith("refmem") and getattr(m, "relu_moments", None) is orig]
    for m in patched:
        m.relu_moments = recording
    try:
        M.propagate(mapped, x)
    finally:
        for m in patched:
            m.relu_moments = orig
    return caps


def timed(fn, *args):
    t0, c0 = time.perf_counter(), time.process_time()
    res = fn(*args)
    return res, time.perf_counter() - t0, time.process_time() - c0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "data/models/fashion-mnist_cnn13_w8.h5"))
    ap.add_argument("--subsample", type=int, default=3000,
                    help="keep at most this many random units per layer (default 3000)")
    ap.add_argument("--layers", default=None, help="comma-separated ReLU indices (default all)")
    ap.add_argument("--no-old", action="store_true", help="skip the old quadrature kernel")
    args = ap.parse_args()

    q = (R.RTOL_QUAD, R._GK_X, R._GK_WK, R._GK_WG)
    # compile both kernels (C-contiguous float64, as in the runs below)
    m3, G3 = np.zeros(3), np.eye(3)
    for kern in (R.relu_cov_pairs_kernel, R.relu_cov_pairs_kernel_par):
        kern(m3, np.ones(3), G3, np.zeros((3, 3)), R.unit_mnv(m3, np.ones(3)), *q, np.ones(3), 0.0)
    for kern in (R.relu_cov_pairs_quad_kernel, R.relu_cov_pairs_quad_kernel_par):
        kern(m3, np.ones(3), G3, np.zeros((3, 3)), *q)

    t0 = time.perf_counter()
    caps = capture_relu_inputs(args.model, args.subsample)
    print(f"# model {Path(args.model).name}: {len(caps)} ReLUs captured in "
          f"{time.perf_counter() - t0:.1f} s (subsample {args.subsample}); "
          f"numba threads {refmem_threads()}")
    sel = range(len(caps)) if args.layers is None else [int(v) for v in args.layers.split(",")]
    print("| ReLU | d | pairs | old ns/pair (cpu) | new ns/pair (cpu) | new ns/pair (wall, par) "
          "| speed-up (cpu) | " + " | ".join(R.PATH_NAMES) + " | series terms | max rel new vs old |")
    print("|" + "---|" * (9 + len(R.PATH_NAMES)))
    tot = np.zeros(3)
    for k in sel:
        mu, G = caps[k]
        d = mu.shape[0]
        npair = d * (d - 1) // 2
        s = np.sqrt(np.diag(G))
        mnv = R.unit_mnv(mu, s)
        out = np.zeros((d, d))
        cnt, _, cpu_new = timed(R.relu_cov_pairs_kernel, mu, s, G, out, mnv, *q, np.ones(d), 0.0)
        out_p = np.zeros((d, d))
        _, wall_par, _ = timed(R.relu_cov_pairs_kernel_par, mu, s, G, out_p, mnv, *q, np.ones(d),
                               0.0)
        assert np.array_equal(out, out_p, equal_nan=True)
        iu = np.triu_indices(d, 1)
        if args.no_old:
            cpu_old, rel = np.nan, np.nan
        else:
            old = np.empty((d, d))
            _, _, cpu_old = timed(R.relu_cov_pairs_quad_kernel, mu, s, G, old, *q)
            o, n = old[iu], out[iu]
            big = np.abs(o) >= np.finfo(float).tiny
            rel = np.max(np.abs(n[big] - o[big]) / np.abs(o[big])) if big.any() else 0.0
        frac = cnt[:len(R.PATH_NAMES)] / max(npair, 1)
        terms = cnt[-1] / max(cnt[2], 1)
        tot += (npair, cpu_old * 1e9 if np.isfinite(cpu_old) else np.nan, cpu_new * 1e9)
        print(f"| {k} | {d} | {npair} | {cpu_old / npair * 1e9:.0f} | {cpu_new / npair * 1e9:.1f} | "
              f"{wall_par / npair * 1e9:.1f} | {cpu_old / cpu_new:.1f}× | "
              + " | ".join(f"{v:.3f}" for v in frac) + f" | {terms:.1f} | {rel:.1e} |")
    print(f"| all | | {int(tot[0])} | {tot[1] / tot[0]:.0f} | {tot[2] / tot[0]:.1f} | | "
          f"{tot[1] / tot[2]:.1f}× |" + " |" * (len(R.PATH_NAMES) + 2))


def refmem_threads():
    import numba
    return numba.get_num_threads()


if __name__ == "__main__":
    main()
