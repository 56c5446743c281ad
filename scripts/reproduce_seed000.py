#!/usr/bin/env python
"""Reproduce MohammadiRad & Sojodishijani (seed 000) end to end, with analytic predictions.

Parts (``--parts``, default all):

``noise``   Figs 2–3: the eight shipped MNIST-5k MLPs (784-N-10, 784-N-N-10, N in 50/100/200/500)
            under multiplicative weight noise ``w -> (1 + α ξ) w`` (paper Eq. (4); weights *and*
            biases of the target layer, as their Eq. (3) includes the bias in ``I``), target
            first / second / (third) / all, α on a log grid. Monte-Carlo exactly as the paper:
            each repeat draws one realization of every weight and measures the accuracy on the
            whole test split → mean ± std over the repeats. Beside it, on a class-stratified
            subset of the test split, the analytic output moments (``refmem.moments.propagate``,
            theory §13, §20), the accuracy predicted from them (``refmem.accuracy``, theory §21)
            and the analytic MSE, with the Monte-Carlo accuracy and MSE on the same subset.
``quant``   Figs 4–5: k = 2..8 bits on the target layers: the exactly quantized network
            (``quant_mode="fixed"``, one deterministic network, whole test split) and the
            Δ²/12 model's prediction (``quant_mode="dither"``: exact for dithered quantization,
            the ensemble average otherwise; theory §14's caveat) on the subset.
``aware``   The conclusion's claim: 2-layer MLPs retrained with the noise seen in training
            (``refmem.training.MultiplicativeNoise``, recipe A otherwise) at a few α_train,
            against the plain ones, accuracy vs α (target all), common random numbers.
``fashion`` The same noise study on full Fashion-MNIST (60k/10k; models
            ``data/models/fashion-mnist_mlp_*.h5`` from ``scripts/train_seed_networks.py``) and,
            as the dataset-size proxy, 2-layer MLPs trained on its first 5,000 images.

Every part is a grid of independent cells run through :func:`refmem.executor.run_grid`
(resumable: rerun the same command after an interruption; ``--scheduler ADDRESS`` runs the
cells on a Dask cluster, ``--workers N`` on N local processes). Outputs in ``--out``:
``seed000.h5`` (the result set), ``fig*.png``, ``summary.json`` (the numbers behind the claims)
and ``grid/`` (one small file per finished cell).

    python scripts/reproduce_seed000.py --quick --out out/seed000-quick     # ≈ 2 min, 2 cores
    nice -n 10 python scripts/reproduce_seed000.py --out out/seed000          # the full study
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:                       # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from refmem import CrossbarConfig, Dense, Network, load_model, map_network  # noqa: E402
from refmem import datasets as D  # noqa: E402
from refmem.accuracy import predicted_accuracy  # noqa: E402
from refmem.errors import ConfigError, RefmemError  # noqa: E402
from refmem.executor import Executor, run_grid  # noqa: E402
from refmem.moments import propagate  # noqa: E402

MODELS = ROOT / "data" / "models"
WIDTHS = (50, 100, 200, 500)
FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
CHANCE = 0.1


# ============================================================================ data and models
@functools.lru_cache(maxsize=4)
def test_split(dataset):
    """(x (N, 784) float64 in [0, 1], y (N,)) of the test split the models were evaluated on."""
    root = FASHION_ROOT if dataset.startswith("fashion") else None
    x, y, _ = D.load_split(dataset, "test", root, 0)
    x, _ = D.apply_preprocessing("pixels/255", x)
    return np.ascontiguousarray(x.reshape(len(x), -1)), np.asarray(y, dtype=np.int64)


@functools.lru_cache(maxsize=4)
def train_split(dataset, limit=None):
    root = FASHION_ROOT if dataset.startswith("fashion") else None
    x, y, _ = D.load_split(dataset, "train", root, 0)
    x, _ = D.apply_preprocessing("pixels/255", x)
    x = x.reshape(len(x), -1)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return np.ascontiguousarray(x), np.asarray(y, dtype=np.int64)


def stratified_subset(y, n):
    """The first ``n // 10`` test images of every class (deterministic, no random draw)."""
    per = max(1, n // 10)
    idx = np.concatenate([np.flatnonzero(y == c)[:per] for c in range(10)])
    return np.sort(idx)


@functools.lru_cache(maxsize=16)
def model(name):
    """A shipped model by its file name in ``data/models`` (cell parameters name models this way,
    so a grid's fingerprints do not depend on where the checkout lives)."""
    return load_model(MODELS / name)


def arch_name(depth, width):
    return "-".join(map(str, [784] + [width] * depth + [10]))


def targets_for(depth):
    """Noise targets of the paper: each crossbar layer alone, then all of them."""
    names = ["first", "second", "third"][:depth + 1]
    return [(n, (i,)) for i, n in enumerate(names)] + [("all", tuple(range(depth + 1)))]


# ============================================================================ cell functions
def perturbed(net, layers, alpha, rng, bias_noise=True):
    """One realization of the paper's Eq. (4) on the given crossbar (dense) layers (the bias
    too, as their Eq. (3) counts it among the inputs; ``bias_noise=False``: weights only —
    the bias draws are still made, so both variants see the same weight noise)."""
    dense = [i for i, l in enumerate(net.layers) if isinstance(l, Dense)]
    new = list(net.layers)
    for ci in layers:
        L = net.layers[dense[ci]]
        W = L.weight * (1.0 + alpha * rng.standard_normal(L.weight.shape))
        b = L.bias
        if b is not None:
            xi = rng.standard_normal(b.shape)
            if bias_noise:
                b = b * (1.0 + alpha * xi)
        new[dense[ci]] = Dense(W, b)
    return Network(new, net.input_shape)


def analytic(net, cfg, x, y, seed, n_points):
    """Analytic moments on (x, y): predicted accuracy per input, its bound, MSE (theory §21)."""
    mapped = map_network(net, cfg)
    an = propagate(mapped, x, cov=True)
    pa = predicted_accuracy(an.mean, an.cov, y, seed=seed, n_points=n_points)
    return {"pred": pa.per_input, "pred_bound": np.float64(pa.error_bound),
            "an_mse": an.mse.mean(axis=1), "an_mean": an.mean}


def noise_cell(p, ss):
    """One (model, target, α) point: paper-protocol Monte-Carlo + analytic on the subset."""
    net = model(p["model"])
    x, y = test_split(p["dataset"])
    sub = stratified_subset(y, p["n_analytic"]) if p["n_analytic"] else np.zeros(0, int)
    mc_seed, an_seed = ss.spawn(2)
    rng = np.random.default_rng(mc_seed)
    clean = net.forward(x)
    R = p["repeats"]
    acc, mse = np.empty(R), np.empty(R)
    acc_sub, mse_sub = np.empty(R), np.empty(R)
    hits_sub = np.zeros(sub.size)
    for r in range(R):
        out = perturbed(net, p["layers"], p["alpha"], rng).forward(x)
        hit = np.argmax(out, axis=1) == y
        err = ((out - clean) ** 2).mean(axis=1)
        acc[r], mse[r] = hit.mean(), err.mean()
        if sub.size:
            acc_sub[r], mse_sub[r] = hit[sub].mean(), err[sub].mean()
            hits_sub += hit[sub]
    res = {"acc": acc, "mse": mse}
    if sub.size:
        cfg = CrossbarConfig(alpha=p["alpha"], noisy_layers=list(p["layers"]))
        a = analytic(net, cfg, x[sub], y[sub], int(an_seed.generate_state(1)[0]), p["n_points"])
        res.update(acc_sub=acc_sub, mse_sub=mse_sub, hits_sub=hits_sub / R, pred=a["pred"],
                   pred_bound=a["pred_bound"], an_mse=a["an_mse"])
    return res


def quant_cell(p, ss):
    """One (model, target, bits) point: the exactly quantized network and the Δ²/12 model."""
    net = model(p["model"])
    x, y = test_split(p["dataset"])
    n_xb = sum(isinstance(l, Dense) for l in net.layers)
    bits = [p["bits"] if i in p["layers"] else None for i in range(n_xb)]
    fixed = map_network(net, CrossbarConfig(bits=bits, quant_mode="fixed"))
    out = fixed.programmed_forward(x)
    clean = net.forward(x)
    res = {"acc_fixed": np.float64(np.mean(np.argmax(out, axis=1) == y)),
           "mse_fixed": np.float64(((out - clean) ** 2).mean())}
    if p["n_analytic"]:
        sub = stratified_subset(y, p["n_analytic"])
        res["acc_fixed_sub"] = np.float64(np.mean(np.argmax(out[sub], axis=1) == y[sub]))
        res["mse_fixed_sub"] = np.float64(((out[sub] - clean[sub]) ** 2).mean())
        cfg = CrossbarConfig(bits=bits, quant_mode="dither")
        a = analytic(net, cfg, x[sub], y[sub], int(ss.generate_state(1)[0]), p["n_points"])
        res.update(pred=a["pred"], pred_bound=a["pred_bound"], an_mse=a["an_mse"])
    return res


def train_mlp(dataset, width, depth, *, alpha=None, epochs=30, limit=None, seed=0):
    """Recipe A of data/models/README.md (Adam 1e-3, batch 64, seed 0), optionally with the
    paper's noise seen in training (``refmem.training.MultiplicativeNoise``)."""
    from refmem.training import Adam, MultiplicativeNoise, Trainer, mlp
    xtr, ytr = train_split(dataset, limit)
    m = mlp(784, [width] * depth, 10, seed=seed)
    noise = MultiplicativeNoise(alpha) if alpha else None
    tr = Trainer(m, "cross_entropy", Adam(1e-3), batch_size=64, seed=seed, noise=noise,
                 progress=False)
    tr.fit(xtr, ytr, int(epochs))
    return m.to_network("pixels/255", {}), float(tr.train_seconds)


def eval_curve(net, dataset, alphas, layers, repeats, rng):
    """Paper-protocol accuracy (A, R) over an α grid, whole test split."""
    x, y = test_split(dataset)
    acc = np.empty((len(alphas), repeats))
    for i, a in enumerate(alphas):
        for r in range(repeats):
            acc[i, r] = np.mean(np.argmax(perturbed(net, layers, a, rng).forward(x), axis=1) == y)
    return acc


def aware_cell(p, ss):
    """Noise-aware training at α_train against the plain model, common random numbers."""
    aware, secs = train_mlp(p["dataset"], p["width"], 1, alpha=p["alpha_train"],
                            epochs=p["epochs"], limit=p.get("limit"))
    plain = model(p["plain_model"])
    layers = tuple(range(2))
    s_plain, s_aware = ss.spawn(2)
    x, y = test_split(p["dataset"])
    return {"acc_aware": eval_curve(aware, p["dataset"], p["alphas"], layers, p["repeats"],
                                    np.random.default_rng(s_aware)),
            "acc_plain": eval_curve(plain, p["dataset"], p["alphas"], layers, p["repeats"],
                                    np.random.default_rng(s_plain)),
            "clean_aware": np.float64(np.mean(np.argmax(aware.forward(x), 1) == y)),
            "clean_plain": np.float64(np.mean(np.argmax(plain.forward(x), 1) == y)),
            "train_seconds": np.float64(secs)}


def proxy_cell(p, ss):
    """Dataset-size proxy: a 2-layer MLP trained on the first ``limit`` Fashion-MNIST images."""
    net, secs = train_mlp(p["dataset"], p["width"], 1, epochs=p["epochs"], limit=p["limit"])
    x, y = test_split(p["dataset"])
    rng = np.random.default_rng(ss)
    out = {"clean": np.float64(np.mean(np.argmax(net.forward(x), 1) == y)),
           "train_seconds": np.float64(secs)}
    for name, layers in targets_for(1):
        out[f"acc_{name}"] = eval_curve(net, p["dataset"], p["alphas"], layers, p["repeats"], rng)
    return out


REASON_ALPHAS = (10 ** -0.4, 1.0, 10 ** 0.4)      # three points of the main α grid


def reasons_cell(p, ss):
    """Candidate reasons for disagreements with the paper's layer-sensitivity claim, at three
    α, 2-layer MLPs, target first and second, common random numbers across the variants:
    ``paper`` (as in the main grid), ``no_bias_noise`` (weights only), ``relu_output`` (their
    Eq. (1c) rectifies the output layer too); ``recipe="sgd"``: a network retrained with SGD
    (lr 0.05, momentum 0.9) instead of Adam; ``recipe="adam5k"``: retrained on the first 5,000
    training images (with ``dataset="fashion-mnist"``: the dataset-size proxy)."""
    if p.get("recipe") == "adam5k":
        net, _ = train_mlp(p["dataset"], p["width"], 1, epochs=30, limit=5000)
    elif p.get("recipe") == "sgd":
        from refmem.training import SGD, Trainer, mlp
        xtr, ytr = train_split(p["dataset"])
        m = mlp(784, [p["width"]], 10, seed=0)
        tr = Trainer(m, "cross_entropy", SGD(0.05, momentum=0.9), batch_size=64, seed=0,
                     progress=False)
        tr.fit(xtr, ytr, 30)
        net = m.to_network("pixels/255", {})
    else:
        net = model(model_path(p["dataset"], 1, p["width"]))
    x, y = test_split(p["dataset"])
    out = {"clean": np.float64(np.mean(np.argmax(net.forward(x), 1) == y))}
    for tname, layers in targets_for(1)[:2]:
        for variant in p.get("variants", ("paper", "no_bias_noise", "relu_output")):
            acc = np.empty((len(REASON_ALPHAS), p["repeats"]))
            rng = np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=ss.spawn_key
                                                               + (layers[0],)))
            for i, a in enumerate(REASON_ALPHAS):
                for r in range(p["repeats"]):
                    o = perturbed(net, layers, a, rng, bias_noise=variant != "no_bias_noise").forward(x)
                    if variant == "relu_output":
                        o = np.maximum(o, 0.0)
                    acc[i, r] = np.mean(np.argmax(o, 1) == y)
            out[f"{variant}_{tname}"] = acc
            if p.get("recipe") in ("sgd", "adam5k"):
                break
    return out


