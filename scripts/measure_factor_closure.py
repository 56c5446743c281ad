"""Measure the factor closure (theory §20) against Monte-Carlo on the width/8 13-conv CNN.

For each σ: the analytic output MSE with the Gaussian closure and with the factor closure
(:class:`refmem.moments.factor.FactorClosure`, several split sets / node counts), each with its
wall time, against a device-level Monte-Carlo MSE (``refmem.monte_carlo``; n realizations,
SE from the realizations). Rows are appended as JSON lines to ``--out`` (a run that stops
keeps what it finished); ``--mc`` reads Monte-Carlo rows written by an earlier run instead
of simulating again.

    python scripts/measure_factor_closure.py --sigmas 0.05 0.02 0.01 --images 4 -n 32768 \\
        --out closure.jsonl

Images: the first ``--images`` Fashion-MNIST test images (``pixels/255-pad32``), UR, λ = 1.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from refmem import CrossbarConfig, load_model, map_network  # noqa: E402
from refmem.datasets import apply_preprocessing, load_idx_dataset  # noqa: E402
from refmem.montecarlo import monte_carlo  # noqa: E402
from refmem.moments.factor import FactorClosure  # noqa: E402
from refmem.propagate import propagate  # noqa: E402

MODEL = Path(__file__).resolve().parents[1] / "data" / "models" / "fashion-mnist_cnn13_w8.h5"
CONFIGS = [None, ((8, 9, 10), 3), ((7, 8, 9, 10), 2), ((6, 7, 8, 9, 10), 2),
           ((7, 8, 9, 10), 3)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.05, 0.02, 0.01])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("-n", type=int, default=32768)
    p.add_argument("--seed", type=int, default=1302)
    p.add_argument("--mc", help="JSON lines with Monte-Carlo rows from an earlier run")
    p.add_argument("--configs", help="JSON list of [layers, nodes] (null = Gaussian closure)")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    configs = CONFIGS if a.configs is None else json.loads(a.configs)
    X = load_idx_dataset(None, "test")
    X = X[0] if isinstance(X, tuple) else X["images"]
    x, _ = apply_preprocessing("pixels/255-pad32", X[:a.images])
    net = load_model(MODEL)
    mc_rows = {}
    if a.mc:
        for line in open(a.mc):
            r = json.loads(line)
            if r.get("kind") == "mc":
                mc_rows[r["sigma"]] = r
    for s in a.sigmas:
        mapped = map_network(net, CrossbarConfig(sigma=s, mapping="UR", lam=1.0))
        if s not in mc_rows:
            t0 = time.perf_counter()
            r = monte_carlo(mapped, x, a.n, a.seed)
            row = dict(kind="mc", sigma=s, n=a.n, seed=a.seed, mse=r.mse_overall,
                       mse_se=r.mse_overall_se, per_image=r.extra["mse_per_input"].tolist(),
                       per_image_se=r.extra["mse_per_input_se"].tolist(),
                       time=time.perf_counter() - t0)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
            mc_rows[s] = row
        mc = mc_rows[s]
        for c in configs:
            fac = None if c is None else FactorClosure(tuple(c[0]), int(c[1]))
            t0 = time.perf_counter()
            an = propagate(mapped, x, factor=fac)
            t = time.perf_counter() - t0
            per = an.mse.mean(axis=1)
            row = dict(kind="analytic", sigma=s, layers=None if c is None else list(c[0]),
                       nodes=None if c is None else int(c[1]), mse=float(per.mean()),
                       per_image=per.tolist(), time=t,
                       rel=float(per.mean() / mc["mse"] - 1), rel_se=mc["mse_se"] / mc["mse"],
                       rel_per_image=(per / np.array(mc["per_image"]) - 1).tolist())
            print(json.dumps(row), flush=True)
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
