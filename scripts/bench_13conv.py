"""Benchmark: the analytic pass on Kern et al.'s 13-conv CNN, one input at a time (UR, float64).

The network has the paper's classification architecture (3×3 convs with padding 1 in blocks
16,16 | 32,32 | 64,64,64 | 128,128,128 | 256,256,256, ReLU after each conv, 2×2 average
pooling after each block, dense 256→256, ReLU, dense 256→10); the trained model is not needed
for timing, so the weights are seeded He-scaled random values (batchnorm would be fused into
the convolutions anyway). Reports the wall time of :func:`refmem.moments.propagate` per input,
the Numba compilation time, the peak resident memory, and — in the same run — the time of one
Monte-Carlo realization, so the ratio analytic / MC-realization is measured on one machine.

    python scripts/bench_13conv.py [--inputs 1] [--mc 2] [--relu-cov exact|taylor]
"""

import argparse
import json
import resource
import time

import numpy as np

from refmem import AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network, ReLU, map_network
from refmem.moments import propagate
from refmem.montecarlo import monte_carlo


def net13(rng, c_in=3):
    layers, c = [], c_in
    for block in ([16, 16], [32, 32], [64, 64, 64], [128, 128, 128], [256, 256, 256]):
        for co in block:
            he = np.sqrt(2.0 / (9 * c))
            layers += [Conv2d(rng.normal(size=(co, c, 3, 3)) * he, rng.normal(size=co) * 0.05, 1, 1),
                       ReLU()]
            c = co
        layers.append(AvgPool2d(2))
    he = np.sqrt(2.0 / 256)
    layers += [Flatten(), Dense(rng.normal(size=(256, 256)) * he, rng.normal(size=256) * 0.05),
               ReLU(), Dense(rng.normal(size=(10, 256)) * he, rng.normal(size=10) * 0.05)]
    return Network(layers, (c_in, 32, 32))


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1)
    ap.add_argument("--mc", type=int, default=2, help="Monte-Carlo realizations to time (0: skip)")
    ap.add_argument("--relu-cov", choices=["exact", "taylor"], default="exact")
    ap.add_argument("--sigma", type=float, default=0.05)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    net = net13(rng)
    x = rng.uniform(0, 1, size=(args.inputs, 3, 32, 32))
    cfg = CrossbarConfig(sigma=args.sigma, g_min=0.05, mapping="UR", relu_cov=args.relu_cov)
    mapped = map_network(net, cfg)
    t0 = time.perf_counter()
    tiny = Network([Conv2d(np.ones((2, 1, 3, 3)), np.zeros(2), 1, 1), ReLU()], (1, 4, 4))
    propagate(map_network(tiny, cfg), np.ones((1, 1, 4, 4)))          # Numba compilation
    t_compile = time.perf_counter() - t0
    times = []
    for b in range(args.inputs):
        t = time.perf_counter()
        propagate(mapped, x[b:b + 1])
        times.append(time.perf_counter() - t)
    out = {"analytic_sec_per_input": round(float(np.mean(times)), 2),
           "compile_sec": round(t_compile, 1), "peak_rss_gb": round(peak_rss_gb(), 2),
           "relu_cov": args.relu_cov}
    if args.mc:
        t = time.perf_counter()
        monte_carlo(mapped, x[:1], n=max(2, args.mc), seed=0, chunk=1)
        per_real = (time.perf_counter() - t) / max(2, args.mc)
        out["mc_sec_per_realization"] = round(per_real, 3)
        out["analytic_over_mc_realization"] = round(out["analytic_sec_per_input"] / per_real, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