# ============================================================================ the study
def settings(args):
    quick = args.quick
    s = dict(
        widths=(50, 100) if quick else WIDTHS,
        alphas=np.geomspace(0.03, 3.0, 5) if quick else np.geomspace(0.01, 10.0, 16),
        repeats=10 if quick else 100,
        n_analytic=(20, 20) if quick else (100, 20),     # (2-layer, 3-layer) subset sizes
        n_points=512 if quick else 1024,
        bits=(2, 3, 4, 8) if quick else tuple(range(2, 9)),
        aware_widths=(50,) if quick else WIDTHS,
        aware_alphas_train=(0.3,) if quick else (0.3, 1.0),
        aware_alphas=np.geomspace(0.1, 3.0, 3) if quick else np.geomspace(0.1, 10.0, 9),
        aware_repeats=5 if quick else 30,
        aware_epochs=5 if quick else 30,
        fashion_alphas=np.geomspace(0.01, 10.0, 10),
        fashion_repeats=20,
        fashion_analytic=20,
        proxy_widths=(100, 500),
        proxy_limit=5000,
    )
    if args.repeats:
        s["repeats"] = args.repeats
    s["fashion_depths"] = tuple(int(d) for d in args.fashion_depths.split(",") if d.strip())
    return s


def model_path(dataset, depth, width):
    """The file name (in ``data/models``) of the seed-000 MLP of ``dataset``, ``depth``, ``width``."""
    prefix = "mnist5k" if dataset == "mnist5k" else "fashion-mnist"
    return f"{prefix}_mlp_{arch_name(depth, width)}.h5"


