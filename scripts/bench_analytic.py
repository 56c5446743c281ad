"""Benchmark of the analytic pass on Kern et al.'s 13-conv CNN (issue 15): refmem vs Monte-Carlo.

Runs, in one process (each timed configuration in a child process of its own, so that its
peak resident memory is its own):

- the 13-conv CNN at full width with seeded He-scaled weights (the network of the old
  ``bench_13conv.py``; batchnorm would be fused anyway) and the shipped trained
  ``data/models/fashion-mnist_cnn13_w1.h5`` and ``_w8.h5``;
- one input uniform in [0, 1], σ = 0.01, λ = 1, g_min = 0, scalar design; UR and UL; exact
  and Taylor ReLU covariance; power always computed: wall time of the first call in a fresh
  process and of a warm call, peak RSS;
- the yardsticks of the same run: numpy's float64 GEMM rate, the BLAS in use
  (threadpoolctl), the time of one Monte-Carlo realization;
- the width/8 CNN on a batch of 20 inputs (UR, exact), both cores inside the kernels vs
  across inputs (two worker processes, one thread each);
- the runtime study of Kern et al. Fig. 6 on the trained CNNs: σ ∈ {0.01, 0.05}, UR/UL,
  z ∈ {1.96, 2.33}, p ∈ {1, 2, 5} %: n from Eq. (46) with the mean and standard deviation
  of the per-realization squared error (averaged over outputs) from a pilot run of stated
  size, and the speed-up ``n · t_MC / t_analytic`` (``n · t_MC`` extrapolated from the
  pilot's time per realization, not run), next to the paper's A100 figures.

The machine's environment sets ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` for old OpenBLAS
builds, which slows a current numpy; the script re-executes itself with both removed, as on
a user's machine (tests and CI never change them).

Writes an HDF5 result set (``--out``, default ``bench_analytic.h5``) and ``docs/performance.md``
(``--doc``)::

    python scripts/bench_analytic.py            # everything (about 15-30 min on 2 cores)
    python scripts/bench_analytic.py --quick    # width/8 only, small pilots (about 2 min)
"""

import argparse
import json
import os
import pathlib
import platform
import resource
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
_ENV_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def _clean_env_and_reexec():
    """Re-execute without the OpenBLAS overrides (before numpy is imported)."""
    if any(v in os.environ for v in _ENV_VARS):
        env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
        env["REFMEM_BENCH_REEXEC"] = "1"
        os.execve(sys.executable, [sys.executable] + sys.argv, env)


if __name__ == "__main__":
    _clean_env_and_reexec()

import numpy as np  # noqa: E402

from refmem import (AvgPool2d, Conv2d, CrossbarConfig, Dense, Flatten, Network,  # noqa: E402
                    ReLU, load_model, map_network, mc_sample_count)

MEMSE = {   # quoted, not rerun (no PyTorch here): see docs/performance.md for the provenance
    "without_power_s": 36.6, "with_power_s": 82.7, "peak_gb": 4.6}
PAPER_A100 = {"UR": (26, 290), "UL": (243, 1982)}
SIGMA, LAM, GMIN = 0.01, 1.0, 0.0
KEPT_CALLS = 3          # timed calls with a kept workspace: the median is reported (VM noise)


# ---------------------------------------------------------------------- networks
def he_cnn13(seed=0, c_in=3, side=32):
    """Kern et al.'s 13-conv classification CNN with seeded He-scaled weights (old bench).

    3×3 convs with padding 1 in blocks 16,16 | 32,32 | 64,64,64 | 128,128,128 | 256,256,256,
    a ReLU after each conv, 2×2 average pooling after each block, dense 256→256, ReLU, dense
    256→10 (the weights of the old ``scripts/bench_13conv.py``: ``default_rng(0)``).
    """
    rng = np.random.default_rng(seed)
    layers, c = [], c_in
    for block in ([16, 16], [32, 32], [64, 64, 64], [128, 128, 128], [256, 256, 256]):
        for co in block:
            he = np.sqrt(2.0 / (9 * c))
            layers += [Conv2d(rng.normal(size=(co, c, 3, 3)) * he, rng.normal(size=co) * 0.05,
                              1, 1), ReLU()]
            c = co
        layers.append(AvgPool2d(2))
    he = np.sqrt(2.0 / 256)
    layers += [Flatten(), Dense(rng.normal(size=(256, 256)) * he, rng.normal(size=256) * 0.05),
               ReLU(), Dense(rng.normal(size=(10, 256)) * he, rng.normal(size=10) * 0.05)]
    return Network(layers, (c_in, side, side))


