"""Command-line interface: ``refmem info | mc | moments | budget | prepare | demo | golden | check``.

The one home of argparse in the package (other modules hold the computation; a new subcommand
adds one ``cmd_<name>(args)`` handler and one ``sub.add_parser(...)`` block here). Every command
builds its crossbar/noise settings through the one :class:`CrossbarConfig` (the same options
everywhere, crossbar layers numbered 0..n−1 as ``refmem info`` shows them), checks its output
before any computation and writes it through :mod:`refmem.io` (atomic; never over an input,
a non-regular file or a file of another kind without ``--force``). Result files follow
``docs/result_format.md``. Bad input prints one line ``refmem: error: …`` on stderr and exits
with status 2, leaving no output file behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ._version import __version__
from .config import CrossbarConfig
from .errors import ConfigError, DataError, RefmemError, UsageError

EXIT_USER_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors raised as :class:`~refmem.errors.UsageError` (one line
    ``refmem: error: …`` from :func:`main`, no usage block; the usage stays in ``--help``).
    Subcommand parsers inherit the class."""

    def error(self, message):
        where = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        raise UsageError(f"{where}{message} (see {self.prog} --help)")


# ---------------------------------------------------------------------- input helpers
def load_npy(path, what="input") -> np.ndarray:
    """Load a ``.npy`` array (no pickles) with a one-line error on failure."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{what} file not found: {p}")
    try:
        arr = np.load(p, allow_pickle=False)
    except Exception as e:  # numpy raises ValueError/OSError/EOFError on malformed files
        raise DataError(f"{what} file {p} is not a valid .npy array ({type(e).__name__})") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{what} file {p} must hold one array (.npy), not an archive")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{what} file {p} must be numeric, got dtype {arr.dtype}")
    return arr


def read_sigma_table(path):
    """CSV with a header row naming the columns ``g`` and ``sigma`` (any order)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"sigma table not found: {p}")
    if not p.is_file():
        raise DataError(f"sigma table {p} is not a regular file")
    try:
        lines = [l.strip() for l in p.read_text().splitlines() if l.strip() and not l.startswith("#")]
        header = [h.strip().lower() for h in lines[0].split(",")]
        gi, si = header.index("g"), header.index("sigma")
        rows = [[float(c) for c in l.split(",")] for l in lines[1:]]
        g = np.array([r[gi] for r in rows])
        s = np.array([r[si] for r in rows])
    except (IndexError, ValueError, UnicodeDecodeError, OSError):
        raise DataError(f"sigma table {p} must be a CSV with a header 'g,sigma' and numeric rows") from None
    return (g, s)


def _floats(text, name):
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be a number or a comma-separated list of numbers, got {text!r}") from None


def parse_gu(text):
    """``G`` (one value), ``G0,G1,…`` (one per crossbar layer) or ``FILE.npz`` (column design)."""
    if text.endswith(".npz"):
        p = Path(text)
        if not p.exists():
            raise DataError(f"g_u file not found: {p}")
        try:
            with np.load(p, allow_pickle=False) as z:
                out = {}
                for k in z.files:
                    key = k.replace("layer_", "").replace("layer", "")
                    out[int(key)] = np.asarray(z[k], dtype=np.float64)
        except ValueError:
            raise DataError(f"g_u file {p}: keys must be crossbar layer indices ('0', '1', …)") from None
        except Exception as e:
            raise DataError(f"g_u file {p} is not a valid .npz archive ({type(e).__name__})") from None
        return out
    vals = _floats(text, "--gu")
    if not vals:
        raise ConfigError("--gu is empty")
    return vals[0] if len(vals) == 1 else tuple(vals)


def parse_bits(text):
    if text is None:
        return None
    if not text.strip():
        raise ConfigError("--bits is empty (give K, K0,K1,… or 'none')")
    out = []
    for t in text.split(","):
        t = t.strip().lower()
        if t in ("none", "-", ""):
            out.append(None)
        else:
            try:
                out.append(int(t))
            except ValueError:
                raise ConfigError(f"--bits must be integers (or 'none'), got {text!r}") from None
    return out[0] if len(out) == 1 else tuple(out)


def add_crossbar_options(p: argparse.ArgumentParser, *, sweep=False):
    """The crossbar / noise options shared by every command (one CrossbarConfig)."""
    g = p.add_argument_group("crossbar and noise (CrossbarConfig)")
    g.add_argument("--sigma", default=None, help="device noise std σ (conductance unit), "
                   "default 0" + ("; a comma-separated list runs a σ sweep" if sweep else ""))
    g.add_argument("--sigma-table", metavar="FILE.csv", help="σ(g) table: CSV columns g,sigma "
                   "(linear interpolation; an error outside its range)")
    g.add_argument("--alpha", default="0",
                   help="multiplicative weight noise (1+αN(0,1))w of MohammadiRad & Sojodishijani"
                   + ("; a comma-separated list runs an α sweep" if sweep else ""))
    g.add_argument("--bits", help="k-bit quantization: K or K0,K1,… per crossbar layer ('none' to skip one)")
    g.add_argument("--quant-mode", choices=["fixed", "dither"], default="fixed",
                   help="fixed: program q(W); dither: subtractive dither (the Δ²/12 model)")
    g.add_argument("--gmin", type=float, default=0.0, help="g_min (default 0)")
    g.add_argument("--gmax", type=float, default=float("inf"), help="g_max (default +inf)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--gu", help="g_u: G (every column), G0,G1,… (per crossbar layer) or "
                    "FILE.npz keyed by layer index (column design); default 1")
    ex.add_argument("--lam", type=float, help="λ for every column instead of g_u (g_u = g_min + λ w^u)")
    if sweep:
        g.add_argument("--gu-sweep", metavar="G1,G2,…", help="a sweep over one g_u for every "
                       "column (a comma in --gu means one value per layer)")
    g.add_argument("--design", choices=["scalar", "layer", "column"], default="scalar")
    g.add_argument("--mapping", choices=["UR", "UL"], default="UR", help="conv mapping")
    g.add_argument("--r", type=float, default=1.0, help="TIA gain (changes power only)")
    g.add_argument("--noisy-layers", default="all",
                   help="crossbar layers with noise: all, or a list such as first,last,-2,0")
    g.add_argument("--digital-bias", action="store_true",
                   help="add biases digitally (no bias row, no bias noise); default: bias row on the crossbar")