def quant_cells(S, depth):
    cells = {}
    for w in S["widths"]:
        for tname, layers in targets_for(depth):
            for k in S["bits"]:
                key = f"quant,mnist5k,{arch_name(depth, w)},{tname},k{k}"
                cells[key] = ("quant", dict(
                    dataset="mnist5k", model=model_path("mnist5k", depth, w),
                    layers=layers, bits=int(k), n_analytic=S["n_analytic"][depth - 1],
                    n_points=S["n_points"]))
    return cells


def build_cells(S, parts):
    """The grid, in the order it is computed: 2-layer noise and quantization, the reasons,
    noise-aware training, 3-layer quantization and noise, Fashion-MNIST (so that an interrupted run has
    complete figures for the first parts)."""
    cells = {}
    for depth in (1, 2):
        if "quant" in parts and depth == 2:
            cells.update(quant_cells(S, depth))
        if "noise" in parts:
            for w in S["widths"]:
                # "all" first, then the layers from the first one: with an interrupted run, the
                # widest nets' most informative series come first
                tl = targets_for(depth)
                for tname, layers in tl[-1:] + tl[:-1]:
                    for i, a in enumerate(S["alphas"]):
                        key = f"noise,mnist5k,{arch_name(depth, w)},{tname},a{i:02d}"
                        cells[key] = ("noise", dict(
                            dataset="mnist5k", model=model_path("mnist5k", depth, w),
                            layers=layers, alpha=float(a), repeats=S["repeats"],
                            n_analytic=S["n_analytic"][depth - 1], n_points=S["n_points"]))
        if "quant" in parts and depth == 1:
            cells.update(quant_cells(S, depth))
        if "reasons" in parts and depth == 1:
            for w in ((50,) if S["widths"][0] == 50 and len(S["widths"]) == 2 else (100, 500)):
                for recipe in ("adam", "sgd"):
                    key = f"reasons,mnist5k,{arch_name(1, w)},{recipe}"
                    cells[key] = ("reasons", dict(dataset="mnist5k", width=w, recipe=recipe,
                                                  repeats=S["repeats"]))
            if S["widths"] != (50, 100):
                # dataset size: the same layer comparison on Fashion-MNIST, trained on 60k
                # (the shipped model) and on its first 5,000 images
                for recipe in ("adam", "adam5k"):
                    key = f"reasons,fashion-mnist,{arch_name(1, 100)},{recipe}"
                    cells[key] = ("reasons", dict(dataset="fashion-mnist", width=100,
                                                  recipe=recipe, repeats=20,
                                                  variants=("paper",)))
        if "aware" in parts and depth == 1:
            for w in S["aware_widths"]:
                for at in S["aware_alphas_train"]:
                    key = f"aware,mnist5k,{arch_name(1, w)},at{at:g}"
                    cells[key] = ("aware", dict(
                        dataset="mnist5k", width=w, alpha_train=float(at),
                        epochs=S["aware_epochs"], plain_model=model_path("mnist5k", 1, w),
                        alphas=list(S["aware_alphas"]), repeats=S["aware_repeats"]))
    if "fashion" in parts:
        for depth in S["fashion_depths"]:
            for w in S["widths"]:
                path = model_path("fashion-mnist", depth, w)
                if not (MODELS / path).exists():
                    print(f"fashion: {path} missing (train it with scripts/train_seed_networks.py "
                          f"mlp --dataset fashion-mnist); skipped")
                    continue
                for tname, layers in targets_for(depth):
                    if depth == 2 and tname == "second":
                        continue
                    for i, a in enumerate(S["fashion_alphas"]):
                        key = f"noise,fashion-mnist,{arch_name(depth, w)},{tname},a{i:02d}"
                        cells[key] = ("noise", dict(
                            dataset="fashion-mnist", model=path, layers=layers, alpha=float(a),
                            repeats=S["fashion_repeats"], n_analytic=S["fashion_analytic"],
                            n_points=S["n_points"]))
            if depth == 1:
                for w in S["proxy_widths"]:
                    key = f"proxy,fashion-mnist,{arch_name(1, w)},n{S['proxy_limit']}"
                    cells[key] = ("proxy", dict(
                        dataset="fashion-mnist", width=w, limit=S["proxy_limit"], epochs=30,
                        alphas=list(S["fashion_alphas"]), repeats=S["fashion_repeats"]))
    return cells


CELL_FUNCS = {"noise": noise_cell, "quant": quant_cell, "aware": aware_cell, "proxy": proxy_cell,
              "reasons": reasons_cell}


def any_cell(p, ss):
    """Dispatch to the part's cell function (one grid function, so one grid directory)."""
    kind, params = p
    return CELL_FUNCS[kind](params, ss)