def bench_input(net, n, seed=1):
    """``n`` inputs uniform in [0, 1] of the network's input shape."""
    return np.random.default_rng(seed).uniform(0, 1, size=(n,) + tuple(net.input_shape))


def load_net(name):
    if name == "he_w1":
        return he_cnn13()
    return load_model(ROOT / "data" / "models" / f"fashion-mnist_cnn13_{name}.h5")


def config(mapping, mode, sigma=SIGMA):
    return CrossbarConfig(sigma=sigma, g_min=GMIN, lam=LAM, design="scalar", mapping=mapping,
                          relu_cov=mode)


# ---------------------------------------------------------------------- yardsticks
def gemm_rate(n=2000, reps=3):
    a = np.random.default_rng(0).random((n, n))
    a @ a
    t = time.perf_counter()
    for _ in range(reps):
        a @ a
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def blas_info():
    try:
        from threadpoolctl import threadpool_info       # optional (the dask extra)
    except ImportError:
        return []
    return [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                   "threading_layer")} for d in threadpool_info()]


def machine():
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem, 1),
            "python": platform.python_version(), "numpy": np.__version__,
            "load_average": os.getloadavg()}


# ---------------------------------------------------------------------- child: one configuration
def child(spec):
    """Time one analytic configuration in this (fresh) process; print a JSON line."""
    from refmem.propagate import propagate
    net = load_net(spec["net"])
    x = bench_input(net, spec.get("inputs", 1))
    mapped = map_network(net, config(spec["mapping"], spec["mode"], spec.get("sigma", SIGMA)))
    import warnings
    warnings.simplefilter("ignore")
    from refmem.moments import Workspace
    from refmem.moments.workspace import release_cache
    times = []
    kept_runs = []
    for k in range(spec.get("calls", 3)):
        if k < 2:               # first and warm: the default workspace (warm takes over the
            t = time.perf_counter()             # buffers the first call left to the process)
            res = propagate(mapped, x)
            times.append(time.perf_counter() - t)
            continue
        # kept: a workspace an earlier (untimed) call has mapped, timed KEPT_CALLS times
        release_cache()
        kept = Workspace()
        propagate(mapped, x, work=kept)
        for _ in range(spec.get("kept_calls", KEPT_CALLS)):
            t = time.perf_counter()
            res = propagate(mapped, x, work=kept)
            kept_runs.append(time.perf_counter() - t)
    out = {"first_s": times[0], "warm_s": times[1] if len(times) > 1 else None,
           "kept_s": float(np.median(kept_runs)) if kept_runs else None,
           "kept_min_s": min(kept_runs) if kept_runs else None,
           "kept_max_s": max(kept_runs) if kept_runs else None,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "mse_mean": float(res.mse_mean.mean()), "power": float(res.power.mean())}
    print("RESULT " + json.dumps(out), flush=True)


def run_child(spec, timeout=3600):
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"child {spec} failed:\n{r.stderr[-2000:]}")


# ---------------------------------------------------------------------- batch across inputs
def batch_across_inputs(name="w8", mapping="UR", mode="exact", workers=2, B=20):
    """Wall time of ``propagate(..., executor=Executor(workers))`` on B inputs (warm workers)."""
    from refmem.executor import Executor
    from refmem.propagate import propagate
    net = load_net(name)
    mapped = map_network(net, config(mapping, mode))
    x = bench_input(net, B)
    with Executor(workers=workers) as ex:
        propagate(mapped, x[:workers], executor=ex)                  # warm-up (Numba compile)
        t = time.perf_counter()
        propagate(mapped, x, executor=ex)
        return time.perf_counter() - t