def add_force_option(p: argparse.ArgumentParser):
    """``--force``: replace an existing output that is not a refmem result of this command."""
    p.add_argument("--force", action="store_true",
                   help="replace an existing output file even if it is not a refmem result of "
                   "this command (never a directory, device, symbolic link or an input)")


def add_model_input_options(p: argparse.ArgumentParser, *, input_help=None):
    """The positional ``MODEL.h5`` and the required ``--input X.npy`` batch of every command
    that evaluates a model on inputs (``input_help``: what the batch is for this command)."""
    p.add_argument("model", metavar="MODEL.h5")
    p.add_argument("--input", required=True, metavar="X.npy", help=input_help)


def add_executor_options(p: argparse.ArgumentParser, *, workers_help, scheduler_help):
    """``--workers N`` / ``--scheduler ADDRESS``: the arguments of
    :class:`refmem.executor.Executor` for a command that evaluates independent items."""
    p.add_argument("--workers", type=int, help=workers_help)
    p.add_argument("--scheduler", metavar="ADDRESS", help=scheduler_help)


def config_from_args(args, sigma=None, alpha=None, g_u=None) -> CrossbarConfig:
    """The one :class:`CrossbarConfig` of the crossbar options (``sigma``, ``alpha``, ``g_u``:
    the values of one sweep point, overriding the options)."""
    if sigma is None:
        if args.sigma is not None and args.sigma_table:
            raise ConfigError("--sigma and --sigma-table exclude each other (the table gives σ(g))")
        sig = [0.0] if args.sigma is None else _floats(args.sigma, "--sigma")
        if len(sig) != 1:
            raise ConfigError("--sigma takes one value here")
        sigma = sig[0]
    if alpha is None:
        al = _floats(str(args.alpha), "--alpha")
        if len(al) != 1:
            raise ConfigError("--alpha takes one value here")
        alpha = al[0]
    kw = dict(sigma=sigma, alpha=alpha, bits=parse_bits(args.bits), quant_mode=args.quant_mode,
              g_min=args.gmin, g_max=args.gmax, design=args.design, mapping=args.mapping, r=args.r,
              noisy_layers=args.noisy_layers, bias_on_crossbar=not args.digital_bias)
    if args.sigma_table:
        kw["sigma_table"] = read_sigma_table(args.sigma_table)
    if args.lam is not None:
        kw["lam"] = args.lam
    elif g_u is not None:
        kw["g_u"] = float(g_u)
    elif args.gu is not None:
        kw["g_u"] = parse_gu(args.gu)
    if getattr(args, "clip_negative", False):
        kw["clip_negative"] = True
    if getattr(args, "relu_cov", None):
        kw["relu_cov"] = args.relu_cov
    return CrossbarConfig(**kw)


def _load_inputs(args, network):
    x = network.check_input(load_npy(args.input, "input"))
    labels = None
    if getattr(args, "labels", None):
        labels = load_npy(args.labels, "labels")
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise DataError(f"labels have shape {labels.shape}, expected ({x.shape[0]},)")
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise DataError("labels must be integer class indices")
        labels = labels.astype(np.int64)
        if labels.min() < 0 or labels.max() >= network.n_out:
            raise DataError(f"labels must be in [0, {network.n_out - 1}]")
    cov = None
    if getattr(args, "input_cov", None):
        from .network import check_input_cov
        cov = load_npy(args.input_cov, "input covariance").astype(np.float64)
        check_input_cov(cov, x.shape[0], int(np.prod(network.input_shape)))
    return x, labels, cov


def _inputs(args) -> dict:
    """The input files of a run (role → path as given), for the output checks and provenance."""
    roles = ("model", "input", "labels", "input_cov", "targets", "sigma_table")
    out = {r: getattr(args, r) for r in roles if getattr(args, r, None)}
    gu = getattr(args, "gu", None)
    if gu and str(gu).endswith(".npz"):
        out["gu"] = gu
    return out


def _check_output(args, kind):
    """Preflight of ``-o`` before any computation (refmem.io.check_output)."""
    from .io import check_output

    return check_output(args.output, kind, _inputs(args), force=getattr(args, "force", False))


