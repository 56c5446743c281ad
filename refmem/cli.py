"""Command-line interface: ``refmem info | mc | moments | prepare | demo | golden | check``.

Every command builds its crossbar/noise settings through the one :class:`CrossbarConfig`
(the same options everywhere) and writes results atomically (``OUT.h5.partial`` renamed at the
end). Bad input — a missing or malformed file, a wrong shape, NaN weights, a negative σ, a g_u
outside (g_min, g_max], an unknown layer type — prints one line ``refmem: error: …`` on stderr
and exits with status 2, leaving no output file behind.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from . import __version__
from .config import CrossbarConfig
from .errors import ConfigError, DataError, RefmemError

EXIT_USER_ERROR = 2


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
    try:
        lines = [l.strip() for l in p.read_text().splitlines() if l.strip() and not l.startswith("#")]
        header = [h.strip().lower() for h in lines[0].split(",")]
        gi, si = header.index("g"), header.index("sigma")
        rows = [[float(c) for c in l.split(",")] for l in lines[1:]]
        g = np.array([r[gi] for r in rows])
        s = np.array([r[si] for r in rows])
    except (IndexError, ValueError, UnicodeDecodeError):
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
    g.add_argument("--sigma", default="0", help="device noise std σ (conductance unit); "
                   + ("a comma-separated list runs a σ sweep" if sweep else "default 0"))
    g.add_argument("--sigma-table", metavar="FILE.csv", help="σ(g) table: CSV columns g,sigma "
                   "(linear interpolation; an error outside its range)")
    g.add_argument("--alpha", type=float, default=0.0,
                   help="multiplicative weight noise (1+αN(0,1))w of MohammadiRad & Sojodishijani")
    g.add_argument("--bits", help="k-bit quantization: K or K0,K1,… per crossbar layer ('none' to skip one)")
    g.add_argument("--quant-mode", choices=["fixed", "dither"], default="fixed",
                   help="fixed: program q(W); dither: subtractive dither (the Δ²/12 model)")
    g.add_argument("--gmin", type=float, default=0.0, help="g_min (default 0)")
    g.add_argument("--gmax", type=float, default=float("inf"), help="g_max (default +inf)")
    ex = g.add_mutually_exclusive_group()
    ex.add_argument("--gu", help="g_u: G (every column), G0,G1,… (per crossbar layer) or "
                    "FILE.npz keyed by layer index (column design); default 1")
    ex.add_argument("--lam", type=float, help="λ for every column instead of g_u (g_u = g_min + λ w^u)")
    g.add_argument("--design", choices=["scalar", "layer", "column"], default="scalar")
    g.add_argument("--mapping", choices=["UR", "UL"], default="UR", help="conv mapping")
    g.add_argument("--r", type=float, default=1.0, help="TIA gain (changes power only)")
    g.add_argument("--noisy-layers", default="all",
                   help="crossbar layers with noise: all, or a list such as first,last,-2,0")
    g.add_argument("--digital-bias", action="store_true",
                   help="add biases digitally (no bias row, no bias noise); default: bias row on the crossbar")


def config_from_args(args, sigma=None) -> CrossbarConfig:
    sig = _floats(args.sigma, "--sigma") if sigma is None else [sigma]
    if len(sig) != 1:
        raise ConfigError("--sigma takes one value here")
    kw = dict(sigma=sig[0], alpha=args.alpha, bits=parse_bits(args.bits), quant_mode=args.quant_mode,
              g_min=args.gmin, g_max=args.gmax, design=args.design, mapping=args.mapping, r=args.r,
              noisy_layers=args.noisy_layers, bias_on_crossbar=not args.digital_bias)
    if args.sigma_table:
        kw["sigma_table"] = read_sigma_table(args.sigma_table)
    if args.lam is not None:
        kw["lam"] = args.lam
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
        cov = load_npy(args.input_cov, "input covariance").astype(np.float64)
        L = int(np.prod(network.input_shape))
        if cov.shape not in ((L, L), (x.shape[0], L, L)):
            raise DataError(f"input covariance has shape {cov.shape}, expected ({L}, {L}) or "
                            f"({x.shape[0]}, {L}, {L})")
        if not np.all(np.isfinite(cov)):
            raise DataError("input covariance contains NaN or infinite values")
    return x, labels, cov


def _check_output(path):
    p = Path(path)
    if p.parent != Path("") and not p.parent.exists():
        raise DataError(f"output directory does not exist: {p.parent}")
    return p


# ---------------------------------------------------------------------- commands
def cmd_info(args):
    from .modelfile import load_model

    net = load_model(args.model)
    rows = net.describe()
    fused = net.fused()
    info = {"model": str(args.model), "input_shape": list(net.input_shape),
            "input_preprocessing": net.input_preprocessing, "output_shape": list(net.output_shape),
            "n_crossbar_layers": len(fused.crossbar_positions()), "layers": rows}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model {args.model}: input {tuple(net.input_shape)}"
          + (f" ({net.input_preprocessing})" if net.input_preprocessing else "")
          + f" -> output {tuple(net.output_shape)}; {info['n_crossbar_layers']} crossbar layers after batchnorm fusion")
    print(f"{'#':>3} {'type':<10} {'input':<14} {'output':<14} crossbar (rows x cols incl. bias row)")
    for d in rows:
        xb = ""
        if "crossbar" in d:
            xb = "{} x {}".format(*d["crossbar"])
        elif "crossbar_UR" in d:
            xb = ("UR {} x {} (x{} MVMs); UL {} x {}".format(*d["crossbar_UR"], d["crossbar_UR_mvms"],
                                                            *d["crossbar_UL"]))
        print(f"{d['index']:>3} {d['type']:<10} {str(tuple(d['in_shape'])):<14} "
              f"{str(tuple(d['out_shape'])):<14} {xb}")
    return 0


def cmd_mc(args):
    from .hdf5io import atomic_h5, standard_attrs
    from .mapping import map_network
    from .modelfile import load_model
    from .montecarlo import monte_carlo

    out = _check_output(args.output)
    net = load_model(args.model)
    x, labels, cov = _load_inputs(args, net)
    sigmas = _floats(args.sigma, "--sigma")
    if not sigmas:
        raise ConfigError("--sigma is empty")
    if args.n < 2:
        raise ConfigError("-n must be at least 2")
    configs = [config_from_args(args, sigma=s) for s in sigmas]
    results = []
    for i, cfg in enumerate(configs):
        mapped = map_network(net, cfg)
        # resumable: the accumulated sums are checkpointed next to the output and a rerun of
        # the same command continues from there (bit-identical to an uninterrupted run)
        ckpt = out.with_name(f"{out.name}.mc-checkpoint-{i:02d}.npz")
        if ckpt.exists() and not args.quiet:
            print(f"resuming sigma={cfg.sigma:g} from {ckpt}", file=sys.stderr)
        results.append(monte_carlo(mapped, x, n=args.n, seed=args.seed, labels=labels,
                                   input_cov=cov, cov=args.cov, chunk=args.chunk,
                                   progress=not args.quiet, checkpoint=ckpt,
                                   keep_checkpoint=True))
    with atomic_h5(out) as f:
        attrs = standard_attrs(configs[0], command="mc", model=str(args.model),
                               input=str(args.input), seed=int(args.seed), n=int(args.n),
                               seed_block=int(results[0].block))
        for k, v in attrs.items():
            f.attrs[k] = v
        if len(results) == 1:
            for k, v in results[0].datasets().items():
                f.create_dataset(k, data=v)
        else:
            f.create_dataset("sigmas", data=np.asarray(sigmas))
            for i, (cfg, res) in enumerate(zip(configs, results)):
                g = f.create_group(f"sweep/{i:02d}")
                g.attrs["sigma"] = cfg.sigma
                g.attrs["config"] = cfg.to_json()
                for k, v in res.datasets().items():
                    g.create_dataset(k, data=v)
    for i in range(len(configs)):
        out.with_name(f"{out.name}.mc-checkpoint-{i:02d}.npz").unlink(missing_ok=True)
    if not args.quiet:
        for cfg, res in zip(configs, results):
            line = f"sigma={cfg.sigma:g}: MSE (mean over inputs and outputs) = {res.mse.mean():.6g}"
            if res.accuracy is not None:
                line += f", accuracy = {res.accuracy:.4f} ± {res.accuracy_se:.4f}"
            line += f", power = {res.power.mean():.6g}"
            print(line)
        print(f"wrote {out}")
    return 0


def cmd_moments(args):
    from .hdf5io import atomic_h5, standard_attrs
    from .mapping import map_network
    from .modelfile import load_model
    from .moments import propagate

    out = _check_output(args.output)
    net = load_model(args.model)
    x, _, cov = _load_inputs(args, net)
    cfg = config_from_args(args)
    mapped = map_network(net, cfg)
    res = propagate(mapped, x, input_cov=cov, cov=args.cov, per_layer=args.per_layer,
                    progress=not args.quiet)
    with atomic_h5(out) as f:
        for k, v in standard_attrs(cfg, command="moments", model=str(args.model),
                                   input=str(args.input)).items():
            f.attrs[k] = v
        f.attrs["mse_mean_overall"] = float(np.mean(res.mse_mean))
        f.attrs["mse_max_overall"] = float(np.max(res.mse_max))
        f.attrs["power_mean"] = float(np.mean(res.power))
        for k, v in res.datasets().items():
            f.create_dataset(k, data=v)
        for gname, dsets in (res.groups() if args.per_layer else {}).items():
            g = f.require_group(gname)
            for k, v in dsets.items():
                g.create_dataset(k, data=v)
    if not args.quiet:
        print(f"analytic MSE (mean over inputs and outputs) = {np.mean(res.mse_mean):.6g}, "
              f"max = {np.max(res.mse_max):.6g}, expected power = {np.mean(res.power):.6g}")
        print(f"wrote {out}")
    return 0


def cmd_prepare(args):
    from .datasets import prepare

    meta = prepare(args.dataset, args.preprocessing, args.output, split=args.split,
                   root=args.root, limit=args.limit, seed=args.seed)
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
             progress=not args.quiet, log=log)
    return 0


def cmd_validate(args):
    from .hdf5io import standard_attrs
    from .mapping import map_network
    from .modelfile import load_model
    from .validate import validate, write_validation

    out = _check_output(args.output)
    net = load_model(args.model)
    x, labels, _ = _load_inputs(args, net)
    cfg = config_from_args(args)
    mapped = map_network(net, cfg)
    res = validate(mapped, x, seed=args.seed, n=args.n, budget=args.budget, labels=labels,
                   pilot=args.pilot, control=args.control, antithetic=not args.no_antithetic,
                   progress=not args.quiet)
    attrs = standard_attrs(cfg, command="validate", model=str(args.model), input=str(args.input),
                           seed=int(res.seed), n=int(res.n), n_pilot=int(res.n_pilot),
                           seed_block=int(res.block), budget=res.budget, control=res.control,
                           antithetic=bool(res.antithetic), timing=res.timing)
    write_validation(out, res, attrs)
    if not args.quiet:
        b = res.batch
        print(f"n = {res.n} draws" + (" (+ their mirrors)" if res.antithetic else "")
              + (f", chosen for a {res.budget:g} s budget (rerun with -n {res.n})"
                 if res.budget else ""))
        print(f"analytic MSE = {b['mse_analytic']:.6g}; unbiased MC MSE = {b['mse_unbiased']:.6g} "
              f"± {1.96 * b['mse_unbiased_se']:.3g} (95 % CI); relative bias = "
              f"{100 * b['bias_rel']:+.2f} % ± {196 * b['bias_rel_se']:.2f} %")
        print(f"variance reduction = {b['variance_reduction']:.3g}x, efficiency gain per wall "
              f"time = {b['efficiency_gain']:.3g}x vs plain Monte-Carlo")
        print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="refmem", description="Noisy memristor-crossbar networks: "
                                "analytic moments, power and Monte-Carlo (reference implementation).")
    p.add_argument("--version", action="version", version=f"refmem {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("info", help="layers, shapes and crossbar sizes (UR and UL) of a model file")
    s.add_argument("model", metavar="MODEL.h5")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("mc", help="device-level Monte-Carlo simulation")
    s.add_argument("model", metavar="MODEL.h5")
    s.add_argument("--input", required=True, metavar="X.npy", help="inputs (B, *input_shape), used as given (float64)")
    s.add_argument("--labels", metavar="Y.npy", help="class labels (B,) for accuracy")
    s.add_argument("--input-cov", metavar="C.npy", help="random Gaussian input: covariance (L,L) or (B,L,L) around X")
    add_crossbar_options(s, sweep=True)
    s.add_argument("--clip-negative", action="store_true",
                   help="clip realised conductances at 0 (leaves the analytic model)")
    s.add_argument("-n", type=int, required=True, help="Monte-Carlo realizations")
    s.add_argument("--seed", type=int, required=True)
    s.add_argument("--cov", action="store_true", help="also estimate the output covariance")
    s.add_argument("--chunk", type=int, help="realizations held in memory at once (results do not depend on it)")
    s.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_mc)

    s = sub.add_parser("moments", help="analytic output moments, MSE and power")
    s.add_argument("model", metavar="MODEL.h5")
    s.add_argument("--input", required=True, metavar="X.npy")
    s.add_argument("--input-cov", metavar="C.npy")
    add_crossbar_options(s)
    s.add_argument("--relu-cov", choices=["exact", "taylor"], default="exact",
                   help="ReLU covariance: exact bivariate (spec §8.2) or the paper's Taylor Eq. (28)")
    s.add_argument("--per-layer", action="store_true", help="store mean/var after every layer")
    s.add_argument("--cov", action="store_true", help="store the output covariance")
    s.add_argument("-o", "--output", required=True, metavar="OUT.h5")
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_moments)

    s = sub.add_parser("prepare", help="write X.npy / Y.npy from a dataset with a named preprocessing")
    s.add_argument("dataset", help="mnist5k, fashion-mnist, mnist-idx, cifar10, diabetes, naval")
    s.add_argument("--preprocessing", required=True,
                   help="pixels/255 (flat), pixels/255-image (C,H,W), pixels/255-pad32 (C,32,32) "
                   "for images; none or standardize (train-split statistics) for tables")
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--split", default="test", choices=["train", "test"])
    s.add_argument("--root", help="dataset directory or file (IDX folder, CIFAR batches, naval data.txt)")
    s.add_argument("--limit", type=int, help="keep the first N samples")
    s.add_argument("--seed", type=int, default=0, help="seed of the stratified MNIST-5k split and of "
                   "the 80/20 diabetes and naval splits")
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
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("validate", help="analytic MSE beside an unbiased control-variate "
                       "Monte-Carlo MSE with its 95 % CI and the relative bias (theory §23)")
    s.add_argument("model", metavar="MODEL.h5")
    s.add_argument("--input", required=True, metavar="X.npy", help="inputs (B, *input_shape)")
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
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_validate)

    from .golden import add_golden_commands
    add_golden_commands(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    try:
        return args.func(args)
    except RefmemError as e:
        if args.debug:
            raise
        print("refmem: error: " + " ".join(str(e).split()), file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("refmem: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("refmem: error: out of memory (reduce the batch, -n or --chunk)", file=sys.stderr)
        return 1
    except Exception as e:  # an internal error: still one line unless --debug
        if args.debug:
            raise
        msg = " ".join(str(e).split())
        print(f"refmem: internal error: {type(e).__name__}: {msg} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