# ---------------------------------------------------------------------- Monte-Carlo
def mc_pilot(name, mapping, sigma, n):
    """Pilot Monte-Carlo on one input: time per realization, mean and std of the squared error."""
    from refmem.montecarlo import monte_carlo
    net = load_net(name)
    x = bench_input(net, 1)
    mapped = map_network(net, config(mapping, "exact", sigma))
    monte_carlo(mapped, x, 2, seed=99)                               # warm-up
    t = time.perf_counter()
    res = monte_carlo(mapped, x, n, seed=0)
    dt = (time.perf_counter() - t) / n
    return {"t_mc_s": dt, "mean": float(res.extra["mse_per_input"][0]),
            "std": float(res.extra["mse_per_input_std"][0]), "pilot": n}


def fig6_rows(t_analytic, pilot):
    rows = []
    for z in (1.96, 2.33):
        for p in (0.01, 0.02, 0.05):
            n = mc_sample_count(pilot["mean"], pilot["std"], p, z=z)
            rows.append({"z": z, "p": p, "n": n,
                         "speedup": n * pilot["t_mc_s"] / t_analytic})
    return rows


# ---------------------------------------------------------------------- output
def write_h5(path, record):
    """The HDF5 result set (``kind = "bench_analytic"``, through :func:`refmem.io.write_result`):
    one row per timed analytic configuration and per Fig. 6 row, the whole record as JSON in
    the root attribute ``record``."""
    from refmem.io import write_result
    rows = record["analytic"]
    col = {k: np.array([np.nan if r.get(k) is None else r[k] for r in rows], dtype=np.float64)
           for k in ("first_s", "warm_s", "kept_s", "kept_min_s", "kept_max_s", "peak_rss_gb")}
    per = "per timed analytic configuration (row i of analytic_config)"
    ds = {
        "analytic_first_s": (col["first_s"], {
            "units": "s", "description": "wall time of the first analytic pass (moments and "
            f"power) in a fresh process, {per}", "equation": "theory §4-§8, §11"}),
        "analytic_warm_s": (col["warm_s"], {
            "units": "s", "description": "wall time of a warm analytic pass (the second call "
            "with the default workspace, which takes over the buffers the first call left to "
            f"the process; NaN when only one call ran), {per}",
            "equation": "theory §4-§8, §11"}),
        "analytic_kept_s": (col["kept_s"], {
            "units": "s", "description": f"median wall time of {KEPT_CALLS} calls given a "
            "workspace an earlier call has mapped (propagate(work=...), as a sweep or an "
            f"optimizer reuses it: no memory mapped; NaN when not run), {per}",
            "equation": "theory §15"}),
        "analytic_kept_min_s": (col["kept_min_s"], {
            "units": "s", "description": f"fastest of the same {KEPT_CALLS} calls, {per}",
            "equation": "theory §15"}),
        "analytic_kept_max_s": (col["kept_max_s"], {
            "units": "s", "description": f"slowest of the same {KEPT_CALLS} calls, {per}",
            "equation": "theory §15"}),
        "analytic_peak_rss_gb": (col["peak_rss_gb"], {
            "units": "GiB", "description": f"peak resident memory of the timing process, {per}"}),
        "analytic_config": (np.array([json.dumps(r["spec"]) for r in rows], dtype="S"), {
            "units": "1", "description": "JSON of each timed configuration: network, mapping, "
            "ReLU covariance rule (and inputs, sigma when not the defaults)"}),
    }
    f6 = record["fig6"]
    if f6:
        ds["fig6_speedup"] = (np.array([r["speedup"] for r in f6], dtype=np.float64), {
            "units": "1", "description": "Kern et al. Fig. 6 speed-up n * t_MC / t_analytic "
            "(n * t_MC extrapolated from the pilot, not run), per row of fig6_config",
            "equation": "Eq. (46)"})
        ds["fig6_n"] = (np.array([r["n"] for r in f6]), {
            "units": "1", "description": "Monte-Carlo sample count for relative error p at "
            "confidence z from the pilot's mean and standard deviation, per row of fig6_config",
            "equation": "Eq. (46)"})
        ds["fig6_config"] = (np.array([json.dumps({k: r[k] for k in ("net", "mapping", "sigma",
                                                                      "z", "p", "pilot")})
                                       for r in f6], dtype="S"), {
            "units": "1", "description": "JSON of each Fig. 6 row: network, mapping, sigma, "
            "z, p and the pilot's realization count"})
    attrs = {"command": " ".join(["scripts/bench_analytic.py"] + sys.argv[1:]),
             "record": json.dumps(record, default=float)}
    write_result(path, "bench_analytic", ds, attrs=attrs,
                 allow_nonfinite=("analytic_warm_s", "analytic_kept_s",
                                  "analytic_kept_min_s", "analytic_kept_max_s"))