# ---------------------------------------------------------------------- commands
def cmd_info(args):
    from .modelfile import load_model

    from .results import crossbar_index_of_layers, layer_table

    net = load_model(args.model)
    rows = net.describe()
    fused = net.fused()
    for d, xb in zip(rows, crossbar_index_of_layers(net)):
        d["crossbar_index"] = xb
    info = {"model": str(args.model), "input_shape": list(net.input_shape),
            "input_preprocessing": net.input_preprocessing, "output_shape": list(net.output_shape),
            "n_crossbar_layers": len(fused.crossbar_positions()), "layers": rows,
            "fused_layers": layer_table(net)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model {args.model}: input {tuple(net.input_shape)}"
          + (f" ({net.input_preprocessing})" if net.input_preprocessing else "")
          + f" -> output {tuple(net.output_shape)}; {info['n_crossbar_layers']} crossbar layers after batchnorm fusion")
    print("xb = crossbar layer index, as used by --noisy-layers, --bits, --gu G0,G1,… and the "
          "per-layer results")
    print(f"{'#':>3} {'xb':>3} {'type':<10} {'input':<14} {'output':<14} crossbar (rows x cols incl. bias row)")
    for d in rows:
        idx = d["crossbar_index"]
        xbi = "" if idx is None else (str(idx) if d["type"] in ("dense", "conv2d") else f"→{idx}")
        xb = ""
        if "crossbar" in d:
            xb = "{} x {}".format(*d["crossbar"])
        elif "crossbar_UR" in d:
            xb = ("UR {} x {} (x{} MVMs); UL {} x {}".format(*d["crossbar_UR"], d["crossbar_UR_mvms"],
                                                            *d["crossbar_UL"]))
        print(f"{d['index']:>3} {xbi:>3} {d['type']:<10} {str(tuple(d['in_shape'])):<14} "
              f"{str(tuple(d['out_shape'])):<14} {xb}")
    return 0


def sweep_configs(args) -> tuple:
    """The sweep points of ``--sigma S1,S2``, ``--alpha A1,A2`` and ``--gu-sweep G1,G2``:
    their product, σ varying fastest. Returns ``(configs, axes, order, shape)``; ``axes`` holds
    only the parameters that are one scalar per point (no ``sigma`` with a σ table, no ``g_u``
    with per-layer or per-column g_u or ``--lam``)."""
    import itertools

    if args.sigma_table and args.sigma is not None:
        raise ConfigError("--sigma and --sigma-table exclude each other (the table gives σ(g))")
    sigmas = [0.0] if args.sigma is None else _floats(args.sigma, "--sigma")
    alphas = _floats(args.alpha, "--alpha")
    if not sigmas or not alphas:
        raise ConfigError("--sigma and --alpha need at least one value")
    gus = [None]
    if getattr(args, "gu_sweep", None) is not None:
        if args.gu is not None or args.lam is not None:
            raise ConfigError("--gu-sweep excludes --gu and --lam")
        gus = _floats(args.gu_sweep, "--gu-sweep")
        if not gus:
            raise ConfigError("--gu-sweep is empty")
    configs, axes = [], {"sigma": [], "alpha": [], "g_u": []}
    for g, a, sg in itertools.product(gus, alphas, sigmas):
        cfg = config_from_args(args, sigma=sg, alpha=a, g_u=g)
        configs.append(cfg)
        axes["sigma"].append(sg)
        axes["alpha"].append(a)
        axes["g_u"].append(cfg.g_u if isinstance(cfg.g_u, (int, float)) else np.nan)
    if args.sigma_table:
        del axes["sigma"]
    if args.lam is not None or np.any(np.isnan(axes["g_u"])):
        del axes["g_u"]
    return configs, {k: np.asarray(v, dtype=np.float64) for k, v in axes.items()}, \
        ["g_u", "alpha", "sigma"], [len(gus), len(alphas), len(sigmas)]


def _load_targets(args, network, B):
    if not getattr(args, "targets", None):
        return None
    t = load_npy(args.targets, "targets").astype(np.float64)
    K = network.n_out
    if t.ndim == 1 and K == 1:
        t = t[:, None]
    if t.shape != (B, K):
        raise DataError(f"targets have shape {t.shape}, expected ({B}, {K})")
    if not np.all(np.isfinite(t)):
        raise DataError("targets contain NaN or infinite values")
    return t


_NONFINITE_OK = ("mse_rel", "mse_rel_batch", "mse_rel_se", "mse_rel_batch_se")


def _write_sweep(args, out, sweep, net, extra):
    """Write a sweep (a single run is a sweep of one) in the result schema."""
    from .io import write_result
    from .results import layer_table

    table = layer_table(net)
    extra = dict(extra)
    order, shape = extra.pop("sweep_order"), extra.pop("sweep_shape")
    attrs = {"command": " ".join(["refmem"] + list(getattr(args, "argv", []) or [])),
             "config": sweep.configs[0], "configs": [c.to_dict() for c in sweep.configs],
             "sweep_order": order, "sweep_shape": shape,
             "swept": [k for k, n in zip(order, shape) if n > 1],
             "fused_layers": table, "n_inputs": int(sweep.reference.shape[0]),
             "n_outputs": int(sweep.reference.shape[1]), **extra}
    write_result(out, sweep.kind, sweep.datasets(), attrs=attrs, groups=sweep.groups(table),
                 inputs=_inputs(args), force=args.force, allow_nonfinite=_NONFINITE_OK)


def _print_summary(sweep, out, quiet):
    from .results import summary_lines

    lines, warnings = summary_lines(sweep)
    for w in warnings:
        print(f"refmem: warning: {w}", file=sys.stderr)
    if not quiet:
        for line in lines:
            print(line)
        print(f"wrote {out}")