# ============================================================================ results
_TEST = "the whole test split"
_SUB = "the class-stratified analytic subset"
# name inside a group → (units, description, equation); y is the unit of the network output
# (logits), docs/result_format.md
SEED000_META = {
    "axes/alpha": ("1", "multiplicative weight-noise level α of each point, w -> (1 + α ξ) w",
                   "theory §13"),
    "axes/bits": ("1", "weight bits k of the target layers at each point", "theory §14"),
    # noise series: Monte-Carlo as the paper (one realization of every weight per repeat)
    "mc/accuracy_repeats": ("1", f"accuracy on {_TEST} of each Monte-Carlo repeat (α, repeat)",
                            "theory §13"),
    "mc/accuracy_mean": ("1", "mean over the repeats of mc/accuracy_repeats", "theory §13"),
    "mc/accuracy_std": ("1", "standard deviation over the repeats of mc/accuracy_repeats "
                        "(ddof 1; the paper's error bar)", "theory §13"),
    "mc/accuracy_mean_se": ("1", "standard error of mc/accuracy_mean", "theory §19.2"),
    "mc/mse_batch": ("y^2", f"Monte-Carlo MSE against the noiseless outputs, mean over {_TEST}, "
                     "the outputs and the repeats", "theory §9, §13"),
    # noise series: analytic prediction on the subset, and the Monte-Carlo on the same subset
    "analytic/accuracy": ("1", f"accuracy predicted from the analytic output moments, per input "
                          f"of {_SUB} (α, input)", "theory §13, §21"),
    "analytic/accuracy_mean": ("1", f"analytic/accuracy averaged over {_SUB}", "theory §21"),
    "analytic/accuracy_error_bound": ("1", "numerical error bound of analytic/accuracy_mean",
                                      "theory §21.3"),
    "analytic/mse_batch": ("y^2", f"analytic MSE against the noiseless outputs, mean over {_SUB} "
                           "and the outputs", "theory §9, §13"),
    "subset/mc_accuracy_mean": ("1", f"Monte-Carlo accuracy on {_SUB}, mean over the repeats",
                                "theory §13"),
    "subset/mc_accuracy_mean_se": ("1", "standard error of subset/mc_accuracy_mean",
                                   "theory §19.2"),
    "subset/mc_accuracy_per_input": ("1", f"fraction of the repeats in which each input of {_SUB} "
                                     "is classified correctly (α, input)", "theory §21"),
    "subset/mc_mse_batch": ("y^2", f"Monte-Carlo MSE against the noiseless outputs on {_SUB}, "
                            "mean over the inputs, outputs and repeats", "theory §9, §13"),
    "subset/mc_mse_batch_se": ("y^2", "standard error of subset/mc_mse_batch", "theory §19.2"),
    # quantization series
    "fixed/accuracy": ("1", f"accuracy of the exactly quantized network on {_TEST}",
                       "theory §14"),
    "fixed/mse_batch": ("y^2", f"MSE of the exactly quantized network against the unquantized "
                        f"outputs, mean over {_TEST} and the outputs", "theory §9, §14"),
    "dither_model/accuracy_mean": ("1", f"accuracy predicted by the Δ²/12 (dithered) "
                                   f"quantization model on {_SUB}", "theory §14, §21"),
    "dither_model/accuracy_error_bound": ("1", "numerical error bound of "
                                         "dither_model/accuracy_mean", "theory §21.3"),
    "dither_model/mse_batch": ("y^2", f"MSE predicted by the Δ²/12 model on {_SUB}",
                               "theory §9, §14"),
    "subset/fixed_accuracy": ("1", f"accuracy of the exactly quantized network on {_SUB}",
                              "theory §14"),
    "subset/fixed_mse_batch": ("y^2", f"MSE of the exactly quantized network on {_SUB}",
                               "theory §9, §14"),
    # noise-aware training, dataset-size proxy, the reasons study
    "aware/accuracy_repeats": ("1", f"accuracy on {_TEST} of the noise-aware trained network "
                               "(α, repeat), noise on every layer", "theory §13"),
    "plain/accuracy_repeats": ("1", f"accuracy on {_TEST} of the plainly trained network "
                               "(α, repeat), same random numbers", "theory §13"),
    "aware/clean": ("1", f"noiseless accuracy of the noise-aware trained network on {_TEST}", ""),
    "plain/clean": ("1", f"noiseless accuracy of the plainly trained network on {_TEST}", ""),
    "aware/train_seconds": ("s", "wall time of the noise-aware training", ""),
    "clean": ("1", f"noiseless accuracy of the network on {_TEST}", ""),
    "train_seconds": ("s", "wall time of the training", ""),
}
_TARGET_TEXT = {"first": "the first layer", "second": "the second layer",
                "third": "the third layer", "all": "every layer"}
_VARIANT_TEXT = {"paper": "as in the main grid (weights and biases)",
                 "no_bias_noise": "noise on the weights only",
                 "relu_output": "the output layer rectified too (their Eq. (1c))"}


def seed000_meta(name):
    """``{"units", "description", "equation"}`` of a dataset inside a group of the result set."""
    if name in SEED000_META:
        units, desc, eq = SEED000_META[name]
    elif name.endswith("/accuracy_repeats") and name.split("/")[0] in _TARGET_TEXT:
        t = name.split("/")[0]
        units, desc, eq = ("1", f"accuracy on {_TEST} (α, repeat) with noise on "
                           f"{_TARGET_TEXT[t]}", "theory §13")
    elif "_" in name and name.rsplit("_", 1)[0] in _VARIANT_TEXT \
            and name.rsplit("_", 1)[1] in _TARGET_TEXT:
        v, t = name.rsplit("_", 1)
        units, desc, eq = ("1", f"accuracy on {_TEST} (α, repeat) with noise on "
                           f"{_TARGET_TEXT[t]}, {_VARIANT_TEXT[v]}", "theory §13")
    else:
        raise KeyError(f"reproduce_seed000: no units/description for dataset {name!r}")
    return {"units": units, "description": desc, "equation": eq}


def write_results(path, datasets, attrs, groups, force=False):
    """The one writer of the result set: ``kind = "reproduce_seed000"`` through
    :func:`refmem.io.write_result`, every dataset described by :func:`seed000_meta` (standard
    deviations and standard errors may be NaN: one repeat)."""
    from refmem.io import write_result

    def described(d):
        return {k: (np.asarray(v), seed000_meta(k)) for k, v in d.items()}
    gs = {g: described(d) for g, d in groups.items()}
    nan_ok = [f"{g}/{k}" for g, d in gs.items() for k in d if k.endswith(("_std", "_se"))]
    write_result(path, "reproduce_seed000", described(datasets), attrs=attrs, groups=gs,
                 allow_nonfinite=nan_ok, force=force)


def loglog_fit(alphas, acc, clean):
    """Least-squares line of log10(accuracy) on log10(α) over the transition range: from the
    first α whose mean accuracy is 1 pp below the clean one to the last above 1.5 × chance."""
    acc = np.asarray(acc)
    sel = (acc < clean - 0.01) & (acc > 1.5 * CHANCE)
    if sel.sum() < 3:
        return {"slope": float("nan"), "r2": float("nan"), "range": [float("nan")] * 2, "n": int(sel.sum())}
    lx, ly = np.log10(np.asarray(alphas)[sel]), np.log10(acc[sel])
    A = np.vstack([lx, np.ones_like(lx)]).T
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    pred = A @ coef
    r2 = 1 - np.sum((ly - pred) ** 2) / np.sum((ly - ly.mean()) ** 2)
    return {"slope": float(coef[0]), "r2": float(r2),
            "range": [float(np.asarray(alphas)[sel][0]), float(np.asarray(alphas)[sel][-1])],
            "n": int(sel.sum())}