def fmt(v, nd=1):
    return "—" if v is None else f"{v:.{nd}f}"


def kept_cell(r):
    """``median (min–max)`` of the kept calls of one configuration."""
    if r.get("kept_s") is None:
        return "—"
    if r.get("kept_min_s") is None:
        return fmt(r["kept_s"])
    return f"{r['kept_s']:.1f} ({r['kept_min_s']:.1f}–{r['kept_max_s']:.1f})"


def write_doc(path, rec):
    m = rec["machine"]
    L = ["# Performance of the analytic pass", "",
         "Measured by `scripts/bench_analytic.py` (issue 15); numbers below are from the run "
         f"recorded on {rec['date']} on this machine: {m['cpu']}, {m['cores']} cores, "
         f"{m['memory_gb']} GB, Python {m['python']}, numpy {m['numpy']}, BLAS "
         f"{rec['blas']}. Load average at the start: {m['load_average']}"
         + (" (**a shared machine: timings are inflated; see the ratios**)."
            if m["load_average"][0] > 1.5 else "."), "",
         f"Yardsticks of the same run: numpy float64 GEMM {rec['gemm_gflops']:.0f} GFLOP/s "
         "(2000×2000). The benchmark re-executes itself with `OPENBLAS_CORETYPE` and "
         "`OPENBLAS_L2_SIZE` unset (this machine sets them for old OpenBLAS builds; a current "
         "numpy is about 1.6× slower with them); tests and CI never change them.", "",
         "Setting: one input uniform in [0, 1], σ = 0.01, λ = 1, g_min = 0, scalar design, "
         "power computed, float64. `first` is the first call in a fresh process (Numba "
         "kernels are cached on disk), `warm` a second call (its default workspace takes "
         "over the buffers the first call left to the process), `kept` the median of "
         f"{KEPT_CALLS} calls given a workspace that an earlier call has mapped "
         "(`propagate(..., work=W)`, as a σ sweep or an optimizer keeps it: no memory to "
         "map), with the fastest and slowest of them in brackets; peak RSS is the process's.",
         "",
         "| network | mapping | ReLU cov | first (s) | warm (s) | kept (s) | peak RSS (GB) | "
         "one MC realization (s) | warm / MC realization |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in rec["analytic"]:
        s = r["spec"]
        tmc = rec["mc_one"].get(f"{s['net']}/{s['mapping']}")
        ratio = (r["warm_s"] / tmc) if (tmc and r.get("warm_s")) else None
        L.append(f"| {s['net']} | {s['mapping']} | {s['mode']} | {fmt(r['first_s'])} | "
                 f"{fmt(r.get('warm_s'))} | {kept_cell(r)} | "
                 f"{fmt(r['peak_rss_gb'], 2)} | "
                 f"{fmt(tmc, 3) if tmc else '—'} | {fmt(ratio)} |")
    L += ["", "Targets (2 cores, quiet machine): full-width UR exact with power ≤ 10 s per "
          "input (Taylor ≤ 5 s), peak RSS ≤ 6 GB; UL ≤ 15 s; width/8, 20 inputs, UR exact ≤ 4 s. "
          "In a batch, every input after the first runs as `kept` (one workspace for the call); "
          "only the first call of a process maps its memory.",
          ""]
    if rec.get("batch"):
        b = rec["batch"]
        L += [f"## Width/8 CNN, {b.get('inputs', 20)} inputs, UR, exact", "",
              f"- both cores inside the kernels (one process): {b['inside_s']:.1f} s",
              f"- both cores across inputs (2 processes, 1 thread each): {b['across_s']:.1f} s",
              ""]
    L += ["## Runtime study of Kern et al. Fig. 6 (trained CNNs)", "",
          "Per input: t_MC is one Monte-Carlo realization on that input (the pilot's time per "
          "realization); the estimated quantity is that input's squared error averaged over "
          "outputs; n from Eq. (46) with the pilot's mean and standard deviation; "
          "`n × t_MC` is **extrapolated** from the pilot (not run); t_analytic is a warm "
          "exact call with power. The paper's figures (A100 GPU, their code): UR 26–290×, "
          "UL 243–1982×.", "",
          "| network | mapping | σ | pilot | t_MC (s) | t_analytic (s) | z | p | n | "
          "speed-up n·t_MC/t_analytic |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["fig6"]:
        L.append(f"| {r['net']} | {r['mapping']} | {r['sigma']} | {r['pilot']} | "
                 f"{r['t_mc_s']:.3f} | {r['t_analytic_s']:.2f} | {r['z']} | {r['p']:.0%} | "
                 f"{r['n']} | {r['speedup']:.{0 if r['speedup'] >= 10 else 1}f}× |")
    L += ["", "## The authors' implementation (quoted, not rerun)", "",
          "MemSE at commit 61bb208 (PyTorch on CPU, float32, first-order Taylor ReLU "
          "covariance), measured by us on a machine of this class on the same full-width "
          "network (seeded He weights, batchnorm fused; one input uniform in [0, 1], σ = 0.01, "
          f"λ = 1, g_min = 0, scalar design): **{MEMSE['without_power_s']} s without power, "
          f"{MEMSE['with_power_s']} s with power, {MEMSE['peak_gb']} GB** peak (figures from "
          "issue 15; there is no PyTorch here, so this benchmark cannot rerun them). Ratios "
          "against refmem's full-width UR rows:", ""]
    for r in rec["analytic"]:
        s = r["spec"]
        if s["net"] == "he_w1" and s["mapping"] == "UR" and r.get("warm_s"):
            L.append(f"- refmem {s['mode']}: {r['warm_s']:.1f} s → MemSE with power / refmem "
                     f"= {MEMSE['with_power_s'] / r['warm_s']:.1f}×, MemSE without power / "
                     f"refmem = {MEMSE['without_power_s'] / r['warm_s']:.1f}×")
    L += ["", "Before issue 15 (round 1, same machine class): full-width UR exact with power "
          "96–153 s, 4.5–4.7 GB; width/8 UR 20 inputs 167 s, UL 34 s. Previous run of this "
          "benchmark (2026-12-01 00:01 UTC, before the row-major signal term, the workspace and "
          "the negligible-pair floor): full-width UR exact 42.6 s warm, 4.57 GB; UL exact "
          "26.2 s; width/8 UR 0.64 s; 20 inputs across 2 processes 8.7 s. Run of "
          "2026-12-01 04:26 UTC (before the row-at-a-time ReLU series, the plane kernel of "
          "the signal term and the upper-triangle hand-off to pooling): full-width UR exact "
          "20.9 s warm, 20.1 s kept, 2.83 GB; Taylor 10.5 s; UL exact 12.1 s. Run of "
          "2026-12-01 08:49 UTC (before the branch-free routing of the ReLU pairs, the "
          "buffered mirror, the division-free patch_gram and Eq. (28) in the mirror's pass): "
          "full-width UR exact 13.3 s warm, 12.9 s kept, 2.84 GB; Taylor 6.6 s warm, 5.8 s "
          "kept; UL exact 8.8 s warm. Run of 2026-12-01 10:03 UTC (before the recycled "
          "default workspace, so `warm` mapped its memory afresh): full-width UR exact 10.0 s "
          "warm, 8.7 s kept; Taylor 7.3 s warm, 5.1 s kept; UL exact 7.8 s warm. Run of "
          "2026-12-01 10:33 UTC (before the Taylor pass computed only what Eq. (28) reads; "
          "one kept call): full-width UR exact 10.1 s warm, 9.4 s kept; Taylor 4.7 s warm, "
          "5.4 s kept; UL exact 7.4 s warm. The exact `kept` path did not change between "
          "those two runs: its spread (8.7 against 9.4 s, and one Monte-Carlo realization "
          "0.060 against 0.090 s) is this virtual machine's run-to-run variation, hence the "
          "median of several kept calls since.", "",
          "## How to rerun", "", "```", "python scripts/bench_analytic.py            "
          "# full run, writes bench_analytic.h5 and docs/performance.md",
          "python scripts/bench_analytic.py --quick    # width/8 only, small pilots", "```", "",
          "Run it on an otherwise idle machine: every timing is wall time."]
    pathlib.Path(path).write_text("\n".join(L) + "\n")


# ---------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width/8 only, small pilots")
    ap.add_argument("--out", default="bench_analytic.h5")
    ap.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(json.loads(args.child))

    nets = ["w8"] if args.quick else ["he_w1", "w1", "w8"]
    rec = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "blas": ", ".join(f"{b['internal_api']} {b['version']} ({b['num_threads']} threads, "
                             f"{b['architecture']})" for b in blas_info()),
           "env_cleaned": os.environ.get("REFMEM_BENCH_REEXEC") == "1",
           "gemm_gflops": gemm_rate(), "analytic": [], "mc_one": {}, "fig6": []}
    print(json.dumps({k: rec[k] for k in ("machine", "blas", "gemm_gflops", "env_cleaned")}),
          flush=True)
    for name in nets:
        for mapping in ("UR", "UL"):
            for mode in ("exact", "taylor"):
                spec = {"net": name, "mapping": mapping, "mode": mode}
                r = run_child(spec)
                r["spec"] = spec
                rec["analytic"].append(r)
                print(json.dumps(r), flush=True)
            pil = mc_pilot(name, mapping, SIGMA, 4 if (name != "w8" or mapping == "UL") else 16)
            rec["mc_one"][f"{name}/{mapping}"] = pil["t_mc_s"]
            print(f"{name} {mapping}: one MC realization {pil['t_mc_s']:.3f} s", flush=True)

    t = time.perf_counter()
    B = 4 if args.quick else 20
    r = run_child({"net": "w8", "mapping": "UR", "mode": "exact", "inputs": B, "calls": 2})
    rec["batch"] = {"inputs": B, "inside_s": r["warm_s"], "across_s": batch_across_inputs(B=B)}
    print(json.dumps(rec["batch"]), flush=True)

    pilots = {"w8": 64 if args.quick else 256, "w1": 32}
    for name in (["w8"] if args.quick else ["w8", "w1"]):
        for mapping in ("UR", "UL"):
            for sigma in (0.01, 0.05):
                ta = run_child({"net": name, "mapping": mapping, "mode": "exact",
                                "sigma": sigma, "calls": 2})["warm_s"]
                n_pilot = pilots[name]
                if mapping == "UL":            # one UL realization draws every Toeplitz device
                    n_pilot = 8 if name == "w1" else (16 if args.quick else 64)
                pil = mc_pilot(name, mapping, sigma, n_pilot)
                for row in fig6_rows(ta, pil):
                    row.update(net=name, mapping=mapping, sigma=sigma, pilot=n_pilot,
                               t_mc_s=pil["t_mc_s"], t_analytic_s=ta)
                    rec["fig6"].append(row)
                print(json.dumps(rec["fig6"][-6:]), flush=True)
    rec["total_s"] = time.perf_counter() - t
    write_h5(args.out, rec)
    write_doc(args.doc, rec)
    print(f"wrote {args.out} and {args.doc}")


if __name__ == "__main__":
    main()