def cmd_mc(args):
    from .mapping import map_network
    from .modelfile import load_model
    from .montecarlo import monte_carlo
    from .results import Sweep

    out = _check_output(args, "mc")
    net = load_model(args.model)
    x, labels, cov = _load_inputs(args, net)
    targets = _load_targets(args, net, x.shape[0])
    if args.n is not None and args.n < 2:
        raise ConfigError("-n must be at least 2")
    configs, axes, order, shape = sweep_configs(args)
    results = []
    counts = []
    for i, cfg in enumerate(configs):
        mapped = map_network(net, cfg)
        n = args.n
        if args.precision is not None:          # pilot run, n from Eq. (46) (theory §10)
            from .montecarlo import precision_sample_count
            n, info, _ = precision_sample_count(mapped, x, args.precision, seed=args.seed,
                                                confidence=args.confidence, pilot=args.pilot,
                                                labels=labels, input_cov=cov)
            counts.append(info)
            if not args.quiet:
                print(f"sweep point {i}: n = {n} from Eq. (46) (pilot {args.pilot}, "
                      f"p = {args.precision:g}, confidence {args.confidence:g})", file=sys.stderr)
        # resumable: the accumulated statistics are checkpointed next to the output and a rerun
        # of the same command continues from there (bit-identical to an uninterrupted run)
        ckpt = out.with_name(f"{out.name}.mc-checkpoint-{i:02d}.npz")
        if ckpt.exists() and not args.quiet:
            print(f"resuming sweep point {i} from {ckpt}", file=sys.stderr)
        res = monte_carlo(mapped, x, n=n, seed=args.seed, labels=labels, input_cov=cov,
                          cov=args.cov, chunk=args.chunk, progress=not args.quiet,
                          checkpoint=ckpt, keep_checkpoint=True)
        res.targets = targets
        results.append(res)
    sweep = Sweep(results, axes, configs)
    ns = [int(r.n) for r in results]
    extra = {"seed": int(args.seed), "n": ns[0] if len(set(ns)) == 1 else ns,
             "seed_block": int(results[0].block), "sweep_order": order, "sweep_shape": shape}
    if counts:                                  # --precision: how n was chosen (Eq. (46))
        for key in ("precision", "confidence", "pilot", "z"):
            extra[f"mc_{key}"] = counts[0][key]
        extra["mc_n_per_input"] = [[int(v) for v in c["n_per_input"]] for c in counts]
    _write_sweep(args, out, sweep, net, extra)
    for i in range(len(configs)):
        out.with_name(f"{out.name}.mc-checkpoint-{i:02d}.npz").unlink(missing_ok=True)
    _print_summary(sweep, out, args.quiet)
    return 0


def _factor_closure(args):
    """``--factor-layers`` / ``--factor-nodes`` as a :class:`FactorClosure` (None without)."""
    from .moments.factor import FactorClosure
    if args.factor_layers is None:
        if args.factor_nodes is not None:
            raise ConfigError("--factor-nodes needs --factor-layers")
        return None
    try:
        layers = [int(v) for v in args.factor_layers.split(",")]
    except ValueError:
        raise ConfigError("--factor-layers must be comma-separated crossbar layer indices, "
                          f"got {args.factor_layers!r}") from None
    return (FactorClosure(layers) if args.factor_nodes is None     # its default K
            else FactorClosure(layers, args.factor_nodes))


def cmd_moments(args):
    from .mapping import map_network
    from .modelfile import load_model
    from .moments import propagate
    from .results import Sweep

    out = _check_output(args, "moments")
    net = load_model(args.model)
    x, labels, cov = _load_inputs(args, net)
    targets = _load_targets(args, net, x.shape[0])
    configs, axes, order, shape = sweep_configs(args)
    factor = _factor_closure(args)
    predicted_accuracy = None
    if labels is not None:
        try:
            from .accuracy import predicted_accuracy
        except ImportError:
            raise ConfigError("--labels on moments needs refmem.accuracy, which this build "
                              "does not have") from None
    results = []
    for cfg in configs:
        mapped = map_network(net, cfg)
        res = propagate(mapped, x, input_cov=cov, cov=args.cov or labels is not None,
                        per_layer=args.per_layer, progress=not args.quiet, factor=factor)
        res.targets = targets
        if labels is not None:
            acc = predicted_accuracy(res.mean, res.cov, labels, seed=0)
            res.accuracy = np.asarray(acc.per_input, dtype=np.float64)
            res.accuracy_mean = float(acc.mean)
            res.accuracy_error_bound = float(acc.error_bound)
            if not args.cov:
                res.cov = None
        results.append(res)
    sweep = Sweep(results, axes, configs)
    extra = {"relu_cov": args.relu_cov, "sweep_order": order, "sweep_shape": shape}
    if factor is not None:
        extra.update(factor_layers=list(factor.layers), factor_nodes=factor.nodes)
    _write_sweep(args, out, sweep, net, extra)
    _print_summary(sweep, out, args.quiet)
    return 0


