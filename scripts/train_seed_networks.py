#!/usr/bin/env python
"""Train the seed papers' networks with refmem's framework-free trainer (resumable).

Three families (sub-commands), each writing a refmem model file (``refmem.save_model``) with
``input_preprocessing`` and the training metadata as root attributes:

``mlp``
    MohammadiRad & Sojodishijani (seed 000): 784-N-10 and 784-N-N-10, ReLU, softmax
    cross-entropy, for N in ``--hidden`` (default 50 100 200 500) and ``--depth`` (1 and 2
    hidden layers), on MNIST-5k (seeded stratified split, ``--split-seed``) and, with
    ``--dataset fashion-mnist``, on the full Fashion-MNIST files. Inputs ``pixels/255`` (flat,
    [0, 1]). Adam (Kingma & Ba 2015). The training time of every network goes into
    ``training_times.h5`` and ``training_times.md`` in ``--out-dir`` (cf. seed 000, Table I).
``regression``
    Kern et al. (seed 002, Sec. VI-A): standardised inputs -> 50 -> outputs, ReLU, MSE, Adam
    lr 0.01, 200 epochs; on the shipped diabetes set (1 output) or the UCI naval ``data.txt``
    (``--dataset naval --root PATH``, 2 outputs). Targets are standardised for training and the
    de-standardisation is folded into the last dense layer, so the saved network outputs
    targets in their original units (recorded in the attributes).
``cnn``
    Kern et al.'s 13-convolution CNN (``refmem.training.models.cnn13``): SGD momentum 0.9,
    weight decay 5e-4, lr 0.1 divided by 10 at ``--milestones`` (default 50 100 150), 200
    epochs; inputs ``pixels/255-pad32`` — Fashion-MNIST (1, 32, 32) by default, CIFAR-10 with
    ``--dataset cifar10 --root DIR`` (3, 32, 32), or MNIST-5k for smoke runs. ``--width-div 8``
    trains the reduced-width variant. ``--max-steps N`` stops after N optimizer steps (a smoke
    run); running the same command again resumes.

Resuming: every run keeps a checkpoint ``<work-dir>/<name>.ckpt.h5`` (end of every epoch and
every ``--checkpoint-every`` steps) and its settings ``<name>.run.json``. Re-running the same
command continues from the checkpoint (bit-identical to an uninterrupted run); changed
settings are refused unless ``--restart``. A finished model file is skipped unless
``--force``. Never run in CI.

Examples::

    python scripts/train_seed_networks.py mlp --hidden 100 --depth 1
    python scripts/train_seed_networks.py regression --dataset diabetes
    python scripts/train_seed_networks.py cnn --width-div 8 --epochs 2
    python scripts/train_seed_networks.py cnn --max-steps 1          # smoke run, full width
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

import refmem
from refmem import datasets as D
from refmem.errors import RefmemError
from refmem.io import provenance_attrs, write_attrs
from refmem.training import SGD, Adam, DeviceNoise, MultiplicativeNoise, StepLR, Trainer, cnn13, mlp

ROOT = Path(__file__).resolve().parents[1]


# ============================================================================ data
def load_data(dataset, preprocessing, root=None, split_seed=0, limit_train=None):
    """Preprocessed (x_train, y_train, x_test, y_test, info) via :mod:`refmem.datasets`."""
    xtr_raw, ytr, itr = D.load_split(dataset, "train", root, split_seed)
    xte_raw, yte, ite = D.load_split(dataset, "test", root, split_seed)
    xtr, pinfo = D.apply_preprocessing(preprocessing, xtr_raw, xtr_raw)
    xte, _ = D.apply_preprocessing(preprocessing, xte_raw, xtr_raw)
    if limit_train is not None:
        xtr, ytr = xtr[:limit_train], ytr[:limit_train]
    info = {"dataset": dataset, "dataset_source": itr["source"],
            "split_method": itr["split_info"]["method"], "preprocessing_info": pinfo}
    if "indices" in itr["split_info"] and isinstance(itr["split_info"]["indices"], list):
        info["split_seed"] = split_seed
        info["train_indices"] = np.asarray(itr["split_info"]["indices"], dtype=np.int32)
        info["test_indices"] = np.asarray(ite["split_info"]["indices"], dtype=np.int32)
    for k in ("features", "targets", "dropped_constant_features"):
        if k in itr:
            info[k] = itr[k]
    return xtr, ytr, xte, yte, info


# ============================================================================ helpers
def make_noise(args):
    if getattr(args, "alpha", None):
        return MultiplicativeNoise(args.alpha)
    if getattr(args, "sigma", None):
        return DeviceNoise(args.sigma, g_u=args.g_u, g_min=args.g_min, design=args.design)
    return None


def noise_suffix(noise):
    if noise is None:
        return ""
    d = noise.to_dict()
    if d["kind"] == "multiplicative":
        return f"_alpha{d['alpha']:g}"
    return f"_sigma{d['sigma']:g}-gu{d['g_u'][0]:g}-{d['design']}"


def check_run_config(work, name, cfg, restart):
    """Refuse to resume a checkpoint written with other settings (unless ``restart``)."""
    cfg_path = work / f"{name}.run.json"
    ck = work / f"{name}.ckpt.h5"
    if restart:
        for p in (cfg_path, ck):
            if p.exists():
                p.unlink()
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        changed = {k for k in set(old) | set(cfg) if old.get(k) != cfg.get(k) and k != "epochs"}
        if changed:
            raise SystemExit(f"error: {cfg_path} was written with other settings "
                             f"({', '.join(sorted(changed))}); use --restart to start over")
    cfg_path.write_text(json.dumps(cfg, indent=1, sort_keys=True))
    return ck


def jsonable(v):
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return v


def finish(trainer, name, args, info, xtr, ytr, xte, yte, preprocessing, extra=None,
           fold=None):
    """Evaluate, save the model file (checked by reloading it) and record the timing."""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    attrs = {"model_name": name, "refmem_version": refmem.__version__,
             "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                 timespec="seconds"),
             "trained_by": "scripts/train_seed_networks.py " + " ".join(sys.argv[1:])}
    attrs.update(trainer.metadata())
    for k, v in info.items():
        attrs[k] = jsonable(v)
    attrs.update({k: jsonable(v) for k, v in (extra or {}).items()})
    res = {}
    if trainer.loss.classification:
        res["train_accuracy"] = trainer.evaluate(xtr, ytr)["accuracy"]
        res["test_accuracy"] = trainer.evaluate(xte, yte)["accuracy"]
    net = trainer.model.to_network(preprocessing, attrs)
    if fold is not None:
        fold(net)
    if not trainer.loss.classification:
        # regression metrics in the original target units (after folding)
        for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
            pred = net.forward(x)
            res[f"{split}_mse"] = float(np.mean((pred - y.reshape(pred.shape)) ** 2))
    net.attrs.update(res)
    if len(json.dumps(net.attrs.get("training_history", ""))) > 40000:
        net.attrs["training_history"] = json.dumps(json.loads(net.attrs["training_history"])[-50:])
    path = out_dir / f"{name}.h5"
    refmem.save_model(net, path, dtype=np.dtype(args.save_dtype))
    back = refmem.load_model(path)
    if trainer.loss.classification:
        acc = float(np.mean(np.argmax(back.forward(xte), 1) == yte))
        res["test_accuracy_saved"] = acc          # after float32 storage, via Network.forward
    print(f"saved {path} ({path.stat().st_size / 1e3:.0f} kB): "
          + ", ".join(f"{k}={v:.4f}" for k, v in res.items())
          + f", training time {trainer.train_seconds:.1f} s")
    record_time(out_dir, name, trainer, res)
    return res


def record_time(out_dir, name, trainer, res):
    """Add/replace one row of ``training_times.h5`` and regenerate ``training_times.md``."""
    import h5py

    h5 = out_dir / "training_times.h5"
    rows = {}
    if h5.exists():
        with h5py.File(h5, "r") as f:
            for g in f:
                rows[g] = {k: (v.decode() if isinstance(v, bytes) else
                               (v.item() if hasattr(v, "item") else v))
                           for k, v in f[g].attrs.items()}
    m = trainer.model
    rows[name] = {"train_seconds": float(trainer.train_seconds), "epochs": int(trainer.epoch),
                  "steps": int(trainer.step), "batch_size": trainer.batch_size,
                  "n_params": m.n_params, "dtype": str(m.dtype),
                  "optimizer": trainer.optimizer.name,
                  **{k: float(v) for k, v in res.items()}}
    import platform
    attrs = {**provenance_attrs(), "format": "refmem-result", "kind": "training-times",
             "machine": platform.processor() or platform.machine(),
             "description": "wall-clock training time per network "
                            "(scripts/train_seed_networks.py)"}
    from refmem.io import atomic_h5
    # force: the table read above is rewritten (files of refmem 0.1 carry no kind attribute)
    with atomic_h5(h5, "training-times", force=True) as f:
        write_attrs(f, attrs)
        for g, r in sorted(rows.items()):
            grp = f.create_group(g)
            for k, v in r.items():
                grp.attrs[k] = v
    cols = ["train_seconds", "epochs", "n_params", "batch_size", "optimizer", "train_accuracy",
            "test_accuracy", "train_mse", "test_mse"]
    lines = ["# Training times (scripts/train_seed_networks.py)", "",
             f"Machine: {attrs['machine']}; numpy {np.__version__}. Wall-clock seconds of the "
             "training loop (evaluation excluded).", "",
             "| network | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for g, r in sorted(rows.items()):
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4f}" if isinstance(v, float) and c != "train_seconds"
                         else (f"{v:.1f}" if isinstance(v, float) else str(v)))
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    (out_dir / "training_times.md").write_text("\n".join(lines) + "\n")


def log(line):
    print(line, flush=True)


def run(trainer, name, args, xtr, ytr, xte, yte, epochs, **fit_kw):
    t0 = time.perf_counter()
    trainer.fit(xtr, ytr, epochs, x_val=xte, y_val=yte, **fit_kw)
    print(f"{name}: {trainer.epoch} epochs, {trainer.step} steps, "
          f"{time.perf_counter() - t0:.1f} s in this call")
    return trainer.epoch >= epochs


# ============================================================================ commands
def cmd_mlp(args):
    prep = "pixels/255"
    xtr, ytr, xte, yte, info = load_data(args.dataset, prep, args.root, args.split_seed)
    noise = make_noise(args)
    for depth in args.depth:
        for N in args.hidden:
            hidden = [N] * depth
            arch = "-".join(map(str, [xtr.shape[1], *hidden, 10]))
            name = f"{args.dataset}_mlp_{arch}{noise_suffix(noise)}"
            out = Path(args.out_dir) / f"{name}.h5"
            if out.exists() and not args.force:
                print(f"{out} exists; skipped (--force retrains)")
                continue
            work = Path(args.work_dir)
            work.mkdir(parents=True, exist_ok=True)
            cfg = {k: v for k, v in vars(args).items() if k not in ("func", "force", "restart",
                                                                    "progress", "hidden", "depth")}
            cfg["arch"] = arch
            ck = check_run_config(work, name, cfg, args.restart)
            model = mlp(xtr.shape[1], hidden, 10, seed=args.init_seed, dtype=np.dtype(args.dtype))
            tr = Trainer(model, "cross_entropy", Adam(args.lr, weight_decay=args.weight_decay),
                         batch_size=args.batch_size, seed=args.seed, noise=noise,
                         progress=args.progress, checkpoint=ck, log=log)
            if run(tr, name, args, xtr, ytr, xte, yte, args.epochs, max_steps=args.max_steps):
                finish(tr, name, args, info, xtr, ytr, xte, yte, prep,
                       extra={"architecture": f"MLP {arch}, ReLU (seed 000)",
                              "init_seed": args.init_seed})


def cmd_regression(args):
    prep = "standardize"
    xtr, ytr, xte, yte, info = load_data(args.dataset, prep, args.root, args.split_seed)
    ytr2 = ytr.reshape(len(ytr), -1)
    n_out = ytr2.shape[1]
    t_mean, t_std = ytr2.mean(axis=0), ytr2.std(axis=0)
    ztr = (ytr2 - t_mean) / t_std
    zte = (yte.reshape(len(yte), -1) - t_mean) / t_std
    arch = f"{xtr.shape[1]}-{args.hidden}-{n_out}"
    noise = make_noise(args)
    name = f"{args.dataset}_mlp_{arch}{noise_suffix(noise)}"
    out = Path(args.out_dir) / f"{name}.h5"
    if out.exists() and not args.force:
        print(f"{out} exists; skipped (--force retrains)")
        return
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in vars(args).items() if k not in ("func", "force", "restart", "progress")}
    ck = check_run_config(work, name, cfg, args.restart)
    model = mlp(xtr.shape[1], args.hidden, n_out, seed=args.init_seed, dtype=np.dtype(args.dtype))
    tr = Trainer(model, "mse", Adam(args.lr, weight_decay=args.weight_decay),
                 batch_size=args.batch_size, seed=args.seed, noise=noise, progress=args.progress,
                 checkpoint=ck, log=log)
    if not run(tr, name, args, xtr, ztr, xte, zte, args.epochs, max_steps=args.max_steps):
        return

    def fold(net):
        # y = t_std z + t_mean folded into the last dense layer (exact affine map)
        last = net.layers[-1]
        last.weight = last.weight * t_std[:, None]
        last.bias = last.bias * t_std + t_mean

    finish(tr, name, args, info, xtr, ytr.reshape(len(ytr), -1), xte, yte.reshape(len(yte), -1),
           prep, fold=fold,
           extra={"architecture": f"MLP {arch}, ReLU, MSE (Kern et al. regression net)",
                  "init_seed": args.init_seed, "target_mean": t_mean, "target_std": t_std,
                  "target_scaling": "trained on standardised targets (train-split mean/std, "
                                    "ddof=0); de-standardisation folded into the last dense "
                                    "layer, outputs are in the original target units",
                  "train_mse_standardised": tr.evaluate(xtr, ztr)["loss"],
                  "test_mse_standardised": tr.evaluate(xte, zte)["loss"]})


def cmd_cnn(args):
    prep = "pixels/255-pad32"
    root = args.root
    xtr, ytr, xte, yte, info = load_data(args.dataset, prep, root, args.split_seed,
                                         args.limit_train)
    dtype = np.dtype(args.dtype)
    xtr, xte = xtr.astype(dtype), xte.astype(dtype)
    name = f"{args.dataset}_cnn13_w{args.width_div}"
    out = Path(args.out_dir) / f"{name}.h5"
    if out.exists() and not args.force:
        print(f"{out} exists; skipped (--force retrains)")
        return
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    cfg = {k: v for k, v in vars(args).items()
           if k not in ("func", "force", "restart", "progress", "max_steps")}
    ck = check_run_config(work, name, cfg, args.restart)
    model = cnn13(args.width_div, in_channels=xtr.shape[1], p_block=args.p_block,
                  p_classifier=args.p_classifier, seed=args.init_seed, dtype=dtype)
    print(model.describe().splitlines()[-1], f"({name}, {dtype})")
    tr = Trainer(model, "cross_entropy",
                 SGD(args.lr, momentum=args.momentum, weight_decay=args.weight_decay),
                 batch_size=args.batch_size, seed=args.seed,
                 lr_schedule=StepLR(args.milestones), progress=args.progress, checkpoint=ck,
                 checkpoint_every=args.checkpoint_every, drop_last=True, log=log)
    if run(tr, name, args, xtr, ytr, xte, yte, args.epochs, max_steps=args.max_steps):
        finish(tr, name, args, info, xtr, ytr, xte, yte, prep,
               extra={"architecture": f"cnn13 width_div={args.width_div} (Kern et al. Fig. 3)",
                      "init_seed": args.init_seed, "dropout_block": args.p_block,
                      "dropout_classifier": args.p_classifier})
    else:
        print(f"stopped after {tr.step} steps; checkpoint {ck} (run again to resume)")


# ============================================================================ CLI
def build_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out-dir", default=str(ROOT / "data" / "models"),
                        help="where model files and training_times.{h5,md} go")
    common.add_argument("--work-dir", default=str(ROOT / "out" / "training"),
                        help="checkpoints and run settings (default out/training)")
    common.add_argument("--root", default=None, help="dataset folder/file (fashion-mnist, "
                        "cifar10, naval)")
    common.add_argument("--seed", type=int, default=0,
                        help="trainer seed (shuffling, dropout, noise)")
    common.add_argument("--init-seed", type=int, default=0, help="weight initialisation seed")
    common.add_argument("--split-seed", type=int, default=0, help="seeded train/test split")
    common.add_argument("--save-dtype", choices=["float64", "float32"], default="float32",
                        help="storage dtype of the model file")
    common.add_argument("--max-steps", type=int, default=None,
                        help="stop after this many optimizer steps (resume later)")
    common.add_argument("--force", action="store_true", help="retrain even if the model exists")
    common.add_argument("--restart", action="store_true", help="discard an existing checkpoint")
    common.add_argument("--no-progress", dest="progress", action="store_false")
    noise = argparse.ArgumentParser(add_help=False)
    g = noise.add_argument_group("noise-aware training (refmem.training.noise)")
    g.add_argument("--alpha", type=float, default=None,
                   help="multiplicative weight noise (1 + alpha N(0,1)) w (seed 000)")
    g.add_argument("--sigma", type=float, default=None, help="device noise std per device")
    g.add_argument("--g-u", type=float, default=1.0)
    g.add_argument("--g-min", type=float, default=0.0)
    g.add_argument("--design", choices=["scalar", "layer", "column"], default="scalar")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mlp", parents=[common, noise],
                       help="seed 000 MLPs on MNIST-5k / Fashion-MNIST")
    m.add_argument("--dataset", choices=["mnist5k", "fashion-mnist", "mnist-idx"],
                   default="mnist5k")
    m.add_argument("--hidden", type=int, nargs="+", default=[50, 100, 200, 500])
    m.add_argument("--depth", type=int, nargs="+", choices=[1, 2], default=[1, 2])
    m.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    m.add_argument("--epochs", type=int, default=30)
    m.add_argument("--batch-size", type=int, default=64)
    m.add_argument("--lr", type=float, default=1e-3)
    m.add_argument("--weight-decay", type=float, default=0.0)
    m.set_defaults(func=cmd_mlp)

    r = sub.add_parser("regression", parents=[common, noise], help="Kern et al. regression MLP")
    r.add_argument("--dataset", choices=["diabetes", "naval"], default="diabetes")
    r.add_argument("--hidden", type=int, default=50)
    r.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    r.add_argument("--epochs", type=int, default=200)
    r.add_argument("--batch-size", type=int, default=32)
    r.add_argument("--lr", type=float, default=0.01)
    r.add_argument("--weight-decay", type=float, default=0.0)
    r.set_defaults(func=cmd_regression)

    c = sub.add_parser("cnn", parents=[common], help="Kern et al. 13-conv CNN")
    c.add_argument("--dataset", choices=["fashion-mnist", "cifar10", "mnist5k", "mnist-idx"],
                   default="fashion-mnist")
    c.add_argument("--dtype", choices=["float64", "float32"], default="float32",
                   help="training dtype (float32 default for the CNN)")
    c.add_argument("--width-div", type=int, default=1)
    c.add_argument("--epochs", type=int, default=200)
    c.add_argument("--milestones", type=int, nargs="*", default=[50, 100, 150])
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--lr", type=float, default=0.1)
    c.add_argument("--momentum", type=float, default=0.9)
    c.add_argument("--weight-decay", type=float, default=5e-4)
    c.add_argument("--p-block", type=float, default=0.2)
    c.add_argument("--p-classifier", type=float, default=0.5)
    c.add_argument("--checkpoint-every", type=int, default=50, help="steps between checkpoints")
    c.add_argument("--limit-train", type=int, default=None, help="use the first N training images")
    c.set_defaults(func=cmd_cnn)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RefmemError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
