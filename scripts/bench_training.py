#!/usr/bin/env python
"""Throughput of refmem's framework-free trainer: images (samples) per second.

For each network, ``--batches`` mini-batches of random inputs are timed after one warm-up
batch, separately for the training-mode forward (incl. the loss), the backward pass and the
optimizer step. Prints a markdown table. Not a test; numbers depend on the machine and on
the BLAS thread count (``OPENBLAS_NUM_THREADS``).

Usage::

    python scripts/bench_training.py [--batches 3] [--batch-size 128] [--skip-full]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from refmem.training import SGD, Adam, CrossEntropy, MSE, cnn13, mlp


def configs(skip_full):
    yield "mlp 784-100-10", lambda: mlp(784, 100, 10), (784,), CrossEntropy(), Adam(1e-3), 10
    yield "mlp 784-500-500-10", lambda: mlp(784, [500, 500], 10), (784,), CrossEntropy(), \
        Adam(1e-3), 10
    yield "mlp 784-100-10 f32", lambda: mlp(784, 100, 10, dtype=np.float32), (784,), \
        CrossEntropy(), Adam(1e-3), 10
    yield "regression 10-50-1", lambda: mlp(10, 50, 1), (10,), MSE(), Adam(1e-2), 1
    for dt in (np.float64, np.float32):
        yield f"cnn13 width/8 {np.dtype(dt).name}", lambda dt=dt: cnn13(8, dtype=dt), \
            (1, 32, 32), CrossEntropy(), SGD(0.1, 0.9, 5e-4), 10
    if not skip_full:
        yield "cnn13 full float32", lambda: cnn13(1, dtype=np.float32), (1, 32, 32), \
            CrossEntropy(), SGD(0.1, 0.9, 5e-4), 10


def bench(make, in_shape, loss, opt, n_out, batch, n_batches, seed=0):
    model = make()
    rng = np.random.default_rng(seed)
    x = rng.random((batch,) + in_shape).astype(model.dtype)
    y = rng.integers(0, n_out, batch) if isinstance(loss, CrossEntropy) else \
        rng.normal(size=(batch, n_out))
    t_f = t_b = t_s = 0.0
    for i in range(n_batches + 1):
        t0 = time.perf_counter()
        out = model.forward(x, train=True, rng=rng)
        _, dout = loss(out, y)
        t1 = time.perf_counter()
        model.backward(dout)
        t2 = time.perf_counter()
        opt.step(model.named_params(), model.named_grads())
        t3 = time.perf_counter()
        if i:                                            # batch 0 is the warm-up
            t_f += t1 - t0
            t_b += t2 - t1
            t_s += t3 - t2
    n = batch * n_batches
    return model.n_params, n / t_f, n / t_b, n / t_s, n / (t_f + t_b + t_s)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--skip-full", action="store_true", help="skip the full-width CNN")
    args = p.parse_args(argv)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"numpy {np.__version__}, OPENBLAS_NUM_THREADS="
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}; batch {args.batch_size}, "
          f"{args.batches} timed batches\n")
    print("| network | parameters | forward img/s | backward img/s | optimizer img/s "
          "| train step img/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, make, shape, loss, opt, n_out in configs(args.skip_full):
        n, f, b, s, tot = bench(make, shape, loss, opt, n_out, args.batch_size, args.batches)
        print(f"| {name} | {n:,} | {f:,.0f} | {b:,.0f} | {s:,.0f} | {tot:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