def excess_error_fit(alphas, acc, se, clean):
    """Least-squares line of log10(clean − accuracy) on log10(α) where the accuracy loss is
    resolved (> 3 SE of the mean over repeats and > 0.2 pp) and the accuracy is above
    1.5 × chance: the power law of the onset, the other reading of "linear in log–log"."""
    acc, se = np.asarray(acc), np.asarray(se)
    loss = clean - acc
    sel = (loss > np.maximum(3 * se, 0.002)) & (acc > 1.5 * CHANCE)
    if sel.sum() < 3:
        return {"slope": float("nan"), "r2": float("nan"), "range": [float("nan")] * 2, "n": int(sel.sum())}
    lx, ly = np.log10(np.asarray(alphas)[sel]), np.log10(loss[sel])
    A = np.vstack([lx, np.ones_like(lx)]).T
    coef, *_ = np.linalg.lstsq(A, ly, rcond=None)
    r2 = 1 - np.sum((ly - A @ coef) ** 2) / np.sum((ly - ly.mean()) ** 2)
    return {"slope": float(coef[0]), "r2": float(r2),
            "range": [float(np.asarray(alphas)[sel][0]), float(np.asarray(alphas)[sel][-1])],
            "n": int(sel.sum())}


def alpha_at(alphas, acc, level):
    """α where the mean accuracy first falls below ``level`` (log-linear interpolation)."""
    acc = np.asarray(acc)
    below = np.flatnonzero(acc < level)
    if below.size == 0:
        return float("inf")
    i = below[0]
    if i == 0:
        return float(alphas[0])
    la, lb = np.log10(alphas[i - 1]), np.log10(alphas[i])
    t = (acc[i - 1] - level) / (acc[i - 1] - acc[i])
    return float(10 ** (la + t * (lb - la)))


def assemble(S, cells, results, out_dir, command=None, force=False):
    """Group the cells into the result set, the summary and the figures (``command``: the
    command line, recorded in the result set)."""
    groups, summary = {}, {"noise": {}, "quant": {}, "aware": {}, "proxy": {}}
    # ---- noise (MNIST and Fashion)
    series = {}
    for key, (kind, p) in cells.items():
        if kind != "noise":
            continue
        _, ds, arch, tname, ai = key.split(",")
        series.setdefault((ds, arch, tname), []).append((int(ai[1:]), p, results[key]))
    for (ds, arch, tname), pts in sorted(series.items()):
        pts.sort(key=lambda t: t[0])
        if len(pts) < len(S["alphas"] if ds == "mnist5k" else S["fashion_alphas"]):
            continue                       # an incomplete series (--assemble-only mid-run)
        alphas = np.array([p["alpha"] for _, p, _ in pts])
        acc = np.stack([r["acc"] for _, _, r in pts])
        g = {"axes/alpha": alphas, "mc/accuracy_repeats": acc,
             "mc/accuracy_mean": acc.mean(1), "mc/accuracy_std": acc.std(1, ddof=1),
             "mc/accuracy_mean_se": acc.std(1, ddof=1) / np.sqrt(acc.shape[1]),
             "mc/mse_batch": np.stack([r["mse"] for _, _, r in pts]).mean(1)}
        if "pred" in pts[0][2]:
            pred = np.stack([r["pred"] for _, _, r in pts])
            accs = np.stack([r["acc_sub"] for _, _, r in pts])
            g.update({"analytic/accuracy": pred, "analytic/accuracy_mean": pred.mean(1),
                      "analytic/accuracy_error_bound": np.array([r["pred_bound"] for _, _, r in pts]),
                      "analytic/mse_batch": np.stack([r["an_mse"] for _, _, r in pts]).mean(1),
                      "subset/mc_accuracy_mean": accs.mean(1),
                      "subset/mc_accuracy_mean_se": accs.std(1, ddof=1) / np.sqrt(accs.shape[1]),
                      "subset/mc_accuracy_per_input": np.stack([r["hits_sub"] for _, _, r in pts]),
                      "subset/mc_mse_batch": np.stack([r["mse_sub"] for _, _, r in pts]).mean(1),
                      "subset/mc_mse_batch_se": np.stack([r["mse_sub"] for _, _, r in pts]).std(1, ddof=1)
                      / np.sqrt(accs.shape[1])})
        groups[f"noise/{ds}/{arch}/{tname}"] = g
        net = model(pts[0][1]["model"])
        x, y = test_split(ds)
        clean = float(np.mean(np.argmax(net.forward(x), 1) == y))
        m = g["mc/accuracy_mean"]
        summary["noise"][f"{ds}/{arch}/{tname}"] = {
            "clean": clean, "alphas": alphas.tolist(), "acc_mean": m.tolist(),
            "acc_std": g["mc/accuracy_std"].tolist(),
            "alpha_at_90pct_clean": alpha_at(alphas, m, 0.9 * clean),
            "alpha_at_half": alpha_at(alphas, m, 0.5 * (clean + CHANCE)),
            "loglog_fit": loglog_fit(alphas, m, clean),
            "excess_fit": excess_error_fit(alphas, m, g["mc/accuracy_mean_se"], clean),
            **({"pred_mean": g["analytic/accuracy_mean"].tolist(),
                "mc_subset_mean": g["subset/mc_accuracy_mean"].tolist(),
                "mc_subset_se": g["subset/mc_accuracy_mean_se"].tolist(),
                "an_mse": g["analytic/mse_batch"].tolist(),
                "mc_mse_subset": g["subset/mc_mse_batch"].tolist()} if "pred" in pts[0][2] else {})}
    # ---- quantization
    qser = {}
    for key, (kind, p) in cells.items():
        if kind == "quant":
            _, ds, arch, tname, k = key.split(",")
            qser.setdefault((ds, arch, tname), []).append((int(k[1:]), results[key]))
    for (ds, arch, tname), pts in sorted(qser.items()):
        pts.sort(key=lambda t: t[0])
        if len(pts) < len(S["bits"]):
            continue
        g = {"axes/bits": np.array([k for k, _ in pts]),
             "fixed/accuracy": np.array([r["acc_fixed"] for _, r in pts]),
             "fixed/mse_batch": np.array([r["mse_fixed"] for _, r in pts])}
        if "pred" in pts[0][1]:
            g.update({"dither_model/accuracy_mean": np.array([r["pred"].mean() for _, r in pts]),
                      "dither_model/accuracy_error_bound": np.array([r["pred_bound"] for _, r in pts]),
                      "dither_model/mse_batch": np.array([r["an_mse"].mean() for _, r in pts]),
                      "subset/fixed_accuracy": np.array([r["acc_fixed_sub"] for _, r in pts]),
                      "subset/fixed_mse_batch": np.array([r["mse_fixed_sub"] for _, r in pts])})
        groups[f"quant/{ds}/{arch}/{tname}"] = g
        summary["quant"][f"{ds}/{arch}/{tname}"] = {k2.replace("/", "_"): np.asarray(v).tolist()
                                                    for k2, v in g.items()}
    # ---- noise-aware training and the dataset-size proxy
    for key, (kind, p) in cells.items():
        r = results[key]
        if kind == "aware":
            _, ds, arch, at = key.split(",")
            g = {"axes/alpha": np.array(p["alphas"]), "aware/accuracy_repeats": r["acc_aware"],
                 "plain/accuracy_repeats": r["acc_plain"], "aware/clean": r["clean_aware"],
                 "plain/clean": r["clean_plain"], "aware/train_seconds": r["train_seconds"]}
            groups[f"aware/{ds}/{arch}/{at}"] = g
            summary["aware"][f"{arch}/{at}"] = {
                "alphas": p["alphas"], "aware": r["acc_aware"].mean(1).tolist(),
                "aware_se": (r["acc_aware"].std(1, ddof=1) / np.sqrt(r["acc_aware"].shape[1])).tolist(),
                "plain": r["acc_plain"].mean(1).tolist(),
                "plain_se": (r["acc_plain"].std(1, ddof=1) / np.sqrt(r["acc_plain"].shape[1])).tolist(),
                "clean_aware": float(r["clean_aware"]), "clean_plain": float(r["clean_plain"])}
        elif kind == "proxy":
            _, ds, arch, n = key.split(",")
            g = {"axes/alpha": np.array(p["alphas"]), "clean": r["clean"],
                 "train_seconds": r["train_seconds"]}
            for tname, _ in targets_for(1):
                g[f"{tname}/accuracy_repeats"] = r[f"acc_{tname}"]
            groups[f"proxy/{ds}/{arch}/{n}"] = g
            summary["proxy"][f"{arch}/{n}"] = {
                "alphas": p["alphas"], "clean": float(r["clean"]),
                **{t: r[f"acc_{t}"].mean(1).tolist() for t, _ in targets_for(1)}}
    summary["reasons"] = {}
    for key, (kind, p) in cells.items():
        if kind == "reasons":
            r = results[key]
            _, ds, arch, recipe = key.split(",")
            groups[f"reasons/{ds}/{arch}/{recipe}"] = {"axes/alpha": np.array(REASON_ALPHAS),
                                                        **{k: v for k, v in r.items()}}
            summary["reasons"][f"{ds}/{arch}/{recipe}"] = {
                "alphas": list(REASON_ALPHAS), "clean": float(r["clean"]),
                **{k: r[k].mean(1).tolist() for k in r if k != "clean"},
                **{k + "_se": (r[k].std(1, ddof=1) / np.sqrt(r[k].shape[1])).tolist()
                   for k in r if k != "clean"}}
    # ---- Table I: the trainer's own records
    summary["table1"] = training_table()
    attrs = {"study": "MohammadiRad & Sojodishijani (seed 000) reproduction",
             "settings": json.dumps({k: (np.asarray(v).tolist() if isinstance(v, (np.ndarray, tuple)) else v)
                                     for k, v in S.items()}),
             "noise_model": "w -> (1 + alpha N(0,1)) w on weights and biases of the target layers",
             "monte_carlo": "one realization of all weights per repeat, accuracy on the whole test split",
             "analytic_subset": "first n/10 test images of every class",
             "command": command}
    write_results(out_dir / "seed000.h5", {}, attrs, groups, force=force)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    (out_dir / "tables.md").write_text(report_tables(summary))
    return groups, summary