def cmd_budget(args):
    from .budget import budget_table, error_budget, plot_budget
    from .io import write_result
    from .modelfile import load_model
    from .results import UNITS_LEGEND, layer_table

    png = Path(args.plot) if args.plot else Path(args.output).with_suffix(".png")
    out = _check_output(args, "budget")
    from .io import check_output
    check_output(png, "budget-figure", _inputs(args), force=args.force)
    if (args.mc is None) != (args.seed is None):
        raise ConfigError("Monte-Carlo in the budget needs both --mc N and --seed S")
    net = load_model(args.model)
    x, _, cov = _load_inputs(args, net)
    cfg = config_from_args(args)
    from .executor import Executor
    with Executor(workers=args.workers, scheduler=args.scheduler) as ex:
        res = error_budget(net, cfg, x, input_cov=cov, mc_n=args.mc, seed=args.seed,
                           map_fn=ex.map)
    plot_budget(res, png, model_name=Path(args.model).name, force=args.force)
    attrs = {"command": " ".join(["refmem"] + list(getattr(args, "argv", []))),
             "config": cfg, "configs": [cfg.to_dict()], "fused_layers": layer_table(net),
             "layer_names": res.layer_names, "layer_types": res.layer_types,
             "n_inputs": int(x.shape[0]), "figure": str(png)}
    if args.mc is not None:
        attrs.update(n=int(args.mc), seed=int(args.seed))
    write_result(out, "budget", res.datasets(), attrs=attrs, inputs=_inputs(args),
                 force=args.force, allow_nonfinite=("mse_alone_rel",))
    if not args.quiet:
        print(UNITS_LEGEND)
        for line in budget_table(res):
            print(line)
        print(f"wrote {out} and {png}")
    return 0


def cmd_prepare(args):
    from .datasets import prepare

    meta = prepare(args.dataset, args.preprocessing, args.output, split=args.split,
                   root=args.root, limit=args.limit, seed=args.seed, force=args.force)
    if not args.quiet:
        print(f"wrote {args.output}/X.npy {tuple(meta['shape'])} ({meta['preprocessing']})")
    return 0


def cmd_demo(args):
    from .demo import run_demo

    sigmas = _floats(args.sigmas, "--sigmas")
    if args.images < 1 or args.n < 2:
        raise ConfigError("--images must be >= 1 and -n >= 2")
    log = (lambda *a, **k: None) if args.quiet else print
    run_demo(args.output, sigmas=sigmas, n_images=args.images, n_mc=args.n, seed=args.seed,
             g_u=args.gu, model=args.model, train=args.train, epochs=args.epochs,
             progress=not args.quiet, log=log, force=args.force)
    return 0


# ---------------------------------------------------------------------- golden suite
def cmd_golden(args) -> int:
    """``refmem golden -o DIR``: write the golden suite (:func:`refmem.golden.write_suite`)."""
    import os

    from .golden import CASES, FORMAT, VERSION, read_suite, write_suite

    only = None
    if getattr(args, "only", None):
        only = [t.strip() for t in args.only.split(",") if t.strip()]
        known = [c for c, _ in CASES]
        bad = [c for c in only if c not in known]
        if bad:
            raise ConfigError(f"unknown case(s) {', '.join(bad)}; known: {', '.join(known)}")
    path = write_suite(args.output, only=only)
    if not getattr(args, "quiet", False):
        suite = read_suite(path)
        for cid, case in suite.cases.items():
            print(f"{cid:<22} {case.description}")
        print(f"wrote {len(suite.cases)} cases to {path} (format {FORMAT} v{VERSION}; "
              f"{os.path.getsize(path) / 1024:.0f} KiB) and {path.parent / 'SUMMARY.md'}")
    return 0


def cmd_check(args) -> int:
    """``refmem check GOLDEN [--candidate RESULT.h5]``: exit 0 if every quantity passes, 1 if
    any fails (bad files raise a one-line error: exit 2 from the CLI)."""
    from .golden import FORMAT, VERSION, check, read_suite, recompute_case, write_candidate

    if args.save and args.candidate:
        raise ConfigError("--save writes refmem's own recomputation; it cannot be combined with "
                          "--candidate")
    report = check(args.golden, args.candidate, only=args.only, tier=args.tier,
                   quantities=args.quantities)
    print(report.format(failures_only=args.quiet))
    if args.save:
        results = {}
        suite = read_suite(args.golden, only=list({r.case for r in report.rows}) or None)
        for cid, case in suite.cases.items():
            results[cid] = recompute_case(case.network, case.x, case.config, case.input_cov)
        write_candidate(args.save, results, attrs={"golden_format": FORMAT,
                                                   "golden_version": np.int64(VERSION),
                                                   "producer": "refmem check --save"})
        print(f"wrote refmem's candidate file {args.save}")
    return 0 if report.ok else 1


def add_golden_commands(subparsers) -> None:
    """Register ``refmem golden`` and ``refmem check`` on an argparse subparsers object."""
    from .golden import TIERS

    s = subparsers.add_parser(
        "golden", help="write the golden-reference suite (HDF5 test vectors for other implementations)",
        description="Write the versioned golden suite DIR/refmem-golden-v1.h5 (one group per case: "
                    "model, input, configuration, expected moments/MSE/power with tolerances) and "
                    "DIR/SUMMARY.md. Format: docs/golden.md.")
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--only", metavar="CASE,...", help="generate only these cases")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_golden)

    s = subparsers.add_parser(
        "check", help="compare a candidate result file (or refmem itself) with a golden suite",
        description="Per case and quantity: max abs / rel error and PASS/FAIL "
                    "(|c-e| <= atol + rtol|e|). Exit status 0 if all pass, 1 if any fails, "
                    "2 for a bad file. Without --candidate refmem recomputes every case (self-test).")
    s.add_argument("golden", metavar="GOLDEN", help="golden file or a directory holding one")
    s.add_argument("--candidate", metavar="RESULT.h5",
                   help="one group per case id in the result schema of `refmem moments`")
    s.add_argument("--only", metavar="CASE[:QUANTITY],...",
                   help="check only these cases (or single quantities); others are not required")
    s.add_argument("--quantities", metavar="PATTERN,...",
                   help="compare only quantities matching these patterns (e.g. 'mean,var,cov,layers/*')")
    s.add_argument("--tier", choices=sorted(TIERS), default="float64",
                   help="tolerance tier: float64 (default) or float32 (looser)")
    s.add_argument("--save", metavar="OUT.h5",
                   help="self-test only: also write refmem's recomputation as a candidate file")
    s.add_argument("-q", "--quiet", action="store_true", help="print failing rows and the summary only")
    s.set_defaults(func=cmd_check)


