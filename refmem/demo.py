"""``refmem demo`` — the main job for a new user, on data shipped with the package.

The shipped 784-100-10 MLP (trained by refmem's own trainer on the MNIST-5k training split,
see ``data/README.md``) is mapped onto noisy crossbars for a sweep of device noise levels σ.
For every σ the analytic pass (theory §4, §8, §9, §11) predicts the output MSE and the expected
power, and a device-level Monte-Carlo run measures them, with the classification accuracy.
The result set ``demo.h5`` and the figure ``demo.png`` (MSE vs σ, analytic against
Monte-Carlo with error bars; accuracy vs σ) are written atomically.

Result set ``demo.h5`` (the result schema of ``docs/result_format.md``, ``kind = "demo"``)::

    /                      attrs: format, kind, versions, created_utc, model, model_sha256,
                                  config (the layer-wise design actually used, σ per point in
                                  configs), fused_layers, n_images, n_mc, seed, split_seed
    /axes/sigma, /axes/g_u (P,)    the sweep
    /reference             (B, K)  noiseless outputs of the B images
    /reference_accuracy    ()      noiseless accuracy on the same images
    /analytic/…            the names of ``refmem moments`` (mse_batch (P,), mse_per_input (P, B),
                           power (P, B), …; accuracy (P, B), accuracy_mean and
                           accuracy_error_bound (P,) predicted from the moments, theory §21)
    /montecarlo/…          the names of ``refmem mc`` with their ``_se`` (mse_batch,
                           accuracy_mean, power, …)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .config import CrossbarConfig
from .errors import ConfigError, DataError

DEFAULT_SIGMAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
MODEL_NAME = "models/mnist5k_mlp_784-100-10.h5"


def _load_test_images(n_images, split_seed):
    from .datasets import load_mnist5k, mnist5k_split, stratified_subset

    images, labels = load_mnist5k()
    _, test_idx = mnist5k_split(split_seed)
    if n_images > test_idx.size:
        raise ConfigError(f"the MNIST-5k test split has {test_idx.size} images, "
                          f"asked for {n_images}")
    # a class-balanced subset: one image of every class in turn (rank within class, class)
    idx = test_idx[stratified_subset(labels[test_idx], n_images)]
    x = images[idx].reshape(len(idx), -1).astype(np.float64) / 255.0      # pixels/255
    return x, labels[idx].astype(np.int64)


def train_demo_model(output_dir, *, epochs=30, seed=0, progress=True, log=print):
    """Train the demo's 784-100-10 MLP with refmem's own trainer and write it to ``output_dir``.

    The recipe of the shipped model (``data/models/README.md``, recipe A): the MNIST-5k split
    ``mnist5k_split(0)`` (4,000 training images), ``pixels/255`` inputs, cross-entropy on
    unrectified logits, Adam (Kingma & Ba 2015) with lr 1e-3, batches of 64 shuffled with
    ``seed``, ``epochs`` epochs, float64. Returns the path of the model file.
    """
    from .datasets import load_mnist5k, mnist5k_split
    from .modelfile import save_model
    from .training import Adam, Trainer, mlp

    images, labels = load_mnist5k()
    tr_idx, te_idx = mnist5k_split(0)
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    model = mlp(784, 100, 10, seed=seed)
    trainer = Trainer(model, "cross_entropy", Adam(1e-3), batch_size=64, seed=seed,
                      progress=progress)
    trainer.fit(x[tr_idx], labels[tr_idx], int(epochs))
    acc = float(trainer.evaluate(x[te_idx], labels[te_idx])["accuracy"])
    attrs = trainer.metadata()
    attrs.update(split_seed=0, test_accuracy=acc, dataset="mnist5k",
                 architecture="MLP 784-100-10, ReLU (seed 000)", trained_by="refmem demo --train")
    path = Path(output_dir) / "mnist5k_mlp_784-100-10.h5"
    save_model(model.to_network("pixels/255", attrs), path)
    log(f"trained 784-100-10 MLP for {epochs} epochs: test accuracy {acc:.4f}; wrote {path}")
    return path


def run_demo(output_dir, *, sigmas=DEFAULT_SIGMAS, n_images=200, n_mc=200, seed=0,
             g_u=1.0, model=None, train=False, epochs=30, progress=True, log=print,
             force=False):
    """Run the demo; returns a dict of the per-σ figures written to ``demo.h5``.

    ``train=True`` first trains the MLP (:func:`train_demo_model`, ``epochs`` epochs) into
    ``output_dir`` and uses it instead of the shipped model. Everything that can be checked is
    checked before any computation, and before ``output_dir`` is created; a directory created
    here is removed again if the run fails before writing.
    """
    from .datasets import shipped_path
    from .io import check_output, release_output, write_result
    from .accuracy import predicted_accuracy
    from .mapping import map_network
    from .modelfile import load_model
    from .moments import propagate
    from .montecarlo import monte_carlo
    from .results import Sweep, layer_table

    # validate everything before creating the output directory or computing anything
    from .checks import check_count, check_seed

    seed = check_seed(seed)
    n_mc = check_count(n_mc, "the number of Monte-Carlo realizations n", minimum=2)
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.ndim != 1 or sig.size == 0 or np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise ConfigError("sigmas must be a non-empty list of finite values >= 0")
    if int(n_images) < 1 or int(n_mc) < 2:
        raise ConfigError("--images must be >= 1 and -n >= 2")
    if train and model is not None:
        raise ConfigError("give either a model file or --train, not both")
    if train and int(epochs) < 1:
        raise ConfigError("--epochs must be >= 1")
    base = CrossbarConfig(g_u=g_u, design="layer")
    net = model_path = None
    if not train:
        model_path = Path(model) if model is not None else shipped_path(MODEL_NAME)
        net = _check_model(load_model(model_path), model_path)
    if str(output_dir) == "":
        raise DataError("the output directory name is empty")
    out_dir = Path(output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"output {out_dir} exists and is not a directory")
    created = not out_dir.exists()
    if created and not out_dir.parent.is_dir():
        raise DataError(f"output directory does not exist: {out_dir.parent}")
    h5, png = out_dir / "demo.h5", out_dir / "demo.png"
    done = False
    try:
        try:
            out_dir.mkdir(exist_ok=True)
        except OSError as e:
            raise DataError(f"cannot create the output directory {out_dir}: "
                            f"{e.strerror or type(e).__name__}") from None
        inputs = {} if model_path is None else {"model": model_path}
        check_output(h5, "demo", inputs, force=force)
        check_output(png, "demo-figure", inputs, force=force)
        if train:
            model_path = train_demo_model(out_dir, epochs=epochs, seed=seed, progress=progress,
                                          log=log)
            net = _check_model(load_model(model_path), model_path)
        split_seed = int(net.attrs.get("split_seed", 0))
        x, y = _load_test_images(int(n_images), split_seed)
        ref_acc = float(np.mean(np.argmax(net.forward(x), axis=1) == y))
        log(f"model {model_path.name}: noiseless accuracy on {len(y)} MNIST-5k test images = "
            f"{ref_acc:.4f}")
        configs = [base.with_(sigma=float(s)) for s in sig]
        an_pts, mc_pts = [], []
        for s, cfg in zip(sig, configs):
            t0 = time.perf_counter()
            mapped = map_network(net, cfg)
            an = propagate(mapped, x, cov=True)
            pred = predicted_accuracy(an.mean, an.cov, y, seed=seed, n_points=1024)  # theory §21
            an.accuracy = np.asarray(pred.per_input, dtype=np.float64)
            an.accuracy_mean = float(pred.mean)
            an.accuracy_error_bound = float(pred.error_bound)
            an.cov = None                                   # used for the accuracy, not stored
            mc = monte_carlo(mapped, x, n=int(n_mc), seed=seed, labels=y, progress=progress)
            an_pts.append(an)
            mc_pts.append(mc)
            log(f"sigma={s:<6g} MSE analytic {an.mse_batch:.5g} y²  MC {mc.mse_batch:.5g} "
                f"± {mc.mse_batch_se:.2g} y²  accuracy predicted {an.accuracy_mean:.4f}  MC "
                f"{mc.accuracy_mean:.4f} ± {mc.accuracy_mean_se:.4f}  power analytic {an.power.mean():.5g}  MC "
                f"{mc.power.mean():.5g} ± {mc.power_se.mean():.2g} g·x²  "
                f"({time.perf_counter() - t0:.1f} s)")
        axes = {"sigma": sig, "g_u": np.full(sig.size, float(g_u))}
        an_sw, mc_sw = Sweep(an_pts, axes, configs), Sweep(mc_pts, axes, configs)
        res = {"an_mse": an_sw.mse_batch, "an_mse_max": an_sw.mse_max_per_input.mean(axis=1),
               "an_power": an_sw.power.mean(axis=1), "an_acc": an_sw.accuracy_mean,
               "an_acc_err": an_sw.accuracy_error_bound, "mc_mse": mc_sw.mse_batch,
               "mc_mse_se": mc_sw.mse_batch_se, "mc_acc": mc_sw.accuracy_mean,
               "mc_acc_se": mc_sw.accuracy_mean_se, "mc_power": mc_sw.power.mean(axis=1),
               "mc_power_se": mc_sw.power_se.mean(axis=1)}
        _plot(png, sig, res, ref_acc, len(y), int(n_mc), _labels(net, model_path, base))

        def strip(d):
            return {k: v for k, v in d.items() if not k.startswith("axes/") and k != "reference"}
        write_result(
            h5, "demo",
            {**{f"axes/{k}": v for k, v in axes.items()}, "reference": an_sw.reference,
             "reference_accuracy": np.float64(ref_acc)},
            groups={"analytic": strip(an_sw.datasets()), "montecarlo": strip(mc_sw.datasets())},
            attrs={"config": configs[0], "configs": [c.to_dict() for c in configs],
                   "swept": ["sigma"],
                   "fused_layers": layer_table(net), "n_images": int(len(y)),
                   "n_mc": int(n_mc), "seed": int(seed), "split_seed": split_seed,
                   "sweep_order": ["sigma"], "sweep_shape": [int(sig.size)],
                   "images": f"MNIST-5k test split (seed {split_seed}), class-balanced, "
                             "pixels/255"},
            inputs={"model": model_path}, force=force, allow_nonfinite=(
                "mse_rel", "mse_rel_batch", "mse_rel_se", "mse_rel_batch_se"))
        done = True
    finally:
        release_output(h5)
        release_output(png)
        if not done and created:
            try:
                out_dir.rmdir()                       # only when empty
            except OSError:
                pass
    log(f"wrote {h5} and {png}")
    return {"sigma": sig, "reference_accuracy": ref_acc, **res}


def _check_model(net, model_path):
    if net.input_shape != (784,):
        raise DataError(f"the demo needs a flat 784-input MNIST model, {model_path} expects "
                        f"{net.input_shape}")
    return net


def architecture(net) -> str:
    """A short name of the network's architecture, e.g. ``784-100-10 MLP`` or
    ``CNN (2 conv + 1 dense crossbar layers)``, from the layers themselves."""
    rows = net.describe()
    dense = [d for d in rows if d["type"] == "dense"]
    conv = [d for d in rows if d["type"] == "conv2d"]
    if dense and not conv:
        widths = [int(np.prod(dense[0]["in_shape"]))] + [int(np.prod(d["out_shape"]))
                                                          for d in dense]
        return "-".join(str(w) for w in widths) + " MLP"
    return f"CNN ({len(conv)} conv + {len(dense)} dense crossbar layers)"


def _labels(net, model_path, cfg) -> dict:
    """Title and axis labels of the demo figure from the model and configuration used."""
    gu = ", ".join(f"{float(v):g}" for v in np.ravel(np.asarray(cfg.g_u, dtype=np.float64)))
    return {"title": f"{architecture(net)} ({Path(model_path).name}) on a noisy memristor "
                     f"crossbar ({cfg.design} design, g_u = {gu})",
            "xlabel": f"device noise σ (std per device; g_min = {cfg.g_min:g}, g_u = {gu})"}


def _plot(path, sig, res, ref_acc, n_images, n_mc, labels):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    pos = (sig > 0) & (res["an_mse"] > 0)
    a1.plot(sig[pos], res["an_mse"][pos], "-", color="C0", label="analytic (theory §9)")
    a1.errorbar(sig[pos], res["mc_mse"][pos], yerr=2 * res["mc_mse_se"][pos], fmt="o",
                color="C1", ms=4, capsize=3, label=f"Monte-Carlo ±2 SE (n={n_mc})")
    if pos.any():                      # log axes need positive values (σ = 0 has MSE 0)
        a1.set_xscale("log")
        a1.set_yscale("log")
    else:
        a1.text(0.5, 0.5, "no σ > 0 in the sweep", ha="center", transform=a1.transAxes)
    a1.set_xlabel(labels["xlabel"])
    a1.set_ylabel("output MSE vs noiseless network (y²)")
    a1.legend()
    a1.grid(True, which="both", alpha=0.3)
    a2.errorbar(sig, res["mc_acc"], yerr=2 * res["mc_acc_se"], fmt="o-", color="C1", ms=4,
                capsize=3, label="Monte-Carlo ±2 SE")
    a2.plot(sig, res["an_acc"], "-", color="C0", label="predicted from the moments (theory §21)")
    a2.axhline(ref_acc, color="k", ls="--", lw=1, label="noiseless")
    a2.set_xlabel("device noise σ")
    a2.set_ylabel(f"accuracy ({n_images} MNIST-5k test images)")
    a2.legend()
    a2.grid(True, alpha=0.3)
    fig.suptitle(labels["title"])
    fig.tight_layout()
    from .io import write_png
    try:
        write_png(path, "demo-figure", fig, dpi=110)
    finally:
        plt.close(fig)