def training_table():
    import h5py
    rows = {}
    path = MODELS / "training_times.h5"
    if not path.exists():
        return rows
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) or "mlp" not in name:
                return
            if "train_seconds" in obj.attrs or "train_seconds" in obj:
                src = obj.attrs if "train_seconds" in obj.attrs else obj
                rows[name] = {k: (float(src[k][()]) if k in src and np.ndim(src[k][()]) == 0 else None)
                              for k in ("train_seconds", "epochs", "n_params", "test_accuracy")}
        f.visititems(visit)
    return rows


# ============================================================================ tables
def _nearest(alphas, values, a):
    i = int(np.argmin(np.abs(np.log(np.asarray(alphas)) - np.log(a))))
    return float(alphas[i]), float(values[i])


def report_tables(summary):
    """Markdown tables of the numbers behind the claims (written to tables.md)."""
    L = ["## Noise (Figs 2-3): Monte-Carlo mean over repeats, whole test split", "",
         "| dataset | network | target | clean | α at 90 % of clean | α at half-way to chance "
         "| acc at α≈1 (± std) | log acc vs log α: slope, R², α range | log(clean − acc) vs "
         "log α: slope, R², α range |",
         "|---|---|---|---:|---:|---:|---:|---|---|"]
    for k, v in summary["noise"].items():
        ds, arch, t = k.split("/")
        a1, m1 = _nearest(v["alphas"], v["acc_mean"], 1.0)
        _, s1 = _nearest(v["alphas"], v["acc_std"], 1.0)
        f, e = v["loglog_fit"], v["excess_fit"]
        L.append(f"| {ds} | {arch} | {t} | {v['clean']:.3f} | {v['alpha_at_90pct_clean']:.3g} | "
                 f"{v['alpha_at_half']:.3g} | {m1:.3f} ± {s1:.3f} | {f['slope']:.2f}, "
                 f"{f['r2']:.3f}, {f['range'][0]:.3g}–{f['range'][1]:.3g} ({f['n']}) | "
                 f"{e['slope']:.2f}, {e['r2']:.3f}, {e['range'][0]:.3g}–{e['range'][1]:.3g} ({e['n']}) |")
    L += ["", "## Predicted accuracy and analytic MSE vs Monte-Carlo on the same subset", "",
          "| dataset | network | target | max abs(pred − MC) [pp] | mean pred − MC [pp] "
          "| max MC SE [pp] | analytic/MC MSE (range over α) |", "|---|---|---|---:|---:|---:|---|"]
    for k, v in summary["noise"].items():
        if "pred_mean" not in v:
            continue
        ds, arch, t = k.split("/")
        d = np.array(v["pred_mean"]) - np.array(v["mc_subset_mean"])
        an, mc = np.array(v["an_mse"]), np.array(v["mc_mse_subset"])
        ok = mc > 0
        ratio = an[ok] / mc[ok] if ok.any() else np.array([np.nan])
        L.append(f"| {ds} | {arch} | {t} | {100 * np.abs(d).max():.2f} | {100 * d.mean():+.2f} | "
                 f"{100 * max(v['mc_subset_se']):.2f} | {ratio.min():.3f}–{ratio.max():.3f} |")
    zs, flat = [], []
    for v in summary["noise"].values():
        if "pred_mean" in v:
            d = np.array(v["pred_mean"]) - np.array(v["mc_subset_mean"])
            se = np.array(v["mc_subset_se"])
            ok = se > 1e-6
            zs += list(d[ok] / se[ok])
            flat += list(np.abs(d[~ok]))
    if zs:
        zs = np.array(zs)
        L += ["", f"Pooled over the {zs.size} points with a Monte-Carlo spread: z = (pred − MC)/SE "
              f"has mean {zs.mean():+.2f}, standard deviation {zs.std(ddof=1):.2f}, "
              f"max |z| {np.abs(zs).max():.2f}, {100 * np.mean(np.abs(zs) <= 2):.0f} % within ±2 "
              f"(pure Monte-Carlo noise: 0, 1, ≈95 %). At the {len(flat)} points where every repeat "
              f"gave the same subset accuracy, |pred − MC| ≤ {max(flat, default=0):.1e}."]
    if summary["quant"]:
        bits = next(iter(summary["quant"].values()))["axes_bits"]
        L += ["", "## Quantization (Figs 4-5): exactly quantized network, whole test split "
              "[in brackets, on the analytic subset: the Δ²/12 model's prediction / the quantized network]", "",
              "| network | target | " + " | ".join(f"k={b}" for b in bits) + " |",
              "|---|---|" + "---:|" * len(bits)]
        for k, v in summary["quant"].items():
            ds, arch, t = k.split("/")
            dm = v.get("dither_model_accuracy_mean")
            cells = [f"{a:.3f}" + (f" [{dm[i]:.3f} / {v['subset_fixed_accuracy'][i]:.3f}]"
                                   if dm is not None else "")
                     for i, a in enumerate(v["fixed_accuracy"])]
            L.append(f"| {arch} | {t} | " + " | ".join(cells) + " |")
    if summary.get("reasons"):
        L += ["", "## Candidate reasons for the layer-sensitivity disagreement (2-layer, MC mean "
              "± SE over the repeats)", "",
              "| network | recipe | variant | target | " + " | ".join(
                  f"α={a:.2g}" for a in REASON_ALPHAS) + " |", "|---|---|---|---|" + "---|" * 3]
        for k, v in summary["reasons"].items():
            ds, arch, recipe = k.split("/")
            for name in [n for n in v if n not in ("alphas", "clean") and not n.endswith("_se")]:
                variant, t = name.rsplit("_", 1)
                L.append(f"| {ds} {arch} (clean {v['clean']:.3f}) | {recipe} | {variant} | {t} | "
                         + " | ".join(f"{m:.3f} ± {e:.3f}" for m, e in zip(v[name], v[name + '_se']))
                         + " |")
    if summary["aware"]:
        L += ["", "## Noise-aware vs plain training (target all, MNIST-5k)", "",
              "| network | α_train | clean plain / aware | " + " | ".join(
                  f"α={a:.2g}" for a in next(iter(summary["aware"].values()))["alphas"]) + " |",
              "|---|---|---|" + "---|" * len(next(iter(summary["aware"].values()))["alphas"])]
        for k, v in summary["aware"].items():
            arch, at = k.split("/")
            cells = [f"{p:.3f} / **{a:.3f}**" for p, a in zip(v["plain"], v["aware"])]
            L.append(f"| {arch} | {at[2:]} | {v['clean_plain']:.3f} / {v['clean_aware']:.3f} | "
                     + " | ".join(cells) + " |")
    if summary["proxy"]:
        L += ["", "## Fashion-MNIST dataset-size proxy (trained on the first 5,000 images)", "",
              "| network | clean | target | accuracy over the α grid |", "|---|---:|---|---|"]
        for k, v in summary["proxy"].items():
            for t in ("first", "second", "all"):
                L.append(f"| {k} | {v['clean']:.3f} | {t} | "
                         + " ".join(f"{a:.3f}" for a in v[t]) + " |")
    L += ["", "## Table I: training time (this machine, the trainer's records)", "",
          "| model | epochs | parameters | train seconds | test accuracy |", "|---|---:|---:|---:|---:|"]
    for k, v in sorted(summary["table1"].items()):
        acc = "" if v["test_accuracy"] is None else f"{v['test_accuracy']:.4f}"
        L.append(f"| {k} | {v['epochs']:.0f} | {v['n_params']:,.0f} | {v['train_seconds']:.1f} | {acc} |")
    return "\n".join(L) + "\n"


