"""``refmem demo`` — the main job for a new user, on data shipped with the package.

The shipped 784-100-10 MLP (trained by refmem's own trainer on the MNIST-5k training split,
see ``data/README.md``) is mapped onto noisy crossbars for a sweep of device noise levels σ.
For every σ the analytic pass (spec §4, §8, §9, §11) predicts the output MSE and the expected
power, and a device-level Monte-Carlo run measures them, with the classification accuracy.
The result set ``demo.h5`` and the figure ``demo.png`` (MSE vs σ, analytic against
Monte-Carlo with error bars; accuracy vs σ) are written atomically.

Result set layout (``demo.h5``)::

    /                      attrs: refmem_version, created_utc, config (JSON, σ = 0), model,
                                  n_images, n_mc, seed, split_seed
    /axes/sigma            (S,)
    /analytic/mse          (S,)    MSE averaged over outputs and images (spec §9)
    /analytic/mse_max      (S,)    mean over images of the max over outputs
    /analytic/power        (S,)    expected power per inference, mean over images (spec §11)
    /analytic/accuracy     (S,)    accuracy predicted from the Gaussian output moments
                                   (refmem.accuracy, theory §21), mean over images
    /analytic/accuracy_error_bound (S,)  its 99 % integration-error bound
    /montecarlo/mse, mse_se            (S,)
    /montecarlo/accuracy, accuracy_se  (S,)
    /montecarlo/power, power_se        (S,)
    /reference/accuracy    ()      noiseless accuracy on the same images
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .config import CrossbarConfig
from .errors import ConfigError, DataError

DEFAULT_SIGMAS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3)
MODEL_NAME = "models/mnist5k_mlp_784-100-10.h5"


def _load_test_images(n_images, split_seed):
    from .datasets import load_mnist5k, mnist5k_split

    images, labels = load_mnist5k()
    _, test_idx = mnist5k_split(split_seed)
    if n_images > test_idx.size:
        raise ConfigError(f"the MNIST-5k test split has {test_idx.size} images, "
                          f"asked for {n_images}")
    # a class-balanced subset: one image of every class in turn (rank within class, class)
    lab = labels[test_idx]
    rank = np.zeros(lab.size, dtype=np.int64)
    for c in np.unique(lab):
        rank[lab == c] = np.arange(np.count_nonzero(lab == c))
    idx = test_idx[np.lexsort((lab, rank))][:n_images]
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
             g_u=1.0, model=None, train=False, epochs=30, progress=True, log=print):
    """Run the demo; returns a dict of the arrays written to ``demo.h5``.

    ``train=True`` first trains the MLP (:func:`train_demo_model`, ``epochs`` epochs) into
    ``output_dir`` and uses it instead of the shipped model.
    """
    from .datasets import shipped_path
    from .hdf5io import atomic_h5, standard_attrs
    from .mapping import map_network
    from .modelfile import load_model
    from .moments import propagate
    from .montecarlo import monte_carlo
    from .accuracy import predicted_accuracy

    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if train:
        if model is not None:
            raise ConfigError("give either a model file or --train, not both")
        model = train_demo_model(out_dir, epochs=epochs, seed=seed, progress=progress, log=log)
    model_path = Path(model) if model is not None else shipped_path(MODEL_NAME)
    net = load_model(model_path)
    if net.input_shape != (784,):
        raise DataError(f"the demo needs a flat 784-input MNIST model, {model_path} expects "
                        f"{net.input_shape}")
    split_seed = int(net.attrs.get("split_seed", 0))
    x, y = _load_test_images(int(n_images), split_seed)
    sig = np.asarray(sigmas, dtype=np.float64)
    if sig.ndim != 1 or sig.size == 0 or np.any(sig < 0) or not np.all(np.isfinite(sig)):
        raise ConfigError("sigmas must be a non-empty list of finite values >= 0")
    base = CrossbarConfig(g_u=g_u, design="layer")
    ref_acc = float(np.mean(np.argmax(net.forward(x), axis=1) == y))
    log(f"model {model_path.name}: noiseless accuracy on {len(y)} MNIST-5k test images = "
        f"{ref_acc:.4f}")
    keys = ("an_mse", "an_mse_max", "an_power", "an_acc", "an_acc_err", "mc_mse", "mc_mse_se", "mc_acc", "mc_acc_se",
            "mc_power", "mc_power_se")
    res = {k: np.zeros(sig.size) for k in keys}
    for i, s in enumerate(sig):
        t0 = time.perf_counter()
        mapped = map_network(net, base.with_(sigma=float(s)))
        an = propagate(mapped, x, cov=True)
        pred = predicted_accuracy(an.mean, an.cov, y, seed=seed, n_points=1024)   # theory §21
        res["an_acc"][i], res["an_acc_err"][i] = pred.mean, pred.error_bound
        mc = monte_carlo(mapped, x, n=int(n_mc), seed=seed, labels=y, progress=progress)
        res["an_mse"][i] = an.mse.mean()
        res["an_mse_max"][i] = an.mse_max.mean()
        res["an_power"][i] = an.power.mean()
        res["mc_mse"][i] = mc.mse_overall
        res["mc_mse_se"][i] = mc.mse_overall_se
        res["mc_acc"][i], res["mc_acc_se"][i] = mc.accuracy, mc.accuracy_se
        res["mc_power"][i] = mc.power.mean()
        res["mc_power_se"][i] = mc.power_se.mean()
        log(f"sigma={s:<6g} MSE analytic {res['an_mse'][i]:.5g}  MC {res['mc_mse'][i]:.5g} "
            f"± {res['mc_mse_se'][i]:.2g}  accuracy {mc.accuracy:.4f} ± {mc.accuracy_se:.4f}  "
            f"power analytic {res['an_power'][i]:.5g}  MC {res['mc_power'][i]:.5g}  "
            f"({time.perf_counter() - t0:.1f} s)")

    png = out_dir / "demo.png"
    _plot(png, sig, res, ref_acc, len(y), int(n_mc))
    h5 = out_dir / "demo.h5"
    with atomic_h5(h5) as f:
        for k, v in standard_attrs(base, command="demo", model=str(model_path),
                                   n_images=int(len(y)), n_mc=int(n_mc), seed=int(seed),
                                   split_seed=split_seed).items():
            f.attrs[k] = v
        f["axes/sigma"] = sig
        f["analytic/mse"] = res["an_mse"]
        f["analytic/mse_max"] = res["an_mse_max"]
        f["analytic/power"] = res["an_power"]
        f["analytic/accuracy"] = res["an_acc"]
        f["analytic/accuracy_error_bound"] = res["an_acc_err"]
        f["montecarlo/mse"] = res["mc_mse"]
        f["montecarlo/mse_se"] = res["mc_mse_se"]
        f["montecarlo/accuracy"] = res["mc_acc"]
        f["montecarlo/accuracy_se"] = res["mc_acc_se"]
        f["montecarlo/power"] = res["mc_power"]
        f["montecarlo/power_se"] = res["mc_power_se"]
        f["reference/accuracy"] = ref_acc
    log(f"wrote {h5} and {png}")
    return {"sigma": sig, "reference_accuracy": ref_acc, **res}


def _plot(path, sig, res, ref_acc, n_images, n_mc):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    pos = (sig > 0) & (res["an_mse"] > 0)
    a1.plot(sig[pos], res["an_mse"][pos], "-", color="C0", label="analytic (spec §9)")
    a1.errorbar(sig[pos], res["mc_mse"][pos], yerr=2 * res["mc_mse_se"][pos], fmt="o",
                color="C1", ms=4, capsize=3, label=f"Monte-Carlo ±2 SE (n={n_mc})")
    if pos.any():                      # log axes need positive values (σ = 0 has MSE 0)
        a1.set_xscale("log")
        a1.set_yscale("log")
    else:
        a1.text(0.5, 0.5, "no σ > 0 in the sweep", ha="center", transform=a1.transAxes)
    a1.set_xlabel("device noise σ (std per device, g_u = 1)")
    a1.set_ylabel("output MSE vs noiseless network")
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
    fig.suptitle("784-100-10 MLP on a noisy memristor crossbar (layer-wise λ)")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".partial.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if tmp.exists():
            tmp.unlink()