def cmd_optimize(args):
    """``refmem optimize``: the cheapest g_u for a bound on the MSE (Eq. (45); theory §22)."""
    from .executor import Executor
    from .io import check_output
    from .modelfile import load_model
    from .optimize import Problem, optimize, plot_archive, write_optimization

    out = _check_output(args, "optimize")
    png = out.with_suffix(".png")
    check_output(png, "optimize-figure", _inputs(args), force=args.force)
    if args.gu is not None or args.lam is not None:
        raise ConfigError("optimize chooses g_u itself; --gu and --lam are not used (see --init-gu)")
    if args.population < 3 or args.generations < 1:
        raise ConfigError("--population must be >= 3 and --generations >= 1")
    net = load_model(args.model)
    x = net.check_input(load_npy(args.input, "input"))
    targets = None if args.targets is None else _load_targets(args, net, x.shape[0])
    if args.mse_against == "targets" and targets is None:
        raise ConfigError("--mse-against targets needs --targets Y.npy")
    cfg = config_from_args(args)
    problem = Problem(net, cfg, x, args.max_mse, targets=targets, against=args.mse_against,
                      aggregate=args.mse_aggregate)
    ckpt = out.with_name(out.name + ".opt-checkpoint.h5")
    log = (lambda *a: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    with Executor(workers=args.workers, scheduler=args.scheduler) as ex:
        res = optimize(problem, args.design, population=args.population,
                       generations=args.generations, seed=args.seed, init_gu=args.init_gu,
                       init_std=args.init_std, mutation_std=args.mutation_std,
                       map_fn=ex.map, checkpoint=ckpt,
                       progress=not args.quiet, log=log)
    sol_cfg = cfg.with_(design=args.design, g_u=problem.gu_value(args.design, res.g_u))
    attrs = {"command": " ".join(["refmem"] + list(getattr(args, "argv", []) or [])),
             "config": sol_cfg, "seed": int(args.seed), "population": int(args.population),
             "generations": int(args.generations), "init_gu": args.init_gu,
             "init_std": args.init_std, "mutation_std": args.mutation_std,
             "mse_against": args.mse_against, "mse_aggregate": args.mse_aggregate,
             "n_passes": int(res.n_passes), "n_inputs": int(x.shape[0]), "figure": str(png)}
    write_optimization(out, res, {k: v for k, v in attrs.items() if v is not None},
                       inputs=_inputs(args), force=args.force)
    plot_archive(res, png, force=args.force)
    ckpt.unlink(missing_ok=True)
    if not res.feasible:
        print("refmem: warning: " + res.message, file=sys.stderr)
    if not args.quiet:
        print(f"{args.design} g_u ({res.g_u.size} genes, method {res.method}): power = "
              f"{res.power:.6g} G·V², constraint_value ({res.constraint}) = {res.mse:.6g} y² "
              f"(bound {res.max_mse:g}), "
              f"feasible = {res.feasible}")
        print(f"wrote {out} and {png}")
    return 0


def cmd_validate(args):
    """``refmem validate``: analytic MSE beside an unbiased control-variate Monte-Carlo MSE
    (theory §23)."""
    from .mapping import map_network
    from .modelfile import load_model
    from .validate import validate, write_validation

    out = _check_output(args, "validate")
    net = load_model(args.model)
    x, labels, _ = _load_inputs(args, net)
    cfg = config_from_args(args)
    mapped = map_network(net, cfg)
    res = validate(mapped, x, seed=args.seed, n=args.n, budget=args.budget, labels=labels,
                   pilot=args.pilot, control=args.control, antithetic=not args.no_antithetic,
                   progress=not args.quiet)
    attrs = {"command": " ".join(["refmem"] + list(getattr(args, "argv", []) or [])),
             "config": cfg, "seed": int(res.seed), "n": int(res.n), "n_pilot": int(res.n_pilot),
             "seed_block": int(res.block), "budget": res.budget, "control": res.control,
             "antithetic": bool(res.antithetic), "timing": res.timing,
             "n_inputs": int(x.shape[0])}
    write_validation(out, res, {k: v for k, v in attrs.items() if v is not None},
                     inputs=_inputs(args), force=args.force)
    if not args.quiet:
        b = res.batch
        print(f"n = {res.n} draws" + (" (+ their mirrors)" if res.antithetic else "")
              + (f", chosen for a {res.budget:g} s budget (rerun with -n {res.n})"
                 if res.budget else ""))
        print(f"analytic MSE = {b['mse_analytic']:.6g} y²; unbiased MC MSE = "
              f"{b['mse_unbiased']:.6g} ± {1.96 * b['mse_unbiased_se']:.3g} y² (95 % CI); "
              f"relative bias = {100 * b['bias_rel']:+.2f} % ± {196 * b['bias_rel_se']:.2f} %")
        print(f"variance reduction = {b['variance_reduction']:.3g}x, efficiency gain per wall "
              f"time = {b['efficiency_gain']:.3g}x vs plain Monte-Carlo")
        print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="refmem", description="Noisy memristor-crossbar networks: "
                                "analytic moments, power and Monte-Carlo (reference implementation).")
    p.add_argument("--version", action="version", version=f"refmem {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("info", help="layers, shapes and crossbar sizes (UR and UL) of a model file")
    s.add_argument("model", metavar="MODEL.h5")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("mc", help="device-level Monte-Carlo simulation")
    add_model_input_options(s, input_help="inputs (B, *input_shape), used as given (float64)")
    s.add_argument("--labels", metavar="Y.npy", help="class labels (B,) for accuracy")
    s.add_argument("--targets", metavar="T.npy", help="ground-truth outputs (B, K): the "
                   "mse_targets* quantities")
    s.add_argument("--input-cov", metavar="C.npy", help="random Gaussian input: covariance (L,L) or (B,L,L) around X")
    add_crossbar_options(s, sweep=True)
    s.add_argument("--clip-negative", action="store_true",
                   help="clip realised conductances at 0 (leaves the analytic model)")
    nn = s.add_mutually_exclusive_group(required=True)
    nn.add_argument("-n", type=int, help="Monte-Carlo realizations")
    nn.add_argument("--precision", type=float, metavar="P",
                    help="relative precision (fraction, 0.01 = 1%%) of every input's MSE: n from "
                         "Eq. (46) after a pilot run (largest over inputs, whole seed blocks)")
    s.add_argument("--confidence", type=float, default=0.95, metavar="C",
                   help="confidence of --precision (default 0.95, z = 1.96)")
    s.add_argument("--pilot", type=int, default=256, metavar="M",
                   help="pilot realizations for --precision (default 256, counted in n)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--cov", action="store_true", help="also estimate the output covariance")
    s.add_argument("--chunk", type=int, help="realizations held in memory at once (results do not depend on it)")
    s.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    add_force_option(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_mc)

    s = sub.add_parser("moments", help="analytic output moments, MSE and power")
    add_model_input_options(s)
    s.add_argument("--labels", metavar="Y.npy", help="class labels (B,): predicted accuracy "
                   "from the output moments (theory §21)")
    s.add_argument("--targets", metavar="T.npy", help="ground-truth outputs (B, K): the "
                   "mse_targets* quantities")
    s.add_argument("--input-cov", metavar="C.npy")
    add_crossbar_options(s, sweep=True)
    s.add_argument("--relu-cov", choices=["exact", "taylor"], default="exact",
                   help="ReLU covariance: exact bivariate (theory §8.2) or the paper's Taylor Eq. (28)")
    s.add_argument("--per-layer", action="store_true", help="store mean/var after every layer")
    s.add_argument("--cov", action="store_true", help="store the output covariance")
    s.add_argument("--factor-layers", metavar="I,J,...", help="factor closure (theory §20): "
                   "split the common mode at the ReLU after these crossbar layers (e.g. the "
                   "narrow late layers of a deep UR CNN; K^m components for m layers)")
    s.add_argument("--factor-nodes", type=int, metavar="K", help="Gauss-Hermite nodes per "
                   "split (default: FactorClosure's, 3)")
    s.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    add_force_option(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_moments)

    s = sub.add_parser("budget", help="per-layer error budget: output MSE with noise in each "
                       "crossbar layer alone, in all but it, and in all; per-layer power")
    add_model_input_options(s)
    s.add_argument("--input-cov", metavar="C.npy")
    add_crossbar_options(s)
    s.add_argument("--relu-cov", choices=["exact", "taylor"], default="exact",
                   help="ReLU covariance rule of the analytic pass")
    s.add_argument("--mc", type=int, metavar="N", help="also Monte-Carlo with N realizations "
                   "per configuration (needs --seed)")
    s.add_argument("--seed", type=int, help="Monte-Carlo seed (same draws for every configuration)")
    s.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    s.add_argument("--plot", metavar="OUT.png", help="bar chart (default: OUT.h5 with .png)")
    add_executor_options(s, workers_help="worker processes for the 2n+1 configurations "
                         "(default: the usable CPUs; 1 = in this process)",
                         scheduler_help="run on a Dask distributed scheduler")
    add_force_option(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_budget)

    s = sub.add_parser("prepare", help="write X.npy / Y.npy from a dataset with a named preprocessing")
    s.add_argument("dataset", help="mnist5k, fashion-mnist, mnist-idx, cifar10, diabetes, naval")
    s.add_argument("--preprocessing", required=True,
                   help="pixels/255 (flat), pixels/255-image (C,H,W), pixels/255-pad32 (C,32,32) "
                   "for images; none or standardize (train-split statistics) for tables")
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--split", default="test", choices=["train", "test"])
    s.add_argument("--root", help="dataset directory or file (IDX folder, CIFAR batches, naval data.txt)")
    s.add_argument("--limit", type=int, help="keep N samples: stratified over the classes "
                   "(floor(N/K) each, the remainder to the first classes) or, for regression "
                   "data, the first N after a shuffle seeded by --seed")
    s.add_argument("--seed", type=int, default=0, help="seed of the stratified MNIST-5k split and of "
                   "the 80/20 diabetes and naval splits")
    add_force_option(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("demo", help="the main job: analytic vs Monte-Carlo MSE and accuracy of the "
                       "shipped MNIST-5k MLP over a sweep of device noise σ")
    s.add_argument("-o", "--output", default="demo_out", metavar="DIR",
                   help="output directory for demo.h5 and demo.png (default demo_out)")
    s.add_argument("--sigmas", default="0,0.01,0.02,0.05,0.1,0.2,0.3",
                   help="device noise levels σ (comma-separated)")
    s.add_argument("--images", type=int, default=200, help="MNIST-5k test images (default 200)")
    s.add_argument("-n", type=int, default=200, help="Monte-Carlo realizations per σ (default 200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--gu", type=float, default=1.0, help="g_u (layer-wise design; default 1)")
    s.add_argument("--model", metavar="MODEL.h5", help="another flat-784 MNIST model file")
    s.add_argument("--train", action="store_true", help="train the 784-100-10 MLP first with "
                   "refmem's own Adam (MNIST-5k training split) instead of using the shipped one")
    s.add_argument("--epochs", type=int, default=30, help="training epochs with --train")
    add_force_option(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("optimize", help="the cheapest g_u (scalar, per layer or per column) whose "
                       "analytic MSE meets a bound: Eq. (45), GA + KKT baseline")
    add_model_input_options(s, input_help="the fixed evaluation batch")
    s.add_argument("--targets", metavar="Y.npy", help="ground truth (B, outputs) or (B,)")
    s.add_argument("--max-mse", type=float, required=True, metavar="NU", help="the bound ν")
    s.add_argument("--mse-against", choices=["reference", "targets"], default="reference",
                   help="MSE against the noiseless network (default) or the targets")
    s.add_argument("--mse-aggregate", choices=["mean", "max"], default="mean",
                   help="over inputs, of the per-input MSE (mean over outputs)")
    add_crossbar_options(s)
    s.add_argument("--population", type=int, default=100)
    s.add_argument("--generations", type=int, default=20, help="N_gen per GA stage")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--init-gu", type=float, help="centre of the first GA population "
                   "(default: the scalar g_u meeting the bound, by bisection)")
    s.add_argument("--init-std", type=float, help="std of the initial population "
                   "(default 0.1 (g_u_init - g_min))")
    s.add_argument("--mutation-std", type=float, help="initial std of the GA's Gaussian mutation, "
                   "decaying linearly to 0 (default 0.1 (g_max - g_min), theory §12)")
    add_executor_options(s, workers_help="local worker processes (default: the available CPUs; "
                         "1 = serial)", scheduler_help="Dask distributed scheduler address")
    s.add_argument("-o", "--output", required=True, metavar="OUT.h5",
                   help="result file; the archive figure goes to OUT.png")
    add_force_option(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_optimize)

    s = sub.add_parser("validate", help="analytic MSE beside an unbiased control-variate "
                       "Monte-Carlo MSE with its 95 %% CI and the relative bias (theory §23)")
    add_model_input_options(s, input_help="inputs (B, *input_shape)")
    s.add_argument("--labels", metavar="Y.npy", help="class labels (B,) for the Monte-Carlo accuracy")
    add_crossbar_options(s)
    s.add_argument("--relu-cov", choices=["exact", "taylor"], default="exact",
                   help="ReLU covariance of the analytic pass")
    nb = s.add_mutually_exclusive_group(required=True)
    nb.add_argument("-n", type=int, help="Monte-Carlo draws (each with its mirrored draw)")
    nb.add_argument("--budget", type=float, metavar="SECONDS",
                    help="wall-time budget: n from a timed pilot, whole seed blocks (recorded)")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--pilot", type=int, default=64, help="pilot draws that fit β (default 64)")
    s.add_argument("--control", choices=["tangent", "fixed-mask"], default="tangent",
                   help="control variate: first-order response (default) or the network with "
                   "frozen ReLU masks")
    s.add_argument("--no-antithetic", action="store_true", help="no mirrored draws")
    s.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    add_force_option(s)
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_validate)

    add_golden_commands(sub)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere before a "--" (also after the subcommand)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for i, a in enumerate(argv) if not (i < end and a == "--debug")]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            raise UsageError("no command given (see refmem --help)")
        args.argv = list(argv)
        # floating-point overflow shows up as inf/NaN in the results, which the writer
        # refuses with one line; numpy's RuntimeWarnings would only add lines to stderr
        with np.errstate(all="ignore"):
            return args.func(args)
    except RefmemError as e:
        if debug:
            raise
        print("refmem: error: " + " ".join(str(e).split()), file=sys.stderr)
        return EXIT_USER_ERROR
    except BrokenPipeError:
        # the reader went away (e.g. `refmem info … | head`): stop quietly; route what is
        # left in stdout's buffer to /dev/null so the interpreter's final flush stays silent
        _silence_stdout()
        return 141
    except KeyboardInterrupt:
        print("refmem: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("refmem: error: out of memory (reduce the batch, -n or --chunk)", file=sys.stderr)
        return 1
    except Exception as e:  # an internal error: still one line unless --debug
        if debug:
            raise
        msg = " ".join(str(e).split())
        print(f"refmem: internal error: {type(e).__name__}: {msg} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 1
    finally:
        from .io import release_outputs
        release_outputs()


def _silence_stdout():
    import os

    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return                                   # not a real file (e.g. captured in tests)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