# ============================================================================ figures
def _save(fig, path):
    import matplotlib.pyplot as plt
    tmp = path.with_name(path.name + ".partial.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    plt.close(fig)


def plot_noise(groups, summary, ds, depth, S, out_dir, kind):
    """Accuracy vs α per target, one curve per width. ``kind``: "regular" (linear axes, the
    paper's Figs 2-3) or "loglog" — Monte-Carlo mean ± std on the whole test split; "pred" —
    predicted accuracy (line) against the Monte-Carlo accuracy ± 2 SE on the same subset."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tnames = [t for t, _ in targets_for(depth)]
    archs = [arch_name(depth, w) for w in S["widths"]]
    archs = [a for a in archs if f"noise/{ds}/{a}/{tnames[0]}" in groups]
    if not archs or (kind == "pred" and "analytic/accuracy_mean" not in
                     groups[f"noise/{ds}/{archs[0]}/{tnames[0]}"]):
        return None
    fig, axes = plt.subplots(1, len(tnames), figsize=(4.2 * len(tnames), 3.8), sharey=True)
    for ax, t in zip(axes, tnames):
        for c, a in enumerate(archs):
            g = groups.get(f"noise/{ds}/{a}/{t}")
            if g is None:
                continue
            al = g["axes/alpha"]
            if kind == "pred":
                ax.errorbar(al, g["subset/mc_accuracy_mean"], yerr=2 * g["subset/mc_accuracy_mean_se"],
                            fmt="o", ms=3, color=f"C{c}", capsize=2, label=f"{a} MC ± 2 SE")
                ax.plot(al, g["analytic/accuracy_mean"], "-", color=f"C{c}", lw=1,
                        label=f"{a} predicted")
            else:
                ax.errorbar(al, g["mc/accuracy_mean"], yerr=g["mc/accuracy_std"], fmt="o-", ms=3,
                            color=f"C{c}", capsize=2, lw=1, label=f"{a}")
        if kind != "regular":
            ax.set_xscale("log")
        if kind == "loglog":
            ax.set_yscale("log")
        ax.set_title(f"noise on {t} layer{'s' if t == 'all' else ''}")
        ax.set_xlabel("α (relative weight noise std)")
        ax.grid(True, which="both", alpha=0.3)
    what = {"regular": "Monte-Carlo mean ± std, whole test split",
            "loglog": "Monte-Carlo mean ± std, whole test split, log-log",
            "pred": "predicted from the moments vs Monte-Carlo, class-stratified subset"}[kind]
    axes[0].set_ylabel(f"test accuracy ({ds})")
    axes[-1].legend(fontsize=6, loc="lower left" if kind != "regular" else "upper right")
    reps = S["repeats"] if ds == "mnist5k" else S["fashion_repeats"]
    fig.suptitle(f"{'2' if depth == 1 else '3'}-layer MLPs, {ds}: {what} ({reps} repeats)")
    fig.tight_layout()
    name = f"fig{'2' if depth == 1 else '3'}_{ds}_{kind}.png"
    _save(fig, out_dir / name)
    return name


def plot_pred_vs_mc(groups, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.4))
    for gname, g in groups.items():
        if not gname.startswith("noise/") or "analytic/accuracy_mean" not in g:
            continue
        a1.errorbar(g["subset/mc_accuracy_mean"], g["analytic/accuracy_mean"],
                    xerr=2 * g["subset/mc_accuracy_mean_se"], fmt=".", ms=3, alpha=0.6)
        ok = g["subset/mc_mse_batch"] > 0
        a2.plot(g["subset/mc_mse_batch"][ok], g["analytic/mse_batch"][ok], ".", ms=3, alpha=0.6)
    a1.plot([0, 1], [0, 1], "k-", lw=0.8)
    a1.set_xlabel("Monte-Carlo accuracy on the subset (± 2 SE)")
    a1.set_ylabel("predicted accuracy (theory §21)")
    a2.set_xscale("log")
    a2.set_yscale("log")
    lim = a2.get_xlim()
    a2.plot(lim, lim, "k-", lw=0.8)
    a2.set_xlabel("Monte-Carlo MSE (subset)")
    a2.set_ylabel("analytic MSE (theory §9, §13)")
    for a in (a1, a2):
        a.grid(True, which="both", alpha=0.3)
    fig.suptitle("Analytic prediction vs Monte-Carlo, every (network, target, α) point")
    fig.tight_layout()
    _save(fig, out_dir / "fig_pred_vs_mc.png")
    return "fig_pred_vs_mc.png"


def plot_quant(groups, S, depth, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tnames = [t for t, _ in targets_for(depth)]
    archs = [a for a in (arch_name(depth, w) for w in S["widths"])
             if f"quant/mnist5k/{a}/{tnames[0]}" in groups]
    if not archs:
        return None
    fig, axes = plt.subplots(1, len(tnames), figsize=(4.2 * len(tnames), 3.8), sharey=True)
    for ax, t in zip(axes, tnames):
        for c, a in enumerate(archs):
            g = groups[f"quant/mnist5k/{a}/{t}"]
            ax.plot(g["axes/bits"], g["fixed/accuracy"], "o-", ms=3, color=f"C{c}",
                    label=f"{a} quantized (fixed)")
            if "dither_model/accuracy_mean" in g:
                ax.plot(g["axes/bits"], g["dither_model/accuracy_mean"], "--", color=f"C{c}",
                        lw=1, label=f"{a} Δ²/12 model (subset)")
        ax.set_title(f"{t} layer{'s' if t == 'all' else ''} quantized")
        ax.set_xlabel("bits k")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("test accuracy (MNIST-5k)")
    axes[-1].legend(fontsize=6, loc="lower right")
    fig.suptitle(f"{'2' if depth == 1 else '3'}-layer MLPs: k-bit weight quantization")
    fig.tight_layout()
    name = f"fig{'4' if depth == 1 else '5'}_quant.png"
    _save(fig, out_dir / name)
    return name


def plot_aware(summary, out_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if not summary["aware"]:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    archs = sorted({k.split("/")[0] for k in summary["aware"]}, key=lambda s: int(s.split("-")[1]))
    for c, a in enumerate(archs):
        for k, v in summary["aware"].items():
            if k.split("/")[0] != a:
                continue
            ls = "-" if k.endswith("at0.3") else ":"
            ax.plot(v["alphas"], v["aware"], ls, marker="o", ms=3, color=f"C{c}",
                    label=f"{a} noise-aware α_train={k.split('at')[1]}")
        v = next(v for k, v in summary["aware"].items() if k.split("/")[0] == a)
        ax.plot(v["alphas"], v["plain"], "--", color=f"C{c}", lw=1, label=f"{a} plain")
    ax.set_xscale("log")
    ax.set_xlabel("α at inference (all layers)")
    ax.set_ylabel("test accuracy (MNIST-5k)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title("Noise-aware vs plain training (2-layer MLPs)")
    fig.tight_layout()
    _save(fig, out_dir / "fig_aware.png")
    return "fig_aware.png"


# ============================================================================ main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="out/seed000", help="output directory")
    ap.add_argument("--quick", action="store_true",
                    help="reduced grid: widths 50/100, 5 α, 10 repeats, small subsets")
    ap.add_argument("--parts", default="noise,quant,reasons,aware,fashion",
                    help="comma-separated subset of noise,quant,reasons,aware,fashion")
    ap.add_argument("--repeats", type=int, default=None, help="override the MC repeats per point")
    ap.add_argument("--workers", type=int, default=None, help="local worker processes")
    ap.add_argument("--scheduler", default=None, help="Dask scheduler address")
    ap.add_argument("--fashion-depths", default="1,2",
                    help="hidden-layer counts of the Fashion-MNIST part (1 = 784-N-10, 2 = 784-N-N-10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--assemble-only", action="store_true",
                    help="compute nothing: build the result set, tables and figures from the "
                         "cells already on disk (complete series only)")
    ap.add_argument("--force", action="store_true",
                    help="replace OUT/seed000.h5 even if it is not a result of this script")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    bad = parts - {"noise", "quant", "reasons", "aware", "fashion"}
    try:
        if bad:
            raise ConfigError(f"unknown part(s) {sorted(bad)}")
        if args.quick:
            parts.discard("fashion")
        t0 = time.perf_counter()
        S = settings(args)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        from refmem.io import check_output             # the result file, before any work
        check_output(out_dir / "seed000.h5", "reproduce_seed000", force=args.force)
        cells = build_cells(S, parts)
        if args.assemble_only:
            from refmem.executor import load_grid
            done = {p.stem for p in (out_dir / "grid" / "cells").glob("*.npz")}
            cells = {k: v for k, v in cells.items() if k in done}
            results = load_grid(out_dir / "grid", list(cells))
            print(f"assembling {len(cells)} finished cells")
        else:
            with Executor(workers=args.workers, scheduler=args.scheduler) as ex:
                print(f"{len(cells)} cells on {ex.kind} "
                      f"({ex.workers if ex.kind != 'dask' else args.scheduler})")
                results = run_grid(any_cell, cells, out_dir / "grid", executor=ex,
                                   seed=args.seed, progress=not args.no_progress)
        command = " ".join(["scripts/reproduce_seed000.py"]
                           + list(sys.argv[1:] if argv is None else argv))
        groups, summary = assemble(S, cells, results, out_dir, command, force=args.force)
        figs = []
        for ds in ("mnist5k", "fashion-mnist"):
            for depth in (1, 2):
                for kind in ("regular", "loglog", "pred"):
                    figs.append(plot_noise(groups, summary, ds, depth, S, out_dir, kind))
        figs += [plot_pred_vs_mc(groups, out_dir), plot_quant(groups, S, 1, out_dir),
                 plot_quant(groups, S, 2, out_dir), plot_aware(summary, out_dir)]
        dt = time.perf_counter() - t0
        (out_dir / "timing.json").write_text(json.dumps({"seconds": dt, "cells": len(cells)}))
        print(f"wrote {out_dir / 'seed000.h5'}, summary.json and {len([f for f in figs if f])} "
              f"figures in {dt:.0f} s")
    except RefmemError as exc:
        print(f"reproduce_seed000: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
